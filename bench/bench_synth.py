"""Benchmark the synthetic shop generator: events, wall time and peak memory.

Each repeat runs ``synthesize`` in a fresh Python process under ``/usr/bin/time -v`` (or,
without it, reads the children's ``ru_maxrss``), so the peak RSS is the generator's own and
the wall time includes nothing but one generation.

Example:
    python bench/bench_synth.py --users 200000 --items 50000 --days 60 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import json, sys
from gbrank.data.synth import SynthConfig, synthesize
s = synthesize(SynthConfig(**json.loads(sys.argv[1])), sys.argv[2])
print(json.dumps({"events": s.events, "seconds": s.seconds, "shares": s.shares(),
                  "chunks": s.chunks, "repurchase_share": s.repurchase_share,
                  "top1pct_item_share": s.top1pct_item_share}))
"""

_TIME = Path("/usr/bin/time")


def run_once(config: dict[str, int], out: Path) -> dict[str, float]:
    """One generation in a subprocess: its summary, wall seconds and peak RSS in MB."""
    cmd = [sys.executable, "-c", _CHILD, json.dumps(config), str(out)]
    use_time = _TIME.exists()
    if use_time:
        cmd = [str(_TIME), "-v", *cmd]
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"synthesize failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if use_time:
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        rss_kb = int(match.group(1)) if match else 0
    else:
        # Max over all children so far: still the peak of the largest run.
        rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["wall"] = wall
    result["rss_mb"] = rss_kb / 1024
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="keep the shop here")
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = parser.parse_args(argv)

    config = {"users": args.users, "items": args.items, "days": args.days, "seed": args.seed}
    work = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    runs = []
    try:
        for i in range(args.repeat):
            out = args.out if args.out is not None else work / "shop"
            res = run_once(config, out)
            runs.append(res)
            print(
                f"run {i + 1}/{args.repeat}: {res['events']:,} events, "
                f"{res['wall']:.1f} s wall ({res['seconds']:.1f} s in synthesize), "
                f"peak RSS {res['rss_mb']:.0f} MB",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    wall = statistics.median(r["wall"] for r in runs)
    inner = statistics.median(r["seconds"] for r in runs)
    rss = max(r["rss_mb"] for r in runs)
    events = runs[-1]["events"]
    shares = ", ".join(f"{k} {v:.1%}" for k, v in runs[-1]["shares"].items())
    print(
        f"\nusers {args.users:,}  items {args.items:,}  days {args.days}  "
        f"chunks {runs[-1]['chunks']}\n"
        f"events        {events:,}\n"
        f"wall          {wall:.1f} s median of {len(runs)} ({inner:.1f} s in synthesize)\n"
        f"throughput    {events / wall / 1e6:.2f} M events/s\n"
        f"peak RSS      {rss:.0f} MB\n"
        f"event mix     {shares}\n"
        f"repurchase    {runs[-1]['repurchase_share']:.1%}   "
        f"top-1% items {runs[-1]['top1pct_item_share']:.1%} of events"
    )
    if args.json:
        print(json.dumps({**config, "events": events, "wall_s": wall, "peak_rss_mb": rss}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
