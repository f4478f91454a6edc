"""Item-kNN: items similar to the user's items (implicit's nearest-neighbour recommenders)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import polars as pl
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender
from implicit.utils import ParameterWarning

from gbrank.candidates._scoring import (
    candidates_from_parts,
    interaction_matrix,
    map_batches,
    top_k_sparse,
    warm_user_batches,
)
from gbrank.candidates.base import EVENT_WEIGHTS, CandidateSource, require_positive

SIMILARITIES = ("cosine", "bm25", "tfidf")


class ItemKNNSource(CandidateSource):
    """Sum of item-item similarities between a candidate and the user's items.

    The similarity is computed on the users x items matrix of summed event weights and keeps
    the ``neighbours`` most similar items per item. ``score(user, item) = sum over the user's
    items j of weight(user, j) * sim(j, item)``. Only items with a positive score are proposed;
    users without history get no rows.

    Parameters:
        similarity: ``"cosine"``, ``"bm25"`` or ``"tfidf"`` (item vectors over users).
        neighbours: similar items kept per item.
        bm25_k1, bm25_b: BM25 saturation and length normalisation (``similarity="bm25"``).
        filter_seen: drop the items the user interacted with in the history.
        num_threads: implicit's threads for the similarity; 0 uses every core.
        event_weights: weight of each event type (view, click, cart, purchase).

    >>> from datetime import datetime
    >>> history = pl.DataFrame(
    ...     {"user": [0, 0, 1], "item": [0, 1, 0], "event": [0, 0, 0],
    ...      "ts": [datetime(2024, 1, 30)] * 3},
    ...     schema_overrides={"user": pl.Int32, "item": pl.Int32, "event": pl.Int8},
    ... )
    >>> source = ItemKNNSource().fit(history, n_users=2, n_items=2, as_of=datetime(2024, 2, 1))
    >>> source.generate([1], k=5)["item"].to_list()  # item 1 was co-consumed with item 0
    [1]
    """

    kind = "itemknn"

    def __init__(
        self,
        *,
        name: str = "itemknn",
        similarity: str = "cosine",
        neighbours: int = 100,
        bm25_k1: float = 1.2,
        bm25_b: float = 0.75,
        filter_seen: bool = True,
        num_threads: int = 0,
        event_weights: Sequence[float] = EVENT_WEIGHTS,
    ) -> None:
        self.name = name
        self.similarity = similarity
        self.neighbours = neighbours
        self.bm25_k1 = bm25_k1
        self.bm25_b = bm25_b
        self.filter_seen = filter_seen
        self.num_threads = num_threads
        self.event_weights = event_weights

    def check_params(self) -> None:
        super().check_params()
        if self.similarity not in SIMILARITIES:
            raise ValueError(
                f"similarity must be one of {', '.join(SIMILARITIES)}, got {self.similarity!r}"
            )
        require_positive(self.neighbours, "neighbours", integer=True)
        require_positive(self.bm25_k1, "bm25_k1", zero=True)
        require_positive(self.bm25_b, "bm25_b", zero=True)
        if self.bm25_b > 1:
            raise ValueError(f"bm25_b must be <= 1, got {self.bm25_b!r}")
        require_positive(self.num_threads, "num_threads", integer=True, zero=True)

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
        self.user_items_ = interaction_matrix(
            history, n_users=n_users, n_items=n_items, event_weights=self.event_weights
        )
        if self.similarity == "bm25":
            model = BM25Recommender(
                K=self.neighbours, K1=self.bm25_k1, B=self.bm25_b, num_threads=self.num_threads
            )
        elif self.similarity == "tfidf":
            model = TFIDFRecommender(K=self.neighbours, num_threads=self.num_threads)
        else:
            model = CosineRecommender(K=self.neighbours, num_threads=self.num_threads)
        with warnings.catch_warnings():
            # implicit re-weights the matrix into COO and then warns about its own conversion.
            warnings.simplefilter("ignore", ParameterWarning)
            model.fit(self.user_items_, show_progress=False)
        self.model_ = model
        self.similarity_ = model.similarity.tocsr()

    def _generate(self, users: np.ndarray, k: int) -> pl.DataFrame:
        # Row similarity[j] holds the neighbours of item j, so one product scores a whole batch:
        # score(u, i) = sum_j user_items[u, j] * similarity[j, i], as implicit's scorer does.
        similarity, user_items = self.similarity_, self.user_items_

        def score(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            block = user_items[batch]
            exclude = block if self.filter_seen else None
            return top_k_sparse(batch, block @ similarity, k, exclude=exclude)

        return candidates_from_parts(map_batches(score, warm_user_batches(users, user_items)), k)
