"""Run the default pipeline on real public datasets and print a metrics table per dataset.

Each dataset is imported with ``gbrank data import`` into a temporary folder, then
``generate``, ``features``, ``train`` and ``eval`` run with the suggested config and every
other key at its default. Prints NDCG@10 and Recall@20 of the ranker and of each source for
each target that has positives, plus the wall time of each stage and the peak RSS.

    python bench/real_data.py --data /path/to/datasets
    python bench/real_data.py --data /path/to/datasets --set train.params.num_leaves=63

``--set key=value`` (repeatable) overrides a config key for every dataset, on top of its
suggested config.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import polars as pl

from gbrank import pipeline
from gbrank.config import load_config
from gbrank.data.importers import import_dataset

DATASETS = {
    # name: (format, path inside the data folder)
    "movielens-small": ("movielens", "ml-latest-small/ratings.csv"),
    "instacart-sample": ("instacart", "instacart_sample/instacart_df_sample.csv"),
    "taobao-sample": ("taobao", "taobao_sample/UserBehavior_sample.csv"),
    "yoochoose-100k": ("yoochoose", "yoochoose_clicks_100k"),
    "otto-fixture": ("otto", "otto_fixture/train.jsonl"),
}


def run_one(name: str, fmt: str, src: Path, work: Path, overrides: list[str]) -> str:
    lines = [f"## {name} ({fmt}: {src.name})"]
    t0 = time.perf_counter()
    imported = import_dataset(fmt, src, work / name)
    timings = {"import": time.perf_counter() - t0}
    cfg = load_config(
        work / name / "gbrank.toml", [f'run.workspace="{work / name / "ws"}"', *overrides]
    )
    for stage, func in (
        ("generate", pipeline.generate),
        ("features", pipeline.build_features),
        ("train", pipeline.train),
        ("eval", pipeline.evaluate),
    ):
        t = time.perf_counter()
        result = func(cfg)
        timings[stage] = time.perf_counter() - t
        if stage == "train":
            trees = result.best_iteration  # type: ignore[union-attr]
    metrics: pl.DataFrame = result.metrics  # type: ignore[union-attr]
    users = result.users  # type: ignore[union-attr]
    lines.append(
        f"{imported.events:,} events, {imported.users:,} users, {imported.items:,} items; "
        f"horizon {imported.horizon_days} days; "
        + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        + f"; {trees} trees"
    )
    for target, n in users.items():
        if n == 0:
            continue
        lines.append(f"\n{target} ({n:,} users with a positive in the eval window)\n")
        lines.append("| model | NDCG@10 | Recall@20 |")
        lines.append("|---|---|---|")
        sub = metrics.filter(pl.col("target") == target)
        for model in sub["model"].unique(maintain_order=True).to_list():
            rows = sub.filter(pl.col("model") == model)
            ndcg = rows.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10))["value"][0]
            recall = rows.filter((pl.col("metric") == "recall") & (pl.col("k") == 20))["value"][0]
            lines.append(f"| {model} | {ndcg:.4f} | {recall:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder holding the samples")
    parser.add_argument("--only", nargs="*", default=None, help="dataset names to run")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gbrank_real_") as tmp:
        for name, (fmt, rel) in DATASETS.items():
            if args.only and name not in args.only:
                continue
            src = args.data / rel
            if not src.exists():
                print(f"## {name}: {src} not found, skipped\n")
                continue
            print(run_one(name, fmt, src, Path(tmp), args.set), flush=True)
            print()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
