"""``gbrank run`` as cron runs it: a first run, a second on unchanged inputs (every stage
skipped), a one-parameter change, and two runs started together on one workspace.

Prints wall time, CPU time and peak RSS of each ``gbrank run`` process, the second run's share
of the first, and how long the locked-out run took to exit 75, as a table and as JSON.

    python bench/bench_cron.py --events 1M --repeat 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import SHOPS, run_stage, speed_probe, synth_shop  # noqa: E402


def gbrank(*args: str) -> list[str]:
    return [sys.executable, "-m", "gbrank.cli", *args]


def locked_out(config: Path) -> dict[str, float]:
    """Start a run, wait until it holds the lock, start a second: its exit code and time."""
    lock = config.parent / "ws" / ".gbrank.lock"
    first = subprocess.Popen(
        gbrank("run", "-c", str(config)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not (lock.exists() and lock.read_text().strip()):
        if first.poll() is not None:
            raise SystemExit("the first run ended before it was seen holding the lock")
        time.sleep(0.005)
    t0 = time.perf_counter()
    second = subprocess.run(gbrank("run", "-c", str(config)), capture_output=True)
    seconds = time.perf_counter() - t0
    still_running = first.poll() is None
    first.wait()
    return {
        "rc": second.returncode,
        "seconds": round(seconds, 3),
        "first_still_running": still_running,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", choices=sorted(SHOPS), default="1M")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="first/second run pairs")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="gbrank_cron_"))
    shop = root / "shop"
    if not (shop / "events.parquet").exists():
        synth_shop(args.events, shop, seed=0)
    config = root / "gbrank.toml"
    config.write_text(
        f'[data]\nevents = "{shop / "events.parquet"}"\nitems = "{shop / "items.parquet"}"\n'
        f'users = "{shop / "users.parquet"}"\n\n[run]\nworkspace = "{root / "ws"}"\n'
    )
    probe = [speed_probe()]
    pairs = []
    for _ in range(args.repeat):
        shutil.rmtree(root / "ws", ignore_errors=True)
        first = run_stage(gbrank("run", "-c", str(config)))
        second = run_stage(gbrank("run", "-c", str(config)))
        pairs.append((first, second))
    # The gate may refuse the changed model (exit 3): the tolerance lets it through.
    changed = run_stage(
        gbrank(
            "run",
            "-c",
            str(config),
            "--set",
            "train.num_boost_round=50",
            "--set",
            "promote.tolerance=1",
        )
    )
    lock = []
    for _ in range(3):
        shutil.rmtree(root / "ws", ignore_errors=True)  # so the first run has work to do
        lock.append(locked_out(config))
    probe.append(speed_probe())
    firsts = [p[0]["wall_s"] for p in pairs]
    seconds = [p[1]["wall_s"] for p in pairs]
    result = {
        "events": args.events,
        "speed_probe_s": probe,
        "first_run": pairs[0][0] | {"wall_s_median": statistics.median(firsts)},
        "second_run": pairs[0][1] | {"wall_s_median": statistics.median(seconds)},
        "second_share": round(statistics.median(seconds) / statistics.median(firsts), 4),
        "one_train_parameter_changed": changed,
        "locked_out": lock,
    }
    print(f"speed probe {probe[0]:.2f} s / {probe[1]:.2f} s (1.8 s quiet)")
    print(f"{'run':<34} {'wall s':>8} {'cpu s':>8} {'rss MB':>8}")
    print(
        f"{'first (median of ' + str(len(firsts)) + ')':<34} {statistics.median(firsts):8.1f} "
        f"{pairs[0][0]['cpu_s']:8.1f} {pairs[0][0]['rss_mb']:8.0f}"
    )
    print(
        f"{'second, unchanged inputs':<34} {statistics.median(seconds):8.1f} "
        f"{pairs[0][1]['cpu_s']:8.1f} {pairs[0][1]['rss_mb']:8.0f}"
    )
    print(
        f"{'train.num_boost_round changed':<34} {changed['wall_s']:8.1f} {changed['cpu_s']:8.1f} "
        f"{changed['rss_mb']:8.0f}"
    )
    print(f"second / first: {result['second_share']:.1%}")
    print("locked-out run: " + ", ".join(f"exit {x['rc']} in {x['seconds']:.2f}s" for x in lock))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
