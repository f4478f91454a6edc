"""Known answers for co-visitation, segment popularity, repurchase and BPR; attribute tables."""

from __future__ import annotations

import doctest
import importlib
import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest
import tomllib
from polars.testing import assert_frame_equal

from gbrank.candidates import (
    ALSSource,
    BPRSource,
    CoVisitationSource,
    PopularitySource,
    RepurchaseSource,
    SegmentPopularitySource,
    build_source,
)
from gbrank.columns import EVENT, EVENT_CODE, ITEM, RANK, SCORE, SESSION, TS, USER
from gbrank.errors import DataError

VIEW, CLICK, CART, PURCHASE = (EVENT_CODE[e] for e in ("view", "click", "cart", "purchase"))
AS_OF = datetime(2024, 1, 31)
HOUR = timedelta(hours=1)


def events(rows: Sequence[tuple[int, int, float, int, int]]) -> pl.DataFrame:
    """Coded history from ``(user, item, hours before AS_OF, event, session)`` rows."""
    users, items, hours, kinds, sessions = zip(*rows, strict=True)
    return pl.DataFrame(
        {
            USER: pl.Series(users, dtype=pl.Int32),
            ITEM: pl.Series(items, dtype=pl.Int32),
            TS: pl.Series([AS_OF - h * HOUR for h in hours], dtype=pl.Datetime("ms")),
            EVENT: pl.Series(kinds, dtype=pl.Int8),
            SESSION: pl.Series(sessions, dtype=pl.Int64),
        }
    )


def items_of(out: pl.DataFrame, user: int) -> list[int]:
    return out.filter(pl.col(USER) == user)[ITEM].to_list()


# ---------------------------------------------------------------------------- co-visitation

# Five users, six items (item 5 and user 5 have no events). Hours before AS_OF.
COVISIT_ROWS = [
    # user item hours event session
    (0, 0, 50.0, CLICK, 0),  # user 0 clicks 0 and 1, carts 2, buys 3, an hour apart each
    (0, 1, 49.0, CLICK, 0),
    (0, 2, 48.0, CART, 0),
    (0, 3, 47.0, PURCHASE, 0),
    (1, 0, 30.0, CLICK, 1),  # user 1 clicks 0, then 1 half an hour later
    (1, 1, 29.5, CLICK, 1),
    (2, 0, 20.0, PURCHASE, 2),  # user 2 buys 0, then 4 an hour later
    (2, 4, 19.0, PURCHASE, 2),
    (3, 0, 10.0, CART, 3),  # user 3 carts 0, clicks 1, buys 4, half an hour apart
    (3, 1, 9.5, CLICK, 3),
    (3, 4, 9.0, PURCHASE, 3),
    (4, 0, 1.0, CLICK, 4),  # user 4 only clicked 0, an hour ago
]


def covisit(**params: object) -> CoVisitationSource:
    source = CoVisitationSource(**params)  # type: ignore[arg-type]
    return source.fit(events(COVISIT_ROWS), n_users=6, n_items=6, as_of=AS_OF)


def neighbours(source: CoVisitationSource, item: int) -> list[tuple[int, Any]]:
    rows = source.neighbours_.filter(pl.col(ITEM) == item).select("neighbour", SCORE).rows()
    return [(b, pytest.approx(s, rel=1e-6)) for b, s in rows]


class TestCoVisitationKnownAnswers:
    def test_all_types_weighted_by_destination_type(self) -> None:
        # Weights view 1, click 2, cart 4, purchase 8; every pair is within 24 hours.
        # 0 -> 1: clicks by users 0, 1, 3 = 2 + 2 + 2; 0 -> 2: cart by user 0 = 4;
        # 0 -> 3: purchase by user 0 = 8; 0 -> 4: purchases by users 2, 3 = 8 + 8.
        source = covisit()
        assert neighbours(source, 0) == [(4, 16.0), (3, 8.0), (1, 6.0), (2, 4.0)]
        # 4 -> 0: purchase (user 2) 8 + cart (user 3) 4; 4 -> 1: click (user 3) 2.
        assert neighbours(source, 4) == [(0, 12.0), (1, 2.0)]

    def test_click_to_click_and_buy_to_buy_differ(self) -> None:
        ones = [1, 1, 1, 1]
        clicks = covisit(src_events=["click"], dst_events=["click"], event_weights=ones)
        # Users 0 and 1 clicked both 0 and 1 (user 3 carted 0, so it does not count).
        assert neighbours(clicks, 0) == [(1, 2.0)]
        assert neighbours(clicks, 1) == [(0, 2.0)]
        buys = covisit(
            src_events=["cart", "purchase"],
            dst_events=["cart", "purchase"],
            event_weights=ones,
            max_gap_hours=math.inf,
        )
        # Users 2 and 3 carted or bought 0 and 4; user 0 carted 2 and bought 3.
        assert neighbours(buys, 0) == [(4, 2.0)]
        assert neighbours(buys, 2) == [(3, 1.0)]
        assert neighbours(buys, 1) == []

    def test_time_window(self) -> None:
        # 45 minutes keeps only the half-hour pairs: users 1 and 3 (0 <-> 1), user 3 (1 <-> 4).
        source = covisit(max_gap_hours=0.75)
        assert neighbours(source, 0) == [(1, 4.0)]
        assert neighbours(source, 1) == [(4, 8.0), (0, 6.0)]  # 1 -> 0: click 2 + cart 4
        assert neighbours(source, 4) == [(1, 2.0)]
        assert neighbours(source, 2) == []  # user 0's events are an hour apart

    def test_position_window(self) -> None:
        # Adjacent events only, however far apart in time: user 0's 0 pairs with 1 alone;
        # user 3's 0 pairs with 1 (next), not with 4 (two steps on).
        source = covisit(max_gap_hours=None, max_position_gap=1)
        assert neighbours(source, 0) == [(4, 8.0), (1, 6.0)]  # 4: user 2 only
        assert neighbours(source, 3) == [(2, 4.0)]

    def test_forward_direction(self) -> None:
        source = covisit(direction="forward")
        # 1 -> later events: user 0's cart 2 and purchase 3, user 3's purchase 4.
        assert neighbours(source, 1) == [(3, 8.0), (4, 8.0), (2, 4.0)]
        assert neighbours(source, 4) == []  # always last

    def test_linear_time_weight(self) -> None:
        # Clicks 0 <-> 1 by user 0 (the later at 49 h) and user 1 (29.5 h). The history starts
        # at 50 h, so a pair at t hours before AS_OF weighs 1 + 2 * (50 - t) / 50.
        source = covisit(
            src_events=["click"],
            dst_events=["click"],
            event_weights=[1, 1, 1, 1],
            time_weight="linear",
            linear_max=3,
        )
        expected = (1 + 2 * 1 / 50) + (1 + 2 * 20.5 / 50)
        assert neighbours(source, 0) == [(1, expected)]

    def test_exp_time_weight(self) -> None:
        # Same pairs, 1 h and 0.5 h apart, half-life 1 h.
        source = covisit(
            src_events=["click"],
            dst_events=["click"],
            event_weights=[1, 1, 1, 1],
            time_weight="exp",
            gap_half_life_hours=1,
        )
        assert neighbours(source, 0) == [(1, 0.5 + 0.5**0.5)]

    def test_popularity_normalisation(self) -> None:
        # n(0 as a source) = users 0-4 = 5; n(as a destination): 1 -> 3, 2 -> 1, 3 -> 1, 4 -> 2.
        source = covisit(normalize="popularity")
        assert neighbours(source, 0) == [
            (4, 16 / math.sqrt(5 * 2)),
            (3, 8 / math.sqrt(5 * 1)),
            (2, 4 / math.sqrt(5 * 1)),
            (1, 6 / math.sqrt(5 * 3)),
        ]

    def test_top_k_neighbours_ties_by_code(self) -> None:
        source = covisit(direction="forward", neighbours=2)
        assert neighbours(source, 1) == [(3, 8.0), (4, 8.0)]

    def test_each_user_counts_a_pair_once_with_its_largest_weight(self) -> None:
        history = events(
            [
                (0, 0, 5.0, CLICK, 0),  # user 0 goes back and forth between 0 and 1 ...
                (0, 1, 4.9, CLICK, 0),
                (0, 0, 4.8, CLICK, 0),
                (0, 1, 4.7, PURCHASE, 0),  # ... and buys 1
                (0, 0, 4.6, CLICK, 0),
                (1, 0, 3.0, CLICK, 1),  # user 1 clicks 0 then 1
                (1, 1, 2.9, CLICK, 1),
            ]
        )
        source = CoVisitationSource().fit(history, n_users=2, n_items=2, as_of=AS_OF)
        assert neighbours(source, 0) == [(1, 8.0 + 2.0)]  # user 0: max(click, purchase)
        assert neighbours(source, 1) == [(0, 2.0 + 2.0)]  # user 0's three clicks count once

    def test_session_scope(self) -> None:
        history = events(
            [
                (0, 0, 10.0, CLICK, 7),  # user 0, session 7: items 0 and 1
                (0, 1, 9.5, CLICK, 7),
                (0, 2, 9.0, CLICK, 8),  # session 8, half an hour later: item 2
                (1, 0, 5.0, CLICK, 7),  # user 1 reuses session id 7: still a separate visit
                (1, 3, 4.5, CLICK, 7),
            ]
        )
        by_user = CoVisitationSource().fit(history, n_users=2, n_items=4, as_of=AS_OF)
        by_session = CoVisitationSource(scope="session").fit(
            history, n_users=2, n_items=4, as_of=AS_OF
        )
        assert [b for b, _ in neighbours(by_user, 0)] == [1, 2, 3]
        assert [b for b, _ in neighbours(by_session, 0)] == [1, 3]
        assert neighbours(by_session, 2) == []
        assert by_session.neighbours_.filter(pl.col(ITEM) == 3)["neighbour"].to_list() == [0]

    def test_session_scope_needs_the_session_column(self) -> None:
        history = events(COVISIT_ROWS).drop(SESSION)
        with pytest.raises(DataError, match="scope='session'.*no session column"):
            CoVisitationSource(scope="session").fit(history, n_users=6, n_items=6, as_of=AS_OF)

    def test_scores_of_a_user(self) -> None:
        source = covisit()
        # User 4 clicked 0 an hour ago: weight 2 * 0.5 ** ((1 / 24) / 7); item 0 itself is no
        # neighbour of 0, so it is not proposed even without filter_seen.
        out = source.generate([4, 5], k=10)
        weight = 2 * 0.5 ** (1 / 24 / 7)
        assert items_of(out, 4) == [4, 3, 1, 2]
        assert out[SCORE].to_list() == pytest.approx(
            [16 * weight, 8 * weight, 6 * weight, 4 * weight]
        )
        assert items_of(out, 5) == []  # cold

    def test_recent_items_and_seen_items(self) -> None:
        # User 3's items by recency: 4 (9 h, purchase 8), 1 (9.5 h, click 2), 0 (10 h, cart 4).
        w4 = 8 * 0.5 ** (9 / 24 / 7)
        only_last = covisit(recent_items=1).generate([3], k=10)
        assert items_of(only_last, 3) == [0, 1]  # 4's neighbours: 0 (12), 1 (2); seen ones stay
        assert only_last[SCORE].to_list() == pytest.approx([12 * w4, 2 * w4])
        filtered = covisit(recent_items=1, filter_seen=True).generate([3], k=10)
        assert items_of(filtered, 3) == []
        all_three = covisit(filter_seen=True).generate([0, 3], k=10)
        assert items_of(all_three, 3) == [3, 2]  # from 0's neighbours: 3 (8), 2 (4)

    @pytest.mark.parametrize("seed", range(3))
    def test_profiles_against_brute_force(self, seed: int) -> None:
        """Each user's profile: their last ``recent_items`` distinct items with a source event
        (latest first, ties in time to the smaller item), each weighted by its best event."""
        rng = np.random.default_rng(40 + seed)
        n = 400
        history = pl.DataFrame(
            {
                USER: rng.integers(0, 15, n).astype(np.int32),
                ITEM: rng.integers(0, 25, n).astype(np.int32),
                # whole hours, so that equal times (ties) happen
                TS: [AS_OF - timedelta(hours=int(h)) for h in rng.integers(1, 60, n)],
                EVENT: rng.integers(0, 4, n).astype(np.int8),
            }
        ).with_columns(pl.col(TS).cast(pl.Datetime("ms")))
        source = CoVisitationSource(src_events=["view", "click", "cart"], recent_items=4)
        source.fit(history, n_users=15, n_items=25, as_of=AS_OF)
        weights = (1.0, 2.0, 4.0, 8.0)
        for user in range(15):
            best: dict[int, tuple[datetime, float]] = {}
            for row in history.filter(pl.col(USER) == user).iter_rows(named=True):
                if row[EVENT] == 3:
                    continue  # purchases are not source events here
                age = (AS_OF - row[TS]).total_seconds() / 86400
                w = weights[row[EVENT]] * 0.5 ** (age / 7.0)
                last, weight = best.get(row[ITEM], (row[TS], 0.0))
                best[row[ITEM]] = (max(last, row[TS]), max(weight, w))
            kept = sorted(best, key=lambda i: (-best[i][0].timestamp(), i))[:4]
            row = source.profile_[user]
            got = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
            assert sorted(got) == sorted(kept)
            for item in kept:
                assert got[item] == pytest.approx(best[item][1], rel=1e-5)

    def test_several_sources_side_by_side(self) -> None:
        clicks = build_source(
            "clicks", "covisit", {"src_events": ["click"], "dst_events": ["click"]}
        )
        buys = build_source(
            "buy2buy", "covisit", {"src_events": ["cart", "purchase"], "dst_events": ["purchase"]}
        )
        history = events(COVISIT_ROWS)
        for source in (clicks, buys):
            source.fit(history, n_users=6, n_items=6, as_of=AS_OF)
        before = clicks.generate(range(6), 5)
        buys.fit(history.head(8), n_users=6, n_items=6, as_of=AS_OF)  # refit the other one
        assert_frame_equal(clicks.generate(range(6), 5), before)
        assert (clicks.name, buys.name) == ("clicks", "buy2buy")
        assert isinstance(clicks, CoVisitationSource) and isinstance(buys, CoVisitationSource)
        assert not clicks.neighbours_.equals(buys.neighbours_)


def random_history(seed: int, n_events: int = 160) -> pl.DataFrame:
    """Small random history with ties in time, repeated items and several sessions per user."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 12, n_events)
    return pl.DataFrame(
        {
            USER: users.astype(np.int32),
            ITEM: rng.integers(0, 15, n_events).astype(np.int32),
            TS: pl.Series(
                [
                    AS_OF - timedelta(minutes=int(m))
                    for m in rng.integers(1, 60 * 72, n_events) // 7 * 7
                ],
                dtype=pl.Datetime("ms"),
            ),
            EVENT: rng.choice(4, n_events, p=[0.5, 0.3, 0.12, 0.08]).astype(np.int8),
            SESSION: (users * 10 + rng.integers(0, 3, n_events)).astype(np.int64),
        }
    )


def brute_force_covisitation(history: pl.DataFrame, p: dict) -> dict[tuple[int, int], float]:
    """The documented pair count with Python loops: every pair of events of every group."""
    keys = [SESSION, USER] if p.get("scope") == "session" else [USER]
    weights = p.get("event_weights", (1.0, 2.0, 4.0, 8.0))
    src = {EVENT_CODE[e] for e in p.get("src_events", EVENT_CODE)}
    dst = {EVENT_CODE[e] for e in p.get("dst_events", EVENT_CODE)}
    gap_hours, max_pos = p.get("max_gap_hours", 24.0), p.get("max_position_gap")
    first: datetime = history[TS].min()  # type: ignore[assignment]
    best: dict[tuple, float] = {}
    groups: dict[tuple, list[tuple[datetime, int, int]]] = defaultdict(list)
    for row in history.iter_rows(named=True):
        groups[tuple(row[k] for k in keys)].append((row[TS], row[ITEM], row[EVENT]))
    seen_src, seen_dst = defaultdict(set), defaultdict(set)
    for group, evs in groups.items():
        evs.sort()  # time, then item, then event
        for i, (ts_a, a, e_a) in enumerate(evs):
            if e_a in src:
                seen_src[a].add(group)
            if e_a in dst:
                seen_dst[a].add(group)
            if e_a not in src:
                continue
            for j, (ts_b, b, e_b) in enumerate(evs):
                if b == a or e_b not in dst or (p.get("direction") == "forward" and j <= i):
                    continue
                hours = abs((ts_b - ts_a).total_seconds()) / 3600
                if gap_hours is not None and hours > gap_hours:
                    continue
                if max_pos is not None and abs(j - i) > max_pos:
                    continue
                w = weights[e_b]
                if p.get("time_weight") == "linear":
                    later = max(ts_a, ts_b)
                    w *= 1 + (p.get("linear_max", 3.0) - 1) * (later - first) / (AS_OF - first)
                elif p.get("time_weight") == "exp":
                    w *= 0.5 ** (hours / p.get("gap_half_life_hours", 24.0))
                best[(group, a, b)] = max(best.get((group, a, b), 0.0), w)
    covis: dict[tuple[int, int], float] = defaultdict(float)
    for (_, a, b), w in best.items():
        covis[(a, b)] += w
    if p.get("normalize") == "popularity":
        covis = {
            k: v / math.sqrt(len(seen_src[k[0]]) * len(seen_dst[k[1]])) for k, v in covis.items()
        }
    return dict(covis)


BRUTE_FORCE_SETTINGS: list[dict[str, Any]] = [
    {},
    {"scope": "session", "max_gap_hours": None},
    {"max_gap_hours": 3.0, "time_weight": "exp", "gap_half_life_hours": 2.0},
    {"max_gap_hours": None, "max_position_gap": 2, "direction": "forward"},
    {"max_gap_hours": 12.0, "max_position_gap": 4, "time_weight": "linear", "linear_max": 5.0},
    {
        "src_events": ["click", "cart"],
        "dst_events": ["cart", "purchase"],
        "normalize": "popularity",
    },
    {"scope": "session", "src_events": ["view"], "dst_events": ["view"], "max_position_gap": 1},
]


class TestCoVisitationAgainstBruteForce:
    @pytest.mark.parametrize("seed", range(3))
    @pytest.mark.parametrize("settings", BRUTE_FORCE_SETTINGS, ids=lambda s: str(s) or "defaults")
    def test_matrix(self, settings: dict, seed: int) -> None:
        history = random_history(seed)
        source = CoVisitationSource(neighbours=1000, **settings).fit(
            history, n_users=12, n_items=15, as_of=AS_OF
        )
        ours = {(a, b): s for a, b, s in source.neighbours_.iter_rows()}
        expected = brute_force_covisitation(history, settings)
        assert ours.keys() == expected.keys()
        assert [ours[k] for k in expected] == pytest.approx(list(expected.values()), rel=1e-6)

    @pytest.mark.parametrize(
        "settings", BRUTE_FORCE_SETTINGS[:4], ids=lambda s: str(s) or "defaults"
    )
    def test_chunked_equals_one_chunk(self, settings: dict) -> None:
        history = pl.concat([random_history(seed, 400) for seed in range(3)])
        fit: dict[str, Any] = {"n_users": 12, "n_items": 15, "as_of": AS_OF}
        whole = CoVisitationSource(neighbours=5, **settings).fit(history, **fit)
        # 100 bytes hold one pair, fewer than any run has.
        chunked = CoVisitationSource(neighbours=5, memory_budget_mb=1e-4, **settings).fit(
            history, **fit
        )
        # Every (user or session, item) run is a chunk of its own, so items span chunks.
        keys = [SESSION, USER] if settings.get("scope") == "session" else [USER]
        assert whole.n_chunks_ == 1
        assert chunked.n_chunks_ == history.select(*keys, ITEM).n_unique()
        assert_frame_equal(chunked.neighbours_, whole.neighbours_, check_exact=False, rel_tol=1e-6)
        users = np.arange(14)
        assert_frame_equal(chunked.generate(users, 8), whole.generate(users, 8))

    def test_budget_sets_the_number_of_chunks(self) -> None:
        history = pl.concat([random_history(seed, 400) for seed in range(3)])
        fit: dict[str, Any] = {"n_users": 12, "n_items": 15, "as_of": AS_OF}
        counts = [
            CoVisitationSource(memory_budget_mb=mb).fit(history, **fit).n_chunks_
            for mb in (64.0, 4.0, 0.5)
        ]
        assert counts[0] <= counts[1] <= counts[2] and counts[0] < counts[2]


# ------------------------------------------------------------------------- segment popularity

# Categories a (items 0, 1), b (2, 3), c (4); segments x (users 0-2, 5), y (3, 4).
SEGMENT_ROWS = [
    # user item hours event session
    (0, 0, 24.0, VIEW, 0),
    (0, 1, 720.0, VIEW, 0),
    (1, 2, 48.0, PURCHASE, 1),
    (1, 3, 48.0, PURCHASE, 1),
    (2, 2, 72.0, CART, 2),
    (2, 3, 72.0, CART, 2),
    (3, 2, 96.0, CLICK, 3),
    (3, 3, 96.0, CLICK, 3),
    (4, 2, 120.0, VIEW, 4),
    (4, 4, 480.0, VIEW, 4),
    (1, 0, 144.0, VIEW, 1),
]
ITEMS = pl.DataFrame(
    {ITEM: [0, 1, 2, 3, 4], "category": ["a", "a", "b", "b", "c"]},
    schema_overrides={ITEM: pl.Int32},
)
USERS = pl.DataFrame(
    {USER: [0, 1, 2, 3, 4, 5], "segment": ["x", "x", "x", "y", "y", "x"]},
    schema_overrides={USER: pl.Int32},
)


def segment_fit(
    source: SegmentPopularitySource, **tables: pl.DataFrame | None
) -> SegmentPopularitySource:
    return source.fit(events(SEGMENT_ROWS), n_users=6, n_items=6, as_of=AS_OF, **tables)


class TestSegmentPopularity:
    def test_category_picks_the_users_categories(self) -> None:
        # Whole history, no decay. Item weights: 0: 1 + 1, 1: 1; 2: 8 + 4 + 2 + 1 = 15,
        # 3: 8 + 4 + 2 = 14; 4: 1. User 4 viewed one item of b and one of c: shares 1/2 each.
        source = SegmentPopularitySource(half_life_days=None, filter_seen=False)
        out = segment_fit(source, items=ITEMS).generate([0, 4, 5], k=10)
        assert items_of(out, 4) == [4, 2, 3]  # never an item of category a
        assert out.filter(pl.col(USER) == 4)[SCORE].to_list() == pytest.approx(
            [0.5 * 1, 0.5 * 15 / 29, 0.5 * 14 / 29]
        )
        assert items_of(out, 0) == [0, 1]  # category a only: 2/3, 1/3
        assert items_of(out, 5) == []  # cold: global popularity covers them

    def test_category_filters_seen_and_refills_from_the_category(self) -> None:
        source = SegmentPopularitySource(half_life_days=None)
        out = segment_fit(source, items=ITEMS).generate([0, 1, 4], k=10)
        assert items_of(out, 4) == [3]
        assert items_of(out, 0) == []  # has seen all of category a
        # User 1: b 16/17 (both seen), a 1/17 -> item 1 at 1/17 * 1/3.
        assert out.filter(pl.col(USER) == 1).select(ITEM, SCORE).rows() == [
            (1, pytest.approx(1 / 51))
        ]

    def test_max_categories(self) -> None:
        source = SegmentPopularitySource(half_life_days=None, filter_seen=False, max_categories=1)
        out = segment_fit(source, items=ITEMS).generate([4], k=10)
        assert items_of(out, 4) == [2, 3]  # b and c tie at 1/2: the smaller category, b, wins

    def test_user_segment(self) -> None:
        source = SegmentPopularitySource(segment="user_segment", half_life_days=None)
        out = segment_fit(source, users=USERS).generate([3, 5, 9], k=10)
        # Segment x: 0: 2, 1: 1, 2: 12, 3: 12 of 27. Cold user 5 is in x; 9 has no segment.
        assert out.filter(pl.col(USER) == 5).select(ITEM, SCORE).rows() == [
            (2, pytest.approx(12 / 27)),
            (3, pytest.approx(12 / 27)),
            (0, pytest.approx(2 / 27)),
            (1, pytest.approx(1 / 27)),
        ]
        # Segment y: 2: 3, 3: 2, 4: 1 of 6; user 3 has seen 2 and 3.
        assert items_of(out, 3) == [4]
        assert items_of(out, 9) == []

    def test_segment_column(self) -> None:
        users = USERS.rename({"segment": "tier"})
        source = SegmentPopularitySource(segment="user_segment", segment_column="tier")
        assert items_of(segment_fit(source, users=users).generate([5], 10), 5)[:2] == [2, 3]

    def test_decay(self) -> None:
        # With a 1-day half-life, user 4's recent view of 2 (5 days) outweighs the old view of
        # 4 (20 days) in both the shares and the popularity.
        source = SegmentPopularitySource(half_life_days=1, filter_seen=False)
        out = segment_fit(source, items=ITEMS).generate([4], k=10)
        assert items_of(out, 4)[0] == 2

    @pytest.mark.parametrize(
        ("params", "tables", "message"),
        [
            ({}, {}, "segment = 'category'.*needs the items table"),
            ({}, {"items": ITEMS.drop("category")}, "needs column 'category' in the items"),
            ({"segment_column": "brand"}, {"items": ITEMS}, "segment_column = 'brand'"),
            ({"segment": "user_segment"}, {"items": ITEMS}, "needs the users table"),
            ({"segment": "user_segment"}, {"users": USERS.drop("segment")}, "column 'segment'"),
        ],
    )
    def test_missing_attributes(self, params: dict, tables: dict, message: str) -> None:
        with pytest.raises(DataError, match=message):
            segment_fit(SegmentPopularitySource(**params), **tables)


class TestPopularityDecay:
    def test_half_life_prefers_recent_events(self) -> None:
        history = events([(0, 0, 24.0, VIEW, 0), (1, 1, 72.0, VIEW, 1), (2, 1, 72.0, VIEW, 2)])
        fit: dict[str, Any] = {"n_users": 3, "n_items": 2, "as_of": AS_OF}
        counted = PopularitySource(window_days=None, filter_seen=False).fit(history, **fit)
        decayed = PopularitySource(window_days=math.inf, half_life_days=1, filter_seen=False)
        out = decayed.fit(history, **fit).generate([5], k=5)
        assert items_of(counted.generate([5], k=5), 5) == [1, 0]  # 2 views against 1
        assert out.select(ITEM, SCORE).rows() == [(0, 0.5), (1, 2 * 0.125)]


# ---------------------------------------------------------------------------------- repurchase

DAY = 24.0
REPURCHASE_ROWS = [
    # user item hours event session
    *[(u, 0, d * DAY, PURCHASE, u) for u in (10, 11, 12) for d in (40, 30, 20)],  # every 10 days
    *[
        (u, 1, d * DAY, PURCHASE, u)
        for u, days in ((10, (90, 60)), (11, (80, 50)), (12, (75, 45)))
        for d in days
    ],
    (0, 0, 10 * DAY, PURCHASE, 0),  # user 0: item 0 ten days ago (due) ...
    (0, 0, 10 * DAY - 1 / 6, PURCHASE, 0),  # ... ten minutes later: the same order
    (0, 1, 5 * DAY, PURCHASE, 0),  # item 1 five days ago (due in 25 days)
    (0, 2, 10 * DAY, PURCHASE, 0),  # item 2: never rebought, category k like item 0
    (0, 3, 3 * DAY, PURCHASE, 0),  # item 3: never rebought, no category
    (0, 4, 1 * DAY, VIEW, 0),  # a view is no purchase
    (1, 4, 1 * DAY, VIEW, 1),  # user 1 never bought anything
]
REPURCHASE_ITEMS = pl.DataFrame(
    {ITEM: [0, 1, 2], "category": ["k", "m", "k"]}, schema_overrides={ITEM: pl.Int32}
)


def repurchase_fit(source: RepurchaseSource, items: pl.DataFrame | None) -> RepurchaseSource:
    return source.fit(events(REPURCHASE_ROWS), n_users=13, n_items=5, as_of=AS_OF, items=items)


class TestRepurchase:
    def test_intervals_by_level(self) -> None:
        source = repurchase_fit(RepurchaseSource(), REPURCHASE_ITEMS)
        # Item 0: six gaps of 10 days; item 1: three of 30; item 2 borrows category k's;
        # item 3 the median of all nine gaps.
        assert source.intervals_.rows() == [
            (0, 10.0, "item"),
            (1, 30.0, "item"),
            (2, 10.0, "category"),
            (3, 10.0, "global"),
        ]
        without_items = repurchase_fit(RepurchaseSource(), None)
        assert without_items.intervals_.filter(pl.col(ITEM) == 2)["level"].to_list() == ["global"]

    def test_due_item_ranks_above_a_recent_one(self) -> None:
        out = repurchase_fit(RepurchaseSource(), REPURCHASE_ITEMS).generate([0, 1], k=10)
        # Items 0 and 2 are due today (10 of 10 days); item 3 (3 of 10 days) and item 1 (5 of
        # 30 days) are not, though bought more recently.
        assert items_of(out, 0) == [0, 2, 3, 1]
        recency = 0.05 * 0.5 ** (10 / 30)
        assert out[SCORE][0] == pytest.approx(1.0 + recency)  # full bump, one order
        bump_1 = math.exp(-(math.log(5 / 30) ** 2) / (2 * 0.5**2))
        assert out[SCORE][3] == pytest.approx(bump_1 + 0.05 * 0.5 ** (5 / 30))
        assert items_of(out, 1) == []  # views only

    def test_without_cadence_the_list_is_ordered_by_recency(self) -> None:
        source = repurchase_fit(RepurchaseSource(min_repeats=100), REPURCHASE_ITEMS)
        assert source.intervals_.height == 0
        out = source.generate([0], k=10)
        assert items_of(out, 0) == [3, 1, 0, 2]  # every purchase, most recent first
        assert out[RANK].to_list() == [1, 2, 3, 4]

    def test_frequency_term(self) -> None:
        # User 10 ordered item 0 three times and item 1 twice, neither due for a while.
        out = repurchase_fit(RepurchaseSource(min_repeats=100), None).generate([10], k=10)
        assert out[SCORE].to_list() == pytest.approx(
            [
                0.1 * (1 - 1 / 3) + 0.05 * 0.5 ** (20 / 30),
                0.1 * (1 - 1 / 2) + 0.05 * 0.5 ** (60 / 30),
            ]
        )


# ----------------------------------------------------------------------------------------- BPR


class TestBPR:
    @pytest.mark.parametrize("seed", range(3))
    def test_stays_within_the_block(self, seed: int) -> None:
        # Two blocks: users 0-99 use items 0-9, users 100-199 items 10-19, five items each.
        # The five proposals of every user are the five unseen items of its own block.
        rows = [
            (u, 10 * (u // 100) + (u + j) % 10, 1.0, CLICK, u) for u in range(200) for j in range(5)
        ]
        source = BPRSource(factors=8, seed=seed).fit(
            events(rows), n_users=200, n_items=20, as_of=AS_OF
        )
        out = source.generate(range(200), k=5)
        assert out.height == 200 * 5
        assert (out[ITEM] // 10 == out[USER] // 100).all()


# ----------------------------------------------------------------------------- attribute tables


class TestAttributeTables:
    def test_existing_sources_ignore_them(self) -> None:
        history = events(COVISIT_ROWS)
        fit: dict[str, Any] = {"n_users": 6, "n_items": 6, "as_of": AS_OF}
        plain = ALSSource(factors=4).fit(history, **fit).generate(range(6), 3)
        given = ALSSource(factors=4).fit(history, **fit, items=ITEMS, users=USERS)
        assert_frame_equal(given.generate(range(6), 3), plain)

    @pytest.mark.parametrize(
        ("table", "message"),
        [
            (ITEMS.rename({ITEM: "sku"}), "lacks its code column 'item'"),
            (pl.concat([ITEMS, ITEMS.head(1)]), "several rows per code"),
            (ITEMS.with_columns(pl.col(ITEM) + 3), r"codes must lie in \[0, 6\)"),
            (ITEMS.with_columns(pl.col(ITEM).cast(pl.Utf8)), "must be integers"),
        ],
    )
    def test_bad_items_table(self, table: pl.DataFrame, message: str) -> None:
        with pytest.raises(DataError, match=message):
            PopularitySource().fit(
                events(COVISIT_ROWS), n_users=6, n_items=6, as_of=AS_OF, items=table
            )

    def test_bad_users_table(self) -> None:
        with pytest.raises(DataError, match=r"users codes must lie in \[0, 6\)"):
            PopularitySource().fit(
                events(COVISIT_ROWS),
                n_users=6,
                n_items=6,
                as_of=AS_OF,
                users=USERS.with_columns(pl.col(USER) * 2),
            )


@pytest.mark.parametrize(
    "module",
    [
        "base",
        "covisit",
        "bpr",
        "segment_popularity",
        "repurchase",
        "popularity",
        "history",
        "als",
        "itemknn",
        "__init__",
    ],
)
def test_docstring_examples(module: str) -> None:
    name = "gbrank.candidates" if module == "__init__" else f"gbrank.candidates.{module}"
    result = doctest.testmod(
        importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0 and result.attempted > 0


def test_covisit_brute_force_settings_cover_every_option() -> None:
    used: set[str] = set(itertools.chain.from_iterable(BRUTE_FORCE_SETTINGS))
    assert used >= {
        "scope",
        "max_gap_hours",
        "max_position_gap",
        "direction",
        "time_weight",
        "normalize",
    }


def test_sources_configured_in_toml() -> None:
    # TOML has no null: "no limit" is written inf, lists of event names stay lists.
    tables = tomllib.loads(
        """
        [clicks]
        kind = "covisit"
        time_weight = "linear"
        [buy2buy]
        kind = "covisit"
        src_events = ["cart", "purchase"]
        dst_events = ["cart", "purchase"]
        max_gap_hours = inf
        event_weights = [1, 1, 1, 1]
        [decayed]
        kind = "popularity"
        window_days = inf
        half_life_days = 3.5
        """
    )
    history = events(COVISIT_ROWS)
    for name, table in tables.items():
        params = {key: value for key, value in table.items() if key != "kind"}
        source = build_source(name, table["kind"], params)
        out = source.fit(history, n_users=6, n_items=6, as_of=AS_OF).generate(range(6), 3)
        assert out.height > 0
