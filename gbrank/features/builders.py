"""Leak-free feature families, computed with Polars from history strictly before ``as_of``.

Every family is a pure function of ``(history, as_of, ...)`` returning a LazyFrame keyed by
user, item or (user, item); :func:`build_features` joins them onto the candidate rows. The
caller guarantees ``history`` holds only events before ``as_of`` (see
``gbrank.data.split.history``); each family also filters on ``as_of`` itself, so passing the
full event log by mistake cannot leak the label window into a feature.

Families and their columns:

- user (``u_*``): events per type, events in all, distinct items, active days, days since the
  last event, mean price of the items the user touched.
- item (``i_*``): events per type over each window in ``features.item_windows_days`` and over
  all history, distinct users, days since first and last seen, purchase rate (smoothed).
- user x item (``ui_*``): events per type, days since the last interaction and since the last
  purchase.
- cross (``x_*``): item price over the user's mean price; share of the user's events in the
  item's category and the user's purchases in it.
- source: every source's score and rank and ``n_sources``, already on the candidate rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import polars as pl

from gbrank import columns as C

KEYS = (C.USER, C.ITEM)
_DAY_MS = 86_400_000.0


def _days_before(as_of: datetime, col: str | pl.Expr) -> pl.Expr:
    expr = pl.col(col) if isinstance(col, str) else col
    return ((pl.lit(as_of, dtype=pl.Datetime("ms")) - expr).dt.total_milliseconds() / _DAY_MS).cast(
        pl.Float32
    )


def _per_type_counts(prefix: str, suffix: str = "") -> list[pl.Expr]:
    return [
        (pl.col(C.EVENT) == code).sum().cast(pl.Int32).alias(f"{prefix}n_{name}{suffix}")
        for code, name in enumerate(C.EVENT_TYPES)
    ]


def _past(history: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    return history.filter(pl.col(C.TS) < as_of)


def item_prices(history: pl.LazyFrame, items: pl.DataFrame | None, as_of: datetime) -> pl.LazyFrame:
    """Item price from the items table, else the mean unit price seen in past events."""
    if items is not None and "price" in items.columns:
        return items.lazy().select(C.ITEM, pl.col("price").cast(pl.Float32))
    schema = history.collect_schema()
    if C.VALUE not in schema.names():
        return pl.LazyFrame(schema={C.ITEM: pl.Int32, "price": pl.Float32})
    quantity = pl.col(C.QUANTITY).fill_null(1.0) if C.QUANTITY in schema.names() else pl.lit(1.0)
    return (
        _past(history, as_of)
        .filter(pl.col(C.VALUE).is_not_null() & (pl.col(C.VALUE) > 0))
        .group_by(C.ITEM)
        .agg((pl.col(C.VALUE) / quantity).mean().cast(pl.Float32).alias("price"))
    )


def user_features(history: pl.LazyFrame, as_of: datetime, prices: pl.LazyFrame) -> pl.LazyFrame:
    past = _past(history, as_of)
    activity = past.group_by(C.USER).agg(
        *_per_type_counts("u_"),
        pl.len().cast(pl.Int32).alias("u_n_events"),
        pl.col(C.ITEM).n_unique().cast(pl.Int32).alias("u_n_items"),
        pl.col(C.TS).dt.date().n_unique().cast(pl.Int32).alias("u_active_days"),
        _days_before(as_of, pl.col(C.TS).max()).alias("u_days_since_last"),
    )
    mean_price = (
        past.join(prices, on=C.ITEM, how="inner")
        .group_by(C.USER)
        .agg(pl.col("price").mean().cast(pl.Float32).alias("u_mean_price"))
    )
    return activity.join(mean_price, on=C.USER, how="left")


def item_features(
    history: pl.LazyFrame, as_of: datetime, windows_days: Sequence[int]
) -> pl.LazyFrame:
    past = _past(history, as_of)
    # One pass over each item's rows: every window is a masked sum.
    windowed = [
        ((pl.col(C.EVENT) == code) & (pl.col(C.TS) >= as_of - timedelta(days=w)))
        .sum()
        .cast(pl.Int32)
        .alias(f"i_n_{name}_{w}d")
        for w in windows_days
        for code, name in enumerate(C.EVENT_TYPES)
    ]
    n_purchase = (pl.col(C.EVENT) == C.EVENT_CODE["purchase"]).sum()
    return past.group_by(C.ITEM).agg(
        *_per_type_counts("i_"),
        *windowed,
        pl.col(C.USER).n_unique().cast(pl.Int32).alias("i_n_users"),
        _days_before(as_of, pl.col(C.TS).min()).alias("i_days_since_first"),
        _days_before(as_of, pl.col(C.TS).max()).alias("i_days_since_last"),
        # Purchases per event, shrunk towards zero for rarely seen items.
        (n_purchase / (pl.len() + 20.0)).cast(pl.Float32).alias("i_purchase_rate"),
    )


def user_item_features(history: pl.LazyFrame, as_of: datetime, pairs: pl.LazyFrame) -> pl.LazyFrame:
    past = _past(history, as_of).join(pairs, on=list(KEYS), how="semi")
    purchase = pl.col(C.EVENT) == C.EVENT_CODE["purchase"]
    return past.group_by(*KEYS).agg(
        *_per_type_counts("ui_"),
        _days_before(as_of, pl.col(C.TS).max()).alias("ui_days_since_last"),
        _days_before(as_of, pl.col(C.TS).filter(purchase).max()).alias(
            "ui_days_since_last_purchase"
        ),
    )


def user_category_features(
    history: pl.LazyFrame, as_of: datetime, items: pl.DataFrame
) -> pl.LazyFrame:
    """Per (user, category): share of the user's events and number of purchases."""
    past = _past(history, as_of).join(
        items.lazy().select(C.ITEM, "category"), on=C.ITEM, how="inner"
    )
    per_cat = past.group_by(C.USER, "category").agg(
        pl.len().alias("_n"),
        (pl.col(C.EVENT) == C.EVENT_CODE["purchase"])
        .sum()
        .cast(pl.Int32)
        .alias("x_cat_n_purchase"),
    )
    return per_cat.with_columns(
        (pl.col("_n") / pl.col("_n").sum().over(C.USER)).cast(pl.Float32).alias("x_cat_share")
    ).drop("_n")


def build_features(
    candidates: pl.DataFrame,
    history: pl.DataFrame,
    as_of: datetime,
    items: pl.DataFrame | None = None,
    windows_days: Sequence[int] = (7, 28),
) -> pl.DataFrame:
    """Join every feature family onto the candidate rows (one row per (user, item)).

    Count features that are missing after the join (no event) become 0; recency features
    stay null (never happened).
    """
    hist = history.lazy()
    cands = candidates.lazy()
    prices = item_prices(hist, items, as_of)
    frame = (
        cands.join(user_features(hist, as_of, prices), on=C.USER, how="left")
        .join(item_features(hist, as_of, windows_days), on=C.ITEM, how="left")
        .join(user_item_features(hist, as_of, cands.select(*KEYS)), on=list(KEYS), how="left")
        .join(prices, on=C.ITEM, how="left")
        .rename({"price": "i_price"})
        .with_columns(
            (pl.col("i_price") / pl.col("u_mean_price")).cast(pl.Float32).alias("x_price_ratio")
        )
    )
    if items is not None and "category" in items.columns:
        frame = (
            frame.join(items.lazy().select(C.ITEM, "category"), on=C.ITEM, how="left")
            .join(user_category_features(hist, as_of, items), on=[C.USER, "category"], how="left")
            .drop("category")
        )
    out = frame.collect()
    count_cols = [
        c
        for c in out.columns
        if ("_n_" in c or c.startswith(("u_n", "i_n", "ui_n"))) and out.schema[c].is_integer()
    ]
    shares = [c for c in ("x_cat_share",) if c in out.columns]
    return out.with_columns(pl.col(c).fill_null(0) for c in count_cols + shares).sort(*KEYS)


def feature_columns(frame: pl.DataFrame) -> list[str]:
    """The model's input columns: everything but keys and labels, in frame order."""
    skip = {C.USER, C.ITEM, C.GRADE, *(C.label_col(t) for t in C.TARGETS)}
    return [c for c in frame.columns if c not in skip]
