"""Popularity: the most-interacted items of the recent past, the same list for every user."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from gbrank.candidates.base import (
    EVENT_WEIGHTS,
    CandidateSource,
    event_weight_expr,
    require_positive,
)
from gbrank.columns import ITEM, RANK, SCORE, TS, USER

_POS = "_pos"  # 0-based position in the global ranking
_N_SEEN = "_n_seen"


class PopularitySource(CandidateSource):
    """Weighted event counts over the last ``window_days`` before ``as_of``.

    Serves every user, cold ones included, which makes it the fallback for users the
    personalised sources know nothing about.

    Parameters:
        window_days: length of the counting window; ``None`` counts the whole history. When the
            window holds no event, the whole history is used instead.
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
        filter_seen: bool = True,
        event_weights: Sequence[float] = EVENT_WEIGHTS,
    ) -> None:
        self.name = name
        self.window_days = window_days
        self.filter_seen = filter_seen
        self.event_weights = event_weights

    def check_params(self) -> None:
        super().check_params()
        if self.window_days is not None:
            require_positive(self.window_days, "window_days")

    def _fit(self, history: pl.DataFrame, *, n_users: int, n_items: int, as_of: datetime) -> None:
        recent = history
        if self.window_days is not None:
            recent = history.filter(pl.col(TS) >= as_of - timedelta(days=self.window_days))
            if recent.height == 0:  # e.g. a quiet shop or a short window: better stale than none
                recent = history
        self.ranking_ = (
            recent.group_by(ITEM)
            .agg(event_weight_expr(self.event_weights).sum().cast(pl.Float32).alias(SCORE))
            .select(pl.col(ITEM).cast(pl.Int32), SCORE)
            .sort([SCORE, ITEM], descending=[True, False])
            .with_row_index(_POS)
            .with_columns(pl.col(_POS).cast(pl.Int32))
        )
        if self.filter_seen:
            # Only seen items that are in the ranking can displace a candidate.
            self.seen_ = (
                history.select(pl.col(USER).cast(pl.Int32), pl.col(ITEM).cast(pl.Int32))
                .join(self.ranking_.select(ITEM), on=ITEM, how="semi")
                .unique()
            )
            self.seen_counts_ = self.seen_.group_by(USER).agg(
                pl.len().cast(pl.Int32).alias(_N_SEEN)
            )

    def _generate(self, users: np.ndarray, k: int) -> pl.DataFrame:
        targets = pl.DataFrame({USER: users})
        if not self.filter_seen:
            top = self.ranking_.head(k).select(ITEM, SCORE, (pl.col(_POS) + 1).alias(RANK))
            return targets.join(top, how="cross").sort(USER, RANK)
        # Fetch k + (items the user has seen) from the global list: after dropping the seen
        # ones at least k remain. The rows are bounded by users x k + the history's pairs.
        n_fetch = pl.min_horizontal(
            pl.col(_N_SEEN).fill_null(0) + k, pl.lit(self.ranking_.height, dtype=pl.Int32)
        )
        return (
            targets.lazy()
            .join(self.seen_counts_.lazy(), on=USER, how="left")
            .select(USER, pl.int_ranges(0, n_fetch, dtype=pl.Int32).alias(_POS))
            .explode(_POS)
            .join(self.ranking_.lazy(), on=_POS, how="inner")
            .join(self.seen_.lazy(), on=[USER, ITEM], how="anti")
            .sort(USER, _POS)
            .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(USER).alias(RANK))
            .filter(pl.col(RANK) <= k)
            .select(USER, ITEM, SCORE, RANK)
            .collect()
        )
