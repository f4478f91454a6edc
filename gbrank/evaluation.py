"""What ``gbrank eval`` measures beside the metrics table: intervals, curves, breakdowns.

* **Bootstrap intervals** over users for every ranking metric (``metrics.bootstrap_intervals``,
  the same resamples for every model of a target, so intervals are comparable).
* **Candidate recall@N curves** per source and target: the share of the eval fold's positives
  that a source ranks within its first N, for N = 1 .. its budget.
* **NDCG@K and recall@K against K** (1 .. max of ``eval.ks``) per model.
* **Breakdowns** of the served model and of the best single source: cold and warm users
  (no event before ``as_of``, or some), warm users by activity decile (events before
  ``as_of``), and positives that are new to the user or repeats of an item they had touched.
* **Score distributions** of each head on a fixed sample of rows, by label.
* **The oracle** on a synthetic shop (the events file's folder has ``truth/``): the true
  expected purchases of ``gbrank.data.synth.oracle_scores``, the ceiling of any model.

Everything lands in ``report/data.json``, which ``gbrank.report`` draws.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gbrank import columns as C
from gbrank.metrics import bootstrap_intervals, bootstrap_weights, ranking_metrics

#: Score values kept per head for the distributions (a fixed stride over the rows).
SCORE_SAMPLE = 100_000


class CurveCounter:
    """Positives found by each source within its first N candidates, batch by batch."""

    def __init__(self, sources: Iterable[str], targets: Iterable[str], budgets: Mapping[str, int]):
        self.sources, self.targets = list(sources), list(targets)
        self.depth = {s: max(int(budgets.get(s, 1)), 1) for s in self.sources}
        self.found = {
            (s, t): np.zeros(self.depth[s] + 1, np.int64)
            for s in self.sources
            for t in self.targets
        }

    def add(self, frame: pl.DataFrame) -> None:
        for target in self.targets:
            positive = frame[C.label_col(target)].to_numpy() > 0
            if not positive.any():
                continue
            for source in self.sources:
                ranks = frame[C.rank_col(source)].to_numpy()[positive]
                ranks = ranks[~np.isnan(ranks)] if ranks.dtype.kind == "f" else ranks
                ranks = np.asarray(ranks, dtype=np.int64)
                ranks = ranks[(ranks >= 1) & (ranks <= self.depth[source])]
                self.found[(source, target)] += np.bincount(ranks, minlength=self.depth[source] + 1)

    def curves(self, totals: Mapping[str, int]) -> list[dict[str, Any]]:
        out = []
        for (source, target), found in self.found.items():
            total = totals.get(target, 0)
            recall = np.cumsum(found)[1:] / total if total else np.full(found.size - 1, np.nan)
            out.append({"source": source, "target": target, "recall": recall.tolist()})
        return out


class ScoreSampler:
    """Every ``stride``-th row's score per head, with the row's graded label."""

    def __init__(self, heads: Sequence[str], n_rows: int) -> None:
        self.stride = max(1, n_rows // SCORE_SAMPLE)
        self.offset = 0
        self.scores: dict[str, list[np.ndarray]] = {h: [] for h in heads}
        self.grades: list[np.ndarray] = []

    def add(self, frame: pl.DataFrame, scores: Mapping[str, np.ndarray]) -> None:
        n = frame.height
        pick = np.arange((-self.offset) % self.stride, n, self.stride)
        self.offset += n
        for head, values in scores.items():
            if head in self.scores:
                self.scores[head].append(np.asarray(values, dtype=np.float64)[pick])
        self.grades.append(
            frame[C.GRADE].to_numpy()[pick]
            if C.GRADE in frame.columns
            else np.zeros(pick.size, np.int64)
        )

    def histograms(self, bins: int = 40) -> list[dict[str, Any]]:
        grades = np.concatenate(self.grades) if self.grades else np.zeros(0, np.int64)
        out = []
        for head, parts in self.scores.items():
            values = np.concatenate(parts) if parts else np.zeros(0)
            if values.size == 0:
                continue
            edges = np.histogram_bin_edges(values, bins=bins)
            by_grade = {}
            for grade in np.unique(grades):
                counts, _ = np.histogram(values[grades == grade], bins=edges)
                by_grade[str(int(grade))] = counts.tolist()
            out.append({"head": head, "edges": edges.tolist(), "counts": by_grade})
        return out


def interval_rows(
    rows: list[dict[str, Any]],
    reports: Mapping[tuple[str, str], Any],
    *,
    n_boot: int,
    seed: int,
) -> None:
    """Add ``ci_low`` / ``ci_high`` to each ranking row of ``rows`` (in place)."""
    lookup: dict[tuple[str, str, str, int], tuple[float, float]] = {}
    weights: dict[str, np.ndarray] = {}  # one set of resamples per target: every model's
    for (model, target), report in reports.items():
        if report.per_user is None or report.n_users == 0:
            continue
        if target not in weights:
            weights[target] = bootstrap_weights(report.n_users, n_boot, seed)
        table = bootstrap_intervals(
            report.per_user, n_boot=n_boot, seed=seed, weights=weights[target]
        )
        for r in table.iter_rows(named=True):
            lookup[(model, target, r["metric"], r["k"])] = (r["ci_low"], r["ci_high"])
    for row in rows:
        key = (row["model"], row["target"], row["metric"], row["k"])
        if key in lookup:
            row["ci_low"], row["ci_high"] = lookup[key]


def by_k_curves(
    lists: Mapping[str, pl.DataFrame],
    relevant: Mapping[str, pl.DataFrame],
    k_max: int,
) -> list[dict[str, Any]]:
    """NDCG@K and recall@K for K = 1 .. k_max, per model and target."""
    ks = list(range(1, k_max + 1))
    out = []
    for target, rel in relevant.items():
        for model, recs in lists.items():
            table = ranking_metrics(recs, rel, ks=ks, metrics=["ndcg", "recall"]).table
            for metric in ("ndcg", "recall"):
                values = table.filter(pl.col("metric") == metric).sort("k")["value"].to_list()
                out.append({"model": model, "target": target, "metric": metric, "values": values})
    return out


def user_segments(history: pl.DataFrame, users: pl.Series) -> pl.DataFrame:
    """``user, segment``: "cold" (no event before as_of) or "warm decile d" by event count."""
    counts = (
        pl.DataFrame({C.USER: users.unique()})
        .join(history.group_by(C.USER).len("n_events"), on=C.USER, how="left")
        .with_columns(pl.col("n_events").fill_null(0))
    )
    warm = counts.filter(pl.col("n_events") > 0).sort("n_events", C.USER)
    deciles = warm.with_columns(
        (pl.int_range(pl.len()) * 10 // pl.len() + 1).alias("decile")
    ).select(
        C.USER,
        pl.format("warm, activity decile {}", pl.col("decile").cast(pl.String).str.zfill(2)).alias(
            "segment"
        ),
    )
    cold = counts.filter(pl.col("n_events") == 0).select(C.USER, pl.lit("cold").alias("segment"))
    return pl.concat([cold, deciles])


def breakdowns(
    reports: Mapping[tuple[str, str], Any],
    lists: Mapping[str, pl.DataFrame],
    relevant: Mapping[str, pl.DataFrame],
    history: pl.DataFrame,
    models: Sequence[str],
    k: int,
) -> list[dict[str, Any]]:
    """Per segment of users (cold, warm deciles) NDCG@k and recall@k, and per kind of
    positive (new to the user, or a repeat) the share found in the top k."""
    out: list[dict[str, Any]] = []
    seen = history.select(C.USER, C.ITEM).unique()
    for target, rel in relevant.items():
        rel = rel.unique()
        segments = user_segments(history, rel[C.USER])
        for model in models:
            report = reports.get((model, target))
            if report is None or report.per_user is None or report.n_users == 0:
                continue
            per_user = report.per_user.filter(pl.col("k") == k).join(segments, on=C.USER)
            grouped = per_user.group_by("segment").agg(
                pl.len().alias("users"), pl.col("ndcg").mean(), pl.col("recall").mean()
            )
            for r in grouped.sort("segment").iter_rows(named=True):
                out.append(
                    {
                        "model": model,
                        "target": target,
                        "segment": r["segment"],
                        "k": k,
                        "users": r["users"],
                        "ndcg": r["ndcg"],
                        "recall": r["recall"],
                    }
                )
            kinds = rel.join(
                seen.with_columns(pl.lit(True).alias("_seen")), on=[C.USER, C.ITEM], how="left"
            )
            top = lists[model].filter(pl.col(C.RANK) <= k).select(C.USER, C.ITEM)
            found = kinds.join(
                top.with_columns(pl.lit(True).alias("_hit")), on=[C.USER, C.ITEM], how="left"
            )
            for kind, flag in (("repeat items", True), ("new items", None)):
                part = found.filter(
                    pl.col("_seen").is_not_null() if flag else pl.col("_seen").is_null()
                )
                if part.height:
                    out.append(
                        {
                            "model": model,
                            "target": target,
                            "segment": kind,
                            "k": k,
                            "users": part[C.USER].n_unique(),
                            "ndcg": None,
                            "recall": part["_hit"].is_not_null().mean(),
                        }
                    )
    return out


#: ``eval.oracle = "auto"`` scores the oracle when users x items is at most this (its cost is
#: one dense score per user and item: about 4 s for 9,100 x 5,000 on 2 cores, so the
#: 1M-event shop skips it and quickstart's shop, 4,600 x 3,000, has it).
ORACLE_MAX_CELLS = 20_000_000


def oracle_lists(
    events_path: str | Path,
    as_of: Any,
    horizon_days: float,
    users: pl.DataFrame,
    user_vocab: Any,
    item_vocab: Any,
    k: int,
) -> pl.DataFrame | None:
    """The synthetic shop's oracle top-k for ``users`` (codes), or None for other data."""
    shop = Path(str(events_path)).parent
    if not (shop / "truth" / "params.json").exists():
        return None
    from gbrank.data.synth import oracle_scores

    raw = user_vocab.decode(users[C.USER])
    top = oracle_scores(shop, as_of, users=raw.to_list(), k=k, horizon_days=horizon_days)
    coded = top.with_columns(
        user_vocab.encode(top[C.RAW_USER]).alias(C.USER),
        item_vocab.encode(top[C.RAW_ITEM]).alias(C.ITEM),
    ).drop_nulls([C.USER, C.ITEM])
    return coded.select(C.USER, C.ITEM, pl.col(C.RANK).cast(pl.Int32))
