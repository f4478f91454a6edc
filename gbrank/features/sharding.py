"""Shards: users split by a stable hash of their code, so features are built (and written) a
bounded number of candidate rows at a time.

The hash is a splitmix64 finalizer of the user code: the same user always lands in the same
shard, whatever the library version, the row order or the other users.

Example:
    >>> shard_of(np.array([0, 1, 2, 3]), 1).tolist()
    [0, 0, 0, 0]
    >>> plan_shards(rows=5_000_000, shards=0, shard_rows=2_000_000)
    3
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import polars as pl

from gbrank import columns as C


def _mix(codes: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = codes.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def shard_of(users: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard (0 .. n_shards - 1) of each user code."""
    if n_shards <= 1:
        return np.zeros(len(users), dtype=np.int64)
    return (_mix(np.asarray(users)) % np.uint64(n_shards)).astype(np.int64)


def plan_shards(rows: int, shards: int, shard_rows: int) -> int:
    """``shards`` when set, else enough shards for about ``shard_rows`` rows each."""
    if shards > 0:
        return shards
    return max(1, math.ceil(rows / max(shard_rows, 1)))


def split_shards(candidates: pl.DataFrame, n_shards: int) -> Iterator[pl.DataFrame]:
    """The candidate rows of each shard in turn (empty shards are skipped)."""
    if n_shards <= 1:
        yield candidates
        return
    shard = pl.Series("_shard", shard_of(candidates[C.USER].to_numpy(), n_shards))
    for s in range(n_shards):
        part = candidates.filter(shard == s)
        if part.height:
            yield part
