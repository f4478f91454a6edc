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


def sample_percentiles(
    candidates: pl.DataFrame, keys: pl.DataFrame, sources: list[str]
) -> pl.DataFrame:
    """The per-user percentiles of the rows in ``keys``, computed on the whole candidate list:
    a percentile is relative to the user's list, so features built for a sample get these
    (through :func:`put_percentiles`), or training would see other values than serving."""
    present = [s for s in sources if C.score_col(s) in candidates.columns]
    return (
        candidates.select(*KEYS, *[C.score_col(s) for s in present])
        .with_columns(score_percentiles(present))
        .select(*KEYS, *[f"{s}_score_pct" for s in present])
        .join(keys, on=KEYS, how="semi")
    )


def put_percentiles(frame: pl.DataFrame, percentiles: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (built features) with the percentiles of :func:`sample_percentiles` in place
    of the ones computed on the sample."""
    names = [c for c in percentiles.columns if c not in KEYS and c in frame.columns]
    aligned = frame.select(KEYS).join(percentiles, on=KEYS, how="left", maintain_order="left")
    return frame.with_columns(aligned.select(names).get_columns())


def build(ctx: FeatureContext) -> pl.LazyFrame:
    names = ctx.candidates.collect_schema().names()
    pct = score_percentiles(ctx.spec.sources)
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
