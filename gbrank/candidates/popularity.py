"""Popularity: the most-interacted items of the recent past, the same list for every user."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from gbrank.candidates.base import (
    EVENT_WEIGHTS,
    CandidateSource,
    decay_expr,
    event_weight_expr,
    require_optional_positive,
)
from gbrank.columns import ITEM, RANK, SCORE, TS, USER

_POS = "_pos"  # 0-based position in the global ranking
_PAIR = "_pair"


class PopularitySource(CandidateSource):
    """Weighted event counts over the last ``window_days`` before ``as_of``, optionally decayed.

    Serves every user, cold ones included, which makes it the fallback for users the
    personalised sources know nothing about.

    Parameters:
        window_days: length of the counting window; ``None`` or ``inf`` counts the whole
            history. When the window holds no event, the whole history is used instead.
        half_life_days: when set, each event counts ``0.5 ** (age_days / half_life_days)``
            times its weight, a smooth alternative (or complement) to the hard window; ``None``
            or ``inf`` means no decay.
        filter_seen: drop, per user, the items that user interacted with in the history.
        event_weights: weight of each event type (view, click, cart, purchase) in the count.

    >>> from datetime import datetime
    >>> history = pl.DataFrame(
    ...     {"user": [0, 1, 1], "item": [3, 3, 4], "event": [0, 3, 0],
    ...      "ts": [datetime(2024, 1, 30)] * 3},
    ...     schema_overrides={"user": pl.Int32, "item": pl.Int32, "event": pl.Int8},
    ... )
    >>> source = PopularitySource().fit(history, n_users=2, n_items=5, as_of=datetime(2024, 2, 1))
    >>> source.generate([0, 7], k=2).rows()  # user 0 has seen item 3; user 7 is cold
    [(0, 4, 1.0, 1), (7, 3, 9.0, 1), (7, 4, 1.0, 2)]
    """

    kind = "popularity"

    def __init__(
        self,
        *,
        name: str = "popularity",
        window_days: float | None = 7,
        half_life_days: float | None = None,
        filter_seen: bool = True,
        event_weights: Sequence[float] = EVENT_WEIGHTS,
    ) -> None:
        self.name = name
        self.window_days = window_days
        self.half_life_days = half_life_days
        self.filter_seen = filter_seen
        self.event_weights = event_weights

    def check_params(self) -> None:
        super().check_params()
        require_optional_positive(self.window_days, "window_days")
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
        recent = window(history, as_of, self.window_days)
        weight = event_weight_expr(self.event_weights) * decay_expr(as_of, self.half_life_days)
        self.ranking_ = (
            recent.group_by(ITEM)
            .agg(weight.sum().cast(pl.Float32).alias(SCORE))
            .select(pl.col(ITEM).cast(pl.Int32), SCORE)
            .sort([SCORE, ITEM], descending=[True, False])
            .with_row_index(_POS)
            .with_columns(pl.col(_POS).cast(pl.Int32))
        )
        if self.filter_seen:
            # Only seen items that are in the ranking can displace a candidate.
            # Distinct (user, item) pairs as one sorted int64 key, deduplicated in sorted order:
            # five times faster than unique() and a sort on two columns. The order is fixed
            # (user, item), so the saved state is the same bytes every run.
            pair = (pl.col(USER).cast(pl.Int64) * n_items + pl.col(ITEM)).alias(_PAIR)
            self.seen_ = (
                history.lazy()
                .select(USER, pl.col(ITEM).cast(pl.Int32))
                .join(self.ranking_.lazy().select(ITEM), on=ITEM, how="semi")
                .select(pair.sort())
                .filter(pl.col(_PAIR).diff().fill_null(1) != 0)
                .select(
                    (pl.col(_PAIR) // n_items).cast(pl.Int32).set_sorted().alias(USER),
                    (pl.col(_PAIR) % n_items).cast(pl.Int32).alias(ITEM),
                )
                .collect()
            )

    def _generate(self, users: np.ndarray, k: int) -> pl.DataFrame:
        targets = pl.DataFrame({USER: users})
        if not self.filter_seen:
            top = self.ranking_.head(k).select(ITEM, SCORE, (pl.col(_POS) + 1).alias(RANK))
            return targets.join(top, how="cross").sort(USER, RANK)
        # Fetch k + (items the user has seen) from the global list: after dropping the seen
        # ones at least k remain. The rows are bounded by users x k + the batch's seen pairs.
        # In NumPy on sorted codes (binary searches, no hash joins): 2.3x faster than the
        # joins were (every user at 10M events: 1.2 s against 2.8 s).
        rank_item, rank_score, position_of, seen_user, seen_item = self._lookup
        n_ranked = rank_item.size
        lo = np.searchsorted(seen_user, users, side="left")
        n_seen = np.searchsorted(seen_user, users, side="right") - lo
        seen_row = np.repeat(np.arange(users.size, dtype=np.int64), n_seen)
        seen_at = np.repeat(lo - (np.cumsum(n_seen) - n_seen), n_seen) + np.arange(seen_row.size)
        excluded = np.sort(seen_row * n_ranked + position_of[seen_item[seen_at]])
        n_fetch = np.minimum(n_seen + k, n_ranked)
        row = np.repeat(np.arange(users.size, dtype=np.int64), n_fetch)
        position = np.arange(row.size) - np.repeat(np.cumsum(n_fetch) - n_fetch, n_fetch)
        key = row * n_ranked + position  # sorted, as ``excluded`` is
        if excluded.size:
            at = np.searchsorted(excluded, key).clip(max=excluded.size - 1)
            keep = excluded[at] != key
            row, position = row[keep], position[keep]
        per_row = np.bincount(row, minlength=users.size)
        rank = np.arange(1, row.size + 1) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        within = rank <= k
        row, position = row[within], position[within]
        return pl.DataFrame(
            {
                USER: users[row].astype(np.int32),
                ITEM: rank_item[position],
                SCORE: rank_score[position],
                RANK: rank[within].astype(np.int32),
            }
        )

    @functools.cached_property
    def _lookup(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The ranking's items and scores, each item's position in it, and the seen pairs'
        users (sorted) and items, as arrays (not part of the saved state)."""
        rank_item = self.ranking_[ITEM].to_numpy().astype(np.int32)
        position_of = np.zeros(max(self.n_items_, int(rank_item.max(initial=-1)) + 1), np.int64)
        position_of[rank_item] = np.arange(rank_item.size)
        return (
            rank_item,
            self.ranking_[SCORE].to_numpy().astype(np.float32),
            position_of,
            self.seen_[USER].to_numpy(),
            self.seen_[ITEM].to_numpy(),
        )


def window(history: pl.DataFrame, as_of: datetime, window_days: float | None) -> pl.DataFrame:
    """The events of the last ``window_days`` before ``as_of`` (all for ``None`` or ``inf``).

    When the window holds no event (a quiet shop, a short window), the whole history is
    returned: better stale than nothing.
    """
    if window_days is None or window_days == math.inf:
        return history
    recent = history.filter(pl.col(TS) >= as_of - timedelta(days=window_days))
    return recent if recent.height else history
