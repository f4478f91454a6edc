"""The training sample: every labelled row of the chosen users, hard negatives by best rank,
random ones by a hashed key, a user budget by a stable hash; checked against plain Python."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from gbrank import columns as C
from gbrank.rankers.sampling import (
    NO_RANK,
    SampleSpec,
    hashed_subset,
    pair_unit,
    sample_keys,
    stable_unit,
)


def candidate_frame(seed: int, users: int = 60, per_user: int = 40) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = users * per_user
    a_rank = rng.integers(1, 60, n).astype(float)
    a_rank[rng.random(n) < 0.3] = np.nan  # source a did not propose these
    b_rank = rng.integers(1, 60, n).astype(float)
    b_rank[rng.random(n) < 0.5] = np.nan
    grade = np.where(rng.random(n) < 0.08, rng.integers(1, 5, n), 0).astype(np.int8)
    grade[: per_user * 3] = 0  # users 0..2 have no labelled row at all
    return pl.DataFrame(
        {
            C.USER: np.repeat(np.arange(users, dtype=np.int32), per_user),
            C.ITEM: np.tile(rng.permutation(500)[:per_user].astype(np.int32), users),
            C.GRADE: grade,
            "a_rank": pl.Series(a_rank, dtype=pl.Float64).fill_nan(None).cast(pl.Int32),
            "b_rank": pl.Series(b_rank, dtype=pl.Float64).fill_nan(None).cast(pl.Int32),
        }
    )


def brute_force(frame: pl.DataFrame, spec: SampleSpec) -> set[tuple[int, int]]:
    rows = frame.to_dicts()
    labelled = sorted({r[C.USER] for r in rows if r[C.GRADE] > 0})
    if spec.users and len(labelled) > spec.users:
        unit = {u: stable_unit(np.array([u]), spec.seed, 3)[0] for u in labelled}
        labelled = sorted(sorted(labelled, key=lambda u: (unit[u], u))[: spec.users])
    out = set()
    n_hard = round(spec.negatives * spec.hard_share)
    if sum(r[C.USER] in set(labelled) for r in rows) < spec.min_rows:
        spec = SampleSpec(users=spec.users, seed=spec.seed)  # every negative
    for user in labelled:
        mine = [r for r in rows if r[C.USER] == user]
        out |= {(user, r[C.ITEM]) for r in mine if r[C.GRADE] > 0}
        negatives = [r for r in mine if r[C.GRADE] == 0]
        if not spec.negatives:
            out |= {(user, r[C.ITEM]) for r in negatives}
            continue

        def best(r: dict) -> int:
            ranks = [x for x in (r["a_rank"], r["b_rank"]) if x is not None]
            return min(ranks) if ranks else NO_RANK

        ranked = sorted(
            (r for r in negatives if best(r) < NO_RANK), key=lambda r: (best(r), r[C.ITEM])
        )
        hard = {r[C.ITEM] for r in ranked[:n_hard]}
        rest = [r for r in negatives if r[C.ITEM] not in hard]
        unit = {
            r[C.ITEM]: pair_unit(np.array([user]), np.array([r[C.ITEM]]), spec.seed, 1)[0]
            for r in rest
        }
        rand = sorted(rest, key=lambda r: unit[r[C.ITEM]])[: spec.negatives - len(hard)]
        out |= {(user, i) for i in hard} | {(user, r[C.ITEM]) for r in rand}
    return out


@pytest.mark.parametrize(
    "spec",
    [
        SampleSpec(),
        SampleSpec(negatives=10, hard_share=0.5),
        SampleSpec(negatives=7, hard_share=1.0, seed=3),
        SampleSpec(negatives=5, hard_share=0.0),
        SampleSpec(users=20, negatives=8, hard_share=0.25, seed=1),
        SampleSpec(users=1000, negatives=100),  # budgets above what there is: everything
        SampleSpec(negatives=3, min_rows=10_000),  # a small fold keeps every negative
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_sample_matches_brute_force(spec: SampleSpec, seed: int) -> None:
    frame = candidate_frame(seed)
    keys = sample_keys(frame, spec)
    assert set(keys.iter_rows()) == brute_force(frame, spec)
    assert keys.equals(keys.sort(C.USER, C.ITEM))
    assert keys.equals(sample_keys(frame.sample(fraction=1.0, shuffle=True, seed=9), spec))
    # The sample of a sample is itself: the train stage may draw again from built features.
    again = frame.join(keys, on=[C.USER, C.ITEM], how="semi")
    assert sample_keys(again, spec).equals(keys)


def test_sample_keeps_every_labelled_row_and_drops_users_without_one() -> None:
    frame = candidate_frame(2)
    keys = sample_keys(frame, SampleSpec(negatives=3))
    sampled = frame.join(keys, on=[C.USER, C.ITEM], how="semi")
    users_with_label = frame.filter(pl.col(C.GRADE) > 0)[C.USER].unique()
    assert sampled.filter(pl.col(C.GRADE) > 0).height == frame.filter(pl.col(C.GRADE) > 0).height
    assert set(sampled[C.USER].unique()) == set(users_with_label)
    per_user = sampled.filter(pl.col(C.GRADE) == 0).group_by(C.USER).len()["len"]
    assert per_user.max() == 3


def test_hashed_subset_takes_the_smallest_hashes_and_nests() -> None:
    codes = np.arange(0, 3000, 3, dtype=np.int32)  # 1,000 sorted codes
    unit = {int(c): stable_unit(np.array([c]), 5, 4)[0] for c in codes}
    for n in (1, 10, 250, 999):
        got = hashed_subset(codes, n, seed=5, salt=4)
        expected = sorted(sorted(unit, key=lambda c: (unit[c], c))[:n])
        assert got.tolist() == expected
        assert got.dtype == codes.dtype
    small, large = hashed_subset(codes, 100, 5, 4), hashed_subset(codes, 400, 5, 4)
    assert set(small.tolist()) <= set(large.tolist())
    # No budget, or more budget than codes: every code, unchanged.
    assert hashed_subset(codes, 0, 5, 4) is codes
    assert hashed_subset(codes, 1000, 5, 4) is codes
    # Another salt draws another subset.
    assert not np.array_equal(hashed_subset(codes, 100, 5, 3), small)
