"""The LightGBM ranker: groups from the sort, save/load, training-row selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gbrank import columns as C
from gbrank.config import load_config
from gbrank.errors import NotFittedError
from gbrank.pipeline import training_rows, validation_mask
from gbrank.rankers.base import feature_matrix, query_groups
from gbrank.rankers.lightgbm import LightGBMRanker
from gbrank.rankers.sampling import stable_unit


def ranking_frame(seed: int, users: int = 200, per_user: int = 20) -> pl.DataFrame:
    """Grade depends on feature f1 (signal) and not on f2 (noise)."""
    rng = np.random.default_rng(seed)
    n = users * per_user
    f1 = rng.normal(size=n)
    f2 = rng.normal(size=n)
    grade = np.clip(np.round(f1 + rng.normal(scale=0.5, size=n)), 0, 4).astype(np.int8)
    return pl.DataFrame(
        {
            C.USER: np.repeat(np.arange(users, dtype=np.int32), per_user),
            C.ITEM: np.tile(np.arange(per_user, dtype=np.int32), users),
            "f1": f1.astype(np.float32),
            "f2": f2.astype(np.float32),
            C.GRADE: grade,
        }
    )


def test_group_sizes_from_sort() -> None:
    frame = pl.DataFrame({C.USER: [1, 1, 1, 4, 7, 7]})  # users 1 (3 rows), 4 (1), 7 (2)
    assert query_groups(frame).sizes.tolist() == [3, 1, 2]
    with pytest.raises(ValueError, match="sorted by user"):
        query_groups(pl.DataFrame({C.USER: [2, 1]}))


def test_ranker_learns_signal_and_round_trips(tmp_path: Path) -> None:
    train, valid, test = ranking_frame(0), ranking_frame(1), ranking_frame(2)
    ranker = LightGBMRanker(
        num_boost_round=50, early_stopping_rounds=10, label_gain=[0, 1, 3, 7, 15]
    )
    with pytest.raises(NotFittedError):
        ranker.predict(test)
    ranker.fit(train, ["f1", "f2"], C.GRADE, valid=valid)
    scores = ranker.predict(test)
    assert np.corrcoef(scores, test["f1"].to_numpy())[0, 1] > 0.8
    importance = ranker.feature_importance()
    assert importance["feature"][0] == "f1"
    ranker.save(tmp_path / "model")
    loaded = LightGBMRanker.load(tmp_path / "model")
    # columns are selected by name: a reordered frame gives the same scores
    reordered = test.select(C.GRADE, "f2", C.ITEM, "f1", C.USER)
    assert np.array_equal(loaded.predict(reordered), scores)
    assert loaded.sidecar()["feature_names"] == ["f1", "f2"]


def test_widened_feature_matrix_holds_the_float32_values_in_row_order() -> None:
    """What compiled trees read: LightGBM's float32 values (not the frame's float64 ones)
    widened exactly, nulls as NaN, columns by name, C-contiguous."""
    frame = pl.DataFrame({"a": [1.1, None, -3.3], "b": [1, 2, 3]}, schema_overrides={"b": pl.Int8})
    narrow = feature_matrix(frame, ["b", "a"])
    wide = feature_matrix(frame, ["b", "a"], widened=True)
    assert narrow.dtype == np.float32 and wide.dtype == np.float64
    assert wide.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(wide, narrow.astype(np.float64))
    assert wide[0, 1] == float(np.float32(1.1)) != 1.1
    assert np.isnan(wide[1, 1]) and wide[2, 0] == 3.0
    with pytest.raises(ValueError, match=r"missing from the frame: \['c'\]"):
        feature_matrix(frame, ["a", "c"], widened=True)


def test_training_rows_keep_every_positive() -> None:
    cfg = load_config(None, ["train.sample.negatives=6", "train.sample.min_rows=0"])
    frame = ranking_frame(3)
    # one user with no positive at all is dropped
    frame = frame.with_columns(
        pl.when(pl.col(C.USER) == 0).then(0).otherwise(pl.col(C.GRADE)).cast(pl.Int8).alias(C.GRADE)
    )
    rows = training_rows(frame, cfg)
    assert 0 not in rows[C.USER].to_list()
    positives = frame.filter(pl.col(C.GRADE) > 0)
    assert rows.filter(pl.col(C.GRADE) > 0).height == positives.height
    negatives = frame.filter((pl.col(C.GRADE) == 0) & (pl.col(C.USER) != 0)).height
    kept = rows.filter(pl.col(C.GRADE) == 0).group_by(C.USER).len()["len"]
    assert kept.max() == 6 and negatives > 6 * kept.len()
    assert rows[C.USER].is_sorted()
    assert training_rows(frame, cfg).equals(rows)  # deterministic


def test_stable_unit_is_uniform_and_fixed() -> None:
    u = stable_unit(np.arange(100_000), seed=0, salt=0)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    assert not np.array_equal(u, stable_unit(np.arange(100_000), seed=1, salt=0))
    # Pinned values: samples, validation users and eval users must be the same on every
    # version and platform (a splitmix64 finalizer, exact in float64).
    assert stable_unit(np.array([0, 1, 2, 12345]), seed=0, salt=0).tolist() == [
        0.0,
        0.3381666012719897,
        0.8586764687735633,
        0.9508810691208035,
    ]
    assert stable_unit(np.array([7]), seed=3, salt=4).tolist() == [0.5321154720912272]


def test_validation_mask_never_empty_with_enough_users() -> None:
    cfg = load_config(None, ["train.valid_fraction=0.0001"])
    users = np.repeat(np.arange(6), 3)
    mask = validation_mask(users, cfg)
    assert mask.sum() == 3 and np.unique(users[mask]).size == 1


@pytest.mark.parametrize("objective", ["lambdarank", "binary"])
def test_compiled_model_scores_like_lightgbm(
    objective: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lleaves' compiled trees give LightGBM's scores (to float64 rounding) on rows with
    missing values, across several scoring blocks, and so the same order."""
    import gbrank.rankers.lightgbm as module

    train = ranking_frame(0).with_columns(
        pl.when(pl.col("f2") > 1.0).then(None).otherwise(pl.col("f2")).alias("f2")
    )
    label = C.GRADE
    if objective == "binary":
        train = train.with_columns((pl.col(C.GRADE) >= 2).cast(pl.Int8).alias("y"))
        label = "y"
    ranker = LightGBMRanker(objective=objective, num_boost_round=60, early_stopping_rounds=0)
    ranker.fit(train, ["f1", "f2"], label)
    test = ranking_frame(1, users=300).with_columns(
        pl.when(pl.col("f1") < -1.5).then(None).otherwise(pl.col("f1")).alias("f1")
    )
    expected = ranker.predict(test)
    monkeypatch.setattr(module, "COMPILED_BLOCK_ROWS", 1000)  # 6 blocks, the last one short
    monkeypatch.setattr(module, "COMPILED_CALL_ROWS", 300)  # calls cut across blocks too
    ranker.compile()
    got = ranker.predict(test)
    assert test["f1"].null_count() > 100
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert np.unique(expected).size > 100  # many distinct scores were compared
    # The order the lists are cut from: identical.
    assert np.array_equal(np.argsort(-got, kind="stable"), np.argsort(-expected, kind="stable"))


def test_a_compile_in_the_background_is_waited_for_and_its_failure_handled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``compile_in_background`` returns at once; the first ``predict`` waits and scores with
    the compiled trees (the same scores as a compile in the foreground). A failed compile is
    raised by that ``predict``, or, with ``fallback``, warned about once while LightGBM
    scores."""
    import threading

    from gbrank.errors import GbrankWarning

    ranker = LightGBMRanker(num_boost_round=30, early_stopping_rounds=0)
    ranker.fit(ranking_frame(0), ["f1", "f2"], C.GRADE)
    test = ranking_frame(1)
    plain = ranker.predict(test)
    release = threading.Event()
    compile_now = LightGBMRanker.compile

    def slow_compile(self: LightGBMRanker, cache_dir: Path | None = None) -> None:
        release.wait(timeout=30)  # held until the caller has gone on
        compile_now(self, cache_dir)

    monkeypatch.setattr(LightGBMRanker, "compile", slow_compile)
    ranker.compile_in_background(None, fallback=False)
    assert ranker.predictor == "lightgbm"  # not compiled yet: the call did not wait
    release.set()
    scores = ranker.predict(test)
    assert ranker.predictor == "lleaves"
    np.testing.assert_allclose(scores, plain, rtol=0, atol=1e-12)

    def broken(self: LightGBMRanker, cache_dir: Path | None = None) -> None:
        raise RuntimeError("LLVM ran out of luck")

    monkeypatch.setattr(LightGBMRanker, "compile", broken)
    ranker.compiled_ = None
    ranker.compile_in_background(None, fallback=False)
    with pytest.raises(RuntimeError, match="out of luck"):
        ranker.predict(test)
    with pytest.raises(RuntimeError, match="out of luck"):  # again: never LightGBM's scores
        ranker.predict(test)
    ranker.compile_in_background(None, fallback=True)
    with pytest.warns(GbrankWarning, match="lleaves failed .*LLVM ran out of luck.*lightgbm"):
        scores = ranker.predict(test)
    assert ranker.predictor == "lightgbm"
    np.testing.assert_array_equal(scores, plain)
    ranker.predict(test)  # warned once: the failure is dealt with


def test_compile_without_lleaves_raises_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from gbrank.rankers.base import compiler_available

    ranker = LightGBMRanker(num_boost_round=5, early_stopping_rounds=0)
    ranker.fit(ranking_frame(0, users=20), ["f1", "f2"], C.GRADE)
    assert compiler_available()
    monkeypatch.setitem(sys.modules, "lleaves", None)
    assert not compiler_available()
    with pytest.raises(ImportError):
        ranker.compile()


def test_compiled_code_is_cached_by_model_and_a_damaged_object_is_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lleaves

    ranker = LightGBMRanker(num_boost_round=30, early_stopping_rounds=0)
    ranker.fit(ranking_frame(0), ["f1", "f2"], C.GRADE)
    test = ranking_frame(1, users=100)
    expected = ranker.predict(test)
    cache = tmp_path / "compiled"
    ranker.compile(cache_dir=cache)
    objects = sorted(cache.glob("*.o"))
    assert len(objects) == 1 and objects[0].with_suffix(".json").exists()
    np.testing.assert_allclose(ranker.predict(test), expected, rtol=0, atol=1e-12)

    calls: list[object] = []
    original = lleaves.Model.compile

    def spy(self: object, cache: object = None, **kwargs: object) -> None:
        calls.append(cache)
        original(self, cache=cache, **kwargs)

    monkeypatch.setattr(lleaves.Model, "compile", spy)
    again = LightGBMRanker.load(ranker.save(tmp_path / "m")[0].with_suffix(""))
    again.compile(cache_dir=cache)  # the same model: loaded from the cache
    assert calls == [str(objects[0])]
    np.testing.assert_allclose(again.predict(test), expected, rtol=0, atol=1e-12)

    objects[0].write_bytes(objects[0].read_bytes()[:100])  # damaged: compiled again, not loaded
    calls.clear()
    again.compile(cache_dir=cache)
    assert len(calls) == 1 and calls[0] != str(objects[0])
    np.testing.assert_allclose(again.predict(test), expected, rtol=0, atol=1e-12)
    assert sorted(cache.glob("*.o")) == objects and objects[0].stat().st_size > 100

    other = LightGBMRanker(num_boost_round=31, early_stopping_rounds=0)
    other.fit(ranking_frame(0), ["f1", "f2"], C.GRADE)
    other.compile(cache_dir=cache)  # another model: another key
    assert len(list(cache.glob("*.o"))) == 2


@pytest.mark.parametrize("cached", [False, True])
def test_eval_compile_cache_decides_whether_compiled_code_is_kept(
    tmp_path: Path, cached: bool
) -> None:
    from gbrank.config import load_config
    from gbrank.pipeline import prepare_scoring

    ranker = LightGBMRanker(num_boost_round=10, early_stopping_rounds=0)
    ranker.fit(ranking_frame(0, users=50), ["f1", "f2"], C.GRADE)
    cfg = load_config(
        None,
        [
            f'run.workspace="{tmp_path}"',
            'eval.predictor="lleaves"',
            f"eval.compile_cache={str(cached).lower()}",
        ],
    )
    assert prepare_scoring(ranker, cfg, 10) == "lleaves"
    assert len(list((tmp_path / "compiled").glob("*.o"))) == (1 if cached else 0)


def test_the_pipeline_imports_no_ranker_backend_until_one_is_used() -> None:
    # generate and features (and a Dask worker building features) never train or score, and
    # loading a config checks no backend: they must not pay for importing LightGBM, XGBoost or
    # what LightGBM pulls in (scikit-learn and pandas when installed).
    import subprocess
    import sys

    code = (
        "import sys, gbrank.pipeline, gbrank.cli\n"
        "from gbrank.config import load_config\n"
        "load_config(None, ['train.backend=\"xgboost\"'])\n"  # a whole config, checked
        "print(sorted(m for m in ('lightgbm', 'xgboost', 'sklearn') if m in sys.modules))\n"
        "from gbrank.rankers import make_ranker\n"
        "make_ranker('lightgbm', 'rank')\n"
        "print('lightgbm' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "True"]
