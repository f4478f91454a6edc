"""``ranking_metrics`` at 1M users, K = 10 (every metric), median of several runs.

Lists of 10 random items per user out of 100k, 1.5 relevant items per user on average plus a
hit at rank 3 for 30% of the users; prints seconds per call and per 1M users, and JSON.

    python bench/bench_metrics.py --users 1000000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import speed_probe  # noqa: E402

from gbrank.metrics import ranking_metrics  # noqa: E402


def frames(n: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    recs = pl.DataFrame(
        {
            "user": np.repeat(np.arange(n, dtype=np.int32), 10),
            "item": rng.integers(0, 100_000, n * 10).astype(np.int32),
        }
    ).unique(["user", "item"], keep="first", maintain_order=True)
    recs = recs.with_columns(
        pl.int_range(1, pl.len() + 1).over("user").cast(pl.Int32).alias("rank")
    )
    rel = pl.DataFrame(
        {
            "user": rng.integers(0, n, int(1.5 * n)).astype(np.int32),
            "item": rng.integers(0, 100_000, int(1.5 * n)).astype(np.int32),
        }
    )
    hits = recs.filter(pl.col("rank") == 3).select("user", "item").head(int(0.3 * n))
    return recs, pl.concat([rel, hits])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    recs, rel = frames(args.users)
    probe = [speed_probe()]
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ranking_metrics(recs, rel, ks=[10])
        times.append(time.perf_counter() - t0)
    probe.append(speed_probe())
    median = statistics.median(times)
    per_million = median / (args.users / 1e6)
    print(f"speed probe {probe[0]} s / {probe[1]} s (1.8 s quiet)")
    print(
        f"ranking_metrics, {args.users:,} users x 10, K = 10: median {median:.2f} s "
        f"({per_million:.2f} s per 1M users) over {args.repeat} runs"
    )
    print(
        json.dumps(
            {
                "users": args.users,
                "seconds": [round(t, 3) for t in times],
                "median_s": round(median, 3),
                "per_million_users_s": round(per_million, 3),
                "speed_probe_s": probe,
            }
        )
    )


if __name__ == "__main__":
    main()
