"""User x category (``uc_*``) and user x brand (``ub_*``) families: long- and short-term interest.

Keyed by (user, category) or (user, brand) and joined through the candidate item's attribute.
Shares count the user's events whose item has the attribute: all history (long term), the
user's last session, and the user's last ``short_term_events`` such events (short term).
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from gbrank import columns as C
from gbrank.features.base import (
    BRAND,
    CATEGORY,
    FLOAT,
    INT,
    LAST_SESSION,
    Column,
    Family,
    FeatureContext,
    FeatureSpec,
    is_type,
    user_events,
)


def _columns(attribute: str, prefix: str) -> Callable[[FeatureSpec], list[Column]]:
    def columns(spec: FeatureSpec) -> list[Column]:
        n = spec.short_term_events
        return [
            Column(
                f"{prefix}_share", f"share of the user's events in the item's {attribute}", fill=0.0
            ),
            Column(
                f"{prefix}_share_last_session",
                f"share of the user's last-session events in the item's {attribute}",
                fill=0.0,
            ),
            Column(
                f"{prefix}_share_last_{n}",
                f"share of the user's last {n} events in the item's {attribute}",
                fill=0.0,
            ),
            Column(
                f"{prefix}_n_purchase", f"purchases of the user in the item's {attribute}", INT, 0
            ),
        ]

    return columns


def _build(attribute: str, prefix: str) -> Callable[[FeatureContext], pl.LazyFrame]:
    def build(ctx: FeatureContext) -> pl.LazyFrame:
        n = ctx.spec.short_term_events
        events = (
            user_events(ctx)
            .lazy()
            .filter(pl.col(attribute).is_not_null())
            .with_columns(
                (pl.int_range(pl.len(), 0, -1).over(C.USER) <= n).alias("_recent"),
            )
        )
        keys = [C.USER, attribute]
        counts = events.group_by(keys).agg(
            pl.len().alias("_all"),
            pl.col(LAST_SESSION).sum().alias("_session"),
            pl.col("_recent").sum().alias("_recent"),
            is_type("purchase").sum().cast(INT).alias(f"{prefix}_n_purchase"),
        )
        totals = [pl.col(c).sum().over(C.USER) for c in ("_all", "_session", "_recent")]
        return counts.select(
            *keys,
            (pl.col("_all") / totals[0]).cast(FLOAT).alias(f"{prefix}_share"),
            pl.when(totals[1] > 0)
            .then(pl.col("_session") / totals[1])
            .otherwise(0.0)
            .cast(FLOAT)
            .alias(f"{prefix}_share_last_session"),
            (pl.col("_recent") / totals[2]).cast(FLOAT).alias(f"{prefix}_share_last_{n}"),
            f"{prefix}_n_purchase",
        )

    return build


def _family(name: str, attribute: str, prefix: str) -> Family:
    return Family(
        name=name,
        description=f"the user's long- and short-term interest in the candidate's {attribute}",
        keys=(C.USER, attribute),
        columns=_columns(attribute, prefix),
        build=_build(attribute, prefix),
        requires=(attribute,),
    )


CATEGORY_FAMILY = _family("user_category", CATEGORY, "uc")
BRAND_FAMILY = _family("user_brand", BRAND, "ub")
