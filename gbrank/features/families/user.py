"""User family (``u_*``), keyed by user: activity, recency, funnel, sessions, prices, breadth."""

from __future__ import annotations

import polars as pl

from gbrank import columns as C
from gbrank.features.base import (
    CATEGORY,
    FLOAT,
    INT,
    PRICE,
    PRICE_Z,
    SESSION_KEY,
    Column,
    Family,
    FeatureContext,
    FeatureSpec,
    days_before,
    global_counts,
    is_type,
    safe_ratio,
    since,
    smoothed,
    user_events,
)

# Funnel steps: (rate column, deeper type, shallower type).
FUNNEL = (
    ("u_click_per_view", "click", "view"),
    ("u_cart_per_click", "cart", "click"),
    ("u_purchase_per_cart", "purchase", "cart"),
)


def columns(spec: FeatureSpec) -> list[Column]:
    cols = [
        Column(f"u_n_{t}_{w}d", f"{t} events of the user in the {w} day(s) before as_of", INT, 0)
        for w in spec.windows_days
        for t in C.EVENT_TYPES
    ]
    cols += [
        Column(f"u_n_{t}", f"{t} events of the user, all history", INT, 0) for t in C.EVENT_TYPES
    ]
    cols += [
        Column("u_n_events", "events of the user, all history", INT, 0),
        Column("u_n_items", "distinct items the user touched", INT, 0),
        Column("u_active_days", "distinct calendar days with an event", INT, 0),
        Column("u_days_since_last", "days since the user's last event"),
        Column("u_days_since_last_purchase", "days since the user's last purchase"),
    ]
    cols += [
        Column(name, f"{deep}s per {shallow} of the user, smoothed toward the global rate")
        for name, deep, shallow in FUNNEL
    ]
    cols += [
        Column(
            "u_n_sessions", "sessions of the user (session column, else 30-minute gaps)", INT, 0
        ),
        Column("u_mean_session_events", "mean events per session"),
        Column("u_mean_price", "mean price of the items of the user's events"),
        Column("u_max_price", "highest price among the items the user touched"),
        Column("u_mean_purchase_price", "mean price of the items of the user's purchases"),
        Column(
            "u_mean_price_z", "mean in-category price z-score of the items of the user's events"
        ),
    ]
    if spec.has(CATEGORY):
        cols += [
            Column("u_n_categories", "distinct categories the user touched", INT, 0, (CATEGORY,)),
            Column(
                "u_top_category_share",
                "share of the user's events in their top category",
                requires=(CATEGORY,),
            ),
        ]
    return cols


def build(ctx: FeatureContext) -> pl.LazyFrame:
    spec, as_of = ctx.spec, ctx.as_of
    events = user_events(ctx).lazy()
    totals = global_counts(ctx)
    windowed = [
        (is_type(t) & since(as_of, w)).sum().cast(INT).alias(f"u_n_{t}_{w}d")
        for w in spec.windows_days
        for t in C.EVENT_TYPES
    ]
    purchase = is_type("purchase")
    per_user = events.group_by(C.USER).agg(
        *windowed,
        *[is_type(t).sum().cast(INT).alias(f"u_n_{t}") for t in C.EVENT_TYPES],
        pl.len().cast(INT).alias("u_n_events"),
        pl.col(C.ITEM).n_unique().cast(INT).alias("u_n_items"),
        pl.col(C.TS).dt.date().n_unique().cast(INT).alias("u_active_days"),
        days_before(as_of, pl.col(C.TS).max()).alias("u_days_since_last"),
        days_before(as_of, pl.col(C.TS).filter(purchase).max()).alias("u_days_since_last_purchase"),
        pl.col(SESSION_KEY).n_unique().cast(INT).alias("u_n_sessions"),
        pl.col(PRICE).mean().cast(FLOAT).alias("u_mean_price"),
        pl.col(PRICE).max().cast(FLOAT).alias("u_max_price"),
        pl.col(PRICE).filter(purchase).mean().cast(FLOAT).alias("u_mean_purchase_price"),
        pl.col(PRICE_Z).mean().cast(FLOAT).alias("u_mean_price_z"),
    )
    strength = spec.prior_strength
    per_user = per_user.with_columns(
        *[
            smoothed(
                pl.col(f"u_n_{deep}"),
                pl.col(f"u_n_{shallow}"),
                safe_ratio(totals[deep], totals[shallow]),
                strength,
            ).alias(name)
            for name, deep, shallow in FUNNEL
        ],
        (pl.col("u_n_events") / pl.col("u_n_sessions")).cast(FLOAT).alias("u_mean_session_events"),
    )
    if spec.has(CATEGORY):
        per_cat = (
            events.filter(pl.col(CATEGORY).is_not_null())
            .group_by(C.USER, CATEGORY)
            .agg(pl.len().alias("_n"))
            .group_by(C.USER)
            .agg(
                pl.len().cast(INT).alias("u_n_categories"),
                (pl.col("_n").max() / pl.col("_n").sum()).cast(FLOAT).alias("u_top_category_share"),
            )
        )
        per_user = per_user.join(per_cat, on=C.USER, how="left")
    return per_user.select(C.USER, *[c.name for c in columns(spec)])


FAMILY = Family(
    name="user",
    description="the user's activity, recency, funnel, sessions, prices and breadth",
    keys=(C.USER,),
    columns=columns,
    build=build,
)
