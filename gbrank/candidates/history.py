"""History: the user's own past items again (repurchase, re-view), recent ones first."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import polars as pl

from gbrank.candidates.base import (
    EVENT_WEIGHTS,
    CandidateSource,
    decay_expr,
    event_weight_expr,
    rank_candidates,
    require_positive,
)
from gbrank.columns import ITEM, RANK, SCORE, USER


class HistorySource(CandidateSource):
    """Items the user interacted with, scored by recency-decayed event weights.

    ``score(user, item) = sum over the user's events on the item of
    weight(event) * 0.5 ** (age_days / half_life_days)``, with ``age_days`` counted back from
    ``as_of``. Every candidate is an item the user has seen, so there is no ``filter_seen``.

    Parameters:
        half_life_days: age at which an event counts half.
        event_weights: weight of each event type (view, click, cart, purchase).

    >>> from datetime import datetime
    >>> history = pl.DataFrame(
    ...     {"user": [0, 0], "item": [1, 2], "event": [0, 0],
    ...      "ts": [datetime(2024, 1, 3), datetime(2024, 1, 31)]},
    ...     schema_overrides={"user": pl.Int32, "item": pl.Int32, "event": pl.Int8},
    ... )
    >>> source = HistorySource().fit(history, n_users=1, n_items=3, as_of=datetime(2024, 2, 1))
    >>> source.generate([0], k=5)["item"].to_list()  # the item seen a day ago comes first
    [2, 1]
    """

    kind = "history"

    def __init__(
        self,
        *,
        name: str = "history",
        half_life_days: float = 14,
        event_weights: Sequence[float] = EVENT_WEIGHTS,
    ) -> None:
        self.name = name
        self.half_life_days = half_life_days
        self.event_weights = event_weights

    def check_params(self) -> None:
        super().check_params()
        require_positive(self.half_life_days, "half_life_days")

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
        decayed = event_weight_expr(self.event_weights) * decay_expr(as_of, self.half_life_days)
        # Grouped on one int64 key (user, item), decoded after: faster than on two columns.
        pair = pl.col(USER).cast(pl.Int64) * n_items + pl.col(ITEM)
        scored = (
            history.lazy()
            .group_by(pair.alias("_pair"))
            .agg(decayed.sum().alias(SCORE))
            .select(
                (pl.col("_pair") // n_items).alias(USER),
                (pl.col("_pair") % n_items).alias(ITEM),
                SCORE,
            )
        )
        # Rank every pair once; generate only filters by user and rank.
        self.ranked_ = rank_candidates(scored, None)

    def _generate(self, users: np.ndarray, k: int) -> pl.DataFrame:
        return self.ranked_.filter(pl.col(RANK) <= k).join(
            pl.DataFrame({USER: users}), on=USER, how="semi", maintain_order="left"
        )
