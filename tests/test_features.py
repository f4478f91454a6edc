"""Feature families against brute force, point-in-time correctness, the registry and shards.

Every family is recomputed here in plain Python, from the written definitions in
docs/features.md, over the events strictly before ``AS_OF``, for sampled candidate rows.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from gbrank import columns as C
from gbrank.cli import app
from gbrank.config import load_config
from gbrank.errors import ConfigError
from gbrank.features import builders
from gbrank.features.base import FeatureContext, FeatureSpec
from gbrank.features.builders import FeatureBuilder, build_features, feature_columns
from gbrank.features.families import similarity
from gbrank.features.families.similarity import als_factors
from gbrank.features.labels import attach_labels, build_labels, relevant_items
from gbrank.features.registry import BY_NAME, DEFAULT_FAMILIES, FAMILIES, describe, resolve
from gbrank.features.sharding import plan_shards, shard_of

AS_OF = datetime(2024, 2, 1)
START = AS_OF - timedelta(days=40)
N_ITEMS = 40
SCHEMA = {
    C.USER: pl.Int32,
    C.ITEM: pl.Int32,
    C.TS: pl.Datetime("ms"),
    C.EVENT: pl.Int8,
    C.SESSION: pl.Int64,
}
SPEC = FeatureSpec()  # windows 1, 7, 30 days; 10 recent items; 20 short-term events
ALL = [f.name for f in FAMILIES]
M = SPEC.prior_strength
DAY = 86400.0


def random_events(
    seed: int, sessions: int = 700, users: int = 50, with_session_ids: bool = False
) -> pl.DataFrame:
    """Bursts of events (sessions of 1-10 events, seconds to minutes apart) on both sides of
    AS_OF: 40 days before it, 10 after. Session ids, when given, are set on about 70% of rows
    (the rest fall back to 30-minute gaps)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[Any, ...]] = []
    for s in range(sessions):
        user = int(rng.integers(0, users))
        t = START + timedelta(seconds=int(rng.integers(0, 50 * 86400)))
        for _ in range(int(rng.integers(1, 11))):
            item = int(rng.zipf(1.5) % N_ITEMS)
            event = int(rng.choice(4, p=[0.55, 0.25, 0.12, 0.08]))
            sid = s if with_session_ids and rng.random() < 0.7 else None
            rows.append((user, item, t, event, sid))
            # Mostly short steps; now and then a pause longer than the 30-minute gap.
            t += timedelta(seconds=int(rng.choice([0, 20, 90, 600, 2400, 5000])))
    return pl.DataFrame(rows, schema=SCHEMA, orient="row").sort(C.TS)


def items_table() -> pl.DataFrame:
    rng = np.random.default_rng(99)
    return pl.DataFrame(
        {
            C.ITEM: np.arange(N_ITEMS, dtype=np.int32),
            "category": rng.integers(0, 5, N_ITEMS).astype(np.int32),
            "brand": rng.integers(0, 8, N_ITEMS).astype(np.int32),
            "price": rng.uniform(1, 100, N_ITEMS).round(2),
        }
    )


def candidates_for(events: pl.DataFrame, seed: int = 1, extra_users: int = 3) -> pl.DataFrame:
    """8 random items per user (plus users without history) and two sources with missing
    and tied scores."""
    rng = np.random.default_rng(seed)
    users = np.r_[events[C.USER].unique().to_numpy(), np.arange(1000, 1000 + extra_users)]
    random_pairs = pl.DataFrame(
        {C.USER: np.repeat(users, 8), C.ITEM: rng.integers(0, N_ITEMS + 2, len(users) * 8)},
        schema={C.USER: pl.Int32, C.ITEM: pl.Int32},
    )
    # Items the user bought before as_of too, so repurchase features are exercised.
    bought = (
        events.filter((pl.col(C.TS) < AS_OF) & (pl.col(C.EVENT) == 3))
        .select(C.USER, C.ITEM)
        .unique()
        .sort(C.USER, C.ITEM)
    )
    pairs = pl.concat([random_pairs, bought]).unique()
    n = pairs.height
    pop = np.where(rng.random(n) < 0.3, np.nan, rng.integers(0, 5, n).astype(np.float32))
    knn = np.where(rng.random(n) < 0.5, np.nan, rng.random(n).astype(np.float32))
    return (
        pairs.with_columns(
            pl.Series("pop_score", pop, dtype=pl.Float32).fill_nan(None),
            pl.Series("knn_score", knn, dtype=pl.Float32).fill_nan(None),
        )
        .with_columns(
            pl.col("pop_score").rank("ordinal", descending=True).over(C.USER).alias("pop_rank"),
            pl.col("knn_score").rank("ordinal", descending=True).over(C.USER).alias("knn_rank"),
        )
        .with_columns(
            (pl.col("pop_score").is_not_null().cast(pl.Int8) + pl.col("knn_score").is_not_null())
            .cast(pl.Int8)
            .alias(C.N_SOURCES)
        )
        .sort(C.USER, C.ITEM)
    )


# --------------------------------------------------------------------------- brute force


def days(ts: datetime) -> float:
    return (AS_OF - ts).total_seconds() / DAY


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


class Brute:
    """Every feature of one (user, item) row, from Python lists of the events before AS_OF."""

    def __init__(self, events: pl.DataFrame, items: pl.DataFrame, cands: pl.DataFrame) -> None:
        self.past = [r for r in events.iter_rows(named=True) if r[C.TS] < AS_OF]
        self.price = dict(zip(items[C.ITEM], items["price"], strict=True))
        self.cat = dict(zip(items[C.ITEM], items["category"], strict=True))
        self.brand = dict(zip(items[C.ITEM], items["brand"], strict=True))
        self.cands = cands
        self.by_user: dict[int, list[dict]] = defaultdict(list)
        for r in sorted(self.past, key=lambda r: (r[C.USER], r[C.TS], r[C.ITEM], r[C.EVENT])):
            self.by_user[r[C.USER]].append(r)
        self.total = [sum(r[C.EVENT] == c for r in self.past) for c in range(4)]
        self.z = self._price_z()
        self.intervals, self.buyers = self._purchases()
        self.covisit = self._covisit()

    # -- shared definitions
    def _price_z(self) -> dict[int, float | None]:
        seen = {r[C.ITEM] for r in self.past}
        logs: dict[int, list[float]] = defaultdict(list)
        for i in seen:
            logs[self.cat[i]].append(math.log(self.price[i]))
        out: dict[int, float | None] = {}
        for i in self.price:
            ref = logs.get(self.cat[i], [])
            sd = statistics.stdev(ref) if len(ref) > 1 else 0.0
            out[i] = (math.log(self.price[i]) - statistics.mean(ref)) / sd if sd > 0 else None
        return out

    def _purchases(self) -> tuple[dict[int, list[float]], dict[int, list[int]]]:
        times: dict[tuple[int, int], set[datetime]] = defaultdict(set)
        for r in self.past:
            if r[C.EVENT] == 3:
                times[(r[C.USER], r[C.ITEM])].add(r[C.TS])
        intervals: dict[int, list[float]] = defaultdict(list)
        buyers: dict[int, list[int]] = defaultdict(list)
        for (_, item), ts in times.items():
            ordered = sorted(ts)
            buyers[item].append(len(ordered))
            intervals[item] += [
                (b - a).total_seconds() / DAY for a, b in zip(ordered, ordered[1:], strict=False)
            ]
        return intervals, buyers

    def _covisit(self) -> dict[tuple[int, int], int]:
        pairs: dict[tuple[int, int], set[int]] = defaultdict(set)
        for user, evs in self.by_user.items():
            for a in evs:
                for b in evs:
                    gap = abs((a[C.TS] - b[C.TS]).total_seconds())
                    if a[C.ITEM] != b[C.ITEM] and gap <= SPEC.covisit_hours * 3600:
                        pairs[(a[C.ITEM], b[C.ITEM])].add(user)
        return {k: len(v) for k, v in pairs.items()}

    def sessions(self, user: int) -> list[int]:
        """Session key of each of the user's events, in order."""
        keys, gap_id, prev = [], 0, None
        for r in self.by_user[user]:
            if prev is None or (r[C.TS] - prev).total_seconds() > SPEC.session_gap_minutes * 60:
                gap_id += 1
            prev = r[C.TS]
            keys.append(r[C.SESSION] if r[C.SESSION] is not None else -gap_id)
        return keys

    def last_session(self, user: int) -> list[dict]:
        keys = self.sessions(user)
        return [r for r, k in zip(self.by_user[user], keys, strict=True) if keys and k == keys[-1]]

    # -- families
    def user(self, u: int, i: int) -> dict[str, Any]:
        mine = self.by_user.get(u, [])
        out: dict[str, Any] = {}
        for code, name in enumerate(C.EVENT_TYPES):
            for w in SPEC.windows_days:
                out[f"u_n_{name}_{w}d"] = sum(
                    r[C.EVENT] == code and r[C.TS] >= AS_OF - timedelta(days=w) for r in mine
                )
            out[f"u_n_{name}"] = sum(r[C.EVENT] == code for r in mine)
        out["u_n_events"] = len(mine)
        out["u_n_items"] = len({r[C.ITEM] for r in mine})
        out["u_active_days"] = len({r[C.TS].date() for r in mine})
        out["u_days_since_last"] = days(mine[-1][C.TS]) if mine else None
        bought = [r[C.TS] for r in mine if r[C.EVENT] == 3]
        out["u_days_since_last_purchase"] = days(max(bought)) if bought else None
        for name, deep, shallow in (
            ("u_click_per_view", 1, 0),
            ("u_cart_per_click", 2, 1),
            ("u_purchase_per_cart", 3, 2),
        ):
            prior = self.total[deep] / self.total[shallow] if self.total[shallow] else 0.0
            n_deep = sum(r[C.EVENT] == deep for r in mine)
            n_shallow = sum(r[C.EVENT] == shallow for r in mine)
            out[name] = (n_deep + M * prior) / (n_shallow + M) if mine else None
        out["u_n_sessions"] = len(set(self.sessions(u)))
        out["u_mean_session_events"] = len(mine) / out["u_n_sessions"] if mine else None
        prices = [self.price[r[C.ITEM]] for r in mine]
        out["u_mean_price"] = mean(prices)
        out["u_max_price"] = max(prices) if prices else None
        out["u_mean_purchase_price"] = mean(
            [self.price[r[C.ITEM]] for r in mine if r[C.EVENT] == 3]
        )
        zs = [self.z[r[C.ITEM]] for r in mine if self.z[r[C.ITEM]] is not None]
        out["u_mean_price_z"] = mean(zs)  # type: ignore[arg-type]
        cats = [self.cat[r[C.ITEM]] for r in mine]
        out["u_n_categories"] = len(set(cats))
        out["u_top_category_share"] = (
            max(cats.count(c) for c in set(cats)) / len(cats) if cats else None
        )
        return out

    def item(self, u: int, i: int) -> dict[str, Any]:
        its = [r for r in self.past if r[C.ITEM] == i]
        out: dict[str, Any] = {}
        for code, name in enumerate(C.EVENT_TYPES):
            for w in SPEC.windows_days:
                out[f"i_n_{name}_{w}d"] = sum(
                    r[C.EVENT] == code and r[C.TS] >= AS_OF - timedelta(days=w) for r in its
                )
            out[f"i_n_{name}"] = sum(r[C.EVENT] == code for r in its)
        out["i_n_users"] = len({r[C.USER] for r in its})
        out["i_days_since_first"] = days(min(r[C.TS] for r in its)) if its else None
        out["i_days_since_last"] = days(max(r[C.TS] for r in its)) if its else None
        ws = SPEC.windows_days
        for s, long in zip(ws, ws[1:], strict=False):
            n_s = sum(r[C.TS] >= AS_OF - timedelta(days=s) for r in its)
            n_l = sum(r[C.TS] >= AS_OF - timedelta(days=long) for r in its)
            out[f"i_trend_{s}d_{long}d"] = ((n_s + 1) / s) / ((n_l + 1) / long) if its else None
        g_ctr = self.total[1] / self.total[0]
        g_cvr = self.total[3] / self.total[1]
        out["i_ctr"] = (out["i_n_click"] + M * g_ctr) / (out["i_n_view"] + M) if its else None
        out["i_cvr"] = (out["i_n_purchase"] + M * g_cvr) / (out["i_n_click"] + M) if its else None
        out["i_price"] = self.price.get(i)
        out["i_price_z"] = self.z.get(i)
        counts = self.buyers.get(i, [])
        out["i_repurchase_rate"] = sum(n >= 2 for n in counts) / len(counts) if counts else None
        gaps = self.intervals.get(i, [])
        out["i_repurchase_days"] = statistics.median(gaps) if gaps else None
        return out

    def user_item(self, u: int, i: int) -> dict[str, Any]:
        pair = [r for r in self.by_user.get(u, []) if r[C.ITEM] == i]
        out: dict[str, Any] = {
            f"ui_n_{name}": sum(r[C.EVENT] == code for r in pair)
            for code, name in enumerate(C.EVENT_TYPES)
        }
        out["ui_days_since_last"] = days(pair[-1][C.TS]) if pair else None
        bought = [r[C.TS] for r in pair if r[C.EVENT] == 3]
        out["ui_days_since_last_purchase"] = days(max(bought)) if bought else None
        order: list[int] = []  # items of the last session, last touched first
        for r in reversed(self.last_session(u)):
            if r[C.ITEM] not in order:
                order.append(r[C.ITEM])
        out["ui_last_session_pos"] = order.index(i) + 1 if i in order else None
        gaps = self.intervals.get(i) or [
            g for j, gs in self.intervals.items() if self.cat[j] == self.cat.get(i) for g in gs
        ]
        interval = statistics.median(gaps) if gaps else None
        out["ui_repurchase_due"] = (
            ratio(out["ui_days_since_last_purchase"], interval) if interval else None
        )
        return out

    def affinity(self, u: int, i: int, attr: dict[int, int], prefix: str) -> dict[str, Any]:
        mine = self.by_user.get(u, [])
        last = self.last_session(u)
        recent = mine[-SPEC.short_term_events :]
        value = attr.get(i)

        def share(evs: list[dict]) -> float:
            return sum(attr[r[C.ITEM]] == value for r in evs) / len(evs) if evs else 0.0

        return {
            f"{prefix}_share": share(mine),
            f"{prefix}_share_last_session": share(last),
            f"{prefix}_share_last_{SPEC.short_term_events}": share(recent),
            f"{prefix}_n_purchase": sum(attr[r[C.ITEM]] == value and r[C.EVENT] == 3 for r in mine),
        }

    def user_category(self, u: int, i: int) -> dict[str, Any]:
        return self.affinity(u, i, self.cat, "uc")

    def user_brand(self, u: int, i: int) -> dict[str, Any]:
        return self.affinity(u, i, self.brand, "ub")

    def cross(self, u: int, i: int) -> dict[str, Any]:
        mine = self.by_user.get(u, [])
        mean_price = mean([self.price[r[C.ITEM]] for r in mine])
        mean_bought = mean([self.price[r[C.ITEM]] for r in mine if r[C.EVENT] == 3])
        zs = [self.z[r[C.ITEM]] for r in mine if self.z[r[C.ITEM]] is not None]
        z_user, z_item = mean(zs), self.z.get(i)  # type: ignore[arg-type]
        last_cats = {self.cat[r[C.ITEM]] for r in self.last_session(u)}
        return {
            "x_price_ratio": ratio(self.price.get(i), mean_price),
            "x_purchase_price_ratio": ratio(self.price.get(i), mean_bought),
            "x_price_z_gap": None if z_user is None or z_item is None else z_item - z_user,
            "x_last_session_category": int(self.cat.get(i, -1) in last_cats),
        }

    def source(self, u: int, i: int) -> dict[str, Any]:
        rows = self.cands.filter(pl.col(C.USER) == u)
        out: dict[str, Any] = {}
        for s in ("pop", "knn"):
            scores = [x for x in rows[f"{s}_score"].to_list() if x is not None]
            mine = rows.filter(pl.col(C.ITEM) == i)[f"{s}_score"][0]
            if mine is None:
                out[f"{s}_score_pct"] = None
                continue
            below = sum(x < mine for x in scores)
            ties = sum(x == mine for x in scores)
            out[f"{s}_score_pct"] = (below + (ties + 1) / 2) / len(scores)
        return out

    def recent(self, u: int) -> list[int]:
        out: list[int] = []
        for r in reversed(self.by_user.get(u, [])):
            if r[C.ITEM] not in out:
                out.append(r[C.ITEM])
        return out[: SPEC.recent_items]

    def similarity(self, u: int, i: int, factors: Any) -> dict[str, Any]:
        slots = [(k, j) for k, j in enumerate(self.recent(u)) if j != i]
        out: dict[str, Any] = {}

        def cosine(a: int, b: int) -> float:
            fa = factors.items[a] if a < len(factors.items) - 1 else np.zeros(1)
            fb = factors.items[b]
            na, nb = np.linalg.norm(fa), np.linalg.norm(fb)
            return float(fa @ fb / (na * nb)) if na > 0 and nb > 0 else 0.0

        measures = {
            "covisit": lambda j: float(self.covisit.get((i, j), 0)),
            "als": lambda j: cosine(i, j),
        }
        for name, measure in measures.items():
            values = [measure(j) for _, j in slots]
            weights = [1.0 / (k + 1) for k, _ in slots]
            out[f"sim_{name}_max"] = max(values) if values else None
            out[f"sim_{name}_mean"] = mean(values)
            out[f"sim_{name}_wmean"] = (
                sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)
                if values
                else None
            )
        known = u in self.by_user
        f_item = (
            factors.items[i] if i < len(factors.items) - 1 else np.zeros(factors.items.shape[1])
        )
        out["sim_als_user"] = float(factors.users[u] @ f_item) if known else None
        return out


def check_row(row: dict[str, Any], expected: dict[str, Any], family: str) -> None:
    for name, value in expected.items():
        got = row[name]
        where = (family, name, row[C.USER], row[C.ITEM])
        if value is None:
            assert got is None, where
        else:
            assert got is not None, where
            assert got == pytest.approx(value, rel=1e-4, abs=1e-4), where


@pytest.fixture(scope="module", params=[(0, False), (1, True)], ids=["gap-sessions", "session-ids"])
def world(request: pytest.FixtureRequest) -> dict[str, Any]:
    seed, with_ids = request.param
    events = random_events(seed, with_session_ids=with_ids)
    items = items_table()
    cands = candidates_for(events, seed)
    builder = FeatureBuilder(events, AS_OF, items=items, families=ALL)  # the full log, on purpose
    frame = builder.build(cands)
    return {"events": events, "items": items, "cands": cands, "frame": frame, "builder": builder}


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_family_matches_brute_force(world: dict[str, Any], family: str) -> None:
    """Every family, recomputed in plain Python for 30 sampled rows."""
    frame = world["frame"]
    brute = Brute(world["events"], world["items"], world["cands"])
    factors = als_factors(
        FeatureContext(
            world["builder"].history, AS_OF, pl.LazyFrame(), shared=world["builder"].shared
        )
    )
    declared = [
        c.name for c in BY_NAME[family].columns(world["builder"].spec_for(world["cands"].columns))
    ]
    rng = np.random.default_rng(7)
    informative: dict[str, int] = defaultdict(int)
    # Rows of users with history and of the users without, and items never seen.
    for idx in rng.choice(frame.height, 40, replace=False):
        row = frame.row(int(idx), named=True)
        u, i = row[C.USER], row[C.ITEM]
        if family == "similarity":
            expected = brute.similarity(u, i, factors)
        elif family == "source":
            expected = brute.source(u, i)
            expected.update({c: row[c] for c in declared if c not in expected})  # passed through
        else:
            expected = getattr(brute, family)(u, i)
        assert set(expected) == set(declared), family  # the brute force covers every column
        check_row(row, expected, family)
        for name, value in expected.items():
            informative[name] += value is not None and value != 0
    # The sample is not vacuous: every column was compared on non-trivial values.
    assert [c for c in declared if informative[c] == 0] == []


def test_frame_shape_and_declared_columns(world: dict[str, Any]) -> None:
    frame, cands, builder = world["frame"], world["cands"], world["builder"]
    assert frame.height == cands.height
    assert frame.select(C.USER, C.ITEM).is_unique().all()
    assert_frame_equal(frame.select(cands.columns), cands)  # candidate columns pass through
    declared = builder.declared(builder.spec_for(cands.columns))
    expected_cols = [C.USER, C.ITEM, *[c for c in cands.columns if c not in (C.USER, C.ITEM)]]
    expected_cols += [c.name for c in declared if c.name not in cands.columns]
    assert frame.columns == expected_cols
    for col in declared:
        if col.dtype is not None:
            assert frame.schema[col.name] == col.dtype, col.name
    assert set(feature_columns(frame)).isdisjoint({C.USER, C.ITEM})


def test_no_leakage_from_events_at_or_after_as_of() -> None:
    """Changing every event at or after as_of, and adding some exactly at as_of, moves no
    feature of any family."""
    events = random_events(3, with_session_ids=True)
    items = items_table()
    cands = candidates_for(events)
    base = build_features(cands, events, AS_OF, items, families=ALL)  # the full log, on purpose
    later = events.filter(pl.col(C.TS) >= AS_OF)
    changed_later = later.with_columns(
        (pl.col(C.ITEM) + 1) % N_ITEMS,
        pl.lit(3, dtype=pl.Int8).alias(C.EVENT),
        pl.lit(None, dtype=pl.Int64).alias(C.SESSION),
    )
    users = cands[C.USER].unique().head(20).to_list()
    extra = pl.DataFrame(
        {
            C.USER: users,
            C.ITEM: [u % N_ITEMS for u in users],
            C.TS: [AS_OF] * len(users),
            C.EVENT: [3] * len(users),
            C.SESSION: [None] * len(users),
        },
        schema=SCHEMA,
    )
    changed = pl.concat([events.filter(pl.col(C.TS) < AS_OF), changed_later, extra])
    assert_frame_equal(base, build_features(cands, changed, AS_OF, items, families=ALL))
    # And the history cut at as_of gives the same frame as the full log.
    past = events.filter(pl.col(C.TS) < AS_OF)
    assert_frame_equal(base, build_features(cands, past, AS_OF, items, families=ALL))


def test_one_and_four_shards_give_identical_features() -> None:
    events = random_events(4)
    items = items_table()
    cands = candidates_for(events, extra_users=5)
    one = build_features(cands, events, AS_OF, items, families=ALL, n_shards=1)
    four = build_features(cands, events, AS_OF, items, families=ALL, n_shards=4)
    assert_frame_equal(one.sort(C.USER, C.ITEM), four.sort(C.USER, C.ITEM))
    builder = FeatureBuilder(events, AS_OF, items=items)
    shards = list(builder.build_shards(cands, 4))
    assert len(shards) > 1
    seen = [set(s[C.USER].unique().to_list()) for s in shards]
    assert all(a.isdisjoint(b) for k, a in enumerate(seen) for b in seen[k + 1 :])


def _joined_rows(frame: pl.DataFrame, part: pl.DataFrame, keys: list[str]) -> list[Any]:
    """The reference: a plain left join of the row numbers on the key columns."""
    return (
        frame.select(keys)
        .join(part.select(keys).with_row_index("_row"), on=keys, how="left", maintain_order="left")
        .get_column("_row")
        .to_list()
    )


@pytest.mark.parametrize("layout", ["sorted", "shuffled", "nulls", "wide_codes", "text", "empty"])
def test_part_rows_equal_a_left_join(layout: str) -> None:
    # Both paths of the key lookup (a join on packed keys; a plain join where the keys do not
    # pack: codes beyond 31 bits, text) find the same row of the part as a two-column join.
    rng = np.random.default_rng(7)
    n = 3_000
    frame = pl.DataFrame(
        {C.USER: rng.integers(0, 60, n), C.ITEM: rng.integers(0, 90, n)},
        schema={C.USER: pl.Int32, C.ITEM: pl.Int32},
    ).sort(C.USER, C.ITEM)
    part = frame.unique().sample(fraction=0.6, seed=3)
    extra = pl.DataFrame({C.USER: [70, 71], C.ITEM: [5, 6]}, schema=frame.schema)
    part = pl.concat([part, extra])  # keys the frame does not hold
    if layout == "sorted":
        part = part.sort(C.USER, C.ITEM)
    elif layout == "nulls":
        frame = frame.with_columns(pl.when(pl.col(C.ITEM) == 4).then(None).otherwise(C.ITEM))
        part = (
            part.sort(C.USER, C.ITEM)
            .with_columns(pl.when(pl.col(C.ITEM) == 5).then(None).otherwise(C.ITEM))
            .unique(maintain_order=True)
        )
    elif layout == "wide_codes":  # beyond what two packed halves hold
        frame = frame.with_columns(pl.col(C.USER).cast(pl.Int64) + 2**40)
        part = part.sort(C.USER, C.ITEM).with_columns(pl.col(C.USER).cast(pl.Int64) + 2**40)
    elif layout == "text":
        frame = frame.with_columns(pl.col(C.ITEM).cast(pl.String))
        part = part.with_columns(pl.col(C.ITEM).cast(pl.String))
    elif layout == "empty":
        part = part.clear()
    keys = [C.USER, C.ITEM]
    got = builders._part_rows(frame, part, keys).to_list()
    assert got == _joined_rows(frame, part, keys)
    assert any(r is None for r in got) and (layout == "empty" or any(r is not None for r in got))


def test_shard_assignment_is_stable() -> None:
    users = np.arange(10_000)
    assert (shard_of(users, 8) == shard_of(users[::-1], 8)[::-1]).all()  # order-free
    counts = np.bincount(shard_of(users, 8), minlength=8)
    assert counts.min() > 1_000  # roughly balanced
    # Pinned: a user's shard is part of the artifact layout, so it must never move between
    # versions (a splitmix64 finalizer, not a library hash).
    assert shard_of(np.array([0, 1, 2, 3, 12345, 2**31 - 1]), 7).tolist() == [2, 2, 4, 2, 5, 1]
    assert plan_shards(1_300_000, 0, 2_000_000) == 1
    assert plan_shards(5_000_000, 0, 2_000_000) == 3
    assert plan_shards(10, 4, 2_000_000) == 4


@pytest.mark.parametrize("seed", range(6))
def test_property_random_logs_keep_rows_and_keys(seed: int) -> None:
    """Seeded random logs and candidate sets (hypothesis is not installed): no row lost or
    duplicated, unique keys, declared columns with declared dtypes, counts never negative."""
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(0, 300))
    events = pl.DataFrame(
        {
            C.USER: rng.integers(0, 12, n),
            C.ITEM: rng.integers(0, N_ITEMS, n),
            C.TS: [AS_OF + timedelta(hours=int(h)) for h in rng.integers(-24 * 20, 24 * 5, n)],
            C.EVENT: rng.integers(0, 4, n),
            C.SESSION: [None] * n,
        },
        schema=SCHEMA,
    )
    m = int(rng.integers(1, 120))
    cands = pl.DataFrame(
        {C.USER: rng.integers(0, 15, m), C.ITEM: rng.integers(0, N_ITEMS + 5, m)},
        schema={C.USER: pl.Int32, C.ITEM: pl.Int32},
    ).unique()
    items = items_table() if seed % 2 else None
    families = [None, ALL][seed % 2] if seed < 4 else ["user", "item", "similarity"]
    frame = build_features(cands, events, AS_OF, items, families=families, n_shards=1 + seed % 3)
    assert frame.height == cands.height
    assert frame.select(C.USER, C.ITEM).is_unique().all()
    assert_frame_equal(frame.select(C.USER, C.ITEM), cands.sort(C.USER, C.ITEM))
    builder = FeatureBuilder(events, AS_OF, items=items, families=families)
    declared = builder.declared(builder.spec_for(cands.columns))
    assert [c for c in frame.columns if c not in (C.USER, C.ITEM)] == [c.name for c in declared]
    for col in declared:
        if col.dtype is not None:  # None: passed through from the candidate rows
            assert frame.schema[col.name] == col.dtype, col.name
        if col.fill is not None:
            assert frame[col.name].null_count() == 0, col.name
            assert (frame[col.name] >= 0).all(), col.name


def test_empty_history_and_empty_candidates() -> None:
    """Cold start: no past event at all, and a shard without candidate rows."""
    empty = random_events(0).clear()
    cands = candidates_for(random_events(0)).head(5)
    frame = build_features(cands, empty, AS_OF, items_table(), families=ALL, n_shards=3)
    assert frame.height == 5 and frame["u_n_events"].to_list() == [0] * 5
    assert frame["sim_als_mean"].null_count() == 5 and frame["i_price"].null_count() == 0
    none = build_features(
        cands.clear(), random_events(0), AS_OF, items_table(), families=ALL, n_shards=3
    )
    assert none.height == 0 and none.columns == frame.columns


def test_large_catalogue_paths_match_dense_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Co-visitation by hash join and cosines from gathered factors (catalogues too large for
    dense matrices) give the dense paths' values; so does the two-column dedup of pairs."""
    events = random_events(2)
    cands = candidates_for(events)
    dense = build_features(cands, events, AS_OF, families=["similarity"])
    monkeypatch.setattr(similarity, "DENSE_MAX_ITEMS", 0)
    sparse = build_features(cands, events, AS_OF, families=["similarity"])
    # Float32 sums in another order: a few units in the 5th significant digit (seen: 3.3011e-4
    # against 3.3013e-4), so the tolerance is float32's, accumulated over tens of terms.
    assert_frame_equal(dense, sparse, rel_tol=2e-4, abs_tol=1e-7)
    user = np.array([0, 0, 0, 1, 1], dtype=np.int32)
    item = np.array([3, 5, 3, 5, 3], dtype=np.int32)
    ms = np.array([0, 10, 20, 0, 5], dtype=np.int64)
    small = similarity._block_pairs(user, item, ms, 100, 10)
    huge = similarity._block_pairs(user, item, ms, 100, 3_100_000_000)  # no room for one key
    assert small[0].tolist() == [35] and small[1].tolist() == [2]  # two users, counted once each
    assert huge[0].tolist() == [3 * 3_100_000_000 + 5] and huge[1].tolist() == [2]


def test_families_are_selectable_and_skip_missing_attributes() -> None:
    events = random_events(5)
    cands = candidates_for(events)
    frame = build_features(cands, events, AS_OF, items_table(), families=["item", "cross"])
    assert {c.split("_")[0] for c in feature_columns(frame)} == {"i", "x"}
    assert not any(c.endswith(("_score", "_rank")) for c in frame.columns)  # source is off
    # Without an items table: no category or brand family, no category columns.
    bare = build_features(cands, events, AS_OF, None)
    assert not any(c.startswith(("uc_", "ub_")) for c in bare.columns)
    assert "u_n_categories" not in bare.columns and "x_last_session_category" not in bare.columns
    assert bare["i_price"].null_count() == bare.height  # no price anywhere
    with pytest.raises(ConfigError, match="did you mean 'user_item'"):
        resolve(["user_itme"])


def test_prices_fall_back_to_event_values() -> None:
    events = random_events(4).with_columns(
        pl.when(pl.col(C.EVENT) == 3)
        .then(pl.lit(10.0))
        .otherwise(None)
        .cast(pl.Float32)
        .alias(C.VALUE),
        pl.lit(2.0, dtype=pl.Float32).alias(C.QUANTITY),
    )
    frame = build_features(candidates_for(events), events, AS_OF, None)
    assert frame["i_price"].drop_nulls().unique().to_list() == [5.0]  # value / quantity


def test_als_factors_are_deterministic() -> None:
    events = random_events(6)
    cands = candidates_for(events)
    a = build_features(cands, events, AS_OF, families=["similarity"])
    b = build_features(cands, events, AS_OF, families=["similarity"])
    assert_frame_equal(a, b)
    c = build_features(cands, events, AS_OF, families=["similarity"], spec=FeatureSpec(seed=1))
    assert not c["sim_als_mean"].equals(a["sim_als_mean"])  # the seed is used


def test_config_selects_families_and_rejects_unknown_ones() -> None:
    cfg = load_config(None, ['features.families=["user", "item"]', "features.windows_days=[3]"])
    spec = FeatureSpec.from_config(cfg)
    assert spec.windows_days == (3,)
    assert [f.name for f in resolve(cfg.features.families)] == ["user", "item"]
    assert load_config(None).features.families == list(DEFAULT_FAMILIES)
    assert "similarity" not in DEFAULT_FAMILIES  # off by default (see docs/features.md)
    with pytest.raises(ConfigError, match="did you mean 'similarity'"):
        load_config(None, ['features.families=["similarty"]'])
    with pytest.raises(ConfigError, match="windows_days"):
        load_config(None, ["features.windows_days=[0]"])


def test_cli_lists_every_feature_without_a_run(tmp_path: Any) -> None:
    result = CliRunner().invoke(app, ["features", "--list", "--workspace", str(tmp_path)])
    assert result.exit_code == 0, result.output
    spec = FeatureSpec.from_config(load_config(None))
    for info in describe(spec):
        line = next(x for x in result.output.splitlines() if f" {info.name} " in f" {x} ")
        assert line.startswith(info.family) and info.description in line
    assert not list(tmp_path.iterdir())  # nothing was run
    bad = CliRunner().invoke(app, ["features", "--list", "--set", 'features.families=["usr"]'])
    assert bad.exit_code == 2 and "did you mean 'user'" in bad.output


def test_labels_match_brute_force() -> None:
    events = random_events(5)
    window = events.filter((pl.col(C.TS) >= AS_OF) & (pl.col(C.TS) < AS_OF + timedelta(days=7)))
    labels = build_labels(window)
    deepest: dict[tuple[int, int], int] = {}
    for r in window.iter_rows(named=True):
        key = (r[C.USER], r[C.ITEM])
        deepest[key] = max(deepest.get(key, -1), r[C.EVENT])
    assert labels.height == len(deepest)
    for row in labels.iter_rows(named=True):
        d = deepest[(row[C.USER], row[C.ITEM])]
        assert row[C.GRADE] == d + 1
        assert row[C.label_col("click")] == int(d >= 1)
        assert row[C.label_col("cart")] == int(d >= 2)
        assert row[C.label_col("purchase")] == int(d >= 3)
    purchases = relevant_items(labels, "purchase")
    assert purchases.height == sum(d == 3 for d in deepest.values())
    cands = candidates_for(events).sample(fraction=1.0, shuffle=True, seed=0)
    joined = attach_labels(cands, labels)
    assert joined[C.GRADE].null_count() == 0
    assert_frame_equal(joined.select(cands.columns), cands)  # rows and order kept
    expected = [deepest.get((u, i), -1) + 1 for u, i in cands.select(C.USER, C.ITEM).iter_rows()]
    assert joined[C.GRADE].to_list() == expected


def test_features_of_a_sample_equal_those_of_the_full_candidate_list() -> None:
    """Training builds features for sampled rows only; every value (per-user percentiles of
    the sources' scores included) must equal what the full list gives, or training would see
    other features than serving."""
    from gbrank.features.families.source import put_percentiles, sample_percentiles
    from gbrank.rankers.sampling import SampleSpec, sample_keys

    events = random_events(7)
    cands = candidates_for(events)
    full = build_features(cands, events, AS_OF, items_table())
    graded = cands.with_columns(
        (pl.col(C.ITEM) % 3 == 0).cast(pl.Int8).alias(C.GRADE)  # some labelled rows
    )
    keys = sample_keys(graded, SampleSpec(negatives=2, hard_share=0.5))
    assert 0 < keys.height < cands.height
    sampled_cands = cands.join(keys, on=[C.USER, C.ITEM], how="semi")
    sampled = put_percentiles(
        build_features(sampled_cands, events, AS_OF, items_table()),
        sample_percentiles(cands, keys, ["pop", "knn"]),
    )
    expected = full.join(keys, on=[C.USER, C.ITEM], how="semi")
    assert_frame_equal(sampled.select(expected.columns), expected)


def test_similarity_reuses_the_folds_fitted_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a fitted ALS and co-visitation source, the family refits and recounts nothing,
    and its columns match plain Python over those sources' factors and weights."""
    from gbrank.candidates.als import ALSSource
    from gbrank.candidates.covisit import CoVisitationSource

    events = random_events(3)
    past_events = events.filter(pl.col(C.TS) < AS_OF)
    fitted = {
        "als": ALSSource(factors=6, iterations=3),
        "covisit": CoVisitationSource(neighbours=5),
    }
    n_users, n_items = 1003, N_ITEMS + 2
    for source in fitted.values():
        source.fit(past_events, n_users=n_users, n_items=n_items, as_of=AS_OF)
    cands = candidates_for(events, seed=4)

    def no_refit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the similarity family fitted its own model")

    monkeypatch.setattr(similarity, "_als_factors", no_refit)
    monkeypatch.setattr(similarity, "_covisit_table", no_refit)
    shared = similarity.models_from_sources({name: name for name in fitted}, fitted.__getitem__)
    frame = FeatureBuilder(events, AS_OF, families=["similarity"], shared=shared).build(cands)

    covis = fitted["covisit"].covis_.toarray()
    assert (covis > 0).sum() > 20 and not np.array_equal(covis, covis.T)  # one-way pairs too
    brute = Brute(events, items_table(), cands)
    brute.covisit = {
        (a, b): max(covis[a, b], covis[b, a])
        for a in range(n_items)
        for b in range(n_items)
        if a != b and max(covis[a, b], covis[b, a]) > 0
    }
    seen_users = np.diff(fitted["als"].user_items_.indptr) > 0
    seen_items = np.bincount(fitted["als"].user_items_.indices, minlength=n_items) > 0
    users = np.where(seen_users[:, None], fitted["als"].user_factors_, 0.0)
    items = np.where(seen_items[:, None], fitted["als"].item_factors_, 0.0)

    class Plain:  # the brute force's view of the factors: one zero row for unknown codes
        pass

    plain = Plain()
    plain.users = np.vstack([users, np.zeros((1, 6))])  # type: ignore[attr-defined]
    plain.items = np.vstack([items, np.zeros((1, 6))])  # type: ignore[attr-defined]
    informative = 0
    for row in frame.sample(60, seed=1).iter_rows(named=True):
        expected = brute.similarity(row[C.USER], row[C.ITEM], plain)
        check_row(row, expected, "similarity")
        informative += bool(expected["sim_covisit_max"]) and bool(expected["sim_als_max"])
    assert informative > 5


def test_covisit_from_matrix_takes_the_larger_direction() -> None:
    import scipy.sparse as sp

    covis = sp.csr_matrix(
        np.array([[0, 2, 0, 1], [5, 0, 0, 0], [0, 0, 0, 3], [0, 0, 0, 0]], dtype=np.float32)
    )
    table = similarity.covisit_from_matrix(covis)
    items = np.array([0, 0, 1, 2, 3, 0])
    others = np.array([[1], [3], [2], [3], [2], [-1]])
    assert table.lookup(items, others).ravel().tolist() == [5.0, 1.0, 0.0, 3.0, 3.0, 0.0]
