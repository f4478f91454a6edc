"""NDCG@10 against the training budget (``[train.sample]``) on a synthetic shop.

Synthesizes a shop, runs ``generate`` once, then for each budget runs ``features``, ``train``
and ``eval`` in a fresh process (so each peak RSS is that budget's own) and prints a table:
budget, training rows, stage times, peak RSS and NDCG@10 per target.

    python bench/bench_sampling.py --users 10000 --items 3000 --days 56
    python bench/bench_sampling.py --users 20000 --items 5000 --days 60 --budgets 20:0.5:0 20:0.5:2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_BUDGETS = [
    "0:0.5:0",  # negatives : hard share : users (0: all)
    "5:0.5:0",
    "10:0.5:0",
    "20:0.5:0",
    "40:0.5:0",
    "80:0.5:0",
    "20:0.0:0",
    "20:1.0:0",
]

STAGES = """
import json, resource, sys, time
from gbrank.config import load_config
from gbrank import pipeline
cfg = load_config(sys.argv[1], sys.argv[2:])
out = {}
t = time.perf_counter(); f = pipeline.build_features(cfg); out["features"] = time.perf_counter() - t
t = time.perf_counter(); r = pipeline.train(cfg); out["train"] = time.perf_counter() - t
t = time.perf_counter(); e = pipeline.evaluate(cfg); out["eval"] = time.perf_counter() - t
out["train_rows"] = r.train_rows + r.valid_rows
out["best_iteration"] = r.best_iteration
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
m = e.metrics
out["ndcg"] = {row["target"]: row["value"] for row in m.filter(
    (m["metric"] == "ndcg") & (m["k"] == 10) & (m["model"] == "ranker")).to_dicts()}
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--days", type=int, default=56)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", nargs="*", default=DEFAULT_BUDGETS)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from gbrank.data.synth import SynthConfig, synthesize

    root = args.workdir or Path(tempfile.mkdtemp(prefix="gbrank_sampling_"))
    shop = root / "shop"
    if not (shop / "events.parquet").exists():
        synthesize(SynthConfig(args.users, args.items, args.days, seed=args.seed), shop)
    config = root / "gbrank.toml"
    config.write_text(
        f'[data]\nevents = "{shop / "events.parquet"}"\nitems = "{shop / "items.parquet"}"\n'
        f'users = "{shop / "users.parquet"}"\n[run]\nworkspace = "{root / "ws"}"\n'
        'run_id = "sampling"\n'
    )
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "gbrank.cli", "generate", "-c", str(config)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(
        f"shop {args.users} users x {args.items} items x {args.days} days; generate "
        f"{time.perf_counter() - t0:.1f}s"
    )
    head = (
        f"{'negatives':>9} {'hard':>5} {'users':>6} {'rows':>10} {'features':>9} {'train':>7} "
        f"{'eval':>6} {'peak MB':>8} {'trees':>6} {'click':>7} {'cart':>7} {'purchase':>8}"
    )
    print(head)
    print("-" * len(head))
    results = []
    for budget in args.budgets:
        negatives, hard, users = budget.split(":")
        overrides = [
            f"train.sample.negatives={negatives}",
            f"train.sample.hard_share={hard}",
            f"train.sample.users={users}",
        ]
        done = subprocess.run(
            [sys.executable, "-c", STAGES, str(config), *overrides],
            check=True,
            capture_output=True,
            text=True,
        )
        out = json.loads(done.stdout.strip().splitlines()[-1])
        peak = out["peak_mb"]
        ndcg = out["ndcg"]
        print(
            f"{negatives:>9} {hard:>5} {users:>6} {out['train_rows']:>10,} {out['features']:>8.1f}s "
            f"{out['train']:>6.1f}s {out['eval']:>5.1f}s {peak:>8.0f} {out['best_iteration']:>6} "
            f"{ndcg.get('click', float('nan')):>7.4f} {ndcg.get('cart', float('nan')):>7.4f} "
            f"{ndcg.get('purchase', float('nan')):>8.4f}",
            flush=True,
        )
        results.append({"budget": budget, **out})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
