"""Popularity per segment: popular items of the user's categories, or of the user's segment."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import polars as pl
import scipy.sparse as sp

from gbrank.candidates._scoring import (
    BATCH_CELLS,
    MAX_BATCH_USERS,
    candidates_from_parts,
    interaction_matrix,
    map_batches,
    top_k_sparse,
)
from gbrank.candidates.base import (
    EVENT_WEIGHTS,
    CandidateSource,
    attribute_column,
    decay_expr,
    empty_candidates,
    event_weight_expr,
    require_choice,
    require_optional_positive,
    require_positive,
)
from gbrank.candidates.popularity import window
from gbrank.columns import ITEM, SCORE, USER

SEGMENTS = ("category", "user_segment")
_DEFAULT_COLUMN = {"category": "category", "user_segment": "segment"}
_SEG, _POS, _SHARE, _CODE, _W = "_segment", "_pos", "_share", "_code", "_w"


class SegmentPopularitySource(CandidateSource):
    """Popular items within a segment: the user's favourite categories, or the user's group.

    ``segment="category"`` (needs the ``items`` table with a category column): a user's
    categories are weighted by their share of the user's weighted events, and an item by its
    share of its category's weighted events; ``score(user, item) = share(user, category(item))
    * share(item | category)``, the chance of the item if the user picks a category as they
    did before and then an item as everyone does. Only the user's ``max_categories`` largest
    categories are used. Users without history (or whose items have no category) get no rows:
    global popularity covers them.

    ``segment="user_segment"`` (needs the ``users`` table with a segment column): popularity
    computed among the users of the same segment; ``score = share(item | segment)``. Every
    user with a segment is served, cold ones included, which makes it a better fallback than
    global popularity when segments are known; users without one get no rows.

    Item popularity uses the events of the last ``window_days`` (all for ``None`` or ``inf``),
    each weighted by its event type and, with ``half_life_days``, by ``0.5 ** (age_days /
    half_life_days)``. A user's category shares use their whole history with the same decay.

    Parameters:
        segment: ``"category"`` or ``"user_segment"``.
        segment_column: the attribute column; default ``"category"`` (items table) or
            ``"segment"`` (users table).
        window_days: counting window for item popularity; ``None`` or ``inf``: all history.
        half_life_days: age at which an event counts half; ``None`` or ``inf``: no decay.
        max_categories: categories per user (``segment="category"``).
        filter_seen: drop, per user, the items that user interacted with in the history.
        event_weights: weight of each event type (view, click, cart, purchase).

    >>> from datetime import datetime
    >>> history = pl.DataFrame(
    ...     {"user": [0, 1, 1, 2], "item": [0, 0, 1, 2], "event": [0, 0, 0, 0],
    ...      "ts": [datetime(2024, 1, 30)] * 4},
    ...     schema_overrides={"user": pl.Int32, "item": pl.Int32, "event": pl.Int8},
    ... )
    >>> items = pl.DataFrame({"item": [0, 1, 2], "category": ["shoes", "shoes", "hats"]},
    ...                      schema_overrides={"item": pl.Int32})
    >>> source = SegmentPopularitySource().fit(
    ...     history, n_users=3, n_items=3, as_of=datetime(2024, 2, 1), items=items
    ... )
    >>> source.generate([0], k=5)["item"].to_list()  # user 0 likes shoes and has seen item 0
    [1]
    """

    kind = "segment_popularity"

    def __init__(
        self,
        *,
        name: str = "segment_popularity",
        segment: str = "category",
        segment_column: str | None = None,
        window_days: float | None = None,
        half_life_days: float | None = 14.0,
        max_categories: int = 10,
        filter_seen: bool = True,
        event_weights: Sequence[float] = EVENT_WEIGHTS,
    ) -> None:
        self.name = name
        self.segment = segment
        self.segment_column = segment_column
        self.window_days = window_days
        self.half_life_days = half_life_days
        self.max_categories = max_categories
        self.filter_seen = filter_seen
        self.event_weights = event_weights

    def check_params(self) -> None:
        super().check_params()
        require_choice(self.segment, SEGMENTS, "segment")
        if self.segment_column is not None and not (
            isinstance(self.segment_column, str) and self.segment_column
        ):
            raise ValueError(f"segment_column must be a column name, got {self.segment_column!r}")
        require_optional_positive(self.window_days, "window_days")
        require_optional_positive(self.half_life_days, "half_life_days")
        require_positive(self.max_categories, "max_categories", integer=True)

    @property
    def column(self) -> str:
        """The attribute column in use."""
        return self.segment_column or _DEFAULT_COLUMN[self.segment]

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
        needed_by = (
            f"source '{self.name}' (segment = {self.segment!r}, segment_column = {self.column!r})"
        )
        # Int32 codes on both sides of the joins with the attribute tables.
        history = history.with_columns(pl.col(USER).cast(pl.Int32), pl.col(ITEM).cast(pl.Int32))
        weight = event_weight_expr(self.event_weights) * decay_expr(as_of, self.half_life_days)
        recent = window(history, as_of, self.window_days).lazy().with_columns(weight.alias(_W))
        if self.segment == "category":
            item_segment = attribute_column(
                items, ITEM, self.column, what="items", needed_by=needed_by
            ).rename({self.column: _SEG})
            segments, key = item_segment, ITEM
            popular = recent.join(item_segment.lazy(), on=ITEM)
            # The user's category shares, from their whole history.
            self.user_segments_ = (
                history.lazy()
                .join(item_segment.lazy(), on=ITEM)
                .group_by(USER, _SEG)
                .agg(weight.sum().alias(_SHARE))
                .with_columns(pl.col(_SHARE) / pl.col(_SHARE).sum().over(USER))
                .sort([USER, _SHARE, _SEG], descending=[False, True, False])
                .filter(pl.int_range(pl.len()).over(USER) < self.max_categories)
                .collect()
            )
        else:
            user_segment = attribute_column(
                users, USER, self.column, what="users", needed_by=needed_by
            ).rename({self.column: _SEG})
            segments, key = user_segment, USER
            popular = recent.join(user_segment.lazy(), on=USER)
            self.user_segments_ = user_segment.with_columns(pl.lit(1.0).alias(_SHARE))
        ranking = (
            popular.group_by(_SEG, ITEM)
            .agg(pl.col(_W).sum())
            .select(_SEG, ITEM, (pl.col(_W) / pl.col(_W).sum().over(_SEG)).alias(SCORE))
            .sort([_SEG, SCORE, ITEM], descending=[False, True, False])
            .with_columns(pl.int_range(pl.len(), dtype=pl.Int32).over(_SEG).alias(_POS))
            .collect()
        )
        # Dense codes of the segments that have a ranking: rows of the segment x item matrix.
        codes = ranking.select(_SEG).unique(maintain_order=True).with_row_index(_CODE)
        codes = codes.with_columns(pl.col(_CODE).cast(pl.Int32))
        self.segments_ = codes
        self.ranking_ = ranking.join(codes, on=_SEG).select(_CODE, _POS, ITEM, SCORE)
        weights = self.user_segments_.join(codes, on=_SEG)
        self.user_weights_ = sp.csr_matrix(
            (weights[_SHARE].to_numpy(), (weights[USER].to_numpy(), weights[_CODE].to_numpy())),
            shape=(n_users, codes.height),
            dtype=np.float64,
        )
        if self.filter_seen:
            self.seen_ = interaction_matrix(
                history, n_users=n_users, n_items=n_items, event_weights=self.event_weights
            )
            # Per user, the most seen items met in one of their segments' rankings: fetching
            # that many more than k from each ranking leaves at least k unseen ones.
            per_segment = (
                history.select(USER, ITEM)
                .unique()
                .join(segments, on=key)
                .join(ranking.select(_SEG, ITEM), on=[_SEG, ITEM], how="semi")
                .group_by(USER, _SEG)
                .len()
                .group_by(USER)
                .agg(pl.col("len").max())
            )
            self.extra_ = np.zeros(n_users, dtype=np.int64)
            self.extra_[per_segment[USER].to_numpy()] = per_segment["len"].to_numpy()

    def _generate(self, users: np.ndarray, k: int) -> pl.DataFrame:
        # score = user weights (users x segments) @ item shares (segments x items), with each
        # segment's ranking cut at the depth a user can need: k, plus the most items the user
        # has seen in one of their segments. Users are grouped by that depth, rounded up to
        # k + 2**j - 1, so that one heavy user does not deepen everyone's lists.
        users = users[users < self.user_weights_.shape[0]]
        users = users[np.diff(self.user_weights_.indptr)[users] > 0]
        extra = self.extra_[users] if self.filter_seen else np.zeros(users.size, dtype=np.int64)
        depth_class = np.ceil(np.log2(extra + 1)).astype(np.int64)
        segments_per_user = int(np.diff(self.user_weights_.indptr).max(initial=1))
        blocks = []  # (batch, shares): scored side by side, like the other matrix sources
        for depth in np.unique(depth_class):
            cut = self.ranking_.filter(pl.col(_POS) < k + 2 ** int(depth) - 1)
            shares = sp.csr_matrix(
                (cut[SCORE].to_numpy(), (cut[_CODE].to_numpy(), cut[ITEM].to_numpy())),
                shape=(self.user_weights_.shape[1], self.n_items_),
            )
            group = users[depth_class == depth]
            per_user = int(np.diff(shares.indptr).max(initial=1)) * segments_per_user
            size = max(1, min(MAX_BATCH_USERS, BATCH_CELLS // per_user))
            blocks += [
                (group[start : start + size], shares) for start in range(0, group.size, size)
            ]

        def score(block: tuple[np.ndarray, sp.csr_matrix]) -> tuple[np.ndarray, ...]:
            batch, shares = block
            exclude = self.seen_[batch] if self.filter_seen else None
            return top_k_sparse(batch, self.user_weights_[batch] @ shares, k, exclude=exclude)

        parts = map_batches(score, blocks)
        if not parts:
            return empty_candidates()
        # Depth groups interleave users: one stable sort by user restores the order.
        users_, items, values = (np.concatenate(c) for c in zip(*parts, strict=True))
        order = np.argsort(users_, kind="stable")
        return candidates_from_parts([(users_[order], items[order], values[order])], k)
