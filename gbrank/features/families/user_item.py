"""User x item family (``ui_*``), keyed by (user, item): the user's own history with the item."""

from __future__ import annotations

import polars as pl

from gbrank import columns as C
from gbrank.features.base import (
    CATEGORY,
    FLOAT,
    INT,
    LAST_SESSION,
    SEQ,
    Column,
    Family,
    FeatureContext,
    FeatureSpec,
    days_before,
    is_type,
    item_table,
    user_events,
)
from gbrank.features.families.item import repurchase_stats

KEYS = [C.USER, C.ITEM]


def columns(spec: FeatureSpec) -> list[Column]:
    cols = [
        Column(f"ui_n_{t}", f"{t} events of the user on the item, all history", INT, 0)
        for t in C.EVENT_TYPES
    ]
    return cols + [
        Column("ui_days_since_last", "days since the user last touched the item"),
        Column("ui_days_since_last_purchase", "days since the user last bought the item"),
        Column(
            "ui_last_session_pos",
            "position of the item in the user's last session (1 = touched last; null if absent)",
            INT,
        ),
        Column(
            "ui_repurchase_due",
            "days since the user last bought the item / its (else its category's) median "
            "repurchase interval",
        ),
    ]


def build(ctx: FeatureContext) -> pl.LazyFrame:
    as_of = ctx.as_of
    events = user_events(ctx).lazy().join(ctx.candidates.select(KEYS), on=KEYS, how="semi")
    pairs = events.group_by(KEYS).agg(
        *[is_type(t).sum().cast(INT).alias(f"ui_n_{t}") for t in C.EVENT_TYPES],
        days_before(as_of, pl.col(C.TS).max()).alias("ui_days_since_last"),
        days_before(as_of, pl.col(C.TS).filter(is_type("purchase")).max()).alias(
            "ui_days_since_last_purchase"
        ),
    )
    last_session = (
        user_events(ctx)
        .lazy()
        .filter(pl.col(LAST_SESSION))
        .group_by(KEYS)
        .agg(pl.col(SEQ).max().alias("_last"))
        .with_columns(
            pl.col("_last")
            .rank("ordinal", descending=True)
            .over(C.USER)
            .cast(INT)
            .alias("ui_last_session_pos")
        )
        .select(*KEYS, "ui_last_session_pos")
    )
    per_item, per_category = repurchase_stats(ctx)
    interval = per_item.lazy().select(C.ITEM, "i_repurchase_days")
    table = item_table(ctx)
    if CATEGORY in table.columns:
        interval = (
            table.lazy()
            .select(C.ITEM, CATEGORY)
            .join(interval, on=C.ITEM, how="left")
            .join(per_category.lazy(), on=CATEGORY, how="left")
            .select(C.ITEM, pl.coalesce("i_repurchase_days", "_cat_days").alias("_interval"))
        )
    else:
        interval = interval.rename({"i_repurchase_days": "_interval"})
    due = pl.when(pl.col("_interval") > 0).then(
        pl.col("ui_days_since_last_purchase") / pl.col("_interval")
    )
    return (
        pairs.join(last_session, on=KEYS, how="left")
        .join(interval, on=C.ITEM, how="left")
        .with_columns(due.cast(FLOAT).alias("ui_repurchase_due"))
        .select(*KEYS, *[c.name for c in columns(ctx.spec)])
    )


FAMILY = Family(
    name="user_item",
    description="the user's own history with the candidate item",
    keys=(C.USER, C.ITEM),
    columns=columns,
    build=build,
)
