"""Ranking metrics against trec_eval (pytrec_eval) on 1,000 random rankings, and the
bootstrap intervals against the normal approximation."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from gbrank.metrics import bootstrap_intervals, ranking_metrics

pytrec_eval = pytest.importorskip("pytrec_eval")

KS = (1, 3, 5, 10, 20)


def random_cases(n: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``n`` users, each a random ranking of 1..30 items out of 60 and 1..12 relevant items
    (some outside the ranking)."""
    rng = np.random.default_rng(seed)
    recs, rel = [], []
    for user in range(n):
        length = int(rng.integers(1, 31))
        items = rng.choice(60, size=length, replace=False)
        recs += [(user, int(i), r + 1) for r, i in enumerate(items)]
        n_rel = int(rng.integers(1, 13))
        pool = np.concatenate([items, rng.choice(60, size=n_rel, replace=False)])
        chosen = rng.choice(np.unique(pool), size=min(n_rel, np.unique(pool).size), replace=False)
        rel += [(user, int(i)) for i in chosen]
    return (
        pl.DataFrame(recs, schema=["user", "item", "rank"], orient="row"),
        pl.DataFrame(rel, schema=["user", "item"], orient="row"),
    )


def trec_values(recs: pl.DataFrame, rel: pl.DataFrame) -> dict[str, dict[str, float]]:
    qrels: dict[str, dict[str, int]] = {}
    for u, i in rel.iter_rows():
        qrels.setdefault(str(u), {})[str(i)] = 1
    run: dict[str, dict[str, float]] = {}
    for u, i, r in recs.iter_rows():
        run.setdefault(str(u), {})[str(i)] = 1.0 / r  # distinct scores: rank order
    cut = ",".join(str(k) for k in KS)
    measures = {f"recall.{cut}", f"P.{cut}", f"ndcg_cut.{cut}", f"map_cut.{cut}", "recip_rank"}
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


@pytest.mark.parametrize("seed", [0, 1])
def test_every_metric_matches_trec_eval_on_500_rankings(seed: int) -> None:
    recs, rel = random_cases(500, seed)  # two seeds: 1,000 random rankings
    report = ranking_metrics(recs, rel, ks=KS)
    ours = report.per_user
    assert ours is not None and report.n_users == 500
    trec = trec_values(recs, rel)
    n_rel = rel.group_by("user").len().sort("user")["len"].to_numpy()
    first_hit_rank = {}
    for u, values in trec.items():
        first_hit_rank[int(u)] = 1.0 / values["recip_rank"] if values["recip_rank"] else np.inf
    for k in KS:
        mine = ours.filter(pl.col("k") == k).sort("user")
        users = mine["user"].to_list()
        ref = {
            "recall": [trec[str(u)][f"recall_{k}"] for u in users],
            "precision": [trec[str(u)][f"P_{k}"] for u in users],
            "ndcg": [trec[str(u)][f"ndcg_cut_{k}"] for u in users],
            # trec_eval divides AP@K by |R|, gbrank by min(|R|, K) (docs/metrics.md).
            "map": [trec[str(u)][f"map_cut_{k}"] * n_rel[u] / min(n_rel[u], k) for u in users],
            # trec_eval's reciprocal rank has no cutoff; gbrank's counts hits within K.
            "mrr": [1.0 / first_hit_rank[u] if first_hit_rank[u] <= k else 0.0 for u in users],
            "hitrate": [float(trec[str(u)][f"recall_{k}"] > 0) for u in users],
        }
        for metric, expected in ref.items():
            np.testing.assert_allclose(mine[metric].to_numpy(), expected, atol=1e-4, err_msg=metric)
        for metric, expected in ref.items():  # and the reported means
            assert report.value(metric, k) == pytest.approx(float(np.mean(expected)), abs=1e-4)


def test_bootstrap_interval_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(3)
    n, p = 4000, 0.3
    per_user = pl.DataFrame(
        {"k": [10] * n, "user": np.arange(n), "hitrate": (rng.random(n) < p).astype(float)}
    )
    table = bootstrap_intervals(per_user, n_boot=400, seed=0)
    low, high = table["ci_low"][0], table["ci_high"][0]
    mean = per_user["hitrate"].mean()
    half = 1.96 * np.sqrt(mean * (1 - mean) / n)
    assert low < mean < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_intervals(per_user, n_boot=400, seed=0).equals(table)  # seeded
    smaller = bootstrap_intervals(per_user.head(n // 4), n_boot=400, seed=0)
    width = smaller["ci_high"][0] - smaller["ci_low"][0]
    assert width == pytest.approx(2 * (high - low), rel=0.25)  # 1 / sqrt(n)
