"""Item family (``i_*``), keyed by item: popularity, trend, conversion, price, age, repurchase."""

from __future__ import annotations

from itertools import pairwise

import polars as pl

from gbrank import columns as C
from gbrank.features.base import (
    CATEGORY,
    FLOAT,
    INT,
    PRICE,
    PRICE_Z,
    PURCHASE,
    Column,
    Family,
    FeatureContext,
    FeatureSpec,
    days_before,
    global_counts,
    is_type,
    item_table,
    past,
    safe_ratio,
    since,
    smoothed,
)


def trend_pairs(spec: FeatureSpec) -> list[tuple[int, int]]:
    return list(pairwise(spec.item_windows))


def columns(spec: FeatureSpec) -> list[Column]:
    cols = [
        Column(f"i_n_{t}_{w}d", f"{t} events on the item in the {w} day(s) before as_of", INT, 0)
        for w in spec.item_windows
        for t in C.EVENT_TYPES
    ]
    cols += [
        Column(f"i_n_{t}", f"{t} events on the item, all history", INT, 0) for t in C.EVENT_TYPES
    ]
    cols += [
        Column("i_n_users", "distinct users who touched the item", INT, 0),
        Column("i_days_since_first", "days since the item's first event"),
        Column("i_days_since_last", "days since the item's last event"),
    ]
    cols += [
        Column(
            f"i_trend_{s}d_{long}d",
            f"events per day over the last {s} day(s) / per day over {long} days (+1 smoothed)",
        )
        for s, long in trend_pairs(spec)
    ]
    cols += [
        Column("i_ctr", "clicks / views of the item, smoothed toward the global rate"),
        Column("i_cvr", "purchases / clicks of the item, smoothed toward the global rate"),
        Column("i_price", "the item's price (items table, else mean value / quantity)"),
        Column("i_price_z", "log price standardised within the item's category"),
        Column("i_repurchase_rate", "share of the item's buyers who bought it on 2+ occasions"),
        Column("i_repurchase_days", "median days between two purchases of the item by a user"),
    ]
    return cols


def repurchase_stats(ctx: FeatureContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per item: share of buyers who bought it on two or more occasions (distinct purchase
    timestamps) and the median days between a user's consecutive purchases of it; per
    category: the median of those intervals over the category's items."""
    return ctx.memo("repurchase", lambda: _repurchase_stats(ctx), shared=True)


def _repurchase_stats(ctx: FeatureContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    occasions = (
        past(ctx)
        .filter(pl.col(C.EVENT) == PURCHASE)
        .select(C.USER, C.ITEM, C.TS)
        .unique()
        .sort(C.USER, C.ITEM, C.TS)
        .with_columns(
            (pl.col(C.TS).dt.epoch("ms") - pl.col(C.TS).dt.epoch("ms").shift(1))
            .over(C.USER, C.ITEM)
            .alias("_gap_ms")
        )
        .collect()
    )
    gaps = occasions.lazy().filter(pl.col("_gap_ms").is_not_null())
    per_item = (
        occasions.lazy()
        .group_by(C.USER, C.ITEM)
        .agg(pl.len().alias("_n"))
        .group_by(C.ITEM)
        .agg((pl.col("_n") >= 2).mean().cast(FLOAT).alias("i_repurchase_rate"))
        .join(
            gaps.group_by(C.ITEM).agg(
                (pl.col("_gap_ms").median() / 86_400_000.0).cast(FLOAT).alias("i_repurchase_days")
            ),
            on=C.ITEM,
            how="left",
        )
        .collect()
    )
    table = item_table(ctx)
    if CATEGORY in table.columns:
        per_category = (
            gaps.join(table.lazy().select(C.ITEM, CATEGORY), on=C.ITEM, how="inner")
            .group_by(CATEGORY)
            .agg((pl.col("_gap_ms").median() / 86_400_000.0).cast(FLOAT).alias("_cat_days"))
            .collect()
        )
    else:
        per_category = pl.DataFrame(schema={CATEGORY: pl.Int32, "_cat_days": FLOAT})
    return per_item, per_category


def build(ctx: FeatureContext) -> pl.LazyFrame:
    spec, as_of = ctx.spec, ctx.as_of
    totals = global_counts(ctx)
    windowed = [
        (is_type(t) & since(as_of, w)).sum().cast(INT).alias(f"i_n_{t}_{w}d")
        for w in spec.item_windows
        for t in C.EVENT_TYPES
    ]
    trend_counts = {w: since(as_of, w).sum() for w in spec.item_windows}
    per_item = (
        past(ctx)
        .group_by(C.ITEM)
        .agg(
            *windowed,
            *[is_type(t).sum().cast(INT).alias(f"i_n_{t}") for t in C.EVENT_TYPES],
            *[n.alias(f"_n_{w}d") for w, n in trend_counts.items()],
            pl.col(C.USER).n_unique().cast(INT).alias("i_n_users"),
            days_before(as_of, pl.col(C.TS).min()).alias("i_days_since_first"),
            days_before(as_of, pl.col(C.TS).max()).alias("i_days_since_last"),
        )
    )
    strength = spec.prior_strength
    per_item = per_item.with_columns(
        *[
            (((pl.col(f"_n_{s}d") + 1.0) / s) / ((pl.col(f"_n_{long}d") + 1.0) / long))
            .cast(FLOAT)
            .alias(f"i_trend_{s}d_{long}d")
            for s, long in trend_pairs(spec)
        ],
        smoothed(
            pl.col("i_n_click"),
            pl.col("i_n_view"),
            safe_ratio(totals["click"], totals["view"]),
            strength,
        ).alias("i_ctr"),
        smoothed(
            pl.col("i_n_purchase"),
            pl.col("i_n_click"),
            safe_ratio(totals["purchase"], totals["click"]),
            strength,
        ).alias("i_cvr"),
    )
    repurchase, _ = repurchase_stats(ctx)
    prices = (
        item_table(ctx)
        .lazy()
        .select(C.ITEM, pl.col(PRICE).alias("i_price"), pl.col(PRICE_Z).alias("i_price_z"))
    )
    # Every item of the items table gets a row (its price), seen or not.
    frame = (
        prices.join(per_item, on=C.ITEM, how="full", coalesce=True)
        .join(repurchase.lazy(), on=C.ITEM, how="left")
        .with_columns(pl.col(c.name).fill_null(c.fill) for c in columns(spec) if c.fill is not None)
    )
    return frame.select(C.ITEM, *[c.name for c in columns(spec)])


FAMILY = Family(
    name="item",
    description="the item's popularity, trend, conversion, price, age and repurchase",
    keys=(C.ITEM,),
    columns=columns,
    build=build,
)
