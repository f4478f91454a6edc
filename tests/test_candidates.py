"""Candidate sources: one conformance suite for every source, known answers, union, registry."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from polars.testing import assert_frame_equal

from gbrank.candidates import (
    CANDIDATE_SCHEMA,
    SOURCE_KINDS,
    ALSSource,
    BPRSource,
    CandidateSource,
    CoVisitationSource,
    HistorySource,
    ItemKNNSource,
    PopularitySource,
    RepurchaseSource,
    SegmentPopularitySource,
    build_source,
    union_candidates,
)
from gbrank.candidates._scoring import top_k_dense, top_k_sparse
from gbrank.candidates.base import rank_candidates
from gbrank.candidates.state import load_source, save_source
from gbrank.columns import EVENT, EVENT_CODE, ITEM, N_SOURCES, RANK, SCORE, SESSION, TS, USER
from gbrank.errors import ConfigError, DataError, NotFittedError

VIEW, CLICK, CART, PURCHASE = (EVENT_CODE[e] for e in ("view", "click", "cart", "purchase"))
AS_OF = datetime(2024, 1, 31)


@dataclass(frozen=True)
class Dataset:
    history: pl.DataFrame
    n_users: int
    n_items: int
    k: int
    items: pl.DataFrame | None = None  # item attributes: item, category
    users: pl.DataFrame | None = None  # user attributes: user, segment

    @property
    def warm_users(self) -> set[int]:
        return set(self.history[USER].unique().to_list())

    @property
    def seen(self) -> set[tuple[int, int]]:
        return set(self.history.select(USER, ITEM).unique().iter_rows())


def make_history(rows: Sequence[tuple[int, int, float, int]]) -> pl.DataFrame:
    """Coded history from ``(user, item, days before AS_OF, event)`` rows."""
    users, items, days, events = zip(*rows, strict=True)
    return pl.DataFrame(
        {
            USER: pl.Series(users, dtype=pl.Int32),
            ITEM: pl.Series(items, dtype=pl.Int32),
            TS: pl.Series([AS_OF - timedelta(days=d) for d in days], dtype=pl.Datetime("ms")),
            EVENT: pl.Series(events, dtype=pl.Int8),
        }
    )


# 6 users, 6 items. User 5 and item 5 have no history. Weights (1, 2, 4, 8) by event code.
TINY_ROWS = [
    # user item days event
    (0, 0, 1, VIEW),  # 0  user 0: item 0 yesterday ...
    (0, 1, 30, VIEW),  # 1  ... item 1 a month ago (outside the 7-day window)
    (1, 2, 2, PURCHASE),  # 2  users 1, 2, 3 consume items 2 and 3 together
    (1, 3, 2, PURCHASE),  # 3
    (2, 2, 3, CART),  # 4
    (2, 3, 3, CART),  # 5
    (3, 2, 4, CLICK),  # 6
    (3, 3, 4, CLICK),  # 7
    (4, 2, 5, VIEW),  # 8  user 4 has item 2 but not item 3 ...
    (4, 4, 20, VIEW),  # 9  ... and item 4, outside the window
    (1, 0, 6, VIEW),  # 10
]
# Popularity over the last 7 days: item 2 = 8+4+2+1 = 15, item 3 = 8+4+2 = 14, item 0 = 1+1 = 2.
TINY_POPULAR = [2, 3, 0]


# Categories a (items 0, 1), b (2, 3), c (4); item 5 has none. Segments x (users 0-2 and the
# cold user 5), y (users 3, 4). One session per user and day.
TINY_ITEMS = pl.DataFrame(
    {ITEM: [0, 1, 2, 3, 4], "category": ["a", "a", "b", "b", "c"]},
    schema_overrides={ITEM: pl.Int32},
)
TINY_USERS = pl.DataFrame(
    {USER: [0, 1, 2, 3, 4, 5], "segment": ["x", "x", "x", "y", "y", "x"]},
    schema_overrides={USER: pl.Int32},
)


def with_sessions(history: pl.DataFrame) -> pl.DataFrame:
    """Add a ``session`` column: one session per user and calendar day."""
    day = pl.col(TS).dt.epoch("d")
    return history.with_columns((pl.col(USER).cast(pl.Int64) * 100_000 + day).alias(SESSION))


@cache
def tiny() -> Dataset:
    history = with_sessions(make_history(TINY_ROWS))
    return Dataset(history, n_users=6, n_items=6, k=4, items=TINY_ITEMS, users=TINY_USERS)


@cache
def medium() -> Dataset:
    """300 users x 200 items, 4000 events; users 280.. and items 190.. have no history."""
    rng = np.random.default_rng(20240131)
    n_events = 4000
    popularity = 1.0 / np.arange(1, 191) ** 0.9  # Zipf-ish items
    history = pl.DataFrame(
        {
            USER: rng.integers(0, 280, n_events).astype(np.int32),
            ITEM: rng.choice(190, n_events, p=popularity / popularity.sum()).astype(np.int32),
            TS: AS_OF
            - pl.Series(rng.integers(1, 30 * 86_400, n_events) * 1000).cast(pl.Duration("ms")),
            EVENT: rng.choice(4, n_events, p=[0.8, 0.12, 0.05, 0.03]).astype(np.int8),
        }
    ).with_columns(pl.col(TS).cast(pl.Datetime("ms")))
    # Seven categories; items 185.. have none. Three segments; users 295.. have none (so some
    # cold users have a segment and some do not).
    items = pl.DataFrame({ITEM: np.arange(185, dtype=np.int32), "category": np.arange(185) % 7})
    users = pl.DataFrame({USER: np.arange(295, dtype=np.int32), "segment": np.arange(295) % 3})
    return Dataset(with_sessions(history), n_users=300, n_items=200, k=10, items=items, users=users)


DATASETS: dict[str, Callable[[], Dataset]] = {"tiny": tiny, "medium": medium}

CASES: dict[str, Callable[[], CandidateSource]] = {
    "popularity": lambda: PopularitySource(),
    "popularity_keep_seen": lambda: PopularitySource(filter_seen=False),
    "history": lambda: HistorySource(),
    "als": lambda: ALSSource(factors=8, iterations=5),
    "als_keep_seen": lambda: ALSSource(factors=8, iterations=5, filter_seen=False),
    "itemknn_cosine": lambda: ItemKNNSource(similarity="cosine"),
    "itemknn_bm25": lambda: ItemKNNSource(similarity="bm25"),
    "itemknn_tfidf": lambda: ItemKNNSource(similarity="tfidf"),
    "itemknn_keep_seen": lambda: ItemKNNSource(filter_seen=False),
    "popularity_decay": lambda: PopularitySource(window_days=None, half_life_days=3),
    "bpr": lambda: BPRSource(factors=8, iterations=20),
    "bpr_keep_seen": lambda: BPRSource(factors=8, iterations=20, filter_seen=False),
    "covisit": lambda: CoVisitationSource(),
    "covisit_session_exp": lambda: CoVisitationSource(
        scope="session", time_weight="exp", normalize="popularity", filter_seen=True
    ),
    "covisit_buy2buy": lambda: CoVisitationSource(
        src_events=["cart", "purchase"],
        dst_events=["cart", "purchase"],
        max_gap_hours=math.inf,
        event_weights=[1, 1, 1, 1],
    ),
    "covisit_forward_linear_chunked": lambda: CoVisitationSource(
        src_events=["click", "view"],
        max_gap_hours=None,
        max_position_gap=3,
        direction="forward",
        time_weight="linear",
        recency_half_life_days=None,
        memory_budget_mb=0.05,  # about 300 pairs per chunk
    ),
    "segment_category": lambda: SegmentPopularitySource(),
    "segment_category_keep_seen": lambda: SegmentPopularitySource(
        window_days=7, half_life_days=None, filter_seen=False
    ),
    "segment_user": lambda: SegmentPopularitySource(segment="user_segment"),
    "repurchase": lambda: RepurchaseSource(),
}


def fit(source: CandidateSource, data: Dataset) -> CandidateSource:
    return source.fit(
        data.history,
        n_users=data.n_users,
        n_items=data.n_items,
        as_of=AS_OF,
        items=data.items,
        users=data.users,
    )


@dataclass(frozen=True)
class Run:
    case: str
    data: Dataset
    source: CandidateSource
    users: np.ndarray
    out: pl.DataFrame


@pytest.fixture(
    scope="module",
    params=[(d, c) for d in DATASETS for c in CASES],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def run(request: pytest.FixtureRequest) -> Run:
    dataset, case = request.param
    data = DATASETS[dataset]()
    source = fit(CASES[case](), data)
    # Every known code plus two beyond the fitted range (users who arrived after as_of).
    users = np.arange(data.n_users + 2, dtype=np.int32)
    users[-1] = data.n_users + 1000
    return Run(case, data, source, users, source.generate(users, data.k))


class TestSourceConformance:
    def test_schema(self, run: Run) -> None:
        assert run.out.schema == pl.Schema(CANDIDATE_SCHEMA)
        assert run.out.height > 0

    def test_ranks_contiguous_up_to_k(self, run: Run) -> None:
        per_user = run.out.group_by(USER).agg(pl.col(RANK), pl.len().alias("n"))
        for ranks, n in per_user.select(RANK, "n").iter_rows():
            assert ranks == list(range(1, n + 1))
            assert n <= run.data.k

    def test_sorted_by_user_then_rank(self, run: Run) -> None:
        assert_frame_equal(run.out, run.out.sort(USER, RANK))

    def test_unique_pairs(self, run: Run) -> None:
        assert run.out.select(USER, ITEM).is_duplicated().sum() == 0

    def test_scores_non_increasing_and_ties_by_item(self, run: Run) -> None:
        previous = run.out.select(
            pl.col(USER).shift().over(USER).alias("same_user"),
            pl.col(SCORE).shift().over(USER).alias("prev_score"),
            pl.col(ITEM).shift().over(USER).alias("prev_item"),
            SCORE,
            ITEM,
        ).drop_nulls("same_user")
        assert (previous["prev_score"] >= previous[SCORE]).all()
        ties = previous.filter(pl.col("prev_score") == pl.col(SCORE))
        assert (ties["prev_item"] < ties[ITEM]).all()

    def test_seen_items(self, run: Run) -> None:
        proposed_seen = set(run.out.select(USER, ITEM).iter_rows()) & run.data.seen
        if getattr(run.source, "filter_seen", False):
            assert not proposed_seen
        elif run.data is medium():
            # Without filtering the user's own items are strong candidates for every source.
            assert proposed_seen

    def test_cold_users(self, run: Run) -> None:
        served = set(run.out[USER].unique().to_list())
        cold = set(run.users.tolist()) - run.data.warm_users
        source = run.source
        if isinstance(source, PopularitySource):
            assert cold <= served  # warm users may have seen every popular item (tiny user 1)
            lists = run.out.filter(pl.col(USER).is_in(sorted(cold))).group_by(USER).agg(ITEM)
            assert lists[ITEM].n_unique() == 1  # one global list for everyone without history
        elif isinstance(source, SegmentPopularitySource) and source.segment == "user_segment":
            # Cold users with a known segment get their segment's list; the others nothing.
            assert run.data.users is not None
            with_segment = set(run.data.users[USER].to_list())
            assert served & cold == cold & with_segment
            lists = run.out.filter(pl.col(USER).is_in(sorted(cold))).group_by(USER).agg(ITEM)
            assert lists[ITEM].n_unique() <= run.data.users["segment"].n_unique()
        else:
            assert not served & cold

    def test_deterministic(self, run: Run) -> None:
        again = fit(CASES[run.case](), run.data).generate(run.users, run.data.k)
        assert_frame_equal(run.out, again)

    def test_users_as_series_list_with_duplicates(self, run: Run) -> None:
        users = run.users[::-1].tolist() * 2
        assert_frame_equal(run.source.generate(pl.Series(users), run.data.k), run.out)
        assert_frame_equal(run.source.generate(users, run.data.k), run.out)

    def test_save_load_round_trip(self, run: Run, tmp_path: Path) -> None:
        path = tmp_path / f"{run.case}.npz"
        save_source(run.source, path)
        loaded = load_source(path)
        assert type(loaded) is type(run.source)
        assert loaded.get_params() == {
            k: list(v) if isinstance(v, tuple) else v for k, v in run.source.get_params().items()
        }
        assert loaded.name == run.source.name
        assert not hasattr(loaded, "model_")  # rebuilt from plain arrays, nothing pickled
        assert_frame_equal(loaded.generate(run.users, run.data.k), run.out)

    def test_no_users(self, run: Run) -> None:
        empty = run.source.generate(np.array([], dtype=np.int32), run.data.k)
        assert empty.schema == pl.Schema(CANDIDATE_SCHEMA) and empty.height == 0

    def test_generate_before_fit(self, run: Run) -> None:
        with pytest.raises(NotFittedError, match="call fit"):
            CASES[run.case]().generate([0], 5)

    def test_bad_k(self, run: Run) -> None:
        with pytest.raises(ValueError, match="k must be a positive integer"):
            run.source.generate([0], 0)


def items_of(out: pl.DataFrame, user: int) -> list[int]:
    return out.filter(pl.col(USER) == user)[ITEM].to_list()


class TestKnownAnswers:
    def test_popularity_order(self) -> None:
        out = fit(PopularitySource(filter_seen=False), tiny()).generate([0, 5], k=10)
        assert items_of(out, 5) == TINY_POPULAR
        assert out.filter(pl.col(USER) == 5)[SCORE].to_list() == [15.0, 14.0, 2.0]
        assert items_of(out, 0) == TINY_POPULAR

    def test_popularity_filters_each_users_seen_items(self) -> None:
        out = fit(PopularitySource(), tiny()).generate([0, 4, 5, 99], k=10)
        assert items_of(out, 0) == [2, 3]  # has seen 0 and 1
        assert items_of(out, 4) == [3, 0]  # has seen 2 and 4
        assert items_of(out, 5) == items_of(out, 99) == TINY_POPULAR
        assert out.filter(pl.col(USER) == 4)[RANK].to_list() == [1, 2]

    @pytest.mark.parametrize("k", [1, 10, 500])
    def test_popularity_seen_filter_matches_brute_force(self, k: int) -> None:
        # The global list with each user's seen items removed, cut at k, every user of the
        # data and beyond it (cold users get the list as it is).
        data = medium()
        whole = fit(PopularitySource(filter_seen=False), data).generate([0], k=data.n_items)
        ranking = list(zip(whole[ITEM].to_list(), whole[SCORE].to_list(), strict=True))
        seen: dict[int, set[int]] = {}
        for user, item in data.seen:
            seen.setdefault(user, set()).add(item)
        users = list(range(0, data.n_users + 5, 3))
        source = fit(PopularitySource(), data)
        out = source.generate(users, k)
        expected = [
            (user, item, score, rank)
            for user in users
            for rank, (item, score) in enumerate(
                [(i, s) for i, s in ranking if i not in seen.get(user, set())][:k], start=1
            )
        ]
        assert out.rows() == expected
        assert out.schema == pl.Schema(CANDIDATE_SCHEMA)
        # Batches of any size give the same rows.
        halves = pl.concat([source.generate(users[:7], k), source.generate(users[7:], k)])
        assert_frame_equal(halves, out)

    def test_popularity_falls_back_to_all_history_when_window_is_empty(self) -> None:
        # Nothing in the last 12 hours: count everything; items 1 and 4 tie at 1.0.
        out = fit(PopularitySource(window_days=0.5, filter_seen=False), tiny()).generate([5], 10)
        assert items_of(out, 5) == [2, 3, 0, 1, 4]
        whole = fit(PopularitySource(window_days=None, filter_seen=False), tiny())
        assert_frame_equal(whole.generate([5], 10), out)

    def test_history_prefers_recent_and_heavy_events(self) -> None:
        out = fit(HistorySource(half_life_days=14), tiny()).generate([0, 1, 5], k=10)
        assert items_of(out, 0) == [0, 1]
        expected = [0.5 ** (1 / 14), 0.5 ** (30 / 14)]
        assert out.filter(pl.col(USER) == 0)[SCORE].to_list() == pytest.approx(expected)
        # Items 2 and 3 tie (both purchased two days ago): the smaller code ranks first.
        assert items_of(out, 1) == [2, 3, 0]
        assert items_of(out, 5) == []

    @pytest.mark.parametrize("similarity", ["cosine", "bm25", "tfidf"])
    def test_itemknn_proposes_the_co_consumed_item(self, similarity: str) -> None:
        out = fit(ItemKNNSource(similarity=similarity), tiny()).generate([4], k=10)
        assert items_of(out, 4)[0] == 3  # item 3 always came with item 2 (rows 2-7)
        assert items_of(out, 4)[:2] == [3, 0]

    def test_als_stays_within_the_block(self) -> None:
        # Two blocks: users 0-19 use items 0-9, users 20-39 items 10-19; each user has 5 of
        # its block's 10 items. Two factors can only tell the blocks apart, so the 5 proposals
        # of every user are exactly the 5 unseen items of its own block.
        rows = [(u, 10 * (u // 20) + (u + j) % 10, 1, CLICK) for u in range(40) for j in range(5)]
        data = Dataset(make_history(rows), n_users=40, n_items=20, k=5)
        out = fit(ALSSource(factors=2, seed=1), data).generate(range(40), k=5)
        assert out.height == 40 * 5
        assert (out[ITEM] // 10 == out[USER] // 20).all()

    def test_als_warm_start_continues_from_the_earlier_fit(self) -> None:
        """A warm-started fit is implicit's ALS run for ``warm_iterations`` sweeps from the
        earlier fit's factors; without a usable earlier fit (other factors, other vocabulary,
        ``warm_iterations=0``) it is the cold fit."""
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        from gbrank.candidates._scoring import interaction_matrix

        rng = np.random.default_rng(5)
        rows = [
            (int(u), int(i), float(d), int(e))
            for u, i, d, e in zip(
                rng.integers(0, 60, 900),
                rng.integers(0, 30, 900),
                rng.uniform(0.5, 40, 900),
                rng.integers(0, 4, 900),
                strict=True,
            )
        ]
        full = Dataset(make_history(rows), n_users=60, n_items=30, k=5)
        # The earlier fold: the events older than 10 days.
        early = Dataset(full.history.filter(pl.col(TS) < AS_OF - timedelta(days=10)), 60, 30, 5)
        before = fit(ALSSource(factors=6, iterations=10, seed=2), early)

        warm = ALSSource(factors=6, iterations=10, seed=2, warm_iterations=2)
        assert warm.warm_startable and warm.warm_start(before)
        fit(warm, full)
        matrix = interaction_matrix(
            full.history, n_users=60, n_items=30, event_weights=warm.event_weights
        )
        with threadpool_limits(1, "blas"):
            reference = AlternatingLeastSquares(
                factors=6, iterations=2, regularization=0.01, alpha=10.0, random_state=2
            )
            reference.user_factors = before.user_factors_.copy()
            reference.item_factors = before.item_factors_.copy()
            reference.fit(matrix, show_progress=False)
        np.testing.assert_allclose(warm.user_factors_, reference.user_factors, rtol=1e-6)
        np.testing.assert_allclose(warm.item_factors_, reference.item_factors, rtol=1e-6)
        assert not np.allclose(warm.item_factors_, before.item_factors_)  # it did sweep
        # The earlier fit is not changed by the warm one (its factors were copied).
        assert np.array_equal(
            before.item_factors_,
            fit(ALSSource(factors=6, iterations=10, seed=2), early).item_factors_,
        )

        cold = fit(ALSSource(factors=6, iterations=10, seed=2), full)
        assert not np.allclose(warm.item_factors_, cold.item_factors_)
        unusable = [
            (ALSSource(factors=6, iterations=10, seed=2, warm_iterations=0), before, False),
            (ALSSource(factors=6, iterations=10, seed=2), ItemKNNSource(), False),
            (
                ALSSource(factors=6, iterations=10, seed=2),
                fit(ALSSource(factors=4, iterations=3, seed=2), early),
                False,
            ),
            # Accepted, but the matrix of the next fit has another shape: a cold start.
            (
                ALSSource(factors=6, iterations=10, seed=2),
                ALSSource(factors=6, iterations=3, seed=2).fit(
                    early.history, n_users=61, n_items=30, as_of=AS_OF
                ),
                True,
            ),
        ]
        for source, earlier, accepted in unusable:
            assert source.warm_start(earlier) is accepted
            fit(source, full)
            assert np.array_equal(source.item_factors_, cold.item_factors_)

    @pytest.mark.parametrize(
        "make",
        [
            lambda: ALSSource(factors=8, iterations=5),
            lambda: ALSSource(factors=8, iterations=5, filter_seen=False),
            lambda: ItemKNNSource(similarity="cosine"),
            lambda: ItemKNNSource(similarity="bm25", filter_seen=False),
            lambda: ItemKNNSource(similarity="tfidf"),
            lambda: BPRSource(factors=8, iterations=20),
            lambda: BPRSource(factors=8, iterations=20, filter_seen=False),
        ],
        ids=[
            "als",
            "als_keep_seen",
            "itemknn_cosine",
            "itemknn_bm25_keep_seen",
            "itemknn_tfidf",
            "bpr",
            "bpr_keep_seen",
        ],
    )
    def test_scores_match_implicits_recommend(self, make: Callable[[], CandidateSource]) -> None:
        # Guards the batched scoring (matrix orientation, seen and cold-item filtering) that
        # replaces implicit's per-user recommend loop.
        source, data = fit(make(), medium()), medium()
        users = np.array(sorted(data.warm_users))  # implicit also answers for cold users
        ours = source.generate(users, data.k)
        interacted = np.bincount(source.user_items_.indices, minlength=data.n_items)  # type: ignore[attr-defined]
        filter_items = (
            None if isinstance(source, ItemKNNSource) else np.flatnonzero(interacted == 0)
        )
        ids, scores = source.model_.recommend(  # type: ignore[attr-defined]
            users,
            source.user_items_[users],  # type: ignore[attr-defined]
            N=data.k,
            filter_already_liked_items=source.filter_seen,  # type: ignore[attr-defined]
            filter_items=filter_items if filter_items is not None and filter_items.size else None,
        )
        floor = 0.0 if isinstance(source, ItemKNNSource) else float(np.finfo(np.float32).min)
        theirs = {
            (int(u), int(i)): float(s)
            for u, row_ids, row_scores in zip(users, ids, scores, strict=True)
            for i, s in zip(row_ids, row_scores, strict=True)
            if i >= 0 and s > floor
        }
        mine = {(u, i): s for u, i, s in ours.select(USER, ITEM, SCORE).iter_rows()}
        assert mine.keys() == theirs.keys()
        assert [mine[key] for key in theirs] == pytest.approx(list(theirs.values()), rel=1e-5)


def brute_top_k(batch: np.ndarray, dense: np.ndarray, k: int, floor: float) -> list[tuple]:
    """Best k entries above ``floor`` per row, ties by item code, by sorting in Python."""
    out = []
    for row, user in enumerate(batch.tolist()):
        kept = sorted((-v, item) for item, v in enumerate(dense[row].tolist()) if v > floor)
        out += [(user, item, -neg) for neg, item in kept[:k]]
    return sorted(out)


def brute_top_k_ordered(batch: np.ndarray, dense: np.ndarray, k: int) -> list[tuple]:
    """Best k finite entries per row in output order: user, score descending, item."""
    out = []
    for row, user in enumerate(batch.tolist()):
        kept = sorted((-v, item) for item, v in enumerate(dense[row].tolist()) if v > -np.inf)
        out += [(user, item, -neg) for neg, item in kept[:k]]
    return out


class TestTopK:
    """The vectorised per-row top-k used by ALS and item-kNN, against a Python sort."""

    @pytest.mark.parametrize("seed", range(5))
    def test_dense_with_ties_and_exclusions(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(40):
            n_rows, n_items, k = rng.integers(1, 12), rng.integers(1, 25), int(rng.integers(1, 30))
            scores = rng.integers(0, 4, (n_rows, n_items)).astype(np.float32)  # many ties
            scores[rng.random(scores.shape) < 0.3] = -np.inf  # seen or cold items
            batch = np.arange(n_rows) * 3 + 7
            expected = brute_top_k(batch, scores, k, floor=-np.inf)
            users, items, values = top_k_dense(batch, scores.copy(), k)
            got = list(zip(users.tolist(), items.tolist(), values.tolist(), strict=True))
            assert sorted(got) == expected
            # In order: by user, then score descending, then item code.
            assert got == sorted(got, key=lambda t: (t[0], -t[2], t[1]))

    @pytest.mark.parametrize("seed", range(5))
    def test_dense_wide_rows_use_the_prefilter(self, seed: int) -> None:
        # Rows of at least 32 k items go through the group-maximum prefilter: ties at the cut,
        # -inf (seen, cold) entries, rows with fewer than k finite entries, all -inf rows.
        rng = np.random.default_rng(100 + seed)
        for _ in range(15):
            n_rows, k = int(rng.integers(1, 9)), int(rng.integers(1, 12))
            n_items = int(rng.integers(32 * k + 16, 40 * k + 200))
            scores = rng.integers(0, 6, (n_rows, n_items)).astype(np.float32)  # many ties
            scores[rng.random(scores.shape) < rng.random()] = -np.inf
            scores[0, : n_items - int(rng.integers(0, 2 * k))] = -np.inf  # few finite entries
            batch = np.arange(n_rows) * 2 + 1
            users, items, values = top_k_dense(batch, scores.copy(), k)
            got = list(zip(users.tolist(), items.tolist(), values.tolist(), strict=True))
            # Compared in order: by user, then score descending, then item code.
            assert got == brute_top_k_ordered(batch, scores, k)
            # A block that is not C-ordered gives the same lists.
            again = top_k_dense(batch, np.asfortranarray(scores), k)
            assert all(
                np.array_equal(a, b) for a, b in zip(again, (users, items, values), strict=True)
            )

    @pytest.mark.parametrize("seed", range(5))
    def test_sparse_with_ties_and_exclusions(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(40):
            n_rows, n_items, k = rng.integers(1, 12), rng.integers(1, 25), int(rng.integers(1, 30))
            dense = rng.integers(-1, 4, (n_rows, n_items)).astype(np.float64) / 2
            dense[rng.random(dense.shape) < 0.4] = 0.0
            seen = (rng.random(dense.shape) < 0.2).astype(np.float32)
            batch = np.arange(n_rows) * 3 + 7
            expected = brute_top_k(batch, np.where(seen > 0, 0.0, dense), k, floor=0.0)
            scores = sp.csr_matrix(dense)
            users, items, values = top_k_sparse(batch, scores, k, exclude=sp.csr_matrix(seen))
            got = list(zip(users.tolist(), items.tolist(), values.tolist(), strict=True))
            assert sorted(got) == expected
            # In order: by user, then score descending, then item code.
            assert got == sorted(got, key=lambda t: (t[0], -t[2], t[1]))

    @pytest.mark.parametrize("n_items", [50, (1 << 20) + 5])
    def test_sparse_packed_and_wide_paths_agree(self, n_items: int) -> None:
        # Catalogues up to 2**20 items sort one packed key; wider ones take the general path.
        rng = np.random.default_rng(n_items)
        n_rows, nnz, k = 30, 600, 7
        rows = rng.integers(0, n_rows, nnz)
        cols = rng.integers(0, 50, nnz) * (n_items // 50)
        data = rng.integers(1, 5, nnz).astype(np.float32) / 4  # many ties
        scores = sp.csr_matrix((data, (rows, cols)), shape=(n_rows, n_items))
        seen = sp.csr_matrix(
            (np.ones(40, dtype=np.float32), (rng.integers(0, n_rows, 40), cols[:40])),
            shape=(n_rows, n_items),
        )
        batch = np.arange(n_rows, dtype=np.int32) + 100
        users, items, values = top_k_sparse(batch, scores, k, exclude=seen)
        dense = scores.toarray()
        dense[seen.toarray() > 0] = 0.0
        expected = []
        for r in range(n_rows):
            best = sorted((-dense[r, j], j) for j in np.flatnonzero(dense[r] > 0))[:k]
            expected += [(int(batch[r]), int(j), float(-v)) for v, j in best]
        assert list(zip(users.tolist(), items.tolist(), values.tolist(), strict=True)) == expected


class TestFitInputs:
    def test_events_at_as_of_are_rejected(self) -> None:
        history = tiny().history.with_columns(pl.col(TS).max().alias(TS).dt.offset_by("1d"))
        with pytest.raises(DataError, match="as_of"):
            HistorySource().fit(history, n_users=6, n_items=6, as_of=AS_OF)

    def test_codes_out_of_range_are_rejected(self) -> None:
        with pytest.raises(DataError, match=r"column 'item': codes must lie in \[0, 4\)"):
            PopularitySource().fit(tiny().history, n_users=6, n_items=4, as_of=AS_OF)

    def test_missing_column_is_rejected(self) -> None:
        with pytest.raises(DataError, match="event"):
            ALSSource().fit(tiny().history.drop(EVENT), n_users=6, n_items=6, as_of=AS_OF)

    def test_invalid_param_is_rejected_at_fit(self) -> None:
        with pytest.raises(ValueError, match="event_weights"):
            fit(PopularitySource(event_weights=(1.0, 2.0)), tiny())


def brute_force_union(frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    rows: dict[tuple[int, int], dict[str, float | int | None]] = {}
    for name, frame in frames.items():
        for user, item, score, rank in frame.select(USER, ITEM, SCORE, RANK).iter_rows():
            row = rows.setdefault((user, item), {})
            row[f"{name}_score"], row[f"{name}_rank"] = score, rank
    records = []
    for (user, item), found in sorted(rows.items()):
        record: dict[str, float | int | None] = {USER: user, ITEM: item}
        for name in frames:
            record[f"{name}_score"] = found.get(f"{name}_score")
            record[f"{name}_rank"] = found.get(f"{name}_rank")
        record[N_SOURCES] = sum(f"{name}_rank" in found for name in frames)
        records.append(record)
    schema: dict[str, pl.DataType] = {USER: pl.Int32(), ITEM: pl.Int32()}
    for name in frames:
        schema[f"{name}_score"] = pl.Float32()
        schema[f"{name}_rank"] = pl.Int32()
    schema[N_SOURCES] = pl.Int8()
    return pl.DataFrame(records, schema=schema, orient="row")


class TestUnion:
    def test_hand_built(self) -> None:
        pop = pl.DataFrame(
            {USER: [0, 0, 1], ITEM: [5, 7, 5], SCORE: [3.0, 2.0, 3.0], RANK: [1, 2, 1]}
        )
        als = pl.DataFrame({USER: [0, 2], ITEM: [7, 1], SCORE: [0.5, 0.25], RANK: [1, 1]})
        union = union_candidates({"pop": pop, "als": als})
        expected = pl.DataFrame(
            {
                USER: [0, 0, 1, 2],  # row per (user, item), sorted
                ITEM: [5, 7, 5, 1],
                "pop_score": [3.0, 2.0, 3.0, None],
                "pop_rank": [1, 2, 1, None],
                "als_score": [None, 0.5, None, 0.25],
                "als_rank": [None, 1, None, 1],
                N_SOURCES: [1, 2, 1, 1],
            },
            schema=brute_force_union({"pop": pop, "als": als}).schema,
        )
        assert_frame_equal(union, expected)

    def test_matches_brute_force_on_real_sources(self) -> None:
        data = medium()
        users = np.arange(data.n_users)
        frames = {
            name: fit(CASES[name](), data).generate(users, k=15)
            for name in ("popularity", "history", "als", "itemknn_bm25")
        }
        union = union_candidates(frames)
        assert_frame_equal(union, brute_force_union(frames))
        assert (union[N_SOURCES] >= 2).any()  # the sources do overlap

    def test_many_sources_and_empty_frames(self) -> None:
        # Ten sources (more than eight bits of membership) on random lists, two of them empty.
        rng = np.random.default_rng(5)
        frames = {}
        for s in range(10):
            n = 0 if s in (3, 7) else 200
            frame = pl.DataFrame(
                {
                    USER: rng.integers(0, 30, n).astype(np.int32),
                    ITEM: rng.integers(0, 40, n).astype(np.int32),
                    SCORE: rng.random(n).astype(np.float32),
                }
            )
            frames[f"s{s}"] = rank_candidates(frame.unique([USER, ITEM]), None).sample(
                fraction=1.0,
                shuffle=True,
                seed=s,  # the union must not rely on row order
            )
        assert_frame_equal(union_candidates(frames), brute_force_union(frames))

    def test_all_empty(self) -> None:
        empty = pl.DataFrame(schema=CANDIDATE_SCHEMA)
        union = union_candidates({"a": empty, "b": empty})
        assert union.height == 0
        assert union.columns == [USER, ITEM, "a_score", "a_rank", "b_score", "b_rank", N_SOURCES]

    def test_duplicate_pairs_are_rejected(self) -> None:
        frame = pl.DataFrame({USER: [0, 0], ITEM: [1, 1], SCORE: [1.0, 0.5], RANK: [1, 2]})
        with pytest.raises(ValueError, match="'dup' has duplicate"):
            union_candidates({"ok": frame.head(1), "dup": frame})

    def test_empty_mapping(self) -> None:
        with pytest.raises(ValueError, match="at least one"):
            union_candidates({})


class TestBuildSource:
    def test_builds_every_kind_with_defaults(self) -> None:
        for kind, source_class in SOURCE_KINDS.items():
            source = build_source(f"my_{kind}", kind, {})
            assert isinstance(source, source_class) and source.name == f"my_{kind}"

    def test_passes_params(self) -> None:
        source = build_source("knn", "itemknn", {"similarity": "bm25", "neighbours": 20})
        assert isinstance(source, ItemKNNSource)
        assert (source.similarity, source.neighbours) == ("bm25", 20)

    def test_unknown_key_names_nearest(self) -> None:
        with pytest.raises(ConfigError) as raised:
            build_source("als", "als", {"factor": 32})
        assert str(raised.value) == (
            "candidates.sources.als: unknown key 'factor'; did you mean 'factors'?"
        )

    def test_unknown_key_without_near_name_lists_valid_keys(self) -> None:
        with pytest.raises(ConfigError, match="unknown key 'zzz'; valid: event_weights, "):
            build_source("recent", "history", {"zzz": 1})

    def test_unknown_kind_names_nearest(self) -> None:
        with pytest.raises(ConfigError, match="candidates.sources.x: unknown kind 'itemkn'; "):
            build_source("x", "itemkn", {})
        with pytest.raises(ConfigError, match="did you mean 'itemknn'"):
            build_source("x", "itemkn", {})

    @pytest.mark.parametrize(
        ("kind", "params", "message"),
        [
            ("itemknn", {"similarity": "jaccard"}, "similarity must be one of"),
            ("als", {"factors": 0}, "factors must be an integer > 0"),
            ("als", {"factors": 8.5}, "factors must be an integer > 0"),
            ("popularity", {"window_days": -1}, "window_days must be a number > 0"),
            ("popularity", {"filter_seen": "yes"}, "filter_seen must be true or false"),
            ("history", {"event_weights": [1, 0, 4, 8]}, "event_weights must be 4 positive"),
            ("popularity", {"half_life_days": 0}, "half_life_days must be a number > 0"),
            ("bpr", {"learning_rate": 0}, "learning_rate must be a number > 0"),
            ("bpr", {"factors": -2}, "factors must be an integer > 0"),
            ("covisit", {"scope": "page"}, "scope must be one of user, session"),
            ("covisit", {"src_events": ["buy"]}, "src_events must be a non-empty list"),
            ("covisit", {"dst_events": []}, "dst_events must be a non-empty list"),
            ("covisit", {"time_weight": "log"}, "time_weight must be one of none, linear, exp"),
            ("covisit", {"max_position_gap": 1.5}, "max_position_gap must be an integer > 0"),
            ("covisit", {"max_gap_hours": 0}, "max_gap_hours must be a number > 0"),
            ("covisit", {"linear_max": 0.5}, "linear_max must be >= 1"),
            ("covisit", {"normalize": "bm25"}, "normalize must be one of none, popularity"),
            ("covisit", {"memory_budget_mb": 0}, "memory_budget_mb must be a number > 0"),
            ("segment_popularity", {"segment": "brand"}, "segment must be one of category"),
            ("segment_popularity", {"segment_column": ""}, "segment_column must be a column"),
            ("repurchase", {"min_repeats": 0}, "min_repeats must be an integer > 0"),
            ("repurchase", {"purchase_events": "purchase"}, "purchase_events must be a non-empty"),
        ],
    )
    def test_invalid_values(self, kind: str, params: dict[str, object], message: str) -> None:
        with pytest.raises(ConfigError, match=f"candidates.sources.s: {message}"):
            build_source("s", kind, params)


def test_history_scores_are_finite_float32() -> None:
    out = fit(HistorySource(), medium()).generate(np.arange(300), 50)
    assert all(math.isfinite(s) and s > 0 for s in out[SCORE].to_list())


def test_factor_scoring_is_the_same_with_one_or_all_blas_threads() -> None:
    """Scoring uses every BLAS thread; the lists must not depend on the thread count."""
    from threadpoolctl import threadpool_limits

    from gbrank.candidates._scoring import factor_candidates

    rng = np.random.default_rng(7)
    n_users, n_items, factors = 5000, 3000, 48
    user_factors = rng.standard_normal((n_users, factors)).astype(np.float32)
    item_factors = rng.standard_normal((n_items, factors)).astype(np.float32)
    rows = rng.integers(0, n_users, 40_000)
    cols = rng.integers(0, n_items, 40_000)
    user_items = sp.csr_matrix(
        (np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n_users, n_items)
    )
    users = np.arange(n_users, dtype=np.int32)
    kwargs = {
        "user_factors": user_factors,
        "item_factors": item_factors,
        "user_items": user_items,
        "filter_seen": True,
    }
    with threadpool_limits(1, "blas"):
        one = factor_candidates(users, 20, **kwargs)
    assert_frame_equal(factor_candidates(users, 20, **kwargs), one)


def test_a_truncated_source_file_is_a_damaged_artifact(tmp_path: Path) -> None:
    from gbrank.errors import DamagedArtifactError

    path = tmp_path / "als.npz"
    save_source(fit(CASES["als"](), medium()), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedArtifactError, match="cannot read the fitted source"):
        load_source(path)


THREADED_CASES = [
    "als",
    "itemknn_cosine",
    "covisit",
    "covisit_session_exp",
    "covisit_forward_linear_chunked",
    "segment_category",
    "segment_user",
]


@pytest.mark.parametrize("case", THREADED_CASES)
def test_scoring_threads_and_batch_sizes_do_not_change_a_source(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches (and co-visitation chunks) run on several threads; the fitted state and the
    lists must be those of one thread, batch after batch, in order."""
    import gbrank.candidates._scoring as scoring

    data, users = medium(), np.arange(300, dtype=np.int32)

    def fitted_and_lists(threads: int) -> tuple[CandidateSource, pl.DataFrame]:
        monkeypatch.setattr(scoring, "scoring_threads", lambda: threads)
        source = fit(CASES[case](), data)
        return source, source.generate(users, data.k)

    monkeypatch.setattr(scoring, "BATCH_CELLS", 2000)  # batches of a few users
    one, one_lists = fitted_and_lists(1)
    four, four_lists = fitted_and_lists(4)
    matrix = scoring.interaction_matrix(
        data.history, n_users=300, n_items=200, event_weights=[1, 1, 1, 1]
    )
    assert len(list(scoring.warm_user_batches(users, matrix))) > 20  # many batches per call
    assert one_lists.height > 0
    assert_frame_equal(four_lists, one_lists)
    if isinstance(one, CoVisitationSource):
        assert isinstance(four, CoVisitationSource)
        assert_frame_equal(four.neighbours_, one.neighbours_)
        assert (four.n_chunks_, four.n_pairs_) == (one.n_chunks_, one.n_pairs_)
    monkeypatch.setattr(scoring, "BATCH_CELLS", 1 << 24)  # one batch
    _, whole = fitted_and_lists(1)
    assert_frame_equal(whole, one_lists)


def test_scoring_threads_follow_the_cores_and_polars_max_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gbrank.candidates._scoring import MAX_SCORING_THREADS, imap_batches, scoring_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.delenv("POLARS_MAX_THREADS", raising=False)
    assert scoring_threads() == MAX_SCORING_THREADS
    monkeypatch.setenv("POLARS_MAX_THREADS", "3")
    assert scoring_threads() == 3
    monkeypatch.setenv("POLARS_MAX_THREADS", "1")
    assert scoring_threads() == 1
    # Results come back in input order even when later batches finish first.
    import time

    monkeypatch.setenv("POLARS_MAX_THREADS", "4")
    slow_first = list(imap_batches(lambda i: time.sleep(0.02 * (5 - i)) or i, range(6)))
    assert slow_first == list(range(6))


@pytest.mark.parametrize("case", ["covisit", "covisit_session_exp", "covisit_buy2buy"])
def test_covisit_counts_the_same_from_time_ordered_or_shuffled_events(case: str) -> None:
    """Loaded events come in (time, user, item, event) order, and co-visitation then sorts
    by the group alone; the counts must be those of the full sort of shuffled events."""
    from gbrank.candidates.covisit import _time_ordered

    data = medium()
    ordered = data.history.sort(TS, USER, ITEM, EVENT)
    shuffled = ordered.sample(fraction=1.0, shuffle=True, seed=3)
    millis = pl.col(TS).cast(pl.Int64)
    assert _time_ordered(ordered.with_columns(millis))
    assert not _time_ordered(shuffled.with_columns(millis))

    def counts(history: pl.DataFrame) -> CoVisitationSource:
        source = CASES[case]()
        assert isinstance(source, CoVisitationSource)
        return source.fit(history, n_users=300, n_items=200, as_of=AS_OF)

    fast, slow = counts(ordered), counts(shuffled)
    assert fast.neighbours_.height > 0
    assert_frame_equal(fast.neighbours_, slow.neighbours_)
    assert (fast.profile_ != slow.profile_).nnz == 0


def test_time_order_check_looks_at_the_columns_of_tied_timestamps() -> None:
    from gbrank.candidates.covisit import _time_ordered

    def frame(rows: list[tuple[int, int, int, int]]) -> pl.DataFrame:
        return pl.DataFrame(rows, schema=[TS, USER, ITEM, EVENT], orient="row")

    assert _time_ordered(frame([(1, 0, 5, 0), (1, 0, 5, 1), (1, 1, 0, 0), (2, 0, 0, 0)]))
    assert not _time_ordered(frame([(1, 0, 5, 1), (1, 0, 5, 0)]))  # event out of order
    assert not _time_ordered(frame([(1, 0, 6, 0), (1, 0, 5, 3)]))  # item out of order
    assert not _time_ordered(frame([(1, 1, 0, 0), (1, 0, 9, 9)]))  # user out of order
    assert not _time_ordered(frame([(2, 0, 0, 0), (1, 0, 0, 0)]))  # time out of order
    assert _time_ordered(frame([(1, 0, 0, 0), (1, 0, 0, 0)]))  # duplicates are in order


def test_saved_state_bytes_do_not_depend_on_the_chunks_of_a_frame(tmp_path: Path) -> None:
    """A parallel group-by leaves its result in a varying number of chunks; the saved state
    must be the same bytes however the fitted frame is chunked."""
    source = fit(HistorySource(), medium())
    # Large enough that the IPC writer keeps the chunks as record batches (it merges a few).
    whole = pl.concat([source.ranked_] * 300).rechunk()
    step = whole.height // 64 + 1
    slices = [whole.slice(start, step) for start in range(0, whole.height, step)]
    pieces = pl.concat(slices, rechunk=False)
    assert pieces.n_chunks() == len(slices) > 50
    paths = []
    for name, frame in (("whole", whole), ("pieces", pieces)):
        source.ranked_ = frame
        paths.append(tmp_path / f"{name}.npz")
        save_source(source, paths[-1])
    assert paths[0].read_bytes() == paths[1].read_bytes()
