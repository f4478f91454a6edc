"""Tests for gbrank.metrics: hand-worked cases, an independent per-user reference, errors."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import polars as pl
import pytest
from scipy.stats import mannwhitneyu

from gbrank.columns import ITEM, RANK, USER
from gbrank.metrics import (
    RANKING_METRICS,
    RankingReport,
    auc,
    calibration_table,
    candidate_recall,
    coverage,
    log_loss,
    metrics_rows,
    ranking_metrics,
)

L3 = 1.0 / math.log2(3)  # discount of rank 2
L5 = 1.0 / math.log2(5)  # discount of rank 4


def _recs(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={USER: pl.Int32, ITEM: pl.Int32, RANK: pl.Int32}, orient="row")


def _pairs(rows: list[tuple[int, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={USER: pl.Int32, ITEM: pl.Int32}, orient="row")


def _as_dict(report: RankingReport) -> dict[tuple[str, int], float]:
    return {(r["metric"], r["k"]): r["value"] for r in report.table.iter_rows(named=True)}


# --------------------------------------------------------------------------------------
# Hand-worked cases
# --------------------------------------------------------------------------------------

# user 1: four recommendations, relevant {11, 13, 99} (99 is never recommended), |R| = 3
# user 2: two recommendations, relevant {20}, |R| = 1
# user 3: relevant {30} but no recommendations -> zero everywhere, still in the denominator
# user 4: recommendations but nothing relevant -> excluded, counted in n_excluded
HAND_RECS = _recs(
    [
        (1, 10, 1),  # miss
        (1, 11, 2),  # hit
        (1, 12, 3),  # miss
        (1, 13, 4),  # hit
        (2, 20, 1),  # hit
        (2, 21, 2),  # miss
        (4, 40, 1),  # user 4 has no relevant item
    ]
)
HAND_REL = _pairs(
    [
        (1, 11),
        (1, 11),  # duplicate row: collapsed, |R_1| stays 3
        (1, 13),
        (1, 99),
        (2, 20),
        (3, 30),
    ]
)


def test_hand_case_population() -> None:
    report = ranking_metrics(HAND_RECS, HAND_REL, ks=(2, 4))
    assert report.n_users == 3  # users 1, 2, 3
    assert report.n_excluded == 1  # user 4
    assert report.table.columns == ["metric", "k", "value"]
    assert report.table.schema == pl.Schema(
        {"metric": pl.String, "k": pl.Int64, "value": pl.Float64}
    )
    # metrics in RANKING_METRICS order, then Ks in the requested order
    assert report.table.select("metric", "k").rows() == [
        (m, k) for m in RANKING_METRICS for k in (2, 4)
    ]


def test_hand_case_at_2() -> None:
    r = _as_dict(ranking_metrics(HAND_RECS, HAND_REL, ks=(2, 4)))
    # per user at K=2:
    #   user 1: top2 {10, 11}, hits = {11 at rank 2}
    #     recall 1/3, precision 1/2, hit 1, rr 1/2,
    #     DCG = 1/log2(3), IDCG = 1 + 1/log2(3) (min(3, 2) = 2 ideal hits), AP = (1/2) / 2
    #   user 2: top2 {20, 21}, hit 20 at rank 1
    #     recall 1, precision 1/2, hit 1, rr 1, nDCG 1, AP = (1/1) / min(1, 2) = 1
    #   user 3: all zero
    assert r[("recall", 2)] == pytest.approx((1 / 3 + 1 + 0) / 3)  # 4/9
    assert r[("precision", 2)] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)  # 1/3
    assert r[("hitrate", 2)] == pytest.approx((1 + 1 + 0) / 3)  # 2/3
    assert r[("mrr", 2)] == pytest.approx((1 / 2 + 1 + 0) / 3)  # 1/2
    assert r[("ndcg", 2)] == pytest.approx((L3 / (1 + L3) + 1 + 0) / 3)
    assert r[("map", 2)] == pytest.approx((0.25 + 1 + 0) / 3)  # 5/12


def test_hand_case_at_4() -> None:
    r = _as_dict(ranking_metrics(HAND_RECS, HAND_REL, ks=(2, 4)))
    # per user at K=4:
    #   user 1: hits 11 (rank 2) and 13 (rank 4)
    #     recall 2/3, precision 2/4, hit 1, rr 1/2 (first hit at rank 2),
    #     DCG = 1/log2(3) + 1/log2(5), IDCG = 1 + 1/log2(3) + 1/log2(4) (min(3, 4) = 3),
    #     AP = (P@2 + P@4) / min(3, 4) = (1/2 + 2/4) / 3 = 1/3
    #   user 2: hit 20 at rank 1 -> recall 1, precision 1/4, hit 1, rr 1, nDCG 1, AP 1
    #   user 3: all zero
    assert r[("recall", 4)] == pytest.approx((2 / 3 + 1 + 0) / 3)  # 5/9
    assert r[("precision", 4)] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)  # 1/4
    assert r[("hitrate", 4)] == pytest.approx(2 / 3)
    assert r[("mrr", 4)] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert r[("ndcg", 4)] == pytest.approx(((L3 + L5) / (1 + L3 + 0.5) + 1 + 0) / 3)
    assert r[("map", 4)] == pytest.approx((1 / 3 + 1 + 0) / 3)  # 4/9


def test_textbook_average_precision() -> None:
    # One user, five recommendations, relevant items at ranks 1, 3 and 5 (|R| = 3).
    recs = _recs([(0, i, i) for i in range(1, 6)])
    rel = _pairs([(0, 1), (0, 3), (0, 5)])
    r = _as_dict(ranking_metrics(recs, rel, ks=(5, 1)))
    # AP@5 = (P@1 + P@3 + P@5) / 3 = (1/1 + 2/3 + 3/5) / 3
    assert r[("map", 5)] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # AP@1 = P@1 / min(3, 1) = 1
    assert r[("map", 1)] == pytest.approx(1.0)
    # nDCG@5: DCG = 1 + 1/log2(4) + 1/log2(6); IDCG = 1 + 1/log2(3) + 1/log2(4)
    assert r[("ndcg", 5)] == pytest.approx((1 + 0.5 + 1 / math.log2(6)) / (1 + L3 + 0.5))
    # Ks are reported in the order asked
    assert ranking_metrics(recs, rel, ks=(5, 1)).table["k"].to_list()[:2] == [5, 1]


def test_k_larger_than_list() -> None:
    # One user, two recommendations, both relevant, |R| = 2, K = 10.
    recs = _recs([(0, 1, 1), (0, 2, 2)])
    rel = _pairs([(0, 1), (0, 2)])
    r = _as_dict(ranking_metrics(recs, rel, ks=(10,)))
    assert r[("recall", 10)] == pytest.approx(1.0)  # 2/2
    assert r[("precision", 10)] == pytest.approx(0.2)  # divided by K, not by list length
    assert r[("ndcg", 10)] == pytest.approx(1.0)  # IDCG uses min(|R|, K) = 2 ideal hits
    assert r[("map", 10)] == pytest.approx(1.0)  # (1/1 + 2/2) / min(2, 10)


def test_metric_subset_and_value_accessor() -> None:
    report = ranking_metrics(HAND_RECS, HAND_REL, ks=(4,), metrics=("mrr", "recall"))
    assert report.table["metric"].to_list() == ["mrr", "recall"]
    assert report.value("recall", 4) == pytest.approx(5 / 9)
    with pytest.raises(KeyError):
        report.value("ndcg", 4)


def test_no_relevant_users_gives_nan() -> None:
    report = ranking_metrics(HAND_RECS, HAND_REL.head(0), ks=(3,))
    assert report.n_users == 0
    assert report.n_excluded == 3  # users 1, 2 and 4 all have recommendations
    assert report.table.height == len(RANKING_METRICS)
    assert all(math.isnan(v) for v in report.table["value"])


def test_no_recs_at_all_gives_zero() -> None:
    report = ranking_metrics(HAND_RECS.head(0), HAND_REL, ks=(3,))
    assert report.n_users == 3
    assert report.table["value"].to_list() == [0.0] * len(RANKING_METRICS)


def test_mixed_integer_widths_and_extra_columns() -> None:
    recs = HAND_RECS.with_columns(pl.col(USER).cast(pl.Int64), score=pl.lit(0.5))
    rel = HAND_REL.with_columns(pl.col(ITEM).cast(pl.UInt16), k=pl.lit(7))
    assert _as_dict(ranking_metrics(recs, rel, ks=(2, 4))) == pytest.approx(
        _as_dict(ranking_metrics(HAND_RECS, HAND_REL, ks=(2, 4)))
    )


def test_metrics_rows() -> None:
    report = ranking_metrics(HAND_RECS, HAND_REL, ks=(2,), metrics=("recall", "map"))
    rows = metrics_rows(report, model="lgbm", target="purchase")
    assert [{k: v for k, v in r.items() if k != "value"} for r in rows] == [
        {"model": "lgbm", "target": "purchase", "metric": "recall", "k": 2},
        {"model": "lgbm", "target": "purchase", "metric": "map", "k": 2},
    ]
    # values from test_hand_case_at_2
    assert [r["value"] for r in rows] == pytest.approx([4 / 9, 5 / 12])


# --------------------------------------------------------------------------------------
# Independent reference on random data
# --------------------------------------------------------------------------------------


def reference_metrics(
    recs: list[tuple[int, int, int]],
    relevant: list[tuple[int, int]],
    ks: list[int],
) -> tuple[dict[tuple[str, int], float], int, int]:
    """Plain per-user loops, written from the definitions in docs/metrics.md."""
    rel: dict[int, set[int]] = defaultdict(set)
    for u, i in relevant:
        rel[u].add(i)
    by_user: dict[int, dict[int, int]] = defaultdict(dict)  # user -> rank -> item
    for u, i, r in recs:
        by_user[u][r] = i
    n_excluded = sum(1 for u in by_user if u not in rel)

    sums: dict[tuple[str, int], float] = defaultdict(float)
    for u, r_u in rel.items():
        ranked = by_user.get(u, {})
        for k in ks:
            hits = 0
            dcg = 0.0
            first = None
            ap = 0.0
            for pos in range(1, k + 1):
                item = ranked.get(pos)
                if item is None or item not in r_u:
                    continue
                hits += 1
                dcg += 1.0 / math.log2(pos + 1)
                if first is None:
                    first = pos
                # precision@pos, counted from scratch over the top-pos list
                ap += sum(1 for p in range(1, pos + 1) if ranked.get(p) in r_u) / pos
            ideal = min(len(r_u), k)
            idcg = sum(1.0 / math.log2(i + 1) for i in range(1, ideal + 1))
            sums[("recall", k)] += hits / len(r_u)
            sums[("precision", k)] += hits / k
            sums[("hitrate", k)] += 1.0 if hits else 0.0
            sums[("mrr", k)] += 1.0 / first if first else 0.0
            sums[("ndcg", k)] += dcg / idcg
            sums[("map", k)] += ap / ideal
    n = len(rel)
    return {key: v / n for key, v in sums.items()}, n, n_excluded


def random_case(
    seed: int, gaps: bool = False
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    n_users, n_items = 40, 30
    recs: list[tuple[int, int, int]] = []
    relevant: list[tuple[int, int]] = []
    for u in range(n_users):
        length = int(rng.integers(0, 13))  # 0 -> a user without recommendations
        items = rng.choice(n_items, size=length, replace=False)
        if gaps:
            ranks = np.sort(rng.choice(np.arange(1, 3 * length + 2), size=length, replace=False))
        else:
            ranks = np.arange(1, length + 1)
        recs.extend((u, int(i), int(r)) for i, r in zip(items, ranks, strict=True))
        if rng.random() < 0.25:
            continue  # no relevant item: excluded if the user has recommendations
        n_rel = int(rng.integers(1, 8))
        rel_items = rng.choice(n_items, size=n_rel, replace=True)  # duplicates on purpose
        relevant.extend((u, int(i)) for i in rel_items)
    # users that only appear in the ground truth
    relevant.extend((n_users + j, int(rng.integers(0, n_items))) for j in range(3))
    order = rng.permutation(len(recs))  # row order must not matter
    return [recs[j] for j in order], relevant


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("gaps", [False, True])
def test_matches_reference(seed: int, gaps: bool) -> None:
    recs_rows, rel_rows = random_case(seed, gaps)
    ks = [1, 3, 5, 50]  # 50 is longer than any list
    expected, n_users, n_excluded = reference_metrics(recs_rows, rel_rows, ks)
    rel_dtype = pl.Int64 if seed % 2 else pl.Int32  # exercise key alignment
    report = ranking_metrics(
        _recs(recs_rows),
        pl.DataFrame(rel_rows, schema={USER: rel_dtype, ITEM: rel_dtype}, orient="row"),
        ks=ks,
    )
    assert report.n_users == n_users
    assert report.n_excluded == n_excluded
    got = _as_dict(report)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("seed", range(4))
def test_candidate_recall_matches_reference(seed: int) -> None:
    recs_rows, rel_rows = random_case(seed)
    cand_pairs = {(u, i) for u, i, _ in recs_rows}
    rel_pairs = set(rel_rows)
    expected = sum(1 for p in rel_pairs if p in cand_pairs) / len(rel_pairs)
    got = candidate_recall(_recs(recs_rows), _pairs(rel_rows))
    assert got == pytest.approx(expected)


# --------------------------------------------------------------------------------------
# candidate_recall, coverage
# --------------------------------------------------------------------------------------


def test_candidate_recall_hand_case() -> None:
    # relevant pairs after collapsing the duplicate: (1,11) (1,13) (1,99) (2,20) (3,30)
    # found in candidates: (1,11) (1,13) (2,20) -> 3 / 5 (rank is ignored, so all depths count)
    assert candidate_recall(HAND_RECS, HAND_REL) == pytest.approx(3 / 5)
    # candidates may be plain pairs with duplicates (several sources)
    cands = _pairs([(1, 11), (1, 11), (3, 30)])
    assert candidate_recall(cands, HAND_REL) == pytest.approx(2 / 5)
    assert math.isnan(candidate_recall(cands, HAND_REL.head(0)))


def test_coverage() -> None:
    # distinct items in HAND_RECS: 10, 11, 12, 13, 20, 21, 40 -> 7
    assert coverage(HAND_RECS, 70) == pytest.approx(0.1)
    # rank <= 1: 10, 20, 40 -> 3
    assert coverage(HAND_RECS, 30, k=1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="n_items"):
        coverage(HAND_RECS, 0)
    with pytest.raises(ValueError, match="more than n_items"):
        coverage(HAND_RECS, 5)
    with pytest.raises(ValueError, match="'item'"):
        coverage(HAND_RECS.drop(ITEM), 10)


# --------------------------------------------------------------------------------------
# Pointwise metrics
# --------------------------------------------------------------------------------------


def brute_force_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_hand_case() -> None:
    # positives {0.8, 0.4}, negatives {0.4, 0.1}
    # pairs: (0.8,0.4) 1, (0.8,0.1) 1, (0.4,0.4) tie 1/2, (0.4,0.1) 1 -> 3.5 / 4
    assert auc([1, 0, 1, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(0.875)
    assert auc([1, 0], [0.1, 0.9]) == pytest.approx(0.0)
    assert auc(np.array([True, False]), [0.5, 0.5]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pair_counting(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # rounding creates many ties
    got = auc(y, s)
    assert got == pytest.approx(brute_force_auc(y, s))
    u = mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert got == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))


def test_log_loss() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.6, 0.5])
    # -(ln 0.9 + ln 0.8 + ln 0.6 + ln 0.5) / 4
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.5)) / 4
    assert log_loss(y, p) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    p = rng.random(1000)
    direct = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert log_loss(y, p) == pytest.approx(direct)


def test_log_loss_clips() -> None:
    # a confident mistake costs -ln(eps) instead of infinity
    assert log_loss([1], [0.0], eps=1e-7) == pytest.approx(-math.log(1e-7))
    assert log_loss([0, 1], [0.0, 1.0]) == pytest.approx(-math.log(1 - 1e-15), abs=1e-12)


def test_calibration_table() -> None:
    y = [0, 0, 1, 1, 1]
    p = [0.05, 0.15, 0.12, 0.95, 1.0]
    t = calibration_table(y, p, n_bins=4)
    assert t.columns == ["bin", "mean_pred", "frac_pos", "count"]
    # bin 0 [0, .25): 0.05 (y0), 0.15 (y0), 0.12 (y1) -> mean .10666, frac 1/3, count 3
    # bins 1, 2: empty
    # bin 3 [.75, 1]: 0.95 (y1), 1.0 (y1, the right edge belongs to the last bin)
    assert t["count"].to_list() == [3, 0, 0, 2]
    assert t["mean_pred"].to_list()[0] == pytest.approx(0.32 / 3)
    assert t["frac_pos"].to_list()[0] == pytest.approx(1 / 3)
    assert t["mean_pred"].to_list()[1:3] == [None, None]
    assert t["mean_pred"].to_list()[3] == pytest.approx(0.975)
    assert t["frac_pos"].to_list()[3] == pytest.approx(1.0)


@pytest.mark.parametrize("n_bins", [1, 7, 10])
def test_calibration_counts_sum_to_n(n_bins: int) -> None:
    rng = np.random.default_rng(n_bins)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(int)
    t = calibration_table(y, p, n_bins=n_bins)
    assert t.height == n_bins
    assert t["count"].sum() == 500
    full = t.filter(pl.col("count") > 0)
    # the count-weighted bin means give back the overall means
    assert (full["mean_pred"] * full["count"]).sum() / 500 == pytest.approx(p.mean())
    assert (full["frac_pos"] * full["count"]).sum() / 500 == pytest.approx(y.mean())


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("col", [USER, ITEM, RANK])
def test_recs_missing_column(col: str) -> None:
    with pytest.raises(ValueError, match=f"recs: missing column '{col}'"):
        ranking_metrics(HAND_RECS.drop(col), HAND_REL)


@pytest.mark.parametrize("col", [USER, ITEM])
def test_relevant_missing_column(col: str) -> None:
    with pytest.raises(ValueError, match=f"relevant: missing column '{col}'"):
        ranking_metrics(HAND_RECS, HAND_REL.drop(col))
    with pytest.raises(ValueError, match=f"relevant: missing column '{col}'"):
        candidate_recall(HAND_RECS, HAND_REL.drop(col))


@pytest.mark.parametrize("bad_rank", [0, -3])
def test_non_positive_rank(bad_rank: int) -> None:
    recs = pl.concat([HAND_RECS, _recs([(9, 90, bad_rank)])])
    with pytest.raises(ValueError, match="column 'rank' must be positive"):
        ranking_metrics(recs, HAND_REL)


def test_duplicate_user_item() -> None:
    recs = pl.concat([HAND_RECS, _recs([(1, 11, 7)])])
    with pytest.raises(ValueError, match=r"duplicate \(user, item\).*user=1, item=11"):
        ranking_metrics(recs, HAND_REL)


def test_duplicate_rank() -> None:
    recs = pl.concat([HAND_RECS, _recs([(1, 77, 2)])])
    with pytest.raises(ValueError, match="column 'rank' repeats a rank"):
        ranking_metrics(recs, HAND_REL)


def test_float_rank_and_nulls() -> None:
    with pytest.raises(ValueError, match="column 'rank' must have an integer dtype"):
        ranking_metrics(HAND_RECS.with_columns(pl.col(RANK).cast(pl.Float64)), HAND_REL)
    with_null = HAND_RECS.with_columns(
        pl.when(pl.col(ITEM) == 10).then(None).otherwise(pl.col(ITEM)).alias(ITEM)
    )
    with pytest.raises(ValueError, match="recs: column 'item' has 1 null"):
        ranking_metrics(with_null, HAND_REL)


def test_key_dtype_mismatch() -> None:
    rel = HAND_REL.with_columns(pl.col(USER).cast(pl.String))
    with pytest.raises(ValueError, match="column 'user' has dtype"):
        ranking_metrics(HAND_RECS, rel)


@pytest.mark.parametrize("ks", [(), (0,), (5, -1), (2.5,), (True,)])
def test_bad_ks(ks: tuple) -> None:
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics(HAND_RECS, HAND_REL, ks=ks)


def test_unknown_metric() -> None:
    with pytest.raises(ValueError, match="unknown ranking metric 'auc'"):
        ranking_metrics(HAND_RECS, HAND_REL, metrics=("recall", "auc"))


def test_pointwise_errors() -> None:
    with pytest.raises(ValueError, match="both classes"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="y_score has 2 values but y_true has 3"):
        auc([1, 0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="only 0 and 1"):
        auc([2, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        auc([1, 0], [np.nan, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        log_loss([1, 0], [1.2, 0.1])
    with pytest.raises(ValueError, match="empty"):
        log_loss([], [])
    with pytest.raises(ValueError, match="eps"):
        log_loss([1], [0.5], eps=0.0)
    with pytest.raises(ValueError, match="n_bins"):
        calibration_table([1], [0.5], n_bins=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_table([1, 0], [-0.1, 0.5])
