"""Assemble the feature families onto candidate rows, one shard of users at a time.

:class:`FeatureBuilder` holds one history and one ``as_of``. Its :meth:`~FeatureBuilder.build`
takes the candidate rows of a shard (one row per (user, item), with the sources' score and
rank columns) and left-joins every selected family onto them. What does not depend on the
shard's users (the item family, the co-visitation table, the ALS factors) is computed on the
first shard and reused by the next ones. Counts and shares with no event become 0; recencies
and ratios of something that never happened stay null.

Example:
    >>> from datetime import datetime
    >>> history = pl.DataFrame(
    ...     {"user": [0, 0, 1], "item": [1, 2, 1], "event": [0, 3, 1],
    ...      "ts": [datetime(2024, 1, 30), datetime(2024, 1, 31), datetime(2024, 1, 31)]},
    ...     schema_overrides={"user": pl.Int32, "item": pl.Int32, "event": pl.Int8},
    ... )
    >>> cands = pl.DataFrame({"user": [0, 1], "item": [2, 2]},
    ...                      schema={"user": pl.Int32, "item": pl.Int32})
    >>> frame = build_features(cands, history, datetime(2024, 2, 1), families=["user_item"])
    >>> frame.select("user", "item", "ui_n_purchase").rows()
    [(0, 2, 1), (1, 2, 0)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from gbrank import columns as C
from gbrank.features.base import (
    BRAND,
    CATEGORY,
    PRICE,
    Column,
    Family,
    FeatureContext,
    FeatureSpec,
    item_table,
)
from gbrank.features.families.source import candidate_sources, passthrough
from gbrank.features.registry import DEFAULT_FAMILIES, resolve
from gbrank.features.sharding import split_shards

if TYPE_CHECKING:
    from gbrank.config import Config

KEYS = (C.USER, C.ITEM)


class FeatureBuilder:
    """Features of candidate rows from the events strictly before ``as_of``.

    Parameters:
        history: events (``user``, ``item``, ``ts``, ``event``, optionally ``session``,
            ``value``, ``quantity``); rows at or after ``as_of`` are ignored.
        as_of: the fold's cut-off.
        items: coded item attributes (``item`` plus ``category``, ``brand``, ``price``...).
        users: coded user attributes (carried in the context for families that use them).
        spec: windows and other knobs; sources and item attributes are read from the data.
        families: names of the families to build (default: the default ones, as in the config).
        shared: a cache of shard-independent results to reuse (one builder keeps its own).
    """

    def __init__(
        self,
        history: pl.DataFrame | pl.LazyFrame,
        as_of: datetime,
        *,
        items: pl.DataFrame | None = None,
        users: pl.DataFrame | None = None,
        spec: FeatureSpec | None = None,
        families: Sequence[str] | None = None,
        shared: dict[str, Any] | None = None,
    ) -> None:
        self.history = history.lazy()
        self.as_of = as_of
        self.items = items
        self.users = users
        self.spec = spec or FeatureSpec()
        self.families = resolve(families if families is not None else DEFAULT_FAMILIES)
        self.shared: dict[str, Any] = {} if shared is None else shared

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        history: pl.DataFrame | pl.LazyFrame,
        as_of: datetime,
        *,
        items: pl.DataFrame | None = None,
        users: pl.DataFrame | None = None,
        shared: dict[str, Any] | None = None,
    ) -> FeatureBuilder:
        return cls(
            history,
            as_of,
            items=items,
            users=users,
            spec=FeatureSpec.from_config(cfg),
            families=cfg.features.families,
            shared=shared,
        )

    def spec_for(self, candidate_columns: Sequence[str]) -> FeatureSpec:
        """The spec with what the data offers: the sources on the candidate rows and the item
        attributes of the items table (a price may also come from the events)."""
        attrs = {PRICE}
        if self.items is not None:
            attrs |= {a for a in (CATEGORY, BRAND) if a in self.items.columns}
        return dataclasses.replace(
            self.spec,
            sources=tuple(candidate_sources(list(candidate_columns))),
            item_attributes=frozenset(attrs),
        )

    def active(self, spec: FeatureSpec) -> list[Family]:
        return [f for f in self.families if f.available(spec)]

    def declared(self, spec: FeatureSpec) -> list[Column]:
        return [c for f in self.active(spec) for c in f.columns(spec)]

    def build(self, candidates: pl.DataFrame) -> pl.DataFrame:
        """The candidate rows of one shard with every feature column, sorted by user, item."""
        spec = self.spec_for(candidates.columns)
        families = self.active(spec)
        # Sorted once here, while the rows are narrow; joins then keep this order.
        frame = candidates.sort(*KEYS)
        ctx = FeatureContext(
            history=self.history,
            as_of=self.as_of,
            candidates=frame.lazy(),
            items=self.items,
            users=self.users,
            spec=spec,
            shared=self.shared,
        )
        if not any(f.name == "source" for f in families):
            frame = frame.drop(*[c for c in passthrough(spec) if c in candidates.columns])
        extra = sorted({k for f in families for k in f.keys} - set(KEYS))
        if extra:
            attrs = item_table(ctx).select(C.ITEM, *extra)
            frame = frame.join(attrs, on=C.ITEM, how="left", maintain_order="left")
        for family in families:
            if family.per_user:
                part = family.build(ctx).collect()
            else:
                # Shard-independent: computed once, reused by every shard.
                part = ctx.memo(f"family:{family.name}", family.build(ctx).collect, shared=True)
            frame = _attach(frame, part, list(family.keys))
        out = frame.drop(extra)
        declared = [c for f in families for c in f.columns(spec)]
        out = out.with_columns(
            pl.col(c.name).fill_null(c.fill) for c in declared if c.fill is not None
        ).cast({c.name: c.dtype for c in declared if c.dtype is not None})
        return out

    def build_shards(self, candidates: pl.DataFrame, n_shards: int) -> Iterator[pl.DataFrame]:
        """Feature frames shard by shard (users split by a stable hash of their code)."""
        for shard in split_shards(candidates, n_shards):
            yield self.build(shard)


def _attach(frame: pl.DataFrame, part: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Left-join ``part`` on ``keys`` without copying the frame's (many) existing columns:
    only the keys are looked up, to find each row's row of ``part``, and the new columns are
    gathered and stacked on. A part already aligned row by row is stacked on directly."""
    values = part.drop(keys)
    aligned = part.height == frame.height and all(part[k].equals(frame[k]) for k in keys)
    if not aligned:
        values = values.select(pl.all().gather(_part_rows(frame, part, keys)))
    return frame.hstack(values.get_columns())


#: Largest code packed into a two-column key (each half holds 31 bits).
_PACKED_MAX = (1 << 31) - 1


def _part_rows(frame: pl.DataFrame, part: pl.DataFrame, keys: list[str]) -> pl.Series:
    """For each row of ``frame``, the row of ``part`` with the same ``keys`` (null where none;
    ``part`` holds each key once), by a left join. Two integer code columns are first packed
    into one int64 key: a join on it is faster than on the two columns (measured on 8M
    candidate rows at 10M events: 0.26 s against 0.34 s for user x item, 0.14 s against
    0.23-0.28 s for user x category or brand)."""
    packed = _packed_keys(frame, part, keys)
    left, right, on = (
        (frame.select(keys), part.select(keys), keys)
        if packed is None
        else (packed[0].to_frame("_key"), packed[1].to_frame("_key"), ["_key"])
    )
    return left.join(
        right.with_row_index("_row"), on=on, how="left", maintain_order="left"
    ).get_column("_row")


def _packed_keys(
    frame: pl.DataFrame, part: pl.DataFrame, keys: list[str]
) -> tuple[pl.Series, pl.Series] | None:
    """``frame``'s and ``part``'s two key columns as one int64 key each (``first << 31 |
    second``, null where either is), or None when the keys are not two columns of
    non-negative integer codes below 2**31."""
    if len(keys) != 2:
        return None
    for table in (frame, part):
        for key in keys:
            column = table[key]
            if not column.dtype.is_integer():
                return None
            low, high = column.min(), column.max()
            if low is not None and (low < 0 or high > _PACKED_MAX):  # type: ignore[operator]
                return None
    first, second = keys
    pack = (pl.col(first).cast(pl.Int64) * (1 << 31) + pl.col(second).cast(pl.Int64)).alias("_key")
    return frame.select(pack).to_series(), part.select(pack).to_series()


def build_features(
    candidates: pl.DataFrame,
    history: pl.DataFrame | pl.LazyFrame,
    as_of: datetime,
    items: pl.DataFrame | None = None,
    users: pl.DataFrame | None = None,
    *,
    spec: FeatureSpec | None = None,
    families: Sequence[str] | None = None,
    n_shards: int = 1,
    shared: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """Every selected family joined onto the candidate rows (one row per (user, item)),
    sorted by user and item; built in ``n_shards`` shards and concatenated. ``shared`` is a
    cache of shard-independent results to reuse across calls."""
    builder = FeatureBuilder(
        history, as_of, items=items, users=users, spec=spec, families=families, shared=shared
    )
    parts = list(builder.build_shards(candidates, n_shards))
    if len(parts) <= 1:
        return parts[0] if parts else builder.build(candidates)
    return pl.concat(parts).sort(*KEYS)


def feature_columns(frame: pl.DataFrame) -> list[str]:
    """The model's input columns: everything but keys and labels, in frame order."""
    skip = {C.USER, C.ITEM, C.GRADE, *(C.label_col(t) for t in C.TARGETS)}
    return [c for c in frame.columns if c not in skip]
