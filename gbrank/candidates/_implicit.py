"""Helpers shared by the sources built on ``implicit``: the interaction matrix and batched
recommendation turned into a candidate frame."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from gbrank.candidates.base import empty_candidates, event_weight_expr, rank_candidates
from gbrank.columns import ITEM, SCORE, USER

#: Users per ``recommend`` call: bounds the dense users x items score block that implicit's
#: matrix-factorisation top-k builds (1024 x 100k items x 4 bytes = 400 MB at worst).
BATCH_USERS = 1024

#: implicit marks filtered items and padding with -FLT_MAX (and id -1 for padding).
PADDING_SCORE = float(np.finfo(np.float32).min)


def interaction_matrix(
    history: pl.DataFrame, *, n_users: int, n_items: int, event_weights: Sequence[float]
) -> sp.csr_matrix:
    """users x items CSR (float32) of summed event weights; rows are the user codes."""
    weights = history.select(event_weight_expr(event_weights)).to_series().to_numpy()
    matrix = sp.csr_matrix(
        (weights, (history[USER].to_numpy(), history[ITEM].to_numpy())),
        shape=(n_users, n_items),
        dtype=np.float64,  # sum duplicates in float64, store float32 as implicit expects
    )
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix.astype(np.float32)


def recommend_in_batches(
    model: Any,
    user_items: sp.csr_matrix,
    users: np.ndarray,
    k: int,
    *,
    filter_seen: bool,
    min_score: float = PADDING_SCORE,
    filter_items: np.ndarray | None = None,
) -> pl.DataFrame:
    """Call ``model.recommend`` on batches of ``users`` and return ranked candidates.

    Users outside the matrix or without a single interaction get no rows (their factors or
    neighbour sums carry no information). Entries with an item id < 0, a non-finite score or a
    score <= ``min_score`` are padding or filtered items and are dropped.
    """
    users = users[users < user_items.shape[0]]
    users = users[np.diff(user_items.indptr)[users] > 0]
    n = min(k, user_items.shape[1])
    if users.size == 0 or n == 0:
        return empty_candidates()
    user_parts, item_parts, score_parts = [], [], []
    for start in range(0, users.size, BATCH_USERS):
        batch = users[start : start + BATCH_USERS]
        ids, scores = model.recommend(
            batch,
            user_items[batch],
            N=n,
            filter_already_liked_items=filter_seen,
            filter_items=filter_items,
        )
        keep = (ids >= 0) & np.isfinite(scores) & (scores > min_score)
        user_parts.append(np.repeat(batch, ids.shape[1])[keep.ravel()])
        item_parts.append(ids[keep].astype(np.int32))
        score_parts.append(scores[keep].astype(np.float32))
    scored = pl.DataFrame(
        {
            USER: np.concatenate(user_parts),
            ITEM: np.concatenate(item_parts),
            SCORE: np.concatenate(score_parts),
        }
    )
    return rank_candidates(scored, k)
