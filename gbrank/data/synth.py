"""Synthetic shop: a seeded generator of e-commerce event logs with a known ground truth.

The shop is written in gbrank's raw data contract (``events.parquet``, ``items.parquet``,
``users.parquet``) plus a ``truth/`` folder holding every latent quantity of the generative
process, so that :func:`oracle_scores` can rank items by the true purchase propensity at any
``as_of``. The structure is built so that each candidate source sees only part of it: category
tastes (factorisation, item-kNN), drifting popularity (recent popularity), consumable
repurchase cycles (history), complements (co-visitation), and price/brand/quality fit, which
only a ranker combining user and item features can use.

Example:
    >>> from datetime import timedelta
    >>> from gbrank.data.synth import SynthConfig, synthesize, oracle_scores
    >>> summary = synthesize(SynthConfig(users=2_000, items=500, days=30), "shop")  # doctest: +SKIP
    >>> summary.per_event_type["purchase"] > 0  # doctest: +SKIP
    True
    >>> oracle_scores("shop", summary.end - timedelta(days=7), k=10).columns  # doctest: +SKIP
    ['user_id', 'item_id', 'score', 'rank']

Everything is vectorised numpy; the only Python loops run over user chunks, rejection-sampling
rounds and purchase generations, never over events. Users are generated chunk by chunk and each
chunk is streamed into the Parquet files, so memory is bounded by ``chunk_events``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gbrank import columns as C
from gbrank.errors import ConfigError, DataError, MissingInputError

_MS_PER_DAY = 86_400_000
_SECOND = 1.0 / 86_400.0  # one second in days: the generator's clock counts days from start

# Raw ids are scrambled by an odd multiplier modulo a power of two (a bijection), so they are
# neither dense nor ordered like the internal indices, as in real logs.
_USER_MULT = 2_654_435_761
_ITEM_MULT = 1_103_515_245
_USER_MOD = 1 << 32
_ITEM_MOD = 1 << 31
_SESSION_OFFSET = 1_000_000_000

# Share of browse sessions starting in each hour of the day (UTC): quiet nights, evening peak.
_HOURLY = np.array(
    [0.3, 0.2, 0.15, 0.1, 0.1, 0.15, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0]
    + [1.0, 0.95, 0.9, 0.9, 0.95, 1.0, 1.1, 1.3, 1.4, 1.3, 1.0, 0.6]
)
_TASTE_SLOTS = 5  # at most this many core categories per user
_BRAND_SLOTS = 3  # at most this many favourite brands per user
_BRANDS_PER_CATEGORY = 8
_MAX_REJECTION_ROUNDS = 40
_MAX_GENERATIONS = 200

_EVENTS_SCHEMA = pa.schema(
    [
        (C.RAW_USER, pa.int64()),
        (C.RAW_ITEM, pa.int64()),
        (C.RAW_TS, pa.timestamp("ms")),
        (C.RAW_EVENT, pa.string()),
        (C.RAW_SESSION, pa.int64()),
        (C.RAW_VALUE, pa.float64()),
        (C.RAW_QUANTITY, pa.int32()),
    ]
)
_USERS_SCHEMA = pa.schema(
    [(C.RAW_USER, pa.int64()), ("segment", pa.string()), ("signup_ts", pa.timestamp("ms"))]
)
_TRUTH_USERS_SCHEMA = pa.schema(
    [
        (C.RAW_USER, pa.int64()),
        ("user_index", pa.int64()),
        ("active_from_day", pa.float64()),
        ("session_rate", pa.float64()),
        ("price_level", pa.float64()),
        ("price_width", pa.float64()),
        ("taste_categories", pa.list_(pa.int32(), _TASTE_SLOTS)),
        ("taste_weights", pa.list_(pa.float64(), _TASTE_SLOTS)),
        ("favorite_brands", pa.list_(pa.int32(), _BRAND_SLOTS)),
    ]
)


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the synthetic shop. Every field has a default that lands in the calibration
    ranges of public logs (see ``docs/synth.md``); the output depends on nothing else.

    Example:
        >>> cfg = SynthConfig(users=2_000, items=500, days=30, seed=7)
        >>> cfg.days
        30
    """

    users: int = 20_000
    items: int = 5_000
    days: int = 60
    seed: int = 0
    start: str = "2024-01-01"  # first day, UTC
    # Catalogue.
    categories: int = 50
    brands: int = 300
    zipf_exponent: float = 0.7  # base item popularity ~ rank ** -zipf_exponent
    new_item_share: float = 0.25  # items released during the period
    trending_share: float = 0.15  # older items that get a rise-and-decay trend in the period
    trend_amplitude: float = 4.0  # median peak multiplier of a trend (new items: launch bump)
    price_median: float = 25.0
    # Users.
    existing_user_share: float = 0.5  # signed up before ``start``; the rest join uniformly
    session_rate: float = 0.17  # mean browse sessions per user and active day
    activity_sigma: float = 1.3  # log-normal spread of user activity (heavy tail)
    taste_categories: float = 1.5  # mean number of core categories beyond the first
    taste_alpha: float = 0.7  # Dirichlet concentration over a user's core categories
    explore_share: float = 0.08  # views that ignore the user's tastes (global category mix)
    # Sessions and funnel.
    views_per_session: float = 4.5  # mean, negative binomial (heavy tail of long sessions)
    session_stickiness: float = 0.75  # views that stay in the session's first category
    price_browse_floor: float = 0.3  # browse acceptance of an item far outside the price band
    click_bias: float = -1.45
    cart_bias: float = -3.0
    purchase_bias: float = -2.6
    quality_weight: float = 0.35  # logit weight of item quality in every funnel step
    price_weight: float = 0.8  # ... of the price fit to the user's band (in [-1, 1])
    brand_weight: float = 0.8  # ... of the item being one of the user's favourite brands
    taste_weight: float = 0.5  # ... of the user's taste for the item's category
    # Repurchase of consumables.
    consumable_share: float = 0.35  # share of views in categories re-bought on a cycle
    interval_min_days: float = 7.0
    interval_max_days: float = 30.0
    interval_jitter: float = 0.25  # due = interval * U(1 - jitter, 1 + jitter)
    rebuy_prob: float = 0.7  # mean probability that a purchase of a consumable is repeated
    # Complements.
    anchor_share: float = 0.3  # items of durable categories that have an accessory
    complement_same_session: float = 0.25  # accessory shown right after checkout
    complement_next_session: float = 0.35  # accessory shown in a follow-up session
    complement_delay_days: float = 2.0  # mean delay of the follow-up session
    complement_boost: float = 1.5  # funnel logit bonus of an accessory after its anchor
    # Memory: users per chunk are sized so a chunk holds about this many events.
    chunk_events: int = 500_000

    def __post_init__(self) -> None:
        problems = []
        for name in ("users", "items", "days", "categories", "brands", "chunk_events"):
            if getattr(self, name) < 1:
                problems.append(f"{name} = {getattr(self, name)} must be >= 1")
        if self.categories < 2:
            problems.append("categories must be >= 2 (complements link two categories)")
        if self.items < self.categories:
            problems.append(f"items = {self.items} must be >= categories = {self.categories}")
        shares = (
            "new_item_share",
            "trending_share",
            "existing_user_share",
            "explore_share",
            "session_stickiness",
            "price_browse_floor",
            "consumable_share",
            "interval_jitter",
            "rebuy_prob",
            "anchor_share",
            "complement_same_session",
            "complement_next_session",
        )
        for name in shares:
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} = {getattr(self, name)} must be in [0, 1]")
        if self.complement_same_session + self.complement_next_session > 1.0:
            problems.append("complement_same_session + complement_next_session must be <= 1")
        if not 0 < self.interval_min_days <= self.interval_max_days:
            problems.append("need 0 < interval_min_days <= interval_max_days")
        if self.views_per_session < 1.0:
            problems.append("views_per_session must be >= 1")
        for name in ("session_rate", "price_median", "complement_delay_days", "taste_alpha"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        for name in ("seed", "zipf_exponent", "trend_amplitude", "activity_sigma"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.taste_categories < 0:
            problems.append("taste_categories must be >= 0")
        try:
            datetime.fromisoformat(self.start)
        except ValueError:
            problems.append(f"start = '{self.start}' is not an ISO date such as 2024-01-01")
        if problems:
            raise ConfigError("synth: " + "; ".join(problems))

    @property
    def start_datetime(self) -> datetime:
        """``start`` as a naive UTC datetime."""
        return _naive_utc(datetime.fromisoformat(self.start))

    def expected_events_per_user(self) -> float:
        """Rough mean events per user: browse sessions x events per session, plus repeats.

        Used only to size the user chunks (so a chunk holds about ``chunk_events`` events);
        the measured figure is in :class:`SynthSummary`.
        """
        active_days = self.days * (self.existing_user_share + (1 - self.existing_user_share) / 2)
        return self.session_rate * active_days * self.views_per_session * 1.6

    def chunk_users(self) -> int:
        """Users per generation chunk, a function of the config only (determinism)."""
        per_user = max(self.expected_events_per_user(), 1e-9)
        return int(min(max(256, self.chunk_events // per_user), self.users))


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize` wrote and the statistics measured on it.

    ``repurchase_share``: among distinct (user, item) purchases in the last
    ``repurchase_window_days`` by users who had bought before that window, the share of items
    that user had bought before the window. ``item_gini`` and ``top1pct_item_share`` are over
    events per item; ``zipf_fit`` is the slope of log(events) against log(rank).
    """

    events: int
    users: int
    items: int
    per_event_type: dict[str, int]
    out: Path
    sessions: int = 0
    active_users: int = 0
    start: datetime = datetime(2024, 1, 1)
    end: datetime = datetime(2024, 1, 1)
    events_per_user: float = 0.0
    click_per_view: float = 0.0
    item_gini: float = 0.0
    top1pct_item_share: float = 0.0
    zipf_fit: float = 0.0
    repurchase_share: float = float("nan")
    repurchase_window_days: float = 30.0
    chunks: int = 0
    seconds: float = 0.0
    files: tuple[str, ...] = ()

    def shares(self) -> dict[str, float]:
        """Share of each event type in all events."""
        total = max(self.events, 1)
        return {name: n / total for name, n in self.per_event_type.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, as written to ``summary.json`` (without ``out`` and ``seconds``)."""
        d = dataclasses.asdict(self)
        # Timing and location vary between identical runs; the file must not.
        d.pop("seconds")
        d.pop("out")
        d["files"] = list(self.files)
        d["start"] = self.start.isoformat()
        d["end"] = self.end.isoformat()
        d["shares"] = {k: round(v, 6) for k, v in self.shares().items()}
        for key, value in d.items():
            if isinstance(value, float):
                d[key] = None if math.isnan(value) else round(value, 6)
        return d


# --------------------------------------------------------------------------------------------
# Catalogue: items and categories, drawn once from the seed.


@dataclass
class _Catalog:
    cat: np.ndarray  # (I,) category index; items are sorted by category
    cat_start: np.ndarray  # (C + 1,) first item of each category
    brand: np.ndarray  # (I,) brand index
    price: np.ndarray  # (I,)
    price_z: np.ndarray  # (I,) price position within its category (std units)
    quality: np.ndarray  # (I,)
    base: np.ndarray  # (I,) Zipf base popularity
    release: np.ndarray  # (I,) release day (negative: before start)
    amp: np.ndarray  # (I,) trend amplitude (0: no trend)
    onset: np.ndarray  # (I,) trend onset day
    width: np.ndarray  # (I,) trend rise time in days (peak at onset + width)
    accessory: np.ndarray  # (I,) complement item index or -1
    item_id: np.ndarray  # (I,) raw ids
    # Per category.
    cat_weight: np.ndarray  # (C,) global share of views (sum of base popularity)
    price_mu: np.ndarray
    price_sigma: np.ndarray
    consumable: np.ndarray  # (C,) bool
    interval: np.ndarray  # (C,) repurchase interval in days
    rebuy: np.ndarray  # (C,) repurchase probability
    qty_extra: np.ndarray  # (C,) quantity = 1 + Poisson(qty_extra)
    complement_cat: np.ndarray  # (C,)
    anchor_item: np.ndarray  # (C,) most popular item, always on sale: fallback of sampling
    # Derived sampling tables.
    env_cum: np.ndarray = field(init=False)  # cumulative envelope weight, items in cat order
    env: np.ndarray = field(init=False)
    base_cum: np.ndarray = field(init=False)
    cat_cdf: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        # Envelope of a drifting popularity curve: base x (1 + amp) bounds base x (1 + amp g).
        self.env = self.base * (1.0 + self.amp)
        self.env_cum = np.cumsum(self.env)
        self.base_cum = np.cumsum(self.base)
        self.cat_cdf = np.cumsum(self.cat_weight) / self.cat_weight.sum()

    @property
    def n_items(self) -> int:
        return len(self.cat)

    @property
    def n_cats(self) -> int:
        return len(self.cat_weight)


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """Independent generator per (seed, stream, index): chunks never share random draws."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def _scramble(index: np.ndarray, mult: int, mod: int) -> np.ndarray:
    # uint64 products wrap modulo 2**64, which keeps them exact modulo any smaller power of 2.
    x = (index.astype(np.uint64) + np.uint64(1)) * np.uint64(mult)
    return (x & np.uint64(mod - 1)).astype(np.int64)


def _trend(t: np.ndarray, onset: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Rise-and-decay curve x * e^(1 - x) of x = (t - onset) / width: 0 before onset, peak 1."""
    x = np.maximum((t - onset) / width, 0.0)
    return x * np.exp(1.0 - x)


def _popularity(cat: _Catalog, item: np.ndarray, t: np.ndarray) -> np.ndarray:
    """True popularity of ``item`` at day ``t`` (0 before its release)."""
    alive = t >= cat.release[item]
    curve = 1.0 + cat.amp[item] * _trend(t, cat.onset[item], cat.width[item])
    return np.where(alive, cat.base[item] * curve, 0.0)


def _make_catalog(cfg: SynthConfig) -> _Catalog:
    rng = _rng(cfg.seed, 0, 0)
    n_cat, n_item, n_brand = cfg.categories, cfg.items, cfg.brands

    # Category sizes vary (log-normal); every category gets at least one item.
    size_w = rng.lognormal(0.0, 0.8, n_cat)
    sizes = 1 + rng.multinomial(n_item - n_cat, size_w / size_w.sum())
    cat = np.repeat(np.arange(n_cat), sizes)
    cat_start = np.concatenate([[0], np.cumsum(sizes)])

    price_mu = rng.normal(math.log(cfg.price_median), 0.9, n_cat)
    price_sigma = rng.uniform(0.25, 0.6, n_cat)
    price_z = rng.standard_normal(n_item)
    price = np.maximum(np.round(np.exp(price_mu[cat] + price_sigma[cat] * price_z), 2), 0.49)

    # Brands: a Zipf-sized global pool; each category stocks a handful of them, its leading
    # brands carrying most items. Brands differ in quality, so brand is a conversion signal.
    brand_w = 1.0 / np.arange(1, n_brand + 1) ** 0.8
    brand_w = rng.permutation(brand_w)
    brand_cdf = np.cumsum(brand_w) / brand_w.sum()
    slots = min(_BRANDS_PER_CATEGORY, n_brand)
    cat_brands = np.searchsorted(brand_cdf, rng.random((n_cat, slots)), side="right")
    cat_brands = np.minimum(cat_brands, n_brand - 1)
    slot_cdf = np.cumsum(1.0 / np.arange(1, slots + 1))
    slot_cdf /= slot_cdf[-1]
    slot = np.minimum(np.searchsorted(slot_cdf, rng.random(n_item), side="right"), slots - 1)
    brand = cat_brands[cat, slot]
    brand_quality = rng.normal(0.0, 0.5, n_brand)
    quality = brand_quality[brand] + rng.normal(0.0, 0.8, n_item)

    # Base popularity is Zipf over a global rank that leans on quality.
    key = quality + rng.normal(0.0, 2.0, n_item)
    rank = np.empty(n_item, dtype=np.int64)
    rank[np.argsort(-key, kind="stable")] = np.arange(n_item)
    base = (rank + 1.0) ** -cfg.zipf_exponent

    # The most popular item of each category is an old catalogue item, so a category is never
    # empty at any time (it is also the fallback of the rejection sampler).
    order = np.lexsort((-base, cat))
    anchor_item = order[cat_start[:-1]]

    new = rng.random(n_item) < cfg.new_item_share
    new[anchor_item] = False
    release = np.where(new, rng.uniform(0.0, cfg.days, n_item), -rng.uniform(1.0, 720.0, n_item))
    trending = ~new & (rng.random(n_item) < cfg.trending_share)
    amp = np.zeros(n_item)
    amp_draw = cfg.trend_amplitude * rng.lognormal(0.0, 0.6, n_item)
    amp[new | trending] = amp_draw[new | trending]
    onset = np.where(new, release, rng.uniform(-10.0, cfg.days, n_item))
    width = rng.uniform(2.0, 10.0, n_item)

    cat_weight = np.add.reduceat(base, cat_start[:-1])
    # Consumable categories are drawn until they carry ``consumable_share`` of all views, so
    # the repurchase volume does not hinge on whether a big category happened to be drawn.
    perm = rng.permutation(n_cat)
    before = np.concatenate([[0.0], np.cumsum(cat_weight[perm])[:-1]]) / cat_weight.sum()
    consumable = np.zeros(n_cat, dtype=bool)
    consumable[perm[before < cfg.consumable_share]] = cfg.consumable_share > 0
    interval = rng.uniform(cfg.interval_min_days, cfg.interval_max_days, n_cat)
    rebuy = np.clip(cfg.rebuy_prob + rng.uniform(-0.15, 0.15, n_cat), 0.0, 1.0)
    qty_extra = np.where(consumable, 0.8, 0.05)
    complement_cat = (np.arange(n_cat) + rng.integers(1, n_cat, n_cat)) % n_cat

    # Anchors (durable items) each get one accessory from their category's complement
    # category, picked by popularity: popular accessories serve several anchors (groups).
    is_anchor = ~consumable[cat] & (rng.random(n_item) < cfg.anchor_share)
    base_cum = np.cumsum(base)
    acc_cat = complement_cat[cat]
    lo = np.where(cat_start[acc_cat] > 0, base_cum[cat_start[acc_cat] - 1], 0.0)
    target = lo + rng.random(n_item) * cat_weight[acc_cat]
    acc = np.searchsorted(base_cum, target, side="right")
    acc = np.clip(acc, cat_start[acc_cat], cat_start[acc_cat + 1] - 1)
    accessory = np.where(is_anchor, acc, -1)

    item_id = _scramble(np.arange(n_item), _ITEM_MULT, _ITEM_MOD)
    return _Catalog(
        cat=cat,
        cat_start=cat_start,
        brand=brand,
        price=price,
        price_z=price_z,
        quality=quality,
        base=base,
        release=release,
        amp=amp,
        onset=onset,
        width=width,
        accessory=accessory,
        item_id=item_id,
        cat_weight=cat_weight,
        price_mu=price_mu,
        price_sigma=price_sigma,
        consumable=consumable,
        interval=interval,
        rebuy=rebuy,
        qty_extra=qty_extra,
        complement_cat=complement_cat,
        anchor_item=anchor_item,
    )


# --------------------------------------------------------------------------------------------
# Users.


@dataclass
class _Users:
    index: np.ndarray  # global user index
    signup: np.ndarray  # signup day (negative: before start)
    active_from: np.ndarray  # max(signup, 0)
    rate: np.ndarray  # browse sessions per day
    price_level: np.ndarray
    price_width: np.ndarray
    taste_cats: np.ndarray  # (n, slots) category, -1 pads
    taste_w: np.ndarray  # (n, slots) weights summing to 1 over the core categories
    fav: np.ndarray  # (n, slots) favourite brands, -1 pads

    @property
    def user_id(self) -> np.ndarray:
        return _scramble(self.index, _USER_MULT, _USER_MOD)


def _make_users(
    cfg: SynthConfig, cat: _Catalog, lo: int, hi: int, rng: np.random.Generator
) -> _Users:
    n = hi - lo
    existing = rng.random(n) < cfg.existing_user_share
    signup = np.where(existing, -rng.uniform(1.0, 730.0, n), rng.uniform(0.0, cfg.days, n))
    sigma = cfg.activity_sigma
    # Log-normal with the requested mean; capped so one user cannot dominate a chunk.
    rate = cfg.session_rate * rng.lognormal(-0.5 * sigma**2, sigma, n)
    rate = np.minimum(rate, 12.0)
    price_level = rng.normal(0.0, 0.8, n)
    price_width = rng.uniform(0.5, 1.2, n)

    # Sparse tastes: one to a few core categories, drawn by category popularity, Dirichlet
    # weights. Duplicated draws simply merge weight into one category.
    k = 1 + np.minimum(rng.poisson(cfg.taste_categories, n), _TASTE_SLOTS - 1)
    valid = np.arange(_TASTE_SLOTS)[None, :] < k[:, None]
    cats = np.searchsorted(cat.cat_cdf, rng.random((n, _TASTE_SLOTS)), side="right")
    cats = np.minimum(cats, cat.n_cats - 1)
    w = rng.gamma(cfg.taste_alpha, 1.0, (n, _TASTE_SLOTS)) * valid + 1e-12 * valid
    w /= w.sum(axis=1, keepdims=True)
    cats = np.where(valid, cats, -1)

    # Favourite brands: the brands of a few items the user likes (taste category, popularity).
    fav_cat = cats[np.arange(n)[:, None], _slot_from_weights(w, rng.random((n, _BRAND_SLOTS)))]
    lo_w = np.where(cat.cat_start[fav_cat] > 0, cat.base_cum[cat.cat_start[fav_cat] - 1], 0.0)
    target = lo_w + rng.random((n, _BRAND_SLOTS)) * cat.cat_weight[fav_cat]
    item = np.searchsorted(cat.base_cum, target, side="right")
    item = np.clip(item, cat.cat_start[fav_cat], cat.cat_start[fav_cat + 1] - 1)
    keep = rng.random((n, _BRAND_SLOTS)) < np.array([1.0, 0.6, 0.3])[:_BRAND_SLOTS]
    fav = np.where(keep, cat.brand[item], -1)
    return _Users(
        index=np.arange(lo, hi, dtype=np.int64),
        signup=signup,
        active_from=np.maximum(signup, 0.0),
        rate=rate,
        price_level=price_level,
        price_width=price_width,
        taste_cats=cats,
        taste_w=w,
        fav=fav,
    )


def _slot_from_weights(w: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per row of weights ``w`` (n, s), the slot picked by each uniform in ``r`` (n, m)."""
    cw = np.cumsum(w, axis=1)
    slot = (r[:, :, None] >= cw[:, None, :]).sum(axis=2)
    # Rounding can leave the last cumulative weight a hair below 1: never pick a pad slot.
    return np.minimum(slot, (w > 0).sum(axis=1, keepdims=True) - 1)


def _segment(price_level: np.ndarray) -> np.ndarray:
    return np.where(price_level < -0.5, 0, np.where(price_level > 0.5, 2, 1))


_SEGMENTS = ("budget", "regular", "premium")


# --------------------------------------------------------------------------------------------
# User x item affinity: shared by the generator and the oracle.


def _taste_of(cfg: SynthConfig, cat: _Catalog, users: _Users, u: np.ndarray, c: np.ndarray):
    """Taste of user ``u`` for category ``c``: sparse core tastes mixed with exploration."""
    core = ((users.taste_cats[u] == c[:, None]) * users.taste_w[u]).sum(axis=1)
    g = cat.cat_weight[c] / cat.cat_weight.sum()
    return (1.0 - cfg.explore_share) * core + cfg.explore_share * g


def _price_fit(
    price_z: np.ndarray, level: np.ndarray, width: np.ndarray
) -> np.ndarray:  # broadcastable
    return np.exp(-0.5 * ((price_z - level) / width) ** 2)


def _logit(cfg: SynthConfig, quality, fit, fav, taste, n_cats: int) -> np.ndarray:
    """Affinity logit added to every funnel step's bias."""
    taste_term = np.clip(np.log(np.maximum(taste * n_cats, 1e-300)), -2.0, 2.0) / 2.0
    return (
        cfg.quality_weight * quality
        + cfg.price_weight * (2.0 * fit - 1.0)
        + cfg.brand_weight * fav
        + cfg.taste_weight * taste_term
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _affinity(
    cfg: SynthConfig, cat: _Catalog, users: _Users, u: np.ndarray, item: np.ndarray
) -> np.ndarray:
    c = cat.cat[item]
    taste = _taste_of(cfg, cat, users, u, c)
    fit = _price_fit(cat.price_z[item], users.price_level[u], users.price_width[u])
    fav = (users.fav[u] == cat.brand[item][:, None]).any(axis=1)
    return _logit(cfg, cat.quality[item], fit, fav, taste, cat.n_cats)


# --------------------------------------------------------------------------------------------
# Event generation for one chunk of users.


class _Events:
    """Column lists of the events of a chunk, appended batch by batch."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("u", "item", "t", "code", "sess", "qty")
        }

    def add(self, u, item, t, code: int, sess, qty=None) -> None:
        n = len(u)
        if n == 0:
            return
        self.parts["u"].append(u)
        self.parts["item"].append(item)
        self.parts["t"].append(t)
        self.parts["code"].append(np.full(n, code, dtype=np.int8))
        self.parts["sess"].append(sess)
        self.parts["qty"].append(qty if qty is not None else np.zeros(n, dtype=np.int32))

    def concat(self) -> dict[str, np.ndarray]:
        return {
            k: np.concatenate(v) if v else np.zeros(0, dtype=self._DTYPES[k])
            for k, v in self.parts.items()
        }

    _DTYPES = {"u": np.int64, "item": np.int64, "t": np.float64, "code": np.int8}
    _DTYPES |= {"sess": np.int64, "qty": np.int32}


def _sample_taste_cats(
    cfg: SynthConfig, cat: _Catalog, users: _Users, u: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    explore = rng.random(len(u)) < cfg.explore_share
    glob = np.minimum(
        np.searchsorted(cat.cat_cdf, rng.random(len(u)), side="right"), cat.n_cats - 1
    )
    slot = _slot_from_weights(users.taste_w[u], rng.random((len(u), 1)))[:, 0]
    core = users.taste_cats[u, slot]
    return np.where(explore, glob, core)


def _sample_items(
    cfg: SynthConfig,
    cat: _Catalog,
    users: _Users,
    u: np.ndarray,
    c: np.ndarray,
    t: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Item of category ``c`` viewed by ``u`` at ``t``, with probability proportional to
    popularity(t) x (floor + (1 - floor) x price fit): rejection sampling from the static
    envelope base x (1 + amp), which needs no per-day table and so no memory per day."""
    out = np.empty(len(u), dtype=np.int64)
    todo = np.arange(len(u))
    floor = cfg.price_browse_floor
    for _ in range(_MAX_REJECTION_ROUNDS):
        cc, uu, tt = c[todo], u[todo], t[todo]
        start = cat.cat_start[cc]
        lo = np.where(start > 0, cat.env_cum[start - 1], 0.0)
        span = cat.env_cum[cat.cat_start[cc + 1] - 1] - lo
        item = np.searchsorted(cat.env_cum, lo + rng.random(len(todo)) * span, side="right")
        item = np.clip(item, start, cat.cat_start[cc + 1] - 1)
        fit = _price_fit(cat.price_z[item], users.price_level[uu], users.price_width[uu])
        accept = _popularity(cat, item, tt) / cat.env[item] * (floor + (1.0 - floor) * fit)
        ok = rng.random(len(todo)) < accept
        out[todo[ok]] = item[ok]
        todo = todo[~ok]
        if len(todo) == 0:
            break
    out[todo] = cat.anchor_item[c[todo]]
    return out


def _lognormal_days(rng: np.random.Generator, seconds: float, sigma: float, n: int) -> np.ndarray:
    """Delays with median ``seconds``, in days."""
    return rng.lognormal(math.log(seconds), sigma, n) * _SECOND


def _funnel(
    cfg: SynthConfig,
    cat: _Catalog,
    users: _Users,
    ev: _Events,
    u: np.ndarray,
    item: np.ndarray,
    t_view: np.ndarray,
    sess: np.ndarray,
    rng: np.random.Generator,
    boost: float = 0.0,
    force: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views -> clicks -> carts of (u, item) at ``t_view``; records them in ``ev``.

    Returns (quantity, purchase decision, time of the last event per view). The purchase
    itself is recorded by the caller at checkout. ``force`` makes every step happen (a
    planned repurchase: the decision was taken when the need arose).
    """
    n = len(u)
    if force:
        click = cart = buy = np.ones(n, dtype=bool)
    else:
        a = _affinity(cfg, cat, users, u, item) + boost
        r = rng.random((3, n))
        click = r[0] < _sigmoid(cfg.click_bias + a)
        cart = click & (r[1] < _sigmoid(cfg.cart_bias + a))
        buy = cart & (r[2] < _sigmoid(cfg.purchase_bias + a))
    t_click = t_view + _lognormal_days(rng, 4.0, 0.5, n)
    t_cart = t_click + _lognormal_days(rng, 40.0, 0.7, n)
    qty = (1 + rng.poisson(cat.qty_extra[cat.cat[item]])).astype(np.int32)
    ev.add(u, item, t_view, 0, sess)
    ev.add(u[click], item[click], t_click[click], 1, sess[click])
    ev.add(u[cart], item[cart], t_cart[cart], 2, sess[cart], qty[cart])
    last = np.where(cart, t_cart, np.where(click, t_click, t_view))
    return qty, buy, last


@dataclass
class _Purchases:
    u: np.ndarray
    item: np.ndarray
    t: np.ndarray
    sess: np.ndarray

    @staticmethod
    def concat(parts: list[_Purchases]) -> _Purchases:
        names = ("u", "item", "t", "sess")
        return _Purchases(*(np.concatenate([getattr(p, f) for p in parts]) for f in names))


class _Sessions:
    """Session table of a chunk: owner and start; new sessions are appended."""

    def __init__(self, user: np.ndarray, start: np.ndarray) -> None:
        self.user = [user]
        self.start = [start]
        self.n = len(user)

    def new(self, user: np.ndarray, start: np.ndarray) -> np.ndarray:
        ids = np.arange(self.n, self.n + len(user))
        self.user.append(user)
        self.start.append(start)
        self.n += len(user)
        return ids


class _Owned:
    """Durable (user, item) pairs already bought: nobody buys the same durable item twice, so
    re-buying is the consumables' business (and the history of durables is a negative cue)."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.keys = np.zeros(0, dtype=np.int64)

    def filter(
        self, cat: _Catalog, u: np.ndarray, item: np.ndarray, t: np.ndarray, buy: np.ndarray
    ) -> np.ndarray:
        """``buy`` without repeat purchases of durables (the first in time is kept)."""
        idx = np.flatnonzero(buy & ~cat.consumable[cat.cat[item]])
        if len(idx) == 0:
            return buy
        key = u[idx].astype(np.int64) * self.n_items + item[idx]
        order = np.lexsort((t[idx], key))
        ks = key[order]
        first = np.ones(len(ks), dtype=bool)
        first[1:] = ks[1:] != ks[:-1]
        fresh = first & ~np.isin(ks, self.keys)
        buy = buy.copy()
        buy[idx[order[~fresh]]] = False
        self.keys = np.union1d(self.keys, ks[fresh])
        return buy


def _standalone(
    cfg: SynthConfig,
    cat: _Catalog,
    users: _Users,
    ev: _Events,
    sessions: _Sessions,
    owned: _Owned,
    u: np.ndarray,
    item: np.ndarray,
    t0: np.ndarray,
    rng: np.random.Generator,
    boost: float = 0.0,
    force: bool = False,
    sess: np.ndarray | None = None,
) -> _Purchases:
    """One item's funnel starting at ``t0``, in a new session (or ``sess``), with its own
    checkout. Returns its purchases."""
    if sess is None:
        sess = sessions.new(u, t0)
    qty, buy, last = _funnel(cfg, cat, users, ev, u, item, t0, sess, rng, boost, force)
    buy = owned.filter(cat, u, item, t0, buy)
    t_buy = last + _lognormal_days(rng, 60.0, 0.6, len(u))
    ev.add(u[buy], item[buy], t_buy[buy], 3, sess[buy], qty[buy])
    return _Purchases(u[buy], item[buy], t_buy[buy], sess[buy])


def _generate_chunk(
    cfg: SynthConfig, cat: _Catalog, lo: int, hi: int, chunk: int
) -> tuple[_Users, dict[str, np.ndarray]]:
    """Users ``lo..hi`` and their events, sorted by user, session start, time and funnel
    step. Event times are in days since ``start``; ``sess`` is a dense session number."""
    rng = _rng(cfg.seed, 1, chunk)
    users = _make_users(cfg, cat, lo, hi, rng)
    n = hi - lo
    days = float(cfg.days)
    ev = _Events()

    # Browse sessions: Poisson over each user's active days, hour of day from a daily rhythm.
    active = days - users.active_from
    n_sess = rng.poisson(users.rate * active)
    s_user = np.repeat(np.arange(n), n_sess)
    day = np.floor(users.active_from[s_user] + rng.random(len(s_user)) * active[s_user])
    hour_cdf = np.cumsum(_HOURLY) / _HOURLY.sum()
    hour = np.searchsorted(hour_cdf, rng.random(len(s_user)), side="right")
    s_start = day + (hour + rng.random(len(s_user))) / 24.0
    s_start = np.clip(s_start, users.active_from[s_user], days - _SECOND)
    sessions = _Sessions(s_user, s_start)

    # Views per session: 1 + negative binomial, a heavy tail of long sessions.
    r_nb = 1.5
    p_nb = r_nb / (r_nb + cfg.views_per_session - 1.0)
    n_views = 1 + rng.negative_binomial(r_nb, p_nb, len(s_user))
    v_sess = np.repeat(np.arange(len(s_user)), n_views)
    first = np.cumsum(n_views) - n_views
    pos = np.arange(len(v_sess)) - first[v_sess]
    v_user = s_user[v_sess]

    # A session centres on one category of the user's taste, with some wandering.
    s_cat = _sample_taste_cats(cfg, cat, users, s_user, rng)
    wander = (pos > 0) & (rng.random(len(v_sess)) >= cfg.session_stickiness)
    v_cat = s_cat[v_sess]
    v_cat[wander] = _sample_taste_cats(cfg, cat, users, v_user[wander], rng)
    v_item = _sample_items(cfg, cat, users, v_user, v_cat, s_start[v_sess], rng)

    gaps = _lognormal_days(rng, 35.0, 0.9, len(v_sess))
    gaps[first] = 0.0
    cs = np.cumsum(gaps)
    v_t = s_start[v_sess] + cs - cs[first][v_sess]

    qty, buy, last = _funnel(cfg, cat, users, ev, v_user, v_item, v_t, v_sess, rng)
    owned = _Owned(cat.n_items)
    buy = owned.filter(cat, v_user, v_item, v_t, buy)
    # One checkout buys an item once, even if it was carted on two views of the session.
    idx = np.flatnonzero(buy)
    _, first_of = np.unique(v_sess[idx] * cat.n_items + v_item[idx], return_index=True)
    buy[idx] = False
    buy[idx[first_of]] = True
    # Checkout: everything decided for purchase is bought together after the last event.
    s_end = np.maximum.reduceat(last, first) if len(last) else np.zeros(0)
    checkout = s_end + _lognormal_days(rng, 90.0, 0.6, len(s_end))
    t_buy = checkout[v_sess[buy]]
    ev.add(v_user[buy], v_item[buy], t_buy, 3, v_sess[buy], qty[buy])
    purchases = _Purchases(v_user[buy], v_item[buy], t_buy, v_sess[buy])

    # Every purchase may lead to an accessory (same session after checkout, or a follow-up
    # session) and, for consumables, to a planned repurchase; those purchases do the same,
    # generation by generation, until the period ends.
    for _ in range(_MAX_GENERATIONS):
        if len(purchases.u) == 0:
            break
        parts = []
        acc = cat.accessory[purchases.item]
        r = rng.random(len(acc))
        same = (acc >= 0) & (r < cfg.complement_same_session)
        later = (
            (acc >= 0)
            & (r >= cfg.complement_same_session)
            & (r < cfg.complement_same_session + cfg.complement_next_session)
        )
        t_same = purchases.t[same] + _lognormal_days(rng, 20.0, 0.5, int(same.sum()))
        t_later = purchases.t[later] + rng.exponential(cfg.complement_delay_days, int(later.sum()))
        for mask, t0, in_session in ((same, t_same, True), (later, t_later, False)):
            ok = (t0 < days) & (t0 >= cat.release[acc[mask]])
            sess = purchases.sess[mask][ok] if in_session else None
            parts.append(
                _standalone(
                    cfg,
                    cat,
                    users,
                    ev,
                    sessions,
                    owned,
                    purchases.u[mask][ok],
                    acc[mask][ok],
                    t0[ok],
                    rng,
                    boost=cfg.complement_boost,
                    sess=sess,
                )
            )
        c = cat.cat[purchases.item]
        again = cat.consumable[c] & (rng.random(len(c)) < cat.rebuy[c])
        jitter = rng.uniform(1.0 - cfg.interval_jitter, 1.0 + cfg.interval_jitter, len(c))
        due = purchases.t + cat.interval[c] * jitter
        again &= due < days
        parts.append(
            _standalone(
                cfg,
                cat,
                users,
                ev,
                sessions,
                owned,
                purchases.u[again],
                purchases.item[again],
                due[again],
                rng,
                force=True,
            )
        )
        purchases = _Purchases.concat(parts)

    cols = ev.concat()
    # Events are clocked in ms; anything at or after the end of the period is cut.
    cols["ms"] = np.round(cols["t"] * _MS_PER_DAY).astype(np.int64)
    keep = cols["ms"] < cfg.days * _MS_PER_DAY
    # A durable bought in a later generation may precede, in time, the same item bought by
    # browsing: keep only the earliest purchase of each durable (user, item).
    rows = np.flatnonzero(keep & (cols["code"] == 3) & ~cat.consumable[cat.cat[cols["item"]]])
    key = cols["u"][rows].astype(np.int64) * cat.n_items + cols["item"][rows]
    order = np.lexsort((cols["t"][rows], key))
    repeat = np.zeros(len(rows), dtype=bool)
    repeat[1:] = key[order][1:] == key[order][:-1]
    keep[rows[order[repeat]]] = False
    cols = {k: v[keep] for k, v in cols.items()}
    s_user = np.concatenate(sessions.user)
    s_start = np.concatenate(sessions.start)
    s_rank = np.empty(sessions.n, dtype=np.int64)
    s_rank[np.lexsort((np.arange(sessions.n), s_start, s_user))] = np.arange(sessions.n)
    order = np.lexsort((cols["code"], cols["ms"], s_rank[cols["sess"]]))
    cols = {k: v[order] for k, v in cols.items()}
    # Dense session numbers over the sessions that kept at least one event.
    rank = s_rank[cols["sess"]]
    new = np.ones(len(rank), dtype=bool)
    new[1:] = rank[1:] != rank[:-1]
    cols["sess"] = np.cumsum(new) - 1
    return users, cols


# --------------------------------------------------------------------------------------------
# Statistics.


def popularity_stats(counts: np.ndarray) -> dict[str, float]:
    """Skew of events per item: Gini, share of the top 1% of items, and the Zipf exponent
    fitted (least squares on log-log) over the top half of the items that have events.

    Example:
        >>> s = popularity_stats(np.array([100, 10, 5, 1, 0]))
        >>> round(s["top1pct_share"], 3)
        0.862
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    total = x.sum()
    n = len(x)
    if n == 0 or total <= 0:
        return {"gini": 0.0, "top1pct_share": 0.0, "zipf_fit": 0.0}
    top = max(1, math.ceil(0.01 * n))
    asc = x[::-1]
    gini = float(2.0 * np.sum(np.arange(1, n + 1) * asc) / (n * total) - (n + 1) / n)
    pos = x[x > 0]
    m = max(2, len(pos) // 2)
    pos = pos[:m]
    if len(pos) >= 2:
        slope = float(np.polyfit(np.log(np.arange(1, len(pos) + 1)), np.log(pos), 1)[0])
    else:
        slope = 0.0
    return {"gini": gini, "top1pct_share": float(x[:top].sum() / total), "zipf_fit": -slope}


def _repurchase_counts(
    u: np.ndarray, item: np.ndarray, t: np.ndarray, window_start: float
) -> tuple[int, int]:
    """(re-bought, all) distinct (user, item) purchases at or after ``window_start`` by users
    who purchased before it; re-bought means the user bought the item before the window."""
    if len(u) == 0:
        return 0, 0
    key = u.astype(np.int64) * (int(item.max()) + 1) + item
    before = t < window_start
    returning = np.zeros(int(u.max()) + 1, dtype=bool)
    returning[u[before]] = True
    prior = np.unique(key[before])
    window = np.unique(key[~before & returning[u]])
    return int(np.isin(window, prior, assume_unique=True).sum()), len(window)


def repurchase_share(
    events: pl.DataFrame | pl.LazyFrame, window_days: float = 30.0, end: datetime | None = None
) -> float:
    """Share of re-bought items among returning customers' purchases in the last window.

    Among distinct (user, item) purchases in ``[end - window_days, end)`` by users who had
    purchased before that window, the share whose item the same user bought before the
    window (UCI Online Retail: 42.6% over 30 days). ``end`` defaults to midnight after the
    last purchase. NaN when no returning customer bought anything in the window.

    Example:
        >>> ev = pl.DataFrame({"user_id": [1, 1, 1], "item_id": [5, 5, 6],
        ...     "ts": [datetime(2024, 1, 1), datetime(2024, 2, 20), datetime(2024, 2, 21)],
        ...     "event": ["purchase"] * 3})
        >>> repurchase_share(ev, 30, datetime(2024, 3, 1))
        0.5
    """
    frame = events.lazy() if isinstance(events, pl.DataFrame) else events
    buys = (
        frame.filter(pl.col(C.RAW_EVENT) == "purchase")
        .select(C.RAW_USER, C.RAW_ITEM, C.RAW_TS)
        .collect()
    )
    if buys.height == 0:
        return float("nan")
    if end is None:
        last = buys[C.RAW_TS].max()
        assert isinstance(last, datetime)
        end = datetime(last.year, last.month, last.day) + timedelta(days=1)
    w0 = end - timedelta(days=window_days)
    u = buys[C.RAW_USER].rank("dense").to_numpy().astype(np.int64)
    i = buys[C.RAW_ITEM].rank("dense").to_numpy().astype(np.int64)
    t = (buys[C.RAW_TS] - w0).dt.total_milliseconds().to_numpy() / _MS_PER_DAY
    inside = (buys[C.RAW_TS] < end).to_numpy()
    hit, total = _repurchase_counts(u[inside], i[inside], t[inside], 0.0)
    return hit / total if total else float("nan")


# --------------------------------------------------------------------------------------------
# Writing.


def _naive_utc(ts: datetime) -> datetime:
    if ts.tzinfo is not None:
        ts = ts.astimezone(timezone.utc).replace(tzinfo=None)
    return ts


def _ts_array(start_ms: int, days: np.ndarray) -> pa.Array:
    ms = start_ms + np.round(days * _MS_PER_DAY).astype(np.int64)
    return pa.array(ms, type=pa.timestamp("ms"))


def _events_table(
    cat: _Catalog, users: _Users, cols: dict[str, np.ndarray], start_ms: int, session_base: int
) -> pa.Table:
    code = cols["code"].astype(np.int8)
    item = cols["item"].astype(np.int64)
    deep = code >= C.EVENT_CODE["cart"]
    qty = cols["qty"].astype(np.int32)
    value = cat.price[item] * qty
    names = pa.array(list(C.EVENT_TYPES), type=pa.string())
    return pa.table(
        {
            C.RAW_USER: pa.array(users.user_id[cols["u"].astype(np.int64)]),
            C.RAW_ITEM: pa.array(cat.item_id[item]),
            C.RAW_TS: pa.array(start_ms + cols["ms"], type=pa.timestamp("ms")),
            C.RAW_EVENT: names.take(pa.array(code)),
            C.RAW_SESSION: pa.array(session_base + cols["sess"].astype(np.int64)),
            C.RAW_VALUE: pa.array(value, mask=~deep),
            C.RAW_QUANTITY: pa.array(qty, mask=~deep),
        },
        schema=_EVENTS_SCHEMA,
    )


def _fixed_list(values: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), type=typ), values.shape[1])


def _users_tables(users: _Users, start_ms: int) -> tuple[pa.Table, pa.Table]:
    segment = pa.array(list(_SEGMENTS), type=pa.string()).take(
        pa.array(_segment(users.price_level))
    )
    public = pa.table(
        {
            C.RAW_USER: pa.array(users.user_id),
            "segment": segment,
            "signup_ts": _ts_array(start_ms, users.signup),
        },
        schema=_USERS_SCHEMA,
    )
    # Categories and brands are stored with their public ids (index + 1); -1 pads a slot.
    cats = np.where(users.taste_cats >= 0, users.taste_cats + 1, -1).astype(np.int32)
    fav = np.where(users.fav >= 0, users.fav + 1, -1).astype(np.int32)
    truth = pa.table(
        {
            C.RAW_USER: pa.array(users.user_id),
            "user_index": pa.array(users.index),
            "active_from_day": pa.array(users.active_from),
            "session_rate": pa.array(users.rate),
            "price_level": pa.array(users.price_level),
            "price_width": pa.array(users.price_width),
            "taste_categories": _fixed_list(cats, pa.int32()),
            "taste_weights": _fixed_list(users.taste_w, pa.float64()),
            "favorite_brands": _fixed_list(fav, pa.int32()),
        },
        schema=_TRUTH_USERS_SCHEMA,
    )
    return public, truth


def _catalog_tables(cat: _Catalog, start_ms: int) -> dict[str, pa.Table]:
    public = pa.table(
        {
            C.RAW_ITEM: pa.array(cat.item_id),
            "category": pa.array((cat.cat + 1).astype(np.int32)),
            "brand": pa.array((cat.brand + 1).astype(np.int32)),
            "price": pa.array(cat.price),
            "release_ts": _ts_array(start_ms, cat.release),
        }
    )
    order = np.argsort(cat.item_id, kind="stable")
    acc = cat.accessory
    truth_items = pa.table(
        {
            C.RAW_ITEM: pa.array(cat.item_id),
            "item_index": pa.array(np.arange(cat.n_items, dtype=np.int64)),
            "category": pa.array((cat.cat + 1).astype(np.int32)),
            "brand": pa.array((cat.brand + 1).astype(np.int32)),
            "price": pa.array(cat.price),
            "price_z": pa.array(cat.price_z),
            "quality": pa.array(cat.quality),
            "base_popularity": pa.array(cat.base),
            "release_day": pa.array(cat.release),
            "trend_amplitude": pa.array(cat.amp),
            "trend_onset_day": pa.array(cat.onset),
            "trend_width_days": pa.array(cat.width),
            "accessory_item_id": pa.array(cat.item_id[np.maximum(acc, 0)], mask=acc < 0),
        }
    )
    categories = pa.table(
        {
            "category": pa.array(np.arange(1, cat.n_cats + 1, dtype=np.int32)),
            "view_weight": pa.array(cat.cat_weight),
            "price_mu": pa.array(cat.price_mu),
            "price_sigma": pa.array(cat.price_sigma),
            "consumable": pa.array(cat.consumable),
            "interval_days": pa.array(cat.interval),
            "rebuy_prob": pa.array(cat.rebuy),
            "quantity_extra": pa.array(cat.qty_extra),
            "complement_category": pa.array((cat.complement_cat + 1).astype(np.int32)),
            "anchor_item_id": pa.array(cat.item_id[cat.anchor_item]),
        }
    )
    return {
        "items.parquet": public.take(pa.array(order)),
        "truth/items.parquet": truth_items,
        "truth/categories.parquet": categories,
    }


def _catalog_from_truth(truth: Path) -> _Catalog:
    items = pl.read_parquet(truth / "items.parquet").sort("item_index")
    cats = pl.read_parquet(truth / "categories.parquet").sort("category")
    cat = items["category"].to_numpy().astype(np.int64) - 1
    sizes = np.bincount(cat, minlength=cats.height)
    item_id = items[C.RAW_ITEM].to_numpy()
    index_of = dict(zip(item_id.tolist(), range(len(item_id)), strict=True))
    acc_raw = items["accessory_item_id"].to_list()
    accessory = np.array([index_of[a] if a is not None else -1 for a in acc_raw], dtype=np.int64)
    anchor = np.array([index_of[a] for a in cats["anchor_item_id"].to_list()], dtype=np.int64)
    return _Catalog(
        cat=cat,
        cat_start=np.concatenate([[0], np.cumsum(sizes)]),
        brand=items["brand"].to_numpy().astype(np.int64) - 1,
        price=items["price"].to_numpy(),
        price_z=items["price_z"].to_numpy(),
        quality=items["quality"].to_numpy(),
        base=items["base_popularity"].to_numpy(),
        release=items["release_day"].to_numpy(),
        amp=items["trend_amplitude"].to_numpy(),
        onset=items["trend_onset_day"].to_numpy(),
        width=items["trend_width_days"].to_numpy(),
        accessory=accessory,
        item_id=item_id,
        cat_weight=cats["view_weight"].to_numpy(),
        price_mu=cats["price_mu"].to_numpy(),
        price_sigma=cats["price_sigma"].to_numpy(),
        consumable=cats["consumable"].to_numpy(),
        interval=cats["interval_days"].to_numpy(),
        rebuy=cats["rebuy_prob"].to_numpy(),
        qty_extra=cats["quantity_extra"].to_numpy(),
        complement_cat=cats["complement_category"].to_numpy().astype(np.int64) - 1,
        anchor_item=anchor,
    )


def _write_table(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")


def synthesize(config: SynthConfig, out: str | Path) -> SynthSummary:
    """Generate a synthetic shop into the folder ``out`` and return what was written.

    Writes ``events.parquet``, ``items.parquet``, ``users.parquet``, ``truth/`` (latent
    parameters for :func:`oracle_scores`) and ``summary.json``. The same config gives
    byte-identical files. Each file is written under a temporary name and renamed into place
    at the end, so a reader never sees a half-written file under its final name.

    Example:
        >>> s = synthesize(SynthConfig(users=500, items=200, days=14), "tiny_shop")  # doctest: +SKIP
        >>> sorted(s.per_event_type)  # doctest: +SKIP
        ['cart', 'click', 'purchase', 'view']
    """
    cfg = config
    began = time.perf_counter()
    out = Path(out)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    start = cfg.start_datetime
    start_ms = int((start - datetime(1970, 1, 1)).total_seconds() * 1000)
    cat = _make_catalog(cfg)
    # The summary marks a complete shop: drop a previous one before replacing any file.
    (out / "summary.json").unlink(missing_ok=True)

    tag = uuid.uuid4().hex[:8]
    temp: dict[str, Path] = {}

    def tmp(name: str) -> Path:
        final = out / name
        temp[name] = final.with_name(f".{final.name}.{tag}.tmp")
        return temp[name]

    try:
        w_events = pq.ParquetWriter(tmp("events.parquet"), _EVENTS_SCHEMA, compression="zstd")
        w_users = pq.ParquetWriter(tmp("users.parquet"), _USERS_SCHEMA, compression="zstd")
        w_truth = pq.ParquetWriter(
            tmp("truth/users.parquet"), _TRUTH_USERS_SCHEMA, compression="zstd"
        )
        per_type = np.zeros(len(C.EVENT_TYPES), dtype=np.int64)
        item_counts = np.zeros(cat.n_items, dtype=np.int64)
        active_users = sessions = rebought = window_pairs = 0
        window = min(30.0, cfg.days / 2.0)
        step = cfg.chunk_users()
        bounds = list(range(0, cfg.users, step))
        with w_events, w_users, w_truth:
            for chunk, lo in enumerate(bounds):
                hi = min(lo + step, cfg.users)
                users, cols = _generate_chunk(cfg, cat, lo, hi, chunk)
                w_events.write_table(
                    _events_table(cat, users, cols, start_ms, sessions + 1 + _SESSION_OFFSET)
                )
                public, truth = _users_tables(users, start_ms)
                w_users.write_table(public)
                w_truth.write_table(truth)
                per_type += np.bincount(cols["code"], minlength=len(C.EVENT_TYPES))
                item_counts += np.bincount(cols["item"], minlength=cat.n_items)
                active_users += len(np.unique(cols["u"]))
                sessions += int(cols["sess"][-1]) + 1 if len(cols["sess"]) else 0
                buy = cols["code"] == C.EVENT_CODE["purchase"]
                hit, total = _repurchase_counts(
                    cols["u"][buy], cols["item"][buy], cols["t"][buy], cfg.days - window
                )
                rebought += hit
                window_pairs += total
        for name, table in _catalog_tables(cat, start_ms).items():
            _write_table(table, tmp(name))
        params = {
            "format": 1,
            "config": dataclasses.asdict(cfg),
            "start": start.isoformat(),
            "time_unit": "days since start",
            "constants": {
                "taste_slots": _TASTE_SLOTS,
                "brand_slots": _BRAND_SLOTS,
                "hourly_session_weights": _HOURLY.tolist(),
            },
        }
        tmp("truth/params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")

        events = int(per_type.sum())
        pop = popularity_stats(item_counts)
        summary = SynthSummary(
            events=events,
            users=cfg.users,
            items=cfg.items,
            per_event_type={n: int(c) for n, c in zip(C.EVENT_TYPES, per_type, strict=True)},
            out=out,
            sessions=sessions,
            active_users=active_users,
            start=start,
            end=start + timedelta(days=cfg.days),
            events_per_user=events / cfg.users,
            click_per_view=float(per_type[1] / max(per_type[0], 1)),
            item_gini=pop["gini"],
            top1pct_item_share=pop["top1pct_share"],
            zipf_fit=pop["zipf_fit"],
            repurchase_share=rebought / window_pairs if window_pairs else float("nan"),
            repurchase_window_days=window,
            chunks=len(bounds),
            files=tuple(sorted([*temp, "summary.json"])),
        )
        tmp("summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
        # summary.json goes last: a shop with a summary is complete.
        for name in sorted(temp, key=lambda n: n == "summary.json"):
            os.replace(temp[name], out / name)
    except BaseException:
        for path in temp.values():
            path.unlink(missing_ok=True)
        raise
    return dataclasses.replace(summary, seconds=time.perf_counter() - began)


# --------------------------------------------------------------------------------------------
# Oracle.


def _users_from_truth(frame: pl.DataFrame) -> _Users:
    def matrix(name: str, dtype: type) -> np.ndarray:
        return np.asarray(frame[name].to_numpy(), dtype=dtype).reshape(frame.height, -1)

    cats = matrix("taste_categories", np.int64)
    fav = matrix("favorite_brands", np.int64)
    active_from = frame["active_from_day"].to_numpy()
    return _Users(
        index=frame["user_index"].to_numpy(),
        signup=active_from,
        active_from=active_from,
        rate=frame["session_rate"].to_numpy(),
        price_level=frame["price_level"].to_numpy(),
        price_width=frame["price_width"].to_numpy(),
        taste_cats=np.where(cats > 0, cats - 1, -1),
        taste_w=matrix("taste_weights", np.float64),
        fav=np.where(fav > 0, fav - 1, -1),
    )


def _buy_prob(
    cfg: SynthConfig, cat: _Catalog, users: _Users, u: np.ndarray, item: np.ndarray, boost: float
) -> np.ndarray:
    a = _affinity(cfg, cat, users, u, item) + boost
    return (
        _sigmoid(cfg.click_bias + a) * _sigmoid(cfg.cart_bias + a) * _sigmoid(cfg.purchase_bias + a)
    )


def _pending(done_by: np.ndarray, done_by_end: np.ndarray, p: np.ndarray) -> np.ndarray:
    """P(a follow-up planned with probability ``p`` lands in the window | not yet happened),
    from the follow-up delay CDF at the window's start and end."""
    return p * (done_by_end - done_by) / np.maximum(1.0 - p * done_by, 1e-12)


def oracle_scores(
    shop: str | Path,
    as_of: datetime,
    users: Sequence[int] | None = None,
    k: int = 20,
    horizon_days: float = 7.0,
) -> pl.DataFrame:
    """Top-``k`` items per user by the true expected number of purchases in
    ``[as_of, as_of + horizon_days)``, computed from the shop's ``truth/`` folder and the
    purchases before ``as_of`` in ``events.parquet``.

    The score sums three terms of the generative process: browsing (sessions expected in the
    window x chance a view lands on the item x funnel conversion; durables the user owns are
    excluded), planned repurchases of consumables (due-date distribution given the last
    purchase and that it has not happened yet) and follow-up sessions for accessories of
    recently bought anchors. ``users`` are raw user ids (default: every user). Returns
    columns ``user_id``, ``item_id``, ``score``, ``rank`` (1..k), sorted by user then rank.

    Example:
        >>> some = pl.read_parquet("shop/users.parquet")["user_id"].head(1)  # doctest: +SKIP
        >>> top = oracle_scores("shop", datetime(2024, 2, 23), users=some, k=5)  # doctest: +SKIP
        >>> top["rank"].to_list()  # doctest: +SKIP
        [1, 2, 3, 4, 5]
    """
    shop = Path(shop)
    truth = shop / "truth"
    params_file = truth / "params.json"
    if not params_file.exists():
        raise MissingInputError(f"{params_file} not found: is {shop} a shop written by synthesize?")
    if k < 1 or horizon_days <= 0:
        raise ConfigError(
            f"oracle_scores needs k >= 1 and horizon_days > 0 (got {k}, {horizon_days})"
        )
    params = json.loads(params_file.read_text())
    cfg = SynthConfig(**params["config"])
    cat = _catalog_from_truth(truth)
    n_items = cat.n_items
    k = min(k, n_items)
    as_of = _naive_utc(as_of)
    t0 = (as_of - cfg.start_datetime) / timedelta(days=1)
    h = float(horizon_days)

    table = pl.read_parquet(truth / "users.parquet")
    if users is not None:
        wanted = pl.DataFrame({C.RAW_USER: list(users)}, schema={C.RAW_USER: pl.Int64})
        missing = wanted.join(table, on=C.RAW_USER, how="anti")[C.RAW_USER]
        if len(missing):
            raise DataError(
                "unknown user ids",
                file=str(truth / "users.parquet"),
                column=C.RAW_USER,
                values=missing.to_list(),
                fix="pass raw user ids from users.parquet",
            )
        table = wanted.join(table, on=C.RAW_USER, how="left", maintain_order="left")
    people = _users_from_truth(table)
    n_users = table.height

    # Purchases before as_of, as (row in ``table``, item index, day).
    rows = table.select(C.RAW_USER).with_row_index("row")
    items = pl.DataFrame({C.RAW_ITEM: cat.item_id, "item": np.arange(n_items)})
    hist = (
        pl.scan_parquet(shop / "events.parquet")
        .filter((pl.col(C.RAW_EVENT) == "purchase") & (pl.col(C.RAW_TS) < as_of))
        .select(C.RAW_USER, C.RAW_ITEM, C.RAW_TS)
        .join(rows.lazy(), on=C.RAW_USER)
        .join(items.lazy(), on=C.RAW_ITEM)
        .collect()
    )
    h_row = hist["row"].to_numpy().astype(np.int64)
    h_item = hist["item"].to_numpy().astype(np.int64)
    h_t = (hist[C.RAW_TS] - cfg.start_datetime).dt.total_milliseconds().to_numpy() / _MS_PER_DAY

    # Sparse terms: (row, item, expected purchases).
    extra_r, extra_i, extra_v = [], [], []
    # Repurchase: the last purchase of each consumable (user, item) plans the next one.
    last = (
        pl.DataFrame({"r": h_row, "i": h_item, "t": h_t})
        .filter(pl.Series(cat.consumable[cat.cat[h_item]]))
        .group_by("r", "i")
        .agg(pl.col("t").max())
    )
    if last.height:
        r, i, t = (last[c].to_numpy() for c in ("r", "i", "t"))
        c = cat.cat[i]
        lo = cat.interval[c] * (1.0 - cfg.interval_jitter)
        hi = cat.interval[c] * (1.0 + cfg.interval_jitter)

        def due_cdf(x: np.ndarray) -> np.ndarray:
            return np.clip((x - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)

        extra_r.append(r)
        extra_i.append(i)
        extra_v.append(_pending(due_cdf(t0 - t), due_cdf(t0 + h - t), cat.rebuy[c]))
    # Accessories: every anchor purchase may still have its follow-up session ahead.
    anchor = cat.accessory[h_item] >= 0
    if anchor.any():
        r, acc, t = h_row[anchor], cat.accessory[h_item[anchor]], h_t[anchor]
        d = cfg.complement_delay_days
        q = np.full(len(r), cfg.complement_next_session)
        pend = _pending(1.0 - np.exp(-(t0 - t) / d), 1.0 - np.exp(-(t0 + h - t) / d), q)
        pend *= cat.release[acc] < t0 + h
        extra_r.append(r)
        extra_i.append(acc)
        extra_v.append(pend * _buy_prob(cfg, cat, people, r, acc, cfg.complement_boost))
    e_r = np.concatenate(extra_r) if extra_r else np.zeros(0, dtype=np.int64)
    e_i = np.concatenate(extra_i) if extra_i else np.zeros(0, dtype=np.int64)
    e_v = np.concatenate(extra_v) if extra_v else np.zeros(0)
    durable = ~cat.consumable[cat.cat[h_item]]
    own_r, own_i = h_row[durable], h_item[durable]

    # Browsing: popularity averaged over the window, then the view distribution of a user.
    steps = max(4, math.ceil(h * 4))
    everything = np.arange(n_items)
    pop = np.zeros(n_items)
    for s in range(steps):
        pop += _popularity(cat, everything, np.full(n_items, t0 + (s + 0.5) / steps * h))
    pop /= steps
    tie = 1e-12 * pop / max(pop.sum(), 1e-300)  # orders items nobody is expected to buy
    g = cat.cat_weight / cat.cat_weight.sum()
    floor = cfg.price_browse_floor

    e_order = np.argsort(e_r, kind="stable")
    e_r, e_i, e_v = e_r[e_order], e_i[e_order], e_v[e_order]
    o_order = np.argsort(own_r, kind="stable")
    own_r, own_i = own_r[o_order], own_i[o_order]

    step = max(1, 2_000_000 // n_items)
    out_items, out_scores = [], []
    for lo_row in range(0, n_users, step):
        hi_row = min(lo_row + step, n_users)
        sl = slice(lo_row, hi_row)
        m = hi_row - lo_row
        fit = _price_fit(
            cat.price_z[None, :], people.price_level[sl, None], people.price_width[sl, None]
        )
        weight = pop[None, :] * (floor + (1.0 - floor) * fit)
        z = np.add.reduceat(weight, cat.cat_start[:-1], axis=1)
        taste = np.tile(cfg.explore_share * g, (m, 1))
        slots = people.taste_cats[sl]
        ok = slots >= 0
        rr = np.repeat(np.arange(m)[:, None], slots.shape[1], axis=1)
        np.add.at(taste, (rr[ok], slots[ok]), (1.0 - cfg.explore_share) * people.taste_w[sl][ok])
        fav = np.zeros((m, cat.brand.max() + 2))
        fslots = people.fav[sl]
        fr = np.repeat(np.arange(m)[:, None], fslots.shape[1], axis=1)
        fav[fr[fslots >= 0], fslots[fslots >= 0]] = 1.0
        t_item = taste[:, cat.cat]
        a = _logit(cfg, cat.quality[None, :], fit, fav[:, cat.brand], t_item, cat.n_cats)
        buy = (
            _sigmoid(cfg.click_bias + a)
            * _sigmoid(cfg.cart_bias + a)
            * _sigmoid(cfg.purchase_bias + a)
        )
        active = np.maximum(t0 + h - np.maximum(t0, people.active_from[sl]), 0.0)
        views = people.rate[sl] * active * cfg.views_per_session
        share = t_item * weight / np.maximum(z[:, cat.cat], 1e-300)
        score = views[:, None] * share * buy

        a0, a1 = np.searchsorted(e_r, [lo_row, hi_row])
        np.add.at(score, (e_r[a0:a1] - lo_row, e_i[a0:a1]), e_v[a0:a1])
        b0, b1 = np.searchsorted(own_r, [lo_row, hi_row])
        score[own_r[b0:b1] - lo_row, own_i[b0:b1]] = 0.0

        key = score + tie[None, :]
        top = np.argpartition(-key, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(key, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        out_items.append(top)
        out_scores.append(np.take_along_axis(score, top, axis=1))

    top_items = np.concatenate(out_items) if out_items else np.zeros((0, k), dtype=np.int64)
    top_scores = np.concatenate(out_scores) if out_scores else np.zeros((0, k))
    return pl.DataFrame(
        {
            C.RAW_USER: np.repeat(table[C.RAW_USER].to_numpy(), k),
            C.RAW_ITEM: cat.item_id[top_items.ravel()],
            C.SCORE: top_scores.ravel(),
            C.RANK: np.tile(np.arange(1, k + 1, dtype=np.int32), n_users),
        },
        schema={C.RAW_USER: pl.Int64, C.RAW_ITEM: pl.Int64, C.SCORE: pl.Float64, C.RANK: pl.Int32},
    )
