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

    Excluded items are expected as ``-inf``; equal scores go to the smaller item code. Returns
    flat ``(user, item, score)`` arrays.
    """
    n_rows, n_items = scores.shape
    n = min(k, n_items)
    items = np.argpartition(scores, n_items - n, axis=1)[:, -n:]
    best = np.take_along_axis(scores, items, axis=1)
    # argpartition picks any of the items that tie with the n-th best score. Rows where such a
    # tie crosses the cut are picked again: every item above the cut, then the tied ones by code.
    cut = best.min(axis=1, keepdims=True)
    crossing = (scores == cut).sum(axis=1) > (best == cut).sum(axis=1)
    crossing &= np.isfinite(cut[:, 0])
    if crossing.any():
        rows = np.flatnonzero(crossing)
        block, block_cut = scores[rows], cut[rows]
        above_row, above_item = np.nonzero(block > block_cut)
        tie_row, tie_item = np.nonzero(block == block_cut)  # row-major: items ascending
        room = n - np.bincount(above_row, minlength=rows.size)
        first_tie = np.searchsorted(tie_row, tie_row)
        fill = np.arange(tie_row.size) - first_tie < room[tie_row]
        picked_row = np.concatenate([above_row, tie_row[fill]])
        picked_item = np.concatenate([above_item, tie_item[fill]])
        order = np.argsort(picked_row, kind="stable")
        items[rows] = picked_item[order].reshape(rows.size, n)
        best[rows] = np.take_along_axis(block, items[rows], axis=1)
    keep = np.isfinite(best)
    return np.repeat(batch, n)[keep.ravel()], items[keep], best[keep]


def top_k_sparse(
    batch: np.ndarray, scores: sp.csr_matrix, k: int, *, exclude: sp.csr_matrix | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``k`` positive entries of each row of a sparse ``len(batch) x items`` block.

    Entries stored in ``exclude`` (same shape) are dropped. Scores are compared as float32, the
    precision of the output, and equal scores go to the smaller item code. Returns flat
    ``(user, item, score)`` arrays.
    """
    scores.sort_indices()
    rows = np.repeat(np.arange(batch.size), np.diff(scores.indptr))
    items, values = scores.indices, scores.data.astype(np.float32)
    keep = values > 0
    if exclude is not None and rows.size:
        keep &= np.asarray(exclude[rows, items]).ravel() == 0
    rows, items, values = rows[keep], items[keep], values[keep]
    # One stable sort on a packed key (row, then descending score) instead of a lexsort: the
    # bits of a positive float32 order like the float, and inverting them reverses the order.
    # Items are ascending within a row, so the stable sort leaves equal scores by item code.
    descending = np.invert(values.view(np.uint32)).astype(np.uint64)
    order = np.argsort((rows.astype(np.uint64) << np.uint64(32)) | descending, kind="stable")
    rows, items, values = rows[order], items[order], values[order]
    per_row = np.bincount(rows, minlength=batch.size)
    position = np.arange(rows.size) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    top = position < k
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
