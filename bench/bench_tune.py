"""``gbrank tune`` on a synthetic shop: time per ranker-only trial, the study's wall time and
peak RSS, the validation metric of the config against the best trial, and both configs'
eval-fold metric (the eval fold is never read by the study, so that figure is the check).

Steps, each its own process: ``gbrank run`` with the defaults (the baseline run, whose
generate and features the study reuses), ``gbrank tune --trials N``, then ``gbrank run -c
best.toml`` (generate and features reused, train and eval run; the gate may refuse it: exit 3
is recorded, not an error). Prints a table and JSON.

    python bench/bench_tune.py --events 1M --trials 20
    python bench/bench_tune.py --config imported/gbrank.toml --trials 20   # real data
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import SHOPS, run_stage, speed_probe, synth_shop  # noqa: E402


def served_metric(run: Path, metric: str = "ndcg", k: int = 10, target: str = "purchase") -> float:
    rows = json.loads((run / "metrics.json").read_text())
    for row in rows:
        if (row["model"], row["metric"], row["k"], row["target"]) == ("ranker", metric, k, target):
            return float(row["value"])
    raise SystemExit(f"{run}/metrics.json has no ranker {target} {metric}@{k}")


def newest_run(workspace: Path, exclude: set[str]) -> Path:
    runs = [p for p in (workspace / "runs").iterdir() if p.name not in exclude]
    return max(runs, key=lambda p: p.stat().st_mtime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", choices=sorted(SHOPS), default="1M")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="tune this config's data instead of a synthetic shop (its workspace is replaced)",
    )
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="gbrank_tune_"))
    root.mkdir(parents=True, exist_ok=True)
    workspace = root / "ws"
    config = root / "gbrank.toml"
    where: list[str] = []
    if args.config is not None:
        config = args.config.resolve()
        where = ["-w", str(workspace)]  # best.toml then holds this workspace
    else:
        shop = root / "shop"
        if not (shop / "events.parquet").exists():
            synth_shop(args.events, shop, args.seed)
        config.write_text(
            f'[data]\nevents = "{shop / "events.parquet"}"\nitems = "{shop / "items.parquet"}"\n'
            f'users = "{shop / "users.parquet"}"\n[run]\nworkspace = "{workspace}"\n'
        )
    gbrank = [sys.executable, "-m", "gbrank.cli"]
    probes = [speed_probe()]
    rows: dict[str, dict[str, float]] = {}
    rows["run (defaults)"] = run_stage([*gbrank, "run", "-c", str(config), *where])
    base = newest_run(workspace, set())
    study = f"bench-{args.trials}"
    rows["tune"] = run_stage(
        [*gbrank, "tune", "-c", str(config), *where, "--trials", str(args.trials), "--study", study]
    )
    best = workspace / "tune" / study / "best.toml"
    rows["run (tuned)"] = run_stage([*gbrank, "run", "-c", str(best)], ok=(0, 3))
    tuned = newest_run(workspace, {base.name})
    probes.append(speed_probe())
    summary = json.loads((workspace / "tune" / study / "study.json").read_text())
    trials = summary["trials"]
    seconds = [t["seconds"] for t in trials if t.get("seconds") is not None]
    complete = [t["seconds"] for t in trials if t["state"] == "complete" and t.get("seconds")]
    result = {
        "data": str(args.config) if args.config else f"synthetic {args.events}",
        "trials": args.trials,
        "stages": rows,
        "trial_seconds": {
            "median": round(statistics.median(seconds), 1) if seconds else None,
            "max": round(max(seconds), 1) if seconds else None,
            "median_complete": round(statistics.median(complete), 1) if complete else None,
            "baseline": next((t["seconds"] for t in trials if t["baseline"]), None),
        },
        "pruned": sum(t["state"] == "pruned" for t in trials),
        "validation": {
            "config": summary["baseline"],
            "best": summary["best"]["value"],
            "paired_gain": summary["gain"],
        },
        "best_trial": summary["best"]["number"],
        "best_params": summary["best"]["params"],
        "eval_fold": {
            "defaults": round(served_metric(base), 4),
            "tuned": round(served_metric(tuned), 4),
            "tuned_run_promoted": rows["run (tuned)"]["rc"] == 0,
        },
        "speed_probe_s": probes,
    }
    print(f"{'step':<16} {'wall s':>8} {'cpu s':>8} {'peak MB':>8}")
    for name, row in rows.items():
        print(f"{name:<16} {row['wall_s']:>8} {row['cpu_s']:>8} {row['rss_mb']:>8}")
    ts = result["trial_seconds"]
    print(
        f"per trial: median {ts['median']} s (complete ones {ts['median_complete']} s), max "
        f"{ts['max']} s; pruned {result['pruned']}"
    )
    v, e = result["validation"], result["eval_fold"]
    print(
        f"validation (train fold, held-out users): config {v['config']:.4f}, best {v['best']:.4f}"
    )
    if v["paired_gain"]:
        g = v["paired_gain"]
        print(f"  paired gain {g['gain']:+.4f}, standard error {g['se']:.4f}, {g['users']} users")
    print(f"eval fold purchase ndcg@10: defaults {e['defaults']:.4f}, tuned {e['tuned']:.4f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
