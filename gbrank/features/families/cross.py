"""Cross family (``x_*``), keyed by (user, item): the candidate item against the user's habits."""

from __future__ import annotations

import polars as pl

from gbrank import columns as C
from gbrank.features.base import (
    CATEGORY,
    FLOAT,
    LAST_SESSION,
    PRICE,
    PRICE_Z,
    Column,
    Family,
    FeatureContext,
    FeatureSpec,
    is_type,
    item_table,
    user_events,
)

KEYS = [C.USER, C.ITEM]


def columns(spec: FeatureSpec) -> list[Column]:
    cols = [
        Column("x_price_ratio", "item price / mean price of the items of the user's events"),
        Column("x_purchase_price_ratio", "item price / mean price of the user's purchases"),
        Column("x_price_z_gap", "item price z-score minus the user's mean price z-score"),
    ]
    if spec.has(CATEGORY):
        cols.append(
            Column(
                "x_last_session_category",
                "1 if the item's category occurs in the user's last session, else 0",
                pl.Int8,
                0,
                (CATEGORY,),
            )
        )
    return cols


def build(ctx: FeatureContext) -> pl.LazyFrame:
    events = user_events(ctx).lazy()
    table = item_table(ctx)
    habits = events.group_by(C.USER).agg(
        pl.col(PRICE).mean().alias("_mean_price"),
        pl.col(PRICE).filter(is_type("purchase")).mean().alias("_mean_purchase_price"),
        pl.col(PRICE_Z).mean().alias("_mean_price_z"),
    )
    attrs = [C.ITEM, PRICE, PRICE_Z] + ([CATEGORY] if CATEGORY in table.columns else [])
    frame = (
        ctx.candidates.select(KEYS)
        .join(table.lazy().select(attrs), on=C.ITEM, how="left", maintain_order="left")
        .join(habits, on=C.USER, how="left", maintain_order="left")
        .with_columns(
            (pl.col(PRICE) / pl.col("_mean_price")).cast(FLOAT).alias("x_price_ratio"),
            (pl.col(PRICE) / pl.col("_mean_purchase_price"))
            .cast(FLOAT)
            .alias("x_purchase_price_ratio"),
            (pl.col(PRICE_Z) - pl.col("_mean_price_z")).cast(FLOAT).alias("x_price_z_gap"),
        )
    )
    if ctx.spec.has(CATEGORY) and CATEGORY in table.columns:
        seen = (
            events.filter(pl.col(LAST_SESSION) & pl.col(CATEGORY).is_not_null())
            .select(C.USER, CATEGORY)
            .unique()
            .with_columns(pl.lit(1, pl.Int8).alias("x_last_session_category"))
        )
        frame = frame.join(seen, on=[C.USER, CATEGORY], how="left", maintain_order="left")
    elif ctx.spec.has(CATEGORY):
        frame = frame.with_columns(pl.lit(None, pl.Int8).alias("x_last_session_category"))
    return frame.select(*KEYS, *[c.name for c in columns(ctx.spec)])


FAMILY = Family(
    name="cross",
    description="the candidate item's price and category against the user's habits",
    keys=(C.USER, C.ITEM),
    columns=columns,
    build=build,
)
