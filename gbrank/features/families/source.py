"""Source family, keyed by (user, item): each source's score and rank (already on the candidate
rows), ``n_sources``, and each score as a per-user percentile, comparable across users whose raw
scores live on different scales."""

from __future__ import annotations

import polars as pl

from gbrank import columns as C
from gbrank.features.base import FLOAT, Column, Family, FeatureContext, FeatureSpec

KEYS = [C.USER, C.ITEM]


def candidate_sources(names: list[str]) -> list[str]:
    """Sources whose ``<name>_score`` and ``<name>_rank`` columns are on the candidate rows."""
    return [
        n[: -len("_score")]
        for n in names
        if n.endswith("_score") and f"{n[: -len('_score')]}_rank" in names
    ]


def columns(spec: FeatureSpec) -> list[Column]:
    # n_sources is on candidate rows from the union; it is computed when missing.
    cols = [Column(C.N_SOURCES, "number of sources that proposed the item", None)]
    for s in spec.sources:
        cols += [
            Column(C.score_col(s), f"score of source '{s}' (null: not proposed by it)", None),
            Column(C.rank_col(s), f"rank of the item in the list of source '{s}'", None),
            Column(
                f"{s}_score_pct",
                f"percentile of the '{s}' score among the user's candidates (1 = best)",
            ),
        ]
    return cols


def passthrough(spec: FeatureSpec) -> set[str]:
    """The columns this family may read from the candidate rows rather than compute (the
    percentiles when :func:`with_score_percentiles` put them there)."""
    return {c.name for c in columns(spec) if c.dtype is None or c.name.endswith("_score_pct")}


def score_percentiles(sources: list[str] | tuple[str, ...]) -> list[pl.Expr]:
    """Each source's score as a percentile among the user's candidates (1 = best)."""
    return [
        (
            pl.col(C.score_col(s)).rank("average").over(C.USER)
            / pl.col(C.score_col(s)).count().over(C.USER)
        )
        .cast(FLOAT)
        .alias(f"{s}_score_pct")
        for s in sources
    ]


def with_score_percentiles(candidates: pl.DataFrame, sources: list[str]) -> pl.DataFrame:
    """The candidate rows with their per-user percentiles, for rows that will be sampled:
    a percentile is relative to the user's whole candidate list, so it must be computed
    before rows are dropped, or training would see other values than serving."""
    present = [s for s in sources if C.score_col(s) in candidates.columns]
    return candidates.with_columns(score_percentiles(present))


def build(ctx: FeatureContext) -> pl.LazyFrame:
    names = ctx.candidates.collect_schema().names()
    missing = [s for s in ctx.spec.sources if f"{s}_score_pct" not in names]
    pct = score_percentiles(missing)
    if C.N_SOURCES not in names:
        proposed = [pl.col(C.score_col(s)).is_not_null().cast(pl.Int8) for s in ctx.spec.sources]
        pct.append(
            pl.sum_horizontal(pl.lit(0, pl.Int8), *proposed).cast(pl.Int8).alias(C.N_SOURCES)
        )
    return ctx.candidates.select(*KEYS, *pct)


FAMILY = Family(
    name="source",
    description="candidate source scores and ranks, and per-user score percentiles",
    keys=(C.USER, C.ITEM),
    columns=columns,
    build=build,
)
