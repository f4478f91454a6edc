"""Batched scoring shared by the sources built on ``implicit`` models (ALS, item-kNN).

implicit fits the models; scoring is done here with one matrix product and one vectorised top-k
per batch of users. implicit's own ``recommend`` filters seen items (ALS) or scores users
(item-kNN) in a Python loop over users, which made candidate generation several times slower.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import polars as pl
import scipy.sparse as sp

from gbrank.candidates.base import empty_candidates, event_weight_expr, rank_candidates
from gbrank.columns import ITEM, SCORE, USER

#: Scores (users x items) held at once per batch: 2**24 float32 = 64 MB.
BATCH_CELLS = 1 << 24
MAX_BATCH_USERS = 4096


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
    return matrix.astype(np.float32)


def warm_user_batches(users: np.ndarray, user_items: sp.csr_matrix) -> Iterator[np.ndarray]:
    """Batches of the ``users`` that have at least one interaction in ``user_items``.

    Users outside the matrix or without history get no candidates: their factors or neighbour
    sums carry no information about them.
    """
    n_users, n_items = user_items.shape
    users = users[users < n_users]
    users = users[np.diff(user_items.indptr)[users] > 0]
    size = max(1, min(MAX_BATCH_USERS, BATCH_CELLS // max(n_items, 1)))
    for start in range(0, users.size, size):
        yield users[start : start + size]


def top_k_dense(
    batch: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``k`` finite entries of each row of a dense ``len(batch) x items`` block.

    Excluded items are expected as ``-inf``. Returns flat ``(user, item, score)`` arrays.
    """
    n = min(k, scores.shape[1])
    items = np.argpartition(scores, scores.shape[1] - n, axis=1)[:, -n:]
    best = np.take_along_axis(scores, items, axis=1)
    keep = np.isfinite(best)
    return np.repeat(batch, n)[keep.ravel()], items[keep], best[keep]


def top_k_sparse(
    batch: np.ndarray, scores: sp.csr_matrix, k: int, *, exclude: sp.csr_matrix | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``k`` positive entries of each row of a sparse ``len(batch) x items`` block.

    Entries stored in ``exclude`` (same shape) are dropped. Returns flat ``(user, item, score)``.
    """
    rows = np.repeat(np.arange(batch.size), np.diff(scores.indptr))
    items, values = scores.indices, scores.data
    keep = values > 0
    if exclude is not None:
        keep &= np.asarray(exclude[rows, items]).ravel() == 0
    rows, items, values = rows[keep], items[keep], values[keep]
    # Sort by row, then best score, then item code; the position within the row is the rank.
    order = np.lexsort((items, -values, rows))
    rows, items, values = rows[order], items[order], values[order]
    row_start = np.searchsorted(rows, rows, side="left")
    top = np.arange(rows.size) - row_start < k
    return batch[rows[top]], items[top], values[top]


def candidates_from_parts(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int
) -> pl.DataFrame:
    """Concatenate per-batch ``(user, item, score)`` arrays into a ranked candidate frame."""
    if not parts:
        return empty_candidates()
    users, items, scores = (np.concatenate(column) for column in zip(*parts, strict=True))
    scored = pl.DataFrame(
        {
            USER: users.astype(np.int32),
            ITEM: items.astype(np.int32),
            SCORE: scores.astype(np.float32),
        }
    )
    return rank_candidates(scored, k)
