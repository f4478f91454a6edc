"""gbrank against RecTools' two-stage ``CandidateRankingModel`` on one events file.

RecTools runs in a virtual environment of its own (made under ``--workdir`` on first use:
``rectools[lightgbm]``, lightgbm, scikit-learn, pyarrow; never a gbrank dependency). Three
pipelines see the same synthetic shop and the same protocol, gbrank's two each measured twice
(below):

- **RecTools**: ALS (48 factors, 12 iterations), item-kNN cosine (100 neighbours) and
  popularity, 50 candidates each; 5 negatives per user; LightGBM lambdarank, 200 trees
  (learning rate 0.1, 31 leaves, as gbrank's defaults), on its default features (the sources' scores and ranks); its own one-fold time split of 7 days.
- **gbrank, same budget**: the same three sources and budgets (seen items kept, as RecTools
  is run with ``filter_viewed=False``), 5 negatives per user, 200 trees without early
  stopping, gbrank's features.
- **gbrank, defaults**: the default config (seven sources, 20 negatives, early stopping).

Every pipeline learns from the events before the eval fold's ``as_of`` (gbrank's folds: the
last 7 days are the eval window) and ranks 10 items for each user with an event in the eval
window. NDCG@10 is computed by one function (``gbrank.metrics.ranking_metrics``) against one
ground truth (gbrank's eval labels), per target. Wall time and peak RSS cover fitting and
recommending: for gbrank the generate, features, train and eval stages, each its own process
(generate also fits the serving sources, train also fits the serving model), and again as one
``gbrank run`` process (the same four stages, as cron runs them); for RecTools one process that
loads the events, fits and recommends. Every gbrank pipeline starts from an empty workspace, so
nothing is reused from an earlier run.

    python bench/peer_rectools.py                  # the 1M-event shop
    python bench/peer_rectools.py --repeat 3       # medians of three runs of each
    python bench/peer_rectools.py --events 10M --workdir /tmp/peer10m
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import SHOPS, run_stage, synth_shop  # noqa: E402

# RecTools pins NumPy below 2, and pyarrow 20+ needs NumPy 2.
RECTOOLS_PACKAGES = ["rectools[lightgbm]>=0.18", "lightgbm", "scikit-learn", "pyarrow<20"]
TARGETS = ("purchase", "cart", "click")

SAME_BUDGET = """
[candidates.sources.als]
kind = "als"
n = 50
factors = 48
iterations = 12
filter_seen = false

[candidates.sources.itemknn]
kind = "itemknn"
n = 50
similarity = "cosine"
neighbours = 100
filter_seen = false

[candidates.sources.popularity]
kind = "popularity"
n = 50
window_days = inf
filter_seen = false

[train]
num_boost_round = 200
early_stopping_rounds = 0

[train.sample]
negatives = 5
"""

# Runs inside the RecTools environment: argv = events, as_of, users file, output file.
RECTOOLS_SCRIPT = r"""
import sys
import numpy as np
import pandas as pd
from implicit.als import AlternatingLeastSquares
from implicit.nearest_neighbours import CosineRecommender
from lightgbm import LGBMRanker
from rectools import Columns
from rectools.dataset import Dataset
from rectools.model_selection import TimeRangeSplitter
from rectools.models import ImplicitALSWrapperModel, ImplicitItemKNNWrapperModel, PopularModel
from rectools.models.ranking import (
    CandidateGenerator, CandidateRankingModel, PerUserNegativeSampler, Reranker,
)

events_path, as_of, users_path, out_path = sys.argv[1:5]
WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 8.0}


class LambdarankReranker(Reranker):
    # LightGBM's ranker needs the rows of a user together and the group sizes.
    def prepare_fit_kwargs(self, candidates_with_target):
        frame = candidates_with_target.sort_values(by=[Columns.User])
        groups = frame.groupby(Columns.User, sort=False).size().to_numpy()
        return {
            "X": frame.drop(columns=[*Columns.UserItem, Columns.Target]),
            "y": frame[Columns.Target],
            "group": groups,
        }


events = pd.read_parquet(events_path, columns=["user_id", "item_id", "ts", "event"])
events = events[events["ts"] < pd.Timestamp(as_of)]
interactions = pd.DataFrame({
    Columns.User: events["user_id"].to_numpy(),
    Columns.Item: events["item_id"].to_numpy(),
    Columns.Weight: events["event"].map(WEIGHTS).to_numpy(),
    Columns.Datetime: events["ts"].to_numpy(),
})
dataset = Dataset.construct(interactions)
als = AlternatingLeastSquares(factors=48, iterations=12, regularization=0.01, alpha=10.0,
                              random_state=0, num_threads=0)
generators = [
    CandidateGenerator(ImplicitALSWrapperModel(als), 50, keep_ranks=True, keep_scores=True),
    CandidateGenerator(ImplicitItemKNNWrapperModel(CosineRecommender(K=100)), 50,
                       keep_ranks=True, keep_scores=True),
    CandidateGenerator(PopularModel(), 50, keep_ranks=True, keep_scores=True),
]
model = CandidateRankingModel(
    candidate_generators=generators,
    splitter=TimeRangeSplitter("7D", n_splits=1, filter_already_seen=False),
    reranker=LambdarankReranker(LGBMRanker(n_estimators=200, learning_rate=0.1, num_leaves=31,
                                           random_state=0, verbose=-1)),
    sampler=PerUserNegativeSampler(n_negatives=5, random_state=0),
)
model.fit(dataset)
users = pd.read_parquet(users_path)["user_id"]
users = users[users.isin(interactions[Columns.User].unique())]
recs = model.recommend(users=users, dataset=dataset, k=10, filter_viewed=False,
                       on_unsupported_targets="ignore")
recs[[Columns.User, Columns.Item, Columns.Rank]].to_parquet(out_path)
"""


def rectools_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"installing RecTools into {venv} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *RECTOOLS_PACKAGES], check=True)
    return python


def gbrank_run(
    root: Path, shop: Path, name: str, extra: str, one_process: bool = False
) -> tuple[dict, Path]:
    """generate, features, train, eval with one config, from an empty workspace: each stage its
    own process (wall and CPU summed, RSS the peak), or all four in one ``gbrank run``."""
    workspace = root / f"ws-{name}"
    shutil.rmtree(workspace, ignore_errors=True)
    config = root / f"{name}.toml"
    config.write_text(
        f'[data]\nevents = "{shop / "events.parquet"}"\nitems = "{shop / "items.parquet"}"\n'
        f'users = "{shop / "users.parquet"}"\n[run]\nworkspace = "{workspace}"\n'
        f'run_id = "{name}"\n{extra}'
    )
    gbrank = [sys.executable, "-m", "gbrank.cli"]
    commands = ["run"] if one_process else ["generate", "features", "train", "eval"]
    stages = [run_stage([*gbrank, command, "-c", str(config)]) for command in commands]
    total = {
        "wall_s": round(sum(s["wall_s"] for s in stages), 1),
        "rss_mb": max(s["rss_mb"] for s in stages),
    }
    return total, workspace / "runs" / name


def median_cost(costs: list[dict]) -> dict[str, float]:
    """The median wall time and peak RSS of repeated runs, and every run's wall time."""
    return {
        "wall_s": statistics.median(c["wall_s"] for c in costs),
        "rss_mb": statistics.median(c["rss_mb"] for c in costs),
        "walls_s": [c["wall_s"] for c in costs],
    }


def gbrank_ndcg(run: Path) -> dict[str, float]:
    rows = json.loads((run / "metrics.json").read_text())
    return {
        r["target"]: r["value"]
        for r in rows
        if r["model"] == "ranker" and r["metric"] == "ndcg" and r["k"] == 10
    }


def rectools_ndcg(recs_path: Path, run: Path) -> dict[str, float]:
    import polars as pl

    from gbrank.data.vocab import Vocab
    from gbrank.features.labels import relevant_items
    from gbrank.metrics import ranking_metrics

    users = Vocab.load(run / "vocab" / "users.parquet")
    items = Vocab.load(run / "vocab" / "items.parquet")
    raw = pl.read_parquet(recs_path)
    recs = pl.DataFrame(
        {
            "user": users.encode(raw["user_id"]),
            "item": items.encode(raw["item_id"]),
            "rank": raw["rank"].cast(pl.Int32),
        }
    ).drop_nulls()
    labels = pl.read_parquet(run / "labels" / "eval.parquet")
    out = {}
    for target in TARGETS:
        report = ranking_metrics(recs, relevant_items(labels, target), ks=(10,), metrics=("ndcg",))
        out[target] = report.value("ndcg", 10)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", choices=sorted(SHOPS), default="1M")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gbrank_peer_rectools"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each pipeline; the table gives medians"
    )
    args = parser.parse_args()
    root = args.workdir / args.events
    root.mkdir(parents=True, exist_ok=True)
    shop = root / "shop"
    if not (shop / "events.parquet").exists():
        synth_shop(args.events, shop, args.seed)
    python = rectools_python(args.workdir / "rectools-venv")
    rows: dict[str, dict] = {}
    pipelines = {  # row -> (run name, config, one process)
        "gbrank, same budget": ("same_budget", SAME_BUDGET, False),
        "gbrank run, same budget": ("same_budget_run", SAME_BUDGET, True),
        "gbrank, defaults": ("defaults", "", False),
        "gbrank run, defaults": ("defaults_run", "", True),
    }
    runs = {}
    for row, (name, extra, one_process) in pipelines.items():
        costs = []
        for _ in range(args.repeat):
            cost, runs[name] = gbrank_run(root, shop, name, extra, one_process)
            costs.append(cost)
            print(f"{row}: {cost}", file=sys.stderr, flush=True)
        rows[row] = {**median_cost(costs), "ndcg10": gbrank_ndcg(runs[name])}
    same_run = runs["same_budget"]

    # RecTools: the same eval fold, the same users, gbrank's labels as the ground truth.
    import polars as pl

    from gbrank.data.vocab import Vocab

    folds = json.loads((same_run / "folds.json").read_text())
    labels = pl.read_parquet(same_run / "labels" / "eval.parquet")
    vocab = Vocab.load(same_run / "vocab" / "users.parquet")
    users_path = root / "eval_users.parquet"
    pl.DataFrame({"user_id": vocab.decode(labels["user"].unique().sort())}).write_parquet(
        users_path
    )
    script = root / "rectools_run.py"
    script.write_text(RECTOOLS_SCRIPT)
    recs_path = root / "rectools_recs.parquet"
    command = [str(python), str(script), str(shop / "events.parquet"), folds["eval"]["as_of"]]
    costs = []
    for _ in range(args.repeat):
        costs.append(run_stage([*command, str(users_path), str(recs_path)]))
        print(f"rectools: {costs[-1]}", file=sys.stderr, flush=True)
    rows["RecTools CandidateRankingModel"] = {
        **median_cost(costs),
        "ndcg10": rectools_ndcg(recs_path, same_run),
    }

    users, items, days = SHOPS[args.events]
    n_events = pl.scan_parquet(shop / "events.parquet").select(pl.len()).collect().item()
    print(
        f"\n{n_events:,} events ({users:,} users x {items:,} items x {days} days), eval "
        f"window from {folds['eval']['as_of']}; NDCG@10 on the eval fold; wall and peak RSS: "
        f"medians of {args.repeat} run(s)"
    )
    head = f"{'pipeline':<32} {'wall':>8} {'peak RSS':>10}" + "".join(f" {t:>9}" for t in TARGETS)
    print(head)
    print("-" * len(head))
    for name, row in rows.items():
        print(
            f"{name:<32} {row['wall_s']:>7.1f}s {row['rss_mb']:>7,.0f} MB"
            + "".join(f" {row['ndcg10'][t]:>9.4f}" for t in TARGETS)
        )
    print(json.dumps({"events": args.events, "rows": rows}))


if __name__ == "__main__":
    main()
