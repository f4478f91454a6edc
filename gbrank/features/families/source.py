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
    """The columns this family reads from the candidate rows rather than computes."""
    return {c.name for c in columns(spec) if c.dtype is None}


def build(ctx: FeatureContext) -> pl.LazyFrame:
    pct = []
    for s in ctx.spec.sources:
        score = pl.col(C.score_col(s))
        pct.append(
            (score.rank("average").over(C.USER) / score.count().over(C.USER))
            .cast(FLOAT)
            .alias(f"{s}_score_pct")
        )
    if C.N_SOURCES not in ctx.candidates.collect_schema().names():
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
