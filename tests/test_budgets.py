"""Candidate budgets: automatic list lengths and the per-user cap."""

from __future__ import annotations

import polars as pl
import pytest

from gbrank import columns as C
from gbrank.budgets import Budget, cap_per_user, choose_n, parse_budget, positive_rate_by_block
from gbrank.errors import ConfigError

SCHEMA = {C.USER: pl.Int32, C.ITEM: pl.Int32, C.RANK: pl.Int32}


def lists(users: int, n: int) -> pl.DataFrame:
    """Every user gets items 0..n-1 at ranks 1..n."""
    return pl.DataFrame(
        {
            C.USER: [u for u in range(users) for _ in range(n)],
            C.ITEM: [i for _ in range(users) for i in range(n)],
            C.RANK: [i + 1 for _ in range(users) for i in range(n)],
        },
        schema=SCHEMA,
    )


def test_auto_budget_stops_at_first_block_under_the_floor() -> None:
    cands = lists(users=10, n=50)
    # ranks 1-10: 5 positives in 100 candidates (5%); ranks 11-20: 2 (2%); ranks 21-30: 0
    positives = pl.DataFrame(
        {C.USER: [0, 1, 2, 3, 4, 5, 6], C.ITEM: [0, 3, 5, 7, 9, 12, 15]},
        schema={C.USER: pl.Int32, C.ITEM: pl.Int32},
    )
    rates = positive_rate_by_block(cands, positives, block=10)
    assert rates["positives"].to_list() == [5, 2, 0, 0, 0]
    budget = Budget(n=50, auto=True, n_max=50, n_min=5, min_positive_rate=0.03, block=10)
    assert choose_n(cands, positives, budget) == 10  # the 2% block is under 3%
    looser = Budget(n=50, auto=True, n_max=50, n_min=5, min_positive_rate=0.01, block=10)
    assert choose_n(cands, positives, looser) == 20
    floor = Budget(n=50, auto=True, n_max=50, n_min=25, min_positive_rate=0.03, block=10)
    assert choose_n(cands, positives, floor) == 25  # never below n_min


def test_auto_budget_when_the_rate_never_drops() -> None:
    cands = lists(users=4, n=12)  # the source ran out at rank 12
    positives = cands.select(C.USER, C.ITEM)  # everything is a positive
    budget = Budget(n=100, auto=True, n_max=100, n_min=5, min_positive_rate=0.5, block=5)
    assert choose_n(cands, positives, budget) == 15


def test_cap_per_user_keeps_best_ranks() -> None:
    union = pl.DataFrame(
        {
            C.USER: [0, 0, 0, 0, 1],
            C.ITEM: [10, 11, 12, 13, 10],
            "a_rank": [1, None, 3, 2, 1],  # item 10 best (a:1), 13 (a:2), 12 (a:3)
            "b_rank": [None, 1, 4, None, None],  # item 11 has b:1; ties with item 10
            C.N_SOURCES: [1, 1, 2, 1, 1],
        }
    )
    capped = cap_per_user(union, ["a", "b"], cap=2)
    assert capped.filter(pl.col(C.USER) == 0)[C.ITEM].to_list() == [10, 11]
    assert capped.filter(pl.col(C.USER) == 1).height == 1
    assert cap_per_user(union, ["a", "b"], cap=0).equals(union)


def test_parse_budget_errors() -> None:
    assert parse_budget("x", {"n": 30}) == Budget(n=30)
    assert parse_budget("x", {"n": "auto", "n_max": 80}).generate_n == 80
    with pytest.raises(ConfigError, match="candidates.sources.x.n must be"):
        parse_budget("x", {"n": "lots"})
    with pytest.raises(ConfigError, match="n_min"):
        parse_budget("x", {"n": "auto", "n_min": 50, "n_max": 20})
    with pytest.raises(ConfigError, match="min_positive_rate"):
        parse_budget("x", {"n": "auto", "min_positive_rate": 2})
