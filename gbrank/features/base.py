"""What every feature family shares: the column and family declarations, the build context and
the point-in-time views of the history that several families read.

A family is a pure function ``(FeatureContext) -> pl.LazyFrame`` keyed by some of the candidate
row's keys (user, item, category, brand). It reads the history only through :func:`past` (or
the helpers built on it), which keeps the rows strictly before ``as_of``: the filter sits in
the family's own query, so a caller passing the whole event log cannot leak the label window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import polars as pl

from gbrank import columns as C

if TYPE_CHECKING:
    from gbrank.config import Config

CATEGORY = "category"
BRAND = "brand"
PRICE = "price"
PRICE_Z = "price_z"
#: Item attributes a family may need; without them the family (or column) is left out.
ITEM_ATTRIBUTES = (CATEGORY, BRAND, PRICE)

# Internal columns of the ordered per-user event view (see user_events).
SEQ = "_seq"  # position of the event in the history, increasing with time within a user
SESSION_KEY = "_session"  # the session column, or a 30-minute-gap session (negative ids)
LAST_SESSION = "_in_last_session"  # the event belongs to the user's last session

INT = pl.Int32
FLOAT = pl.Float32
DAY_MS = 86_400_000.0
PURCHASE = C.EVENT_CODE["purchase"]

T = TypeVar("T")


@dataclass(frozen=True)
class Column:
    """One feature column: its name, a one-line description, its dtype (``None``: passed
    through as the candidate rows have it) and the value of rows the family has no row for
    (``None``: stays null, e.g. a recency of something that never happened). ``requires``
    names the item attributes the column needs beyond its family's."""

    name: str
    description: str
    dtype: pl.DataType | type[pl.DataType] | None = FLOAT
    fill: float | int | None = None
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeatureSpec:
    """The knobs of the feature families (``[features]`` in the config) plus what the data
    offers: the candidate sources and the item attributes."""

    windows_days: tuple[int, ...] = (1, 7, 30)
    item_windows_days: tuple[int, ...] = ()  # empty: windows_days
    recent_items: int = 10
    short_term_events: int = 20
    session_gap_minutes: float = 30.0
    prior_strength: float = 20.0
    covisit_hours: float = 24.0
    als_factors: int = 32
    als_iterations: int = 8
    als_regularization: float = 0.05
    als_alpha: float = 10.0
    event_weights: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    seed: int = 0
    batch_rows: int = 50_000
    # What the data offers. Listing features without data assumes every attribute is there.
    sources: tuple[str, ...] = ()
    item_attributes: frozenset[str] = frozenset(ITEM_ATTRIBUTES)

    @property
    def item_windows(self) -> tuple[int, ...]:
        return self.item_windows_days or self.windows_days

    def has(self, attribute: str) -> bool:
        return attribute in self.item_attributes

    @classmethod
    def from_config(cls, cfg: Config) -> FeatureSpec:
        f = cfg.features
        return cls(
            windows_days=tuple(sorted(set(f.windows_days))),
            item_windows_days=tuple(sorted(set(f.item_windows_days))),
            recent_items=f.recent_items,
            short_term_events=f.short_term_events,
            session_gap_minutes=f.session_gap_minutes,
            prior_strength=f.prior_strength,
            covisit_hours=f.covisit_hours,
            als_factors=f.als_factors,
            als_iterations=f.als_iterations,
            event_weights=tuple(cfg.events.weight_list()),
            seed=cfg.run.seed,
            batch_rows=f.batch_rows,
            sources=tuple(cfg.candidates.sources),
        )


@dataclass
class FeatureContext:
    """Everything a family may read. ``history`` may hold rows at or after ``as_of``: families
    read it through :func:`past`. ``candidates`` are the rows of the shard being built;
    ``shared`` holds what is computed once per history and reused by every shard (item
    tables, fitted models), ``local`` what is computed once per shard."""

    history: pl.LazyFrame
    as_of: datetime
    candidates: pl.LazyFrame
    items: pl.DataFrame | None = None
    users: pl.DataFrame | None = None
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    shared: dict[str, Any] = field(default_factory=dict)
    local: dict[str, Any] = field(default_factory=dict)

    def memo(self, key: str, make: Callable[[], T], *, shared: bool = False) -> T:
        store = self.shared if shared else self.local
        if key not in store:
            store[key] = make()
        value: T = store[key]
        return value


@dataclass(frozen=True)
class Family:
    """A feature family: how to build it, what it is keyed by and which columns it declares.

    ``columns(spec)`` lists the columns exactly as the builder returns them (names depend on
    the configured windows and sources). ``requires`` names item attributes without which the
    family is skipped. A family not keyed by user is computed once per history and reused
    by every shard. ``default`` says whether the family is built when the config does not
    choose.
    """

    name: str
    description: str
    keys: tuple[str, ...]
    columns: Callable[[FeatureSpec], list[Column]]
    build: Callable[[FeatureContext], pl.LazyFrame]
    requires: tuple[str, ...] = ()
    default: bool = True

    @property
    def per_user(self) -> bool:
        return C.USER in self.keys

    def available(self, spec: FeatureSpec) -> bool:
        return all(spec.has(a) for a in self.requires)


# --------------------------------------------------------------------------- expressions


def days_before(as_of: datetime, expr: pl.Expr) -> pl.Expr:
    """Days from ``expr`` (a datetime) to ``as_of``, as Float32."""
    delta = pl.lit(as_of, dtype=pl.Datetime("ms")) - expr
    return (delta.dt.total_milliseconds() / DAY_MS).cast(FLOAT)


def is_type(name: str) -> pl.Expr:
    return pl.col(C.EVENT) == C.EVENT_CODE[name]


def since(as_of: datetime, days: float) -> pl.Expr:
    """Rows in the ``days`` days before ``as_of`` (the caller has already cut at ``as_of``)."""
    return pl.col(C.TS) >= as_of - timedelta(days=days)


def smoothed(hits: pl.Expr, trials: pl.Expr, prior: float, strength: float) -> pl.Expr:
    """``(hits + strength * prior) / (trials + strength)``: a Beta prior with mean ``prior``."""
    return ((hits + strength * prior) / (trials + strength)).cast(FLOAT)


def safe_ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


# --------------------------------------------------------------------------- point-in-time views


def past(ctx: FeatureContext) -> pl.LazyFrame:
    """The history strictly before ``as_of``: the only way a family reads events."""
    return ctx.history.filter(pl.col(C.TS) < ctx.as_of)


def shard_users(ctx: FeatureContext) -> pl.LazyFrame:
    return ctx.candidates.select(C.USER).unique()


def global_counts(ctx: FeatureContext) -> dict[str, int]:
    """Events per type over the whole past (every user): the priors of the smoothed rates."""

    def make() -> dict[str, int]:
        counts = past(ctx).group_by(C.EVENT).agg(pl.len()).collect()
        by_code = dict(zip(counts[C.EVENT].to_list(), counts["len"].to_list(), strict=True))
        return {name: int(by_code.get(code, 0)) for code, name in enumerate(C.EVENT_TYPES)}

    return ctx.memo("global_counts", make, shared=True)


def item_table(ctx: FeatureContext) -> pl.DataFrame:
    """One row per known item: ``item``, ``price`` and, when the items table has them,
    ``category`` and ``brand``; plus ``price_z``, the item's log price standardised over the
    items of its category seen before ``as_of``.

    The price comes from the items table, else from past events (mean of value / quantity).
    """
    return ctx.memo("item_table", lambda: _item_table(ctx), shared=True)


def _item_table(ctx: FeatureContext) -> pl.DataFrame:
    items = ctx.items
    attrs = [a for a in (CATEGORY, BRAND) if items is not None and a in items.columns]
    seen = past(ctx).select(C.ITEM).unique()
    if items is not None:
        base = items.lazy().select(
            pl.col(C.ITEM).cast(pl.Int32), *[pl.col(a).cast(pl.Int32) for a in attrs]
        )
        base = pl.concat([base, seen.join(base, on=C.ITEM, how="anti")], how="diagonal")
    else:
        base = seen
    if items is not None and PRICE in items.columns:
        prices = items.lazy().select(pl.col(C.ITEM).cast(pl.Int32), pl.col(PRICE).cast(FLOAT))
    else:
        prices = _event_prices(ctx)
    table = base.join(prices, on=C.ITEM, how="left")
    # The standardisation uses only items seen before as_of, so the catalogue of the future
    # does not move it; an item with no events gets a z from the same statistics.
    group = [CATEGORY] if CATEGORY in attrs else []
    log_price = pl.when(pl.col(PRICE) > 0).then(pl.col(PRICE).log()).otherwise(None)
    ref = table.join(seen, on=C.ITEM, how="semi").with_columns(log_price.alias("_lp"))
    stats = (
        ref.group_by(group).agg(pl.col("_lp").mean().alias("_mu"), pl.col("_lp").std().alias("_sd"))
        if group
        else ref.select(pl.col("_lp").mean().alias("_mu"), pl.col("_lp").std().alias("_sd"))
    )
    table = table.join(stats, on=group, how="left") if group else table.join(stats, how="cross")
    z = pl.when(pl.col("_sd") > 0).then((log_price - pl.col("_mu")) / pl.col("_sd"))
    return (
        table.with_columns(z.cast(FLOAT).alias(PRICE_Z))
        .select(C.ITEM, PRICE, *attrs, PRICE_Z)
        .sort(C.ITEM)
        .collect()
    )


def _event_prices(ctx: FeatureContext) -> pl.LazyFrame:
    names = ctx.history.collect_schema().names()
    if C.VALUE not in names:
        return pl.LazyFrame(schema={C.ITEM: pl.Int32, PRICE: FLOAT})
    quantity = pl.col(C.QUANTITY).fill_null(1.0) if C.QUANTITY in names else pl.lit(1.0)
    return (
        past(ctx)
        .filter(pl.col(C.VALUE).is_not_null() & (pl.col(C.VALUE) > 0))
        .group_by(C.ITEM)
        .agg((pl.col(C.VALUE) / quantity).mean().cast(FLOAT).alias(PRICE))
    )


def user_events(ctx: FeatureContext) -> pl.DataFrame:
    """The past events of the shard's users, in time order, with the item attributes.

    Events are ordered by (user, ts, item, event), so ties are broken the same way whatever
    the input order. ``_session`` is the event's session: the ``session`` column where it is
    set, else a session of the user's events split where more than ``session_gap_minutes``
    pass between two events (negative ids, so they never clash with given ones). The user's
    last session is the session of their last event.
    """
    return ctx.memo("user_events", lambda: _user_events(ctx))


def _user_events(ctx: FeatureContext) -> pl.DataFrame:
    names = ctx.history.collect_schema().names()
    session = pl.col(C.SESSION).cast(pl.Int64) if C.SESSION in names else pl.lit(None, pl.Int64)
    gap_ms = int(ctx.spec.session_gap_minutes * 60_000)
    step = pl.col(C.TS).dt.epoch("ms") - pl.col(C.TS).dt.epoch("ms").shift(1).over(C.USER)
    table = item_table(ctx)
    return (
        past(ctx)
        .join(shard_users(ctx), on=C.USER, how="semi")
        .select(C.USER, C.ITEM, C.TS, C.EVENT, session.alias(SESSION_KEY))
        .sort(C.USER, C.TS, C.ITEM, C.EVENT)
        .with_columns((step.is_null() | (step > gap_ms)).cast(pl.Int64).alias("_new"))
        .with_columns(
            pl.coalesce(SESSION_KEY, -pl.col("_new").cum_sum().over(C.USER)).alias(SESSION_KEY)
        )
        .drop("_new")
        .with_row_index(SEQ)
        .with_columns(
            (pl.col(SESSION_KEY) == pl.col(SESSION_KEY).last().over(C.USER)).alias(LAST_SESSION)
        )
        .join(table.lazy(), on=C.ITEM, how="left")
        .sort(SEQ)
        .collect()
    )
