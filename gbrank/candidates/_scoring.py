"""Batched scoring shared by the sources built on ``implicit`` models (ALS, BPR, item-kNN).

implicit fits the models; scoring is done here with one matrix product and one vectorised top-k
per batch of users. implicit's own ``recommend`` filters seen items (ALS) or scores users
(item-kNN) in a Python loop over users, which made candidate generation several times slower.
"""

from __future__ import annotations

import os
import threading
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import polars as pl
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from gbrank.candidates.base import CandidateSource, empty_candidates, event_weight_expr
from gbrank.columns import ITEM, RANK, SCORE, USER

#: Scores (users x items) held at once per batch: 2**24 float32 = 64 MB.
BATCH_CELLS = 1 << 24
MAX_BATCH_USERS = 4096

#: Most threads that score batches side by side (see ``map_batches``).
MAX_SCORING_THREADS = 8

T = TypeVar("T")
R = TypeVar("R")


def scoring_threads() -> int:
    """Threads for ``map_batches``: the cores this process may run on, at most
    ``MAX_SCORING_THREADS``, or ``POLARS_MAX_THREADS`` when set lower (one setting caps both)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = os.environ.get("POLARS_MAX_THREADS", "")
    if limit.isdigit() and int(limit) > 0:
        cores = min(cores or 1, int(limit))
    return max(1, min(cores or 1, MAX_SCORING_THREADS))


def map_batches(fn: Callable[[T], R], batches: Iterable[T]) -> list[R]:
    """``[fn(batch) for batch in batches]``, run on ``scoring_threads()`` threads (see
    ``imap_batches``)."""
    return list(imap_batches(fn, batches))


def imap_batches(fn: Callable[[T], R], batches: Iterable[T]) -> Iterator[R]:
    """``fn(batch)`` for each batch, in order, run on ``scoring_threads()`` threads with at
    most one batch per thread ahead of the one the caller is reading (so memory holds a few
    batches' work, not all of them).

    The batch functions spend their time in SciPy's sparse products and NumPy's sorts,
    partitions and gathers, which release the GIL: two threads score item-kNN batches 1.94x
    faster than one on 2 cores (measured at 10M events). Each batch is computed alone, so the
    results are the same whatever the number of threads. BLAS is pinned to one thread
    meanwhile, so that the dense products of several threads do not each start a thread per
    core.
    """
    n = scoring_threads()
    if n <= 1:
        yield from map(fn, batches)
        return
    with threadpool_limits(1, "blas"), ThreadPoolExecutor(n) as pool:
        pending: deque[Future[R]] = deque()
        for batch in batches:
            pending.append(pool.submit(fn, batch))
            if len(pending) > n:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


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


def warm_user_batches(
    users: np.ndarray, user_items: sp.csr_matrix, *, n_columns: int | None = None
) -> Iterator[np.ndarray]:
    """Batches of the ``users`` that have at least one interaction in ``user_items``.

    Users outside the matrix or without history get no candidates: their factors or neighbour
    sums carry no information about them. A batch holds at most ``BATCH_CELLS`` scores of
    ``n_columns`` items each (default: every item of ``user_items``).
    """
    n_users, n_items = user_items.shape
    users = users[users < n_users]
    users = users[np.diff(user_items.indptr)[users] > 0]
    width = n_items if n_columns is None else n_columns
    size = max(1, min(MAX_BATCH_USERS, BATCH_CELLS // max(width, 1)))
    for start in range(0, users.size, size):
        yield users[start : start + size]


def top_k_dense(
    batch: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``k`` finite entries of each row of a dense ``len(batch) x items`` block.

    Excluded items are expected as ``-inf``; equal scores go to the smaller item code. Returns
    flat ``(user, item, score)`` arrays sorted by row, then score descending, then item code.
    """
    n_rows, n_items = scores.shape
    if n_items // _GROUP <= 2 * k:
        positions, best = _top_k_exact(scores, k)
        items = positions
    else:
        columns, survivors = _survivors(scores, k)
        positions, best = _top_k_exact(survivors, k)
        items = np.take_along_axis(columns, positions, axis=1)
    keep = np.isfinite(best)
    return np.repeat(batch, best.shape[1])[keep.ravel()], items[keep], best[keep]


#: Columns per group in the prefilter of ``top_k_dense``.
_GROUP = 16


def _survivors(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's entries that can be in its top ``k``, packed left: ``(columns, scores)``.

    A full partial sort of every row (``argpartition``) costs several times the matrix product
    that made the scores. Instead the columns are cut into groups (column ``j`` goes to group
    ``j mod n_groups``) and each group's maximum is taken, a fast reduction over contiguous
    memory. The k-th largest group maximum is at most the k-th largest entry (the maxima of k
    groups are k distinct entries), so every entry of the true top k, ties at the cut included,
    is >= it. Only the groups whose maximum reaches it are read again. Typically only a little
    over ``k`` entries per row pass, in item order; rows with fewer are padded with ``-inf``.
    """
    n_rows, n_items = scores.shape
    n_groups = n_items // _GROUP
    # A view of the first n_groups * _GROUP columns as (rows, _GROUP, n_groups); reshaping
    # the column slice would copy the whole block whenever some columns are left over.
    row_stride, column_stride = scores.strides
    grouped = np.lib.stride_tricks.as_strided(
        scores,
        shape=(n_rows, _GROUP, n_groups),
        strides=(row_stride, n_groups * column_stride, column_stride),
        writeable=False,
    )
    group_max = grouped.max(axis=1)
    if n_groups * _GROUP < n_items:  # the leftover columns join group 0
        np.maximum(group_max[:, 0], scores[:, n_groups * _GROUP :].max(axis=1), out=group_max[:, 0])
    cut = np.partition(group_max, n_groups - k, axis=1)[:, n_groups - k]
    # -inf marks excluded items: never let them through, even when a row has fewer than k
    # finite entries.
    cut = np.maximum(cut, np.finfo(scores.dtype).min)
    # Only the groups whose maximum reaches the cut can hold a survivor (a little over k of
    # them per row): their columns are gathered and compared instead of the whole block
    # (20-25% less time for this step on 336 x 50k ALS scores, same output).
    passing = np.flatnonzero(group_max >= cut[:, None])  # flat: faster than 2-D nonzero
    group_rows, groups = np.divmod(passing, n_groups)
    rows = np.repeat(group_rows, _GROUP)
    columns = (groups[:, None] + n_groups * np.arange(_GROUP)).ravel()
    if n_groups * _GROUP < n_items:  # group 0's leftover columns, where group 0 is gathered
        zero = group_rows[groups == 0]
        leftover = np.arange(n_groups * _GROUP, n_items)
        rows = np.concatenate([rows, np.repeat(zero, leftover.size)])
        columns = np.concatenate([columns, np.tile(leftover, zero.size)])
    values = scores.ravel()[rows * n_items + columns]  # a C-ordered block: flat gather
    keep = values >= cut[rows]
    rows, columns, values = rows[keep], columns[keep], values[keep]
    order = np.argsort(rows * n_items + columns)  # by row, then item
    rows, columns, values = rows[order], columns[order], values[order]
    counts = np.bincount(rows, minlength=n_rows)
    slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    width = max(int(counts.max()) if counts.size else 0, 1)
    packed = np.full((n_rows, width), -np.inf, dtype=scores.dtype)
    packed[rows, slot] = values
    packed_columns = np.zeros((n_rows, width), dtype=np.int64)
    packed_columns[rows, slot] = columns
    return packed_columns, packed


def _top_k_exact(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and values of each row's best ``k`` entries, ties to the smaller position.

    Rows come back sorted by score descending, then position; ``-inf`` entries sort last.
    """
    n_rows, n_items = scores.shape
    n = min(k, n_items)
    if n_items <= 4 * k:
        # Narrow rows (the prefilter's survivors): a stable sort of the whole row settles ties
        # by position directly and costs less than a partial sort followed by the tie repair.
        order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        return order, np.take_along_axis(scores, order, axis=1)
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
    # Order each row by position, then stably by score descending.
    by_position = np.argsort(items, axis=1)
    items = np.take_along_axis(items, by_position, axis=1)
    best = np.take_along_axis(best, by_position, axis=1)
    order = np.argsort(-best, axis=1, kind="stable")
    return np.take_along_axis(items, order, axis=1), np.take_along_axis(best, order, axis=1)


#: Bits of the packed sort key of ``top_k_sparse``: row, inverted float32 score, item.
_ROW_BITS, _ITEM_BITS = 12, 20


def top_k_sparse(
    batch: np.ndarray, scores: sp.csr_matrix, k: int, *, exclude: sp.csr_matrix | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``k`` positive entries of each row of a sparse ``len(batch) x items`` block.

    Entries stored in ``exclude`` (same shape) are dropped. Scores are compared as float32, the
    precision of the output, and equal scores go to the smaller item code. Returns flat
    ``(user, item, score)`` arrays sorted by row, then score descending, then item code.
    """
    n_rows, n_items = scores.shape
    if exclude is not None and scores.nnz and n_rows * n_items > BATCH_CELLS:
        # Excluded entries become stored zeros, dropped with the other non-positive ones.
        scores = scores - scores.multiply(exclude != 0)
        exclude = None
    values = scores.data.astype(np.float32)
    keep = values > 0
    rows = np.repeat(np.arange(n_rows, dtype=np.uint64), np.diff(scores.indptr))
    if exclude is not None and scores.nnz:
        # A block of at most BATCH_CELLS: a dense mask of the excluded cells is cheaper than
        # sparse arithmetic or indexing (the excluded entries are few, the scores many).
        mask = np.zeros((n_rows, n_items), dtype=np.bool_)
        stored = exclude.data != 0
        ex_rows = np.repeat(np.arange(n_rows), np.diff(exclude.indptr))[stored]
        mask[ex_rows, exclude.indices[stored]] = True
        keep &= ~mask[rows.astype(np.intp), scores.indices]
    rows = rows[keep]
    items, values = scores.indices[keep], values[keep]
    # The bits of a positive float32 order like the float; inverted, they order descending.
    descending = np.invert(values.view(np.uint32)).astype(np.uint64)
    if n_rows <= 1 << _ROW_BITS and n_items <= 1 << _ITEM_BITS:
        # Row, descending score and item code packed in one 64-bit key: one plain sort of the
        # keys orders everything, ties by item code included, and the key decodes back.
        key = (rows << np.uint64(32 + _ITEM_BITS)) | (descending << np.uint64(_ITEM_BITS))
        key |= items.astype(np.uint64)
        key.sort()
        rows = (key >> np.uint64(32 + _ITEM_BITS)).astype(np.int64)
        items = (key & np.uint64((1 << _ITEM_BITS) - 1)).astype(np.int32)
        bits = (key >> np.uint64(_ITEM_BITS)) & np.uint64(0xFFFFFFFF)
        values = np.invert(bits.astype(np.uint32)).view(np.float32)
    else:
        # Wider blocks: a stable sort on (row, descending score) over items in code order.
        by_item = np.lexsort((items, rows))
        rows, items, descending = rows[by_item], items[by_item], descending[by_item]
        order = np.argsort((rows << np.uint64(32)) | descending, kind="stable")
        rows, items = rows[order].astype(np.int64), items[order]
        values = np.invert(descending[order].astype(np.uint32)).view(np.float32)
    per_row = np.bincount(rows, minlength=n_rows)
    position = np.arange(rows.size) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    top = position < k
    return batch[rows[top]], items[top], values[top]


def candidates_from_parts(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int
) -> pl.DataFrame:
    """Concatenate per-batch ``(user, item, score)`` arrays into a ranked candidate frame.

    Each part must be sorted by user, then score descending, then item code, with at most
    ``k`` rows per user, and the parts must follow each other in user order, as
    ``top_k_dense`` and ``top_k_sparse`` over ``warm_user_batches`` produce them. The ranks are
    then the positions within each user, with no sort of the whole frame.
    """
    if not parts:
        return empty_candidates()
    users, items, scores = (np.concatenate(column) for column in zip(*parts, strict=True))
    if users.size == 0:
        return empty_candidates()
    starts = np.flatnonzero(np.diff(users, prepend=users[0] - 1))
    counts = np.diff(starts, append=users.size)
    ranks = np.arange(1, users.size + 1) - np.repeat(starts, counts)
    if np.any(np.diff(users) < 0) or ranks.max() > k:
        raise RuntimeError("candidate parts must come in user order, at most k per user")
    return pl.DataFrame(
        {
            USER: users.astype(np.int32, copy=False),
            ITEM: items.astype(np.int32, copy=False),
            SCORE: scores.astype(np.float32, copy=False),
            RANK: ranks.astype(np.int32),
        }
    )


def factor_candidates(
    users: np.ndarray,
    k: int,
    *,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    user_items: sp.csr_matrix,
    filter_seen: bool,
) -> pl.DataFrame:
    """Top ``k`` items by ``user_factors[u] @ item_factors[i]`` for the warm ``users``.

    Items without any interaction in ``user_items`` are never proposed: their factors are only
    the random start of the fit. They are left out of the product altogether, which also saves
    their share of its cost. With ``filter_seen``, each user's items are set to ``-inf``.
    """
    n_items = user_items.shape[1]
    interacted = np.bincount(user_items.indices, minlength=n_items) > 0
    warm_items = np.flatnonzero(interacted).astype(np.int32)  # int32 parts concatenate as is
    column_of = np.full(n_items, -1, dtype=np.int64)
    column_of[warm_items] = np.arange(warm_items.size)
    # Contiguous float32 copies: a transposed view or float64 would slow every product down.
    warm_factors = np.ascontiguousarray(item_factors[warm_items], dtype=np.float32)
    user_factors = np.asarray(user_factors, dtype=np.float32)
    # One score buffer per thread for all its batches: a fresh 64 MB block per batch would be
    # mapped and zeroed by the kernel page by page, a fifth of the product's own time.
    local = threading.local()

    def score(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        buffer = getattr(local, "buffer", None)
        if buffer is None or buffer.shape[0] < batch.size:
            buffer = local.buffer = np.empty((batch.size, warm_items.size), dtype=np.float32)
        scores = np.matmul(user_factors[batch], warm_factors.T, out=buffer[: batch.size])
        if filter_seen:
            seen = user_items[batch]
            rows = np.repeat(np.arange(batch.size), np.diff(seen.indptr))
            scores[rows, column_of[seen.indices]] = -np.inf  # seen items are all warm
        users_, columns, values = top_k_dense(batch, scores, k)
        return users_, warm_items[columns], values

    parts = map_batches(score, warm_user_batches(users, user_items, n_columns=warm_items.size))
    return candidates_from_parts(parts, k)


class FactorModelSource(CandidateSource):
    """Shared fit/score of the implicit matrix-factorisation sources (ALS, BPR).

    Subclasses build their unfitted implicit model in ``_make_model``; fitting runs with BLAS
    pinned to one thread, as implicit advises (its solvers run their own threads).
    """

    filter_seen: bool

    @abstractmethod
    def _make_model(self, shape: tuple[int, int]) -> Any:
        """The implicit model with this source's parameters, to fit on a ``shape`` (users x
        items) matrix."""

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
        # The model is built inside the limit too: implicit checks the BLAS threads on __init__.
        with threadpool_limits(1, "blas"):
            model = self._make_model(self.user_items_.shape)
            model.fit(self.user_items_, show_progress=False)
        self.model_ = model
        # What scoring needs, as plain arrays (the saved state; see candidates.state).
        self.user_factors_ = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)

    def _generate(self, users: np.ndarray, k: int) -> pl.DataFrame:
        # Scoring runs no implicit threads, so the product may use every BLAS thread (1.3-1.5x
        # faster on 2 cores). A score's last bits may depend on how many users the product
        # holds (BLAS's kernels for the rows at a block's edge), so a near tie can order two
        # items differently in another batch size; the same batches give the same lists.
        return factor_candidates(
            users,
            k,
            user_factors=self.user_factors_,
            item_factors=self.item_factors_,
            user_items=self.user_items_,
            filter_seen=self.filter_seen,
        )
