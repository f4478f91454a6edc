"""Wall time and peak memory of the whole pipeline on a synthetic shop.

Runs ``gbrank quickstart`` in a fresh subprocess per repeat (so peak RSS is that run's own)
and prints the median wall time, each stage's median time, and the peak RSS.

    python bench/bench_pipeline.py --users 10000 --items 3000 --days 56 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(users: int, items: int, days: int, seed: int) -> tuple[float, float, dict[str, float]]:
    workspace = Path(tempfile.mkdtemp(prefix="gbrank_bench_"))
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "gbrank.cli",
                "quickstart",
                "--workspace",
                str(workspace),
                "--users",
                str(users),
                "--items",
                str(items),
                "--days",
                str(days),
                "--seed",
                str(seed),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t0
        # ru_maxrss of children is the largest child so far; each run is a fresh child and
        # runs are printed individually, so a later smaller run cannot hide a larger one.
        peak_mb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
        progress = json.loads(
            next((workspace / "runs").iterdir()).joinpath("progress.json").read_text()
        )
        stages = {name: info["seconds"] for name, info in progress.items()}
        return wall, peak_mb, stages
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--days", type=int, default=56)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    walls, peaks, stages = [], [], []
    for i in range(args.repeat):
        wall, peak, stage = one_run(args.users, args.items, args.days, args.seed)
        walls.append(wall)
        peaks.append(peak)
        stages.append(stage)
        print(
            f"run {i + 1}: wall {wall:.1f}s, peak RSS so far {peak:.0f} MB, "
            + ", ".join(f"{k} {v:.1f}s" for k, v in stage.items()),
            flush=True,
        )
    print(f"shop: {args.users} users, {args.items} items, {args.days} days")
    print(
        f"median wall {statistics.median(walls):.1f}s over {args.repeat} runs; "
        f"peak RSS {max(peaks):.0f} MB"
    )
    for name in stages[0]:
        print(f"  {name:<9} median {statistics.median(s[name] for s in stages):.1f}s")


if __name__ == "__main__":
    main()
