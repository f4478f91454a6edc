"""Similarity family (``sim_*``), keyed by (user, item): how close the candidate is to the items
the user touched last.

The user's recent items are their last ``recent_items`` distinct items, most recent first (by
the time of their last touch). Two item-item similarities are aggregated over them, skipping
the candidate itself: the co-visitation weight and the cosine of ALS item factors. Both come
from the fold's fitted candidate sources when the builder is given them (:func:`models_from_sources`;
the pipeline does so), so nothing is fitted or counted twice; otherwise the family counts
co-visits itself (users who touched both items within ``covisit_hours``) and fits its own ALS.
Each is aggregated by max, mean and a recency-weighted mean (weight ``1 / k`` for the k-th most
recent item). Rows are processed in batches of ``batch_rows`` candidates, so memory stays at
``batch_rows x recent_items`` similarities whatever the shard size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from gbrank import columns as C
from gbrank.features.base import (
    FLOAT,
    SEQ,
    Column,
    Family,
    FeatureContext,
    FeatureSpec,
    past,
    user_events,
)

KEYS = [C.USER, C.ITEM]
#: Events per block when counting co-visits (blocks hold whole users).
COVISIT_BLOCK_EVENTS = 1_000_000
MEASURES = ("covisit", "als")
AGGREGATES = ("max", "mean", "wmean")
_AGG_TEXT = {"max": "max", "mean": "mean", "wmean": "recency-weighted mean"}
_MEASURE_TEXT = {"covisit": "co-visitation weight", "als": "ALS cosine"}


def columns(spec: FeatureSpec) -> list[Column]:
    n = spec.recent_items
    cols = [
        Column(
            f"sim_{m}_{a}",
            f"{_AGG_TEXT[a]} {_MEASURE_TEXT[m]} between the item and the user's last {n} items",
        )
        for m in MEASURES
        for a in AGGREGATES
    ]
    cols.append(Column("sim_als_user", "dot product of the ALS user and item factors"))
    return cols


# --------------------------------------------------------------------------- co-visitation


#: Catalogues up to this many items keep item-item similarities in dense matrices (64 MB each at
#: most); larger ones look co-visitation weights up with a hash join and compute cosines from
#: the gathered factors.
DENSE_MAX_ITEMS = 4096


@dataclass(frozen=True)
class CovisitTable:
    """Symmetric co-visitation weights keyed by ``lo * n_items + hi`` (``lo < hi``)."""

    weights: pl.DataFrame  # key Int64, weight Float32
    n_items: int
    # (n_items + 1)^2 with a zero last row and column, when the catalogue is small.
    dense: np.ndarray | None = None

    @classmethod
    def of(cls, keys: np.ndarray, weights: np.ndarray, n_items: int) -> CovisitTable:
        table = pl.DataFrame({"key": keys, "weight": weights.astype(np.float32)})
        if n_items > DENSE_MAX_ITEMS:
            return cls(table, n_items)
        matrix = np.zeros((n_items + 1, n_items + 1), dtype=np.float32)
        lo, hi = keys // n_items, keys % n_items
        matrix[lo, hi] = weights
        matrix[hi, lo] = weights
        return cls(table, n_items, matrix)

    def lookup(self, items: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Weights between ``items[r]`` and each ``others[r, k]`` (0 where never co-visited
        or where ``others`` is negative)."""
        n = self.n_items
        a = np.where((items >= 0) & (items < n), items, n)[:, None]
        b = np.where((others >= 0) & (others < n), others, n)
        if self.dense is not None:
            return self.dense[a, b]
        a = np.broadcast_to(a, b.shape)
        query = np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b)
        found = pl.DataFrame({"key": query.ravel()}).join(
            self.weights, on="key", how="left", maintain_order="left"
        )
        values = found["weight"].fill_null(0.0).to_numpy().reshape(b.shape)
        return np.where((a < n) & (b < n) & (a != b), values, np.float32(0.0))


def covisit_from_matrix(covis: sp.spmatrix) -> CovisitTable:
    """The symmetric table of a fitted co-visitation source's ``covis_`` (items x items, each
    item's best neighbours): the weight of a pair is the larger of its two directions."""
    covis = sp.csr_matrix(covis, dtype=np.float32)
    upper = sp.triu(covis.maximum(covis.T), k=1).tocoo()
    n_items = covis.shape[0]
    keys = upper.row.astype(np.int64) * n_items + upper.col.astype(np.int64)
    order = np.argsort(keys, kind="stable")
    return CovisitTable.of(keys[order], upper.data[order], n_items)


def covisit_table(ctx: FeatureContext) -> CovisitTable:
    return ctx.memo("covisit", lambda: _covisit_table(ctx), shared=True)


def _covisit_table(ctx: FeatureContext) -> CovisitTable:
    events = (
        past(ctx)
        .select(C.USER, C.ITEM, C.TS)
        .sort(C.USER, C.TS, C.ITEM)
        .select(C.USER, C.ITEM, pl.col(C.TS).dt.epoch("ms").alias("_ms"))
        .collect()
    )
    if events.height == 0:
        return CovisitTable.of(np.zeros(0, np.int64), np.zeros(0, np.float32), 1)
    n_items = int(events[C.ITEM].to_numpy().max()) + 1
    user = events[C.USER].to_numpy()
    item = events[C.ITEM].to_numpy()
    ms = events["_ms"].to_numpy()
    # Inside a run of touches of one item (no other item in between) only the first and the
    # last can be the closest touch to another item's: the middle ones change no pair.
    same_prev = np.r_[False, (user[1:] == user[:-1]) & (item[1:] == item[:-1])]
    same_next = np.r_[same_prev[1:], False]
    keep = ~(same_prev & same_next)
    user, item, ms = user[keep], item[keep], ms[keep]
    window = int(ctx.spec.covisit_hours * 3_600_000)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    bounds = np.r_[starts, user.size]
    lo_idx = 0
    while lo_idx < starts.size:
        # A block of whole users holding about COVISIT_BLOCK_EVENTS events.
        hi_idx = int(np.searchsorted(bounds, bounds[lo_idx] + COVISIT_BLOCK_EVENTS, "right")) - 1
        hi_idx = min(max(hi_idx, lo_idx + 1), starts.size)
        a, b = int(bounds[lo_idx]), int(bounds[hi_idx])
        parts.append(_block_pairs(user[a:b], item[a:b], ms[a:b], window, n_items))
        lo_idx = hi_idx
    keys, counts = _sum_by_key(
        np.concatenate([np.zeros(0, np.int64), *[k for k, _ in parts]]),
        np.concatenate([np.zeros(0, np.int64), *[n for _, n in parts]]),
    )
    return CovisitTable.of(keys, counts.astype(np.float32), n_items)


def _sum_by_key(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys (sorted) and the sum of their counts."""
    if keys.size == 0:
        return keys, counts
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(counts, starts)


def _block_pairs(
    user: np.ndarray, item: np.ndarray, ms: np.ndarray, window: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Item pairs touched by one user within ``window`` ms of each other, counted once per
    user: (pair keys, number of users)."""
    users: list[np.ndarray] = [np.zeros(0, np.int64)]
    keys: list[np.ndarray] = [np.zeros(0, np.int64)]
    alive = np.arange(user.size - 1)
    step = 1
    while alive.size:
        other = alive + step
        inside = other < user.size
        alive, other = alive[inside], other[inside]
        ok = (user[other] == user[alive]) & (ms[other] - ms[alive] <= window)
        # Events are in time order, so once a later event is out of reach so are all after it.
        alive, other = alive[ok], other[ok]
        differ = item[alive] != item[other]
        a, b = item[alive][differ].astype(np.int64), item[other][differ].astype(np.int64)
        users.append(user[alive][differ].astype(np.int64))
        keys.append(np.minimum(a, b) * n_items + np.maximum(a, b))
        step += 1
    pair_user, pair_key = np.concatenate(users), np.concatenate(keys)
    span = n_items * n_items
    if pair_user.size and (int(pair_user.max()) + 1) * span < 2**62:
        # One int64 per (user, pair): a sort finds the distinct ones fastest.
        combined = np.sort(pair_user * span + pair_key)
        distinct = combined[np.r_[True, combined[1:] != combined[:-1]]] % span
    else:
        distinct = pl.DataFrame({"user": pair_user, "key": pair_key}).unique()["key"].to_numpy()
    return _sum_by_key(distinct, np.ones(distinct.size, dtype=np.int64))


# --------------------------------------------------------------------------- ALS


@dataclass(frozen=True)
class Factors:
    users: np.ndarray  # (n_users + 1, k); the last row is zero (unknown users)
    items: np.ndarray  # (n_items + 1, k); the last row is zero (unknown items)
    unit_items: np.ndarray  # items scaled to unit length (zero rows stay zero)
    # Item-item cosines, (n_items + 1)^2, when the catalogue is small.
    cosines: np.ndarray | None = None

    def user_rows(self, codes: np.ndarray) -> np.ndarray:
        n = self.users.shape[0] - 1
        return np.where((codes >= 0) & (codes < n), codes, n)

    def item_rows(self, codes: np.ndarray) -> np.ndarray:
        n = self.items.shape[0] - 1
        return np.where((codes >= 0) & (codes < n), codes, n)

    def cosine(self, items: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Cosines between ``items[r]`` and each ``others[r, k]`` (0 for unknown items)."""
        a, b = self.item_rows(items), self.item_rows(others)
        if self.cosines is not None:
            return self.cosines[a[:, None], b]
        return np.einsum("rk,rnk->rn", self.unit_items[a], self.unit_items[b])


def factors_from_arrays(
    user_factors: np.ndarray, item_factors: np.ndarray, user_items: sp.spmatrix
) -> Factors:
    """:class:`Factors` of fitted ALS factors; users and items without any interaction in
    ``user_items`` get zero rows (they carry only their random start)."""
    users = np.array(user_factors, dtype=np.float32)
    items = np.array(item_factors, dtype=np.float32)
    user_items = sp.csr_matrix(user_items)
    users[np.diff(user_items.indptr) == 0] = 0.0
    items[np.bincount(user_items.indices, minlength=items.shape[0]) == 0] = 0.0
    users = np.vstack([users, np.zeros((1, users.shape[1]), np.float32)])
    items = np.vstack([items, np.zeros((1, items.shape[1]), np.float32)])
    norms = np.linalg.norm(items, axis=1, keepdims=True)
    unit = np.divide(items, norms, out=np.zeros_like(items), where=norms > 0)
    cosines = unit @ unit.T if unit.shape[0] <= DENSE_MAX_ITEMS + 1 else None
    return Factors(users, items, unit, cosines)


def models_from_sources(kinds: Mapping[str, str], load: Callable[[str], Any]) -> dict[str, Any]:
    """The family's models taken from a fold's fitted candidate sources, keyed as
    :func:`als_factors` and :func:`covisit_table` memoise them: the factors of the first ALS
    source and the weights of the first co-visitation source, in ``kinds`` order (source name
    -> kind). ``load(name)`` gives a fitted source; only those two are loaded. What no source
    offers is fitted or counted by the family itself."""
    out: dict[str, Any] = {}
    for name, kind in kinds.items():
        if kind == "als" and "als" not in out:
            source = load(name)
            out["als"] = factors_from_arrays(
                source.user_factors_, source.item_factors_, source.user_items_
            )
        elif kind == "covisit" and "covisit" not in out:
            out["covisit"] = covisit_from_matrix(load(name).covis_)
    return out


def als_factors(ctx: FeatureContext) -> Factors:
    return ctx.memo("als", lambda: _als_factors(ctx), shared=True)


def _als_factors(ctx: FeatureContext) -> Factors:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    spec = ctx.spec
    weights = pl.Series(spec.event_weights, dtype=pl.Float64)
    events = (
        past(ctx)
        .select(C.USER, C.ITEM, C.EVENT)
        .collect()
        .with_columns(
            pl.col(C.EVENT)
            .cast(pl.Int64)
            .replace_strict(list(range(len(weights))), weights.to_list(), return_dtype=pl.Float64)
            .alias("_w")
        )
    )
    if events.height == 0:
        zeros = np.zeros((1, spec.als_factors), dtype=np.float32)
        return Factors(zeros, zeros, zeros, np.zeros((1, 1), np.float32))
    n_users = int(events[C.USER].to_numpy().max()) + 1
    n_items = int(events[C.ITEM].to_numpy().max()) + 1
    matrix = sp.csr_matrix(
        (events["_w"].to_numpy(), (events[C.USER].to_numpy(), events[C.ITEM].to_numpy())),
        shape=(n_users, n_items),
        dtype=np.float64,
    )
    matrix.sum_duplicates()
    # One BLAS thread, as implicit advises, and one solver thread: the model is small, and
    # the cores are better left to the other stages.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=spec.als_factors,
            regularization=spec.als_regularization,
            alpha=spec.als_alpha,
            iterations=spec.als_iterations,
            random_state=spec.seed,
            num_threads=1,
        )
        model.fit(matrix.astype(np.float32), show_progress=False)
    return factors_from_arrays(model.user_factors, model.item_factors, matrix)


# --------------------------------------------------------------------------- aggregation


def recent_items(ctx: FeatureContext) -> tuple[np.ndarray, np.ndarray]:
    """Users (sorted) and their last ``recent_items`` distinct items, most recent first, as a
    ``users x recent_items`` matrix padded with -1."""
    n = ctx.spec.recent_items
    last = (
        user_events(ctx)
        .lazy()
        .group_by(C.USER, C.ITEM)
        .agg(pl.col(SEQ).max())
        .sort([C.USER, SEQ], descending=[False, True])
        .with_columns(pl.int_range(pl.len()).over(C.USER).alias("_k"))
        .filter(pl.col("_k") < n)
        .collect()
    )
    users = np.unique(last[C.USER].to_numpy())
    matrix = np.full((users.size, n), -1, dtype=np.int32)
    rows = np.searchsorted(users, last[C.USER].to_numpy())
    matrix[rows, last["_k"].to_numpy()] = last[C.ITEM].to_numpy()
    return users, matrix


def _aggregate(values: np.ndarray, valid: np.ndarray, weights: np.ndarray) -> list[np.ndarray]:
    """Max, mean and weighted mean of each row's valid entries (NaN when a row has none)."""
    values = np.where(valid, values, np.float32(0.0))
    w = np.where(valid, weights, np.float32(0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        best = np.where(valid, values, -np.inf).max(axis=1)
        mean = values.sum(axis=1) / valid.sum(axis=1)
        wmean = (values * w).sum(axis=1) / w.sum(axis=1)
    best[~valid.any(axis=1)] = np.nan
    return [best, mean, wmean]


def build(ctx: FeatureContext) -> pl.LazyFrame:
    spec = ctx.spec
    cands = ctx.candidates.select(KEYS).collect()
    users, recent = recent_items(ctx)
    covisit = covisit_table(ctx)
    factors = als_factors(ctx)
    weights = (1.0 / np.arange(1, spec.recent_items + 1)).astype(np.float32)
    cand_user = cands[C.USER].to_numpy()
    cand_item = cands[C.ITEM].to_numpy().astype(np.int64)
    # Each candidate's row in the recent-items matrix; -1 for users without history.
    row = np.searchsorted(users, cand_user)
    known = row < users.size
    known[known] = users[row[known]] == cand_user[known]
    row = np.where(known, row, -1)
    recent = np.vstack([recent, np.full((1, spec.recent_items), -1, dtype=recent.dtype)])
    out = {c.name: np.full(cands.height, np.nan, np.float32) for c in columns(spec)}
    for start in range(0, cands.height, max(spec.batch_rows, 1)):
        part = slice(start, start + spec.batch_rows)
        i = cand_item[part]
        mine = recent[row[part]]  # row -1 is the padding row
        valid = (mine >= 0) & (mine != i[:, None])
        batch = {"covisit": covisit.lookup(i, mine), "als": factors.cosine(i, mine)}
        for measure, values in batch.items():
            for a, x in zip(AGGREGATES, _aggregate(values, valid, weights), strict=True):
                out[f"sim_{measure}_{a}"][part] = x
        dot = np.einsum(
            "rk,rk->r",
            factors.users[factors.user_rows(cand_user[part])],
            factors.items[factors.item_rows(i)],
        )
        out["sim_als_user"][part] = np.where(known[part], dot, np.nan)
    frame = cands.with_columns(
        pl.Series(name, values, dtype=FLOAT).fill_nan(None) for name, values in out.items()
    )
    return frame.lazy()


FAMILY = Family(
    name="similarity",
    description="co-visitation and ALS similarity of the item to the user's recent items",
    keys=(C.USER, C.ITEM),
    columns=columns,
    build=build,
    # Off by default: on the quickstart shop it left every NDCG@10 unchanged (the candidate
    # sources already carry item-item similarity) and nearly doubled the stage's time.
    default=False,
)
