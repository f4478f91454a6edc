"""One conformance suite for every ranker backend and head: known answers, the save/load round
trip, determinism and the input guards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gbrank import columns as C
from gbrank.errors import EXIT_DATA, EXIT_NO_INPUT, DamagedArtifactError, DataError, GbrankWarning
from gbrank.rankers import BACKENDS, backend_class, load_ranker, make_ranker
from gbrank.rankers.base import MAX_GROUP_ROWS, Ranker, cap_groups, check_labels, query_groups

GAINS = [0.0, 1.0, 3.0, 7.0, 15.0]

#: Every (backend, objective) gbrank offers.
CASES = [(b, o) for b in BACKENDS for o in backend_class(b).objectives]


def frame(seed: int, users: int = 150, per_user: int = 12) -> pl.DataFrame:
    """Grades follow feature ``f1`` (with noise); ``f2`` is noise; ``y`` is grade >= 2."""
    rng = np.random.default_rng(seed)
    n = users * per_user
    f1 = rng.normal(size=n)
    grade = np.clip(np.round(1.5 * f1 + 1 + rng.normal(scale=0.4, size=n)), 0, 4)
    return pl.DataFrame(
        {
            C.USER: np.repeat(np.arange(users, dtype=np.int32), per_user),
            C.ITEM: np.tile(np.arange(per_user, dtype=np.int32), users),
            "f1": f1.astype(np.float32),
            "f2": rng.normal(size=n).astype(np.float32),
            C.GRADE: grade.astype(np.int8),
            "y": (grade >= 2).astype(np.int8),
        }
    )


def fitted(backend: str, objective: str, seed: int = 0, rounds: int = 40) -> Ranker:
    cls = backend_class(backend)
    kind = cls.objectives[objective]
    ranker = make_ranker(
        backend,
        kind,
        objective,
        num_boost_round=rounds,
        early_stopping_rounds=10,
        label_gain=GAINS,
        seed=seed,
    )
    label = C.GRADE if kind == "rank" else "y"
    return ranker.fit(frame(0), ["f1", "f2"], label, valid=frame(1))


def ndcg_at(scores: np.ndarray, test: pl.DataFrame, k: int) -> float:
    """Mean NDCG@k over users with a positive (gain GAINS[grade]), by brute force."""
    values = []
    for user in np.unique(test[C.USER].to_numpy()):
        rows = test[C.USER].to_numpy() == user
        gains = np.asarray(GAINS)[test[C.GRADE].to_numpy()[rows].astype(int)]
        if gains.max() == 0:
            continue
        order = np.lexsort((test[C.ITEM].to_numpy()[rows], -scores[rows]))
        discount = 1 / np.log2(np.arange(2, k + 2))
        dcg = (gains[order][:k] * discount[: min(k, rows.sum())]).sum()
        ideal = (np.sort(gains)[::-1][:k] * discount[: min(k, rows.sum())]).sum()
        values.append(dcg / ideal)
    return float(np.mean(values))


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Probability that a positive outscores a negative (ties count half), by brute force."""
    pos, neg = scores[y == 1], scores[y == 0]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


@pytest.mark.parametrize(("backend", "objective"), CASES)
class TestConformance:
    def test_known_answer(self, backend: str, objective: str) -> None:
        """The model learns the signal: scores follow f1, f1 carries the gain, and NDCG@10 on
        new users is far above a random order and near the oracle's (scores = f1)."""
        ranker = fitted(backend, objective)
        test = frame(2)
        scores = ranker.predict(test)
        assert np.corrcoef(scores, test["f1"].to_numpy())[0, 1] > 0.8
        assert ranker.feature_importance()["feature"][0] == "f1"
        if ranker.kind == "rank":
            oracle = ndcg_at(test["f1"].to_numpy(), test, 10)
            random = ndcg_at(np.random.default_rng(0).random(test.height), test, 10)
            got = ndcg_at(scores, test, 10)
            assert got > random + 0.5 * (oracle - random) and got > oracle - 0.05
        else:
            assert scores.min() >= 0 and scores.max() <= 1  # probabilities
            y = test["y"].to_numpy()
            assert auc(scores, y) > auc(test["f1"].to_numpy(), y) - 0.03
            assert abs(scores.mean() - y.mean()) < 0.05  # calibrated on average
        assert 1 <= ranker.best_iteration_ <= 40

    def test_save_load_round_trip(self, backend: str, objective: str, tmp_path: Path) -> None:
        ranker = fitted(backend, objective)
        model, sidecar = ranker.save(tmp_path / "m")
        assert model.suffix == backend_class(backend).model_suffix and sidecar.suffix == ".json"
        loaded = load_ranker(tmp_path / "m")
        assert type(loaded) is type(ranker) and loaded.objective == objective
        test = frame(2)
        np.testing.assert_array_equal(loaded.predict(test), ranker.predict(test))
        assert loaded.sidecar()["feature_names"] == ["f1", "f2"]
        assert loaded.best_iteration_ == ranker.best_iteration_

    def test_deterministic(self, backend: str, objective: str, tmp_path: Path) -> None:
        one, two = fitted(backend, objective), fitted(backend, objective)
        one.save(tmp_path / "a")
        two.save(tmp_path / "b")
        suffix = backend_class(backend).model_suffix
        a, b = (tmp_path / f"{s}{suffix}" for s in "ab")
        assert a.read_bytes() == b.read_bytes()

    def test_features_by_name(self, backend: str, objective: str) -> None:
        ranker = fitted(backend, objective)
        test = frame(2)
        shuffled = test.select("f2", C.GRADE, "y", C.ITEM, "f1", C.USER)
        np.testing.assert_array_equal(ranker.predict(shuffled), ranker.predict(test))
        with pytest.raises(ValueError, match="missing"):
            ranker.predict(test.drop("f2"))

    def test_unsorted_groups_are_refused(self, backend: str, objective: str) -> None:
        ranker = make_ranker(backend, backend_class(backend).objectives[objective], objective)
        label = C.GRADE if ranker.kind == "rank" else "y"
        shuffled = frame(0).sample(fraction=1.0, shuffle=True, seed=1)
        with pytest.raises(ValueError, match="sorted by user"):
            ranker.fit(shuffled, ["f1", "f2"], label)

    def test_bad_labels_are_refused(self, backend: str, objective: str) -> None:
        kind = backend_class(backend).objectives[objective]
        ranker = make_ranker(backend, kind, objective, label_gain=GAINS, num_boost_round=3)
        label = C.GRADE if kind == "rank" else "y"
        good = frame(0)
        nan = good.with_columns(
            pl.when(pl.col(C.ITEM) == 3).then(float("nan")).otherwise(pl.col(label)).alias(label)
        )
        too_high = good.with_columns((pl.col(label) + 4).alias(label))
        for bad, pattern in ((nan, "null, NaN or not integer"), (too_high, "outside")):
            with pytest.raises(DataError, match=pattern) as info:
                ranker.fit(bad, ["f1", "f2"], label)
            assert info.value.column == label and info.value.exit_code == EXIT_DATA

    def test_damaged_model_exits_65(self, backend: str, objective: str, tmp_path: Path) -> None:
        model, sidecar = fitted(backend, objective).save(tmp_path / "m")
        data = model.read_bytes()
        model.write_bytes(data[: len(data) // 2])  # truncated
        with pytest.raises(DamagedArtifactError, match="damaged") as info:
            load_ranker(tmp_path / "m")
        assert info.value.exit_code == EXIT_DATA and str(model) in str(info.value)
        model.unlink()
        with pytest.raises(Exception) as missing:
            load_ranker(tmp_path / "m")
        assert getattr(missing.value, "exit_code", None) == EXIT_NO_INPUT
        sidecar.write_text("{not json")
        with pytest.raises(DamagedArtifactError):
            load_ranker(tmp_path / "m")


def test_query_groups_from_sort() -> None:
    groups = query_groups(pl.DataFrame({C.USER: [1, 1, 1, 4, 7, 7]}))
    assert groups.sizes.tolist() == [3, 1, 2]
    assert groups.qid.tolist() == [0, 0, 0, 1, 2, 2]
    with pytest.raises(ValueError, match="sorted by user"):
        query_groups(pl.DataFrame({C.USER: [2, 1]}))
    with pytest.raises(ValueError, match="sorted by user"):
        query_groups(pl.DataFrame({C.USER: [1, 2, 1]}))  # a user's rows not contiguous


def test_check_labels_accepts_integral_floats_and_refuses_the_rest() -> None:
    check_labels(pl.DataFrame({"g": [0.0, 2.0, 4.0]}), "g", "rank", 5)
    check_labels(pl.DataFrame({"y": [0, 1, 1]}), "y", "binary", None)
    for values, kind in (([0.5, 1.0], "rank"), ([0, 2], "binary"), ([-1, 0], "rank")):
        with pytest.raises(DataError):
            check_labels(pl.DataFrame({"g": values}), "g", kind, 5)
    with pytest.raises(DataError, match="null"):
        check_labels(pl.DataFrame({"g": [1, None]}, schema={"g": pl.Int8}), "g", "rank", 5)


def test_cap_groups_keeps_the_best_ranked_rows() -> None:
    """Over the cap, a user keeps its best rows by best source rank (ties by item code), as a
    brute-force sort says; other users are untouched; "error" names the users."""
    rng = np.random.default_rng(3)
    sizes = {0: 4, 1: 9, 2: 2}
    users = np.concatenate([[u] * n for u, n in sizes.items()]).astype(np.int32)
    items = np.concatenate([rng.permutation(50)[:n] for n in sizes.values()]).astype(np.int32)
    a = rng.integers(1, 6, users.size).astype(np.float64)
    b = rng.integers(1, 6, users.size).astype(np.float64)
    a[rng.random(users.size) < 0.3] = np.nan
    rows = pl.DataFrame(
        {C.USER: users, C.ITEM: items, "a_rank": a, "b_rank": b},
    ).with_columns(pl.col("a_rank", "b_rank").fill_nan(None))
    with pytest.warns(GbrankWarning, match="more than 5 candidate rows"):
        capped = cap_groups(rows, max_rows=5)
    expected = []
    for user in sizes:
        mine = [r for r in rows.iter_rows(named=True) if r[C.USER] == user]
        best = [
            (min(v for v in (r["a_rank"], r["b_rank"]) if v is not None), r[C.ITEM]) for r in mine
        ]
        expected += [(user, item) for _, item in sorted(best)[:5]]
    assert sorted(capped.select(C.USER, C.ITEM).iter_rows()) == sorted(expected)
    assert capped[C.USER].is_sorted()
    with pytest.raises(DataError, match="more than 5") as info:
        cap_groups(rows, max_rows=5, overflow="error")
    assert info.value.values == [1]
    assert cap_groups(rows, max_rows=9).equals(rows)


def test_a_query_over_lightgbms_limit_is_capped_and_trains() -> None:
    """LightGBM aborts the process on a query of more than 10,000 rows: the pipeline's guard
    caps it first, and training goes through."""
    n = MAX_GROUP_ROWS + 500
    rng = np.random.default_rng(0)
    big = pl.DataFrame(
        {
            C.USER: np.r_[np.zeros(n), np.ones(20)].astype(np.int32),
            C.ITEM: np.r_[np.arange(n), np.arange(20)].astype(np.int32),
            "f1": rng.normal(size=n + 20).astype(np.float32),
            "als_rank": np.r_[np.arange(1, n + 1), np.arange(1, 21)].astype(np.int32),
        }
    ).with_columns((pl.col("f1") > 1).cast(pl.Int8).alias(C.GRADE))
    with pytest.warns(GbrankWarning):
        capped = cap_groups(big)
    assert query_groups(capped).sizes.tolist() == [MAX_GROUP_ROWS, 20]
    assert capped.filter(pl.col(C.USER) == 0)["als_rank"].max() == MAX_GROUP_ROWS
    ranker = make_ranker("lightgbm", "rank", num_boost_round=3, label_gain=GAINS)
    ranker.fit(capped, ["f1"], C.GRADE)
    assert ranker.best_iteration_ == 3


def test_blend_scores_against_a_per_user_loop() -> None:
    """Weighted blends standardise each head within each user (brute force per user); the
    product blend multiplies the CTR and CVR probabilities."""
    from gbrank.rankers.blend import blend_names, blend_scores

    rng = np.random.default_rng(4)
    users = np.sort(rng.integers(0, 40, 500))
    scores = {
        "ranker": rng.normal(size=500) * 5 + 3,
        "ctr": rng.random(500),
        "cvr": rng.random(500),
    }
    scores["ranker"][users == users[0]] = 1.5  # a user whose scores all tie
    weights = {"ranker": 0.6, "ctr": 0.3, "cvr": 0.1}
    got = blend_scores(scores, users, weights)
    expected = np.zeros(500)
    for user in np.unique(users):
        rows = users == user
        for head, weight in weights.items():
            values = scores[head][rows]
            sd = values.std()
            expected[rows] += weight * ((values - values.mean()) / sd if sd > 0 else 0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(blend_scores(scores, users, None), scores["ctr"] * scores["cvr"])
    assert blend_names(["ranker", "ctr", "cvr"], {"w": weights}) == ["ctr_cvr", "w"]
    assert blend_names(["ranker", "ctr"], {}) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (['train.heads=["rankr"]'], "did you mean 'ranker'"),
        (["train.heads=[]"], "empty"),
        (['blend.serve="ctr_cvr"'], "needs the ctr and cvr heads"),
        (["blend.weights.w={ctr = 1.0}"], "head 'ctr' is not trained"),
        (['train.heads=["ranker", "ctr"]', "blend.weights.ctr={ranker = 1.0}"], "taken"),
        (['train.cvr_rows="some"'], "cvr_rows"),
        (['train.backend="xgboost"', 'train.objective="lambdarank"'], "not a xgboost rank"),
        (['train.backend="xgboost"', "train.xgboost_params.max_dept=3"], "unknown XGBoost"),
        (["train.max_group_rows=20000"], "max_group_rows"),
        (['train.group_overflow="drop"'], "group_overflow"),
    ],
)
def test_bad_head_blend_and_backend_settings_are_config_errors(
    overrides: list[str], message: str
) -> None:
    from gbrank.config import check_ranker_params, load_config
    from gbrank.errors import ConfigError

    with pytest.raises(ConfigError, match=message):  # the backend's, where a model is trained
        check_ranker_params(load_config(None, overrides))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("patience", "min_delta"), [(60, 0.0), (8, 0.0), (8, 0.003)])
def test_early_stopping_is_on_the_first_ndcg_cutoff(
    backend: str, patience: int, min_delta: float
) -> None:
    """The best iteration is where early stopping on NDCG at the first eval_at cutoff on the
    validation users (not NDCG@20 nor the training loss) ends, as a plain fit records that
    curve: its first maximum with full patience, else the best round that no round better by
    more than ``min_delta`` follows within ``patience`` rounds (the Dask engine's rule)."""
    import lightgbm as lgb
    import xgboost as xgb

    from gbrank.rankers.dask import stopping_round

    train, valid = frame(0, users=300), frame(1, users=100)
    ranker = make_ranker(
        backend,
        "rank",
        num_boost_round=60,
        early_stopping_rounds=patience,
        min_delta=min_delta,
        label_gain=GAINS,
        eval_at=(3, 20),
        params={"learning_rate": 0.3},
    )
    ranker.fit(train, ["f1", "f2"], C.GRADE, valid=valid)
    if backend == "lightgbm":
        record: dict = {}
        params = ranker._lgb_params()  # type: ignore[attr-defined]
        dtrain = ranker._dataset(train)  # type: ignore[attr-defined]
        dvalid = ranker._dataset(valid, reference=dtrain)  # type: ignore[attr-defined]
        lgb.train(
            params, dtrain, 60, valid_sets=[dvalid], callbacks=[lgb.record_evaluation(record)]
        )
        curve = record["valid_0"]["ndcg@3"]
    else:
        record = {}
        params = ranker._xgb_params()  # type: ignore[attr-defined]
        dtrain = ranker._matrix(train)  # type: ignore[attr-defined]
        dvalid = ranker._matrix(valid, ref=dtrain)  # type: ignore[attr-defined]
        xgb.train(
            params, dtrain, 60, evals=[(dvalid, "v")], evals_result=record, verbose_eval=False
        )
        curve = record["v"]["ndcg@3"]
    if patience == 60:
        assert ranker.best_iteration_ == int(np.argmax(curve)) + 1
    assert ranker.best_iteration_ == stopping_round(np.asarray(curve), patience, min_delta)
    if min_delta > 0:  # the tolerance cut this curve short
        assert ranker.best_iteration_ < stopping_round(np.asarray(curve), patience)


def test_heads_learn_from_their_rows_and_refuse_an_empty_target() -> None:
    from gbrank.rankers.sampling import head_spec, learnable_rows

    rows = pl.DataFrame(
        {
            C.USER: [0, 0, 1, 1, 2],
            C.ITEM: [1, 2, 1, 3, 4],
            C.label_col("click"): [1, 0, 1, 1, 0],
            C.label_col("purchase"): [1, 0, 0, 0, 0],
        }
    )
    assert learnable_rows(rows, head_spec("cvr", "clicked"), "train").height == 3
    assert learnable_rows(rows, head_spec("cvr", "all"), "train").height == 5
    per_target = learnable_rows(rows, head_spec("ranker_purchase"), "train")
    assert per_target[C.USER].to_list() == [0, 0]  # users with a purchase only
    assert head_spec("ranker_purchase").label_gain([0, 1, 2, 6, 16]) == [0.0, 1.0]
    assert head_spec("ranker").label_gain([0, 1, 2, 6, 16]) == [0, 1, 2, 6, 16]
    assert head_spec("ctr").label_gain([0, 1]) is None
    no_purchase = rows.with_columns(pl.lit(0).alias(C.label_col("purchase")))
    with pytest.raises(DataError, match="head 'cvr' has 0 positive rows") as info:
        learnable_rows(no_purchase, head_spec("cvr"), "eval")
    assert "train.heads" in str(info.value)


def test_xgboost_max_bin_reaches_the_quantile_matrices() -> None:
    """XGBoost refuses a booster whose ``max_bin`` differs from its QuantileDMatrix's: the
    parameter is passed to both, and fewer bins do change the model."""
    from gbrank.rankers.xgboost import XGBoostRanker

    train, valid = frame(0), frame(1)

    def scores(params: dict[str, int]) -> np.ndarray:
        ranker = XGBoostRanker(
            "rank:ndcg",
            params=params,
            num_boost_round=20,
            early_stopping_rounds=5,
            label_gain=GAINS,
        )
        return ranker.fit(train, ["f1", "f2"], C.GRADE, valid=valid).predict(valid)

    coarse = scores({"max_bin": 4})
    assert not np.allclose(coarse, scores({}))
    np.testing.assert_array_equal(coarse, scores({"max_bin": 4}))


def test_quantile_cuts_and_snap_keep_every_split_of_the_raw_values() -> None:
    """Cut points of a column with ties, missing values, negatives and a heavy tail: at most
    max_bin - 1 above its minimum, the last its maximum; snapped, the column has at most
    max_bin distinct values, and every split at a cut sends each raw value the way it sends
    the value it was snapped to (what lets the model score raw features)."""
    from gbrank.rankers.xgboost import quantile_cuts, snap

    rng = np.random.default_rng(4)
    n = 20_000
    x = np.column_stack(
        [
            rng.lognormal(3, 2, n),  # heavy tail
            rng.integers(-5, 5, n),  # few distinct values, ties
            np.where(rng.random(n) < 0.3, np.nan, rng.normal(size=n)),
            np.full(n, 7.0),  # constant
            np.full(n, np.nan),  # never present
        ]
    ).astype(np.float32)
    for max_bin in (4, 64, 256):
        cuts = quantile_cuts(x, max_bin)
        snapped = snap(x, cuts)
        assert snapped.dtype == np.float32
        np.testing.assert_array_equal(np.isnan(snapped), np.isnan(x))
        for j, c in enumerate(cuts):
            present = x[~np.isnan(x[:, j]), j]
            assert c.size <= max_bin - 1 and np.all(np.diff(c) > 0)
            if present.size:
                assert np.all(c > present.min())
            assert np.unique(snapped[~np.isnan(snapped[:, j]), j]).size <= max_bin
            for cut in c:
                np.testing.assert_array_equal(x[:, j] < cut, snapped[:, j] < cut)
        assert cuts[0][-1] == x[:, 0].max()
        assert cuts[3].size == 0 and cuts[4].size == 0
    # Fewer distinct values than bins: every value but the smallest is a cut.
    np.testing.assert_array_equal(quantile_cuts(x, 256)[1], np.arange(-4, 5, dtype=np.float32))


def test_xgboost_trees_split_at_the_cuts_of_hashed_users() -> None:
    """The XGBoost backend learns from features snapped to the cuts of a hashed sample of
    users: its scores on raw rows equal its scores on the snapped rows (every threshold is a
    cut), the sample is whole users, and the cuts do not depend on the rows' order."""
    from gbrank.rankers import xgboost as xgb_backend

    ranker = xgb_backend.XGBoostRanker(
        "rank:ndcg", num_boost_round=30, early_stopping_rounds=5, label_gain=GAINS
    )
    train, valid = frame(0, users=400), frame(1)
    ranker.fit(train, ["f1", "f2"], C.GRADE, valid=valid)
    cuts = ranker.cuts(train)
    for rows in (train, valid):
        x = rows.select("f1", "f2").to_numpy().astype(np.float32)
        raw = ranker.booster_.inplace_predict(x)
        np.testing.assert_array_equal(
            raw, ranker.booster_.inplace_predict(xgb_backend.snap(x, cuts))
        )
    shuffled = train.sample(fraction=1.0, shuffle=True, seed=3)
    for a, b in zip(cuts, ranker.cuts(shuffled), strict=True):
        np.testing.assert_array_equal(a, b)
    # A small share of the rows, all rows of the users it picks.
    users = train[C.USER].to_numpy()
    picked = xgb_backend.cut_rows(users, 0.25, ranker.seed)
    assert 0.1 < picked.mean() < 0.4
    chosen = np.unique(users[picked])
    np.testing.assert_array_equal(picked, np.isin(users, chosen))
