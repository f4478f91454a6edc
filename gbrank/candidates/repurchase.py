"""Repurchase: the user's past purchases, first those whose usual repurchase interval is due."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import polars as pl

from gbrank.candidates.base import (
    EVENT_WEIGHTS,
    MS_PER_DAY,
    CandidateSource,
    event_codes,
    rank_candidates,
    require_optional_positive,
    require_positive,
)
from gbrank.columns import EVENT, ITEM, RANK, SCORE, TS, USER

#: Purchases of the same item by the same user less than this apart are one order (several
#: lines, or a quantity split into rows), not a repurchase.
SAME_ORDER_MS = 3_600_000

LEVELS = ("item", "category", "global")
_GAP, _N, _LAST, _INTERVAL, _LEVEL, _CAT = "_gap", "_n", "_last", "interval_days", "level", "_cat"


class RepurchaseSource(CandidateSource):
    """Items the user bought before, scored by how due their repurchase is.

    **Intervals.** Purchases (events of the types in ``purchase_events``) of the same item by
    the same user less than an hour apart form one order. The gaps between a user's
    consecutive orders of an item are the examples of its repurchase interval. An item's
    interval is the median of its examples across all users when it has at least
    ``min_repeats`` of them; otherwise the median over its category (``items`` table, column
    ``category_column``) when the category has that many; otherwise the median over all items
    when there are that many; otherwise it has no interval. ``intervals_`` lists them, with
    the level they come from.

    **Score** of a user's item last ordered ``elapsed`` days before ``as_of``, ``n`` orders::

        score = exp(-ln(elapsed / interval) ** 2 / (2 * spread ** 2))     # due bump, in (0, 1]
              + frequency_weight * (1 - 1 / n)                            # habitual items
              + base_score * 0.5 ** (elapsed / half_life_days)            # recency

    The bump peaks at 1 when the interval has just elapsed and falls off symmetrically in
    log-time (half as long and twice as long score the same); items without an interval get
    no bump. Every purchased item is proposed (up to ``k``), so the list contains what a
    recency-ranked repurchase list would, with due items moved up. Users without purchases get
    no rows; there is no ``filter_seen``, every candidate is an item the user has bought.

    Parameters:
        purchase_events: event types that count as a purchase.
        min_repeats: interval examples an item (or category, or the shop) needs.
        category_column: items-table column for the category fallback; skipped when there is
            no items table or no such column.
        spread: width of the bump, in log-time.
        frequency_weight: weight of the number-of-orders term.
        base_score: weight of the recency term, which alone orders items without an interval.
        half_life_days: age of the last order at which the recency term halves.
        event_weights: accepted for uniformity with the other sources; unused.

    >>> from datetime import datetime, timedelta
    >>> as_of = datetime(2024, 3, 1)
    >>> days = [70, 40, 10, 50, 20]  # item 0 bought every 30 days, last 10 days ago
    >>> history = pl.DataFrame(
    ...     {"user": [0, 0, 0, 1, 1], "item": [0, 0, 0, 1, 1], "event": [3] * 5,
    ...      "ts": [as_of - timedelta(days=d) for d in days]},
    ...     schema_overrides={"user": pl.Int32, "item": pl.Int32, "event": pl.Int8},
    ... )
    >>> source = RepurchaseSource(min_repeats=1).fit(history, n_users=2, n_items=2, as_of=as_of)
    >>> source.intervals_.rows()
    [(0, 30.0, 'item'), (1, 30.0, 'item')]
    >>> source.generate([0, 1], k=5).select("user", "item", "rank").rows()
    [(0, 0, 1), (1, 1, 1)]
    """

    kind = "repurchase"

    def __init__(
        self,
        *,
        name: str = "repurchase",
        purchase_events: Sequence[str] = ("purchase",),
        min_repeats: int = 3,
        category_column: str = "category",
        spread: float = 0.5,
        frequency_weight: float = 0.1,
        base_score: float = 0.05,
        half_life_days: float | None = 30.0,
        event_weights: Sequence[float] = EVENT_WEIGHTS,
    ) -> None:
        self.name = name
        self.purchase_events = purchase_events
        self.min_repeats = min_repeats
        self.category_column = category_column
        self.spread = spread
        self.frequency_weight = frequency_weight
        self.base_score = base_score
        self.half_life_days = half_life_days
        self.event_weights = event_weights

    def check_params(self) -> None:
        super().check_params()
        event_codes(self.purchase_events, "purchase_events")
        require_positive(self.min_repeats, "min_repeats", integer=True)
        if not (isinstance(self.category_column, str) and self.category_column):
            raise ValueError(f"category_column must be a column name, got {self.category_column!r}")
        require_positive(self.spread, "spread")
        require_positive(self.frequency_weight, "frequency_weight", zero=True)
        require_positive(self.base_score, "base_score")
        require_optional_positive(self.half_life_days, "half_life_days")

    def _fit(
        self,
        history: pl.DataFrame,
        *,
        n_users: int,
        n_items: int,
        as_of: datetime,
        items: pl.DataFrame | None,
        users: pl.DataFrame | None,
    ) -> None:
        codes = event_codes(self.purchase_events, "purchase_events")
        ts_ms = pl.col(TS).cast(pl.Datetime("ms")).cast(pl.Int64)
        purchases = (
            history.lazy()
            .filter(pl.col(EVENT).is_in(codes))
            .select(pl.col(USER).cast(pl.Int32), pl.col(ITEM).cast(pl.Int32), ts_ms.alias(TS))
            .sort(USER, ITEM, TS)
            .with_columns(pl.col(TS).diff().over(USER, ITEM).alias(_GAP))
        )
        # An order starts with the first purchase of an item or one an hour or more after the
        # previous purchase of it; the gap to the previous order's start is one example.
        orders = (
            purchases.filter(pl.col(_GAP).is_null() | (pl.col(_GAP) >= SAME_ORDER_MS))
            .with_columns((pl.col(TS).diff().over(USER, ITEM) / MS_PER_DAY).alias(_GAP))
            .collect()
        )
        gaps = orders.lazy().filter(pl.col(_GAP).is_not_null()).select(ITEM, _GAP)
        bought = orders.lazy().select(ITEM).unique()
        self.intervals_ = self._intervals(gaps, bought, items)
        as_of_ms = int(pl.Series([as_of]).cast(pl.Datetime("ms")).cast(pl.Int64)[0])
        elapsed = (as_of_ms - pl.col(_LAST)) / MS_PER_DAY
        due = (
            (-((elapsed / pl.col(_INTERVAL)).log() ** 2) / (2 * self.spread**2))
            .exp()
            .fill_null(0.0)
        )
        frequency = self.frequency_weight * (1 - 1 / pl.col(_N))
        if self.half_life_days is None or self.half_life_days == np.inf:
            recency = pl.lit(self.base_score)
        else:
            recency = self.base_score * pl.lit(0.5).pow(elapsed / self.half_life_days)
        scored = (
            orders.lazy()
            .group_by(USER, ITEM)
            .agg(pl.col(TS).max().alias(_LAST), pl.len().alias(_N))
            .join(self.intervals_.lazy().select(ITEM, _INTERVAL), on=ITEM, how="left")
            .select(USER, ITEM, (due + frequency + recency).alias(SCORE))
        )
        # Rank every pair once; generate only filters by user and rank.
        self.ranked_ = rank_candidates(scored, None)

    def _intervals(
        self, gaps: pl.LazyFrame, bought: pl.LazyFrame, items: pl.DataFrame | None
    ) -> pl.DataFrame:
        """``item, interval_days, level`` of every ``bought`` item with an interval."""
        enough = pl.len() >= self.min_repeats
        per_item = gaps.group_by(ITEM).agg(
            pl.col(_GAP).median().alias(_INTERVAL), enough.alias("_ok")
        )
        known = per_item.filter("_ok").select(ITEM, _INTERVAL, pl.lit("item").alias(_LEVEL))
        levels = [known]
        if items is not None and self.category_column in items.columns:
            categories = (
                items.lazy()
                .select(pl.col(ITEM).cast(pl.Int32), pl.col(self.category_column).alias(_CAT))
                .drop_nulls(_CAT)
                .join(bought, on=ITEM, how="semi")
            )
            per_category = (
                gaps.join(categories, on=ITEM)
                .group_by(_CAT)
                .agg(pl.col(_GAP).median().alias(_INTERVAL), enough.alias("_ok"))
                .filter("_ok")
            )
            levels.append(
                categories.join(per_category, on=_CAT)
                .join(known, on=ITEM, how="anti")
                .select(ITEM, _INTERVAL, pl.lit("category").alias(_LEVEL))
            )
        # The shop-wide interval reaches every item the finer levels left out.
        overall = gaps.select(pl.col(_GAP).median().alias(_INTERVAL), enough.alias("_ok")).filter(
            "_ok"
        )
        covered = pl.concat([level.select(ITEM) for level in levels])
        rest = (
            bought.join(covered, on=ITEM, how="anti")
            .join(overall.select(_INTERVAL), how="cross")
            .select(ITEM, _INTERVAL, pl.lit("global").alias(_LEVEL))
        )
        return pl.concat([*levels, rest]).collect().sort(ITEM)

    def _generate(self, users: np.ndarray, k: int) -> pl.DataFrame:
        return self.ranked_.filter(pl.col(RANK) <= k).join(
            pl.DataFrame({USER: users}), on=USER, how="semi", maintain_order="left"
        )
