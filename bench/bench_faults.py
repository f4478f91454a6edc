"""kill -9 at many random write points of ``gbrank run`` (200 by default), on a small
synthetic shop: after each kill every artifact is absent or complete and ``current`` is a
complete run; each run that gets to the end equals an uninterrupted one byte for byte.

The harness is tests/faults.py, the same one the test suite runs with 50 points.

    python bench/bench_faults.py --kills 200 --chains 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import faults  # noqa: E402

from gbrank.config import load_config  # noqa: E402
from gbrank.data.synth import SynthConfig, synthesize  # noqa: E402
from gbrank.runner import run_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--chains", type=int, default=2, help="workspaces crashed side by side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="gbrank_faults_"))
    synthesize(SynthConfig(users=300, items=120, days=28, seed=1), root / "shop")
    config = faults.write_config(root, root / "shop" / "events.parquet")
    os.environ["GBRANK_FAULT_TRACE"] = str(root / "trace")
    weak = faults.reference(config, faults.WEAK, root / "ref")
    del os.environ["GBRANK_FAULT_TRACE"]
    max_point = len((root / "trace").read_text().splitlines())
    references = {"weak": weak, "strong": faults.reference(config, faults.STRONG, root / "ref")}
    workspaces = [root / f"ws{i}" for i in range(args.chains)]
    for ws in workspaces:
        run_pipeline(load_config(config, [*faults.CHAMPION, f'run.workspace="{ws}"']))
    per_chain = -(-args.kills // args.chains)
    t0 = time.perf_counter()

    def chain(i: int) -> faults.ChainStats:
        return faults.run_chain(
            config,
            workspaces[i],
            kills=per_chain,
            seed=args.seed + i,
            references=references,
            max_point=max_point,
        )

    with ThreadPoolExecutor(args.chains) as pool:
        stats = list(pool.map(chain, range(args.chains)))
    seconds = time.perf_counter() - t0
    points = sorted(p for s in stats for p in s.points)
    quarter = [
        sum(1 for p in points if q * max_point / 4 < p <= (q + 1) * max_point / 4) for q in range(4)
    ]
    result = {
        "kills": len(points),
        "write_points_per_run": max_point,
        "processes": sum(s.processes for s in stats),
        "recovered_to_the_end": sum(s.completed for s in stats),
        "kills_per_quarter_of_the_run": quarter,
        "seconds": round(seconds, 1),
        "violations": 0,  # any would have raised
    }
    print(
        f"{len(points)} kills at random points of {max_point} write points per run, "
        f"{result['processes']} processes, {result['recovered_to_the_end']} recovered to the "
        f"end; kills per quarter of the run {quarter}; {seconds:.0f}s; no violation"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
