"""End to end on a small synthetic shop: every stage, from Python and from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from gbrank import columns as C
from gbrank import pipeline
from gbrank.candidates.base import CandidateSource
from gbrank.cli import app
from gbrank.config import Config, dump_toml, load_config
from gbrank.data.synth import SynthConfig, synthesize
from gbrank.errors import ConfigError
from gbrank.rankers.sampling import stable_unit

SHOP = SynthConfig(users=2500, items=800, days=35, seed=3)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shop")
    synthesize(SHOP, out)
    return out


def make_config(shop: Path, workspace: Path, run_id: str = "") -> Config:
    overrides = [
        f'data.events="{shop / "events.parquet"}"',
        f'data.items="{shop / "items.parquet"}"',
        f'run.workspace="{workspace}"',
        "candidates.sources.als.iterations=8",
    ]
    if run_id:
        overrides.append(f'run.run_id="{run_id}"')
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def done(shop: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, dict]:
    """All four stages from Python."""
    cfg = make_config(shop, tmp_path_factory.mktemp("ws"))
    results = {
        "generate": pipeline.generate(cfg),
        "features": pipeline.build_features(cfg),
        "train": pipeline.train(cfg),
        "eval": pipeline.evaluate(cfg),
    }
    return cfg, results


def metric(metrics: pl.DataFrame, model: str, target: str, name: str, k: int | None) -> float:
    row = metrics.filter(
        (pl.col("model") == model)
        & (pl.col("target") == target)
        & (pl.col("metric") == name)
        & (pl.col("k").is_null() if k is None else pl.col("k") == k)
    )
    assert row.height == 1
    return float(row["value"][0])


def test_run_folder_is_complete(done: tuple[Config, dict]) -> None:
    cfg, results = done
    run = results["eval"].run
    for rel in (
        "config.toml",
        "folds.json",
        "data/events.parquet",
        "vocab/users.parquet",
        "candidates/train.parquet",
        "candidates/eval.parquet",
        "candidates/recall.json",
        "features/train.parquet",
        "features/eval.parquet",
        "models/ranker_eval.txt",
        "models/ranker_eval.json",
        "models/ranker_serve.txt",
        "metrics.json",
        "manifest.json",
    ):
        assert run.file(rel).exists(), rel
    manifest = json.loads(run.file("manifest.json").read_text())
    assert set(manifest["stages"]) == {"generate", "features", "train", "eval"}
    assert "metrics.json" in manifest["outputs"]
    assert not list(run.path.rglob("*.tmp"))  # no temporary file left behind
    sidecar = json.loads(run.file("models/ranker_eval.json").read_text())
    features = pl.read_parquet(run.file("features/eval.parquet"))
    assert sidecar["feature_names"] == [
        c
        for c in features.columns
        if c not in (C.USER, C.ITEM, C.GRADE) and not c.startswith("label_")
    ]


def test_metrics_rows_and_two_stage_beats_popularity(done: tuple[Config, dict]) -> None:
    cfg, results = done
    rows = json.loads(results["eval"].run.file("metrics.json").read_text())
    base = {"model", "target", "metric", "k", "value"}
    assert all(set(r) in (base, base | {"ci_low", "ci_high"}) for r in rows)
    ranking = [r for r in rows if r["k"] is not None and not r["metric"].startswith("calib")]
    assert all(
        r["ci_low"] <= r["value"] <= r["ci_high"] for r in ranking if r["value"] == r["value"]
    )
    metrics = results["eval"].metrics
    models = set(metrics["model"])
    assert models == {"ranker", *cfg.candidates.sources, "oracle"}  # a synthetic shop
    for target in ("click", "purchase"):
        ranker = metric(metrics, "ranker", target, "ndcg", 10)
        popularity = metric(metrics, "popularity", target, "ndcg", 10)
        assert ranker > 1.5 * popularity, (target, ranker, popularity)
        best_source = max(metric(metrics, s, target, "ndcg", 10) for s in cfg.candidates.sources)
        assert ranker > best_source, (target, ranker, best_source)


def test_candidate_recall_matches_brute_force(done: tuple[Config, dict]) -> None:
    cfg, results = done
    run = results["eval"].run
    recall = results["generate"].recall
    for fold in ("train", "eval"):
        cands = pl.read_parquet(run.file(f"candidates/{fold}.parquet"))
        labels = pl.read_parquet(run.file(f"labels/{fold}.parquet"))
        for target in ("click", "purchase"):
            positives = {
                (u, i)
                for u, i, y in labels.select(C.USER, C.ITEM, C.label_col(target)).iter_rows()
                if y == 1
            }
            for source in ("popularity", "als", "itemknn_cosine", "union"):
                if source == "union":
                    proposed = set(cands.select(C.USER, C.ITEM).iter_rows())
                else:
                    proposed = set(
                        cands.filter(pl.col(C.rank_col(source)).is_not_null())
                        .select(C.USER, C.ITEM)
                        .iter_rows()
                    )
                others = set()
                for other in cfg.candidates.sources:
                    if other != source and source != "union":
                        others |= set(
                            cands.filter(pl.col(C.rank_col(other)).is_not_null())
                            .select(C.USER, C.ITEM)
                            .iter_rows()
                        )
                row = recall.filter(
                    (pl.col("fold") == fold)
                    & (pl.col("target") == target)
                    & (pl.col("source") == source)
                ).row(0, named=True)
                hits = positives & proposed
                assert row["recall"] == pytest.approx(len(hits) / len(positives))
                assert row["unique_recall"] == pytest.approx(len(hits - others) / len(positives))
                assert row["positive_rate"] == pytest.approx(len(hits) / len(proposed))


def test_candidates_only_from_history(done: tuple[Config, dict]) -> None:
    """Sources never propose an item first seen at or after the fold's as_of."""
    cfg, results = done
    run = results["eval"].run
    events = pl.read_parquet(run.file("data/events.parquet"))
    folds = json.loads(run.file("folds.json").read_text())
    for fold in ("train", "eval"):
        as_of = pl.lit(folds[fold]["as_of"]).str.to_datetime(time_unit="ms")
        known = events.filter(pl.col(C.TS) < as_of).select(C.ITEM).unique()
        cands = pl.read_parquet(run.file(f"candidates/{fold}.parquet"))
        assert cands.join(known, on=C.ITEM, how="anti").is_empty(), fold


def test_cli_stages_reproduce_python_metrics(
    done: tuple[Config, dict], shop: Path, tmp_path: Path
) -> None:
    """The four CLI commands with a config file give the same metrics (same seed)."""
    cfg, results = done
    config = tmp_path / "gbrank.toml"
    # The same settings as the Python run, written as TOML, in another workspace.
    config.write_text(dump_toml(make_config(shop, tmp_path / "ws")))
    runner = CliRunner()
    for stage in ("generate", "features", "train", "eval"):
        result = runner.invoke(app, [stage, "--config", str(config)])
        assert result.exit_code == 0, (stage, result.output)
    assert "ranker" in result.output and "ndcg@10" in result.output
    cli_run = next((tmp_path / "ws" / "runs").iterdir())
    cli_rows = json.loads((cli_run / "metrics.json").read_text())
    py_rows = json.loads(results["eval"].run.file("metrics.json").read_text())
    # Same rows and values; Polars' parallel sums may differ in the last bit.
    assert [{**r, "value": None} for r in cli_rows] == [{**r, "value": None} for r in py_rows]
    assert [r["value"] for r in cli_rows] == pytest.approx([r["value"] for r in py_rows], rel=1e-9)
    # The ranker itself is bit-identical.
    for name in ("ranker_eval.txt", "ranker_serve.txt"):
        assert (cli_run / "models" / name).read_bytes() == results["eval"].run.file(
            f"models/{name}"
        ).read_bytes()


def test_xgboost_backend_trains_evaluates_and_recommends(
    done: tuple[Config, dict], shop: Path, tmp_path: Path
) -> None:
    """train.backend = "xgboost" on the same candidates and features: its models are XGBoost
    files, scored by XGBoost, and the two-stage model still beats every single source."""
    import shutil

    cfg, results = done
    run = results["generate"].run
    shutil.copytree(run.file(), tmp_path / "runs" / run.id)
    overrides = [
        f'data.events="{shop / "events.parquet"}"',
        f'data.items="{shop / "items.parquet"}"',
        f'run.workspace="{tmp_path}"',
        f'run.run_id="{run.id}"',
        "candidates.sources.als.iterations=8",
        'train.backend="xgboost"',
    ]
    xgb_cfg = load_config(None, overrides)
    trained = pipeline.train(xgb_cfg)
    models = trained.run.file("models")
    assert sorted(p.name for p in models.iterdir()) == [
        "importance.json",
        "ranker_eval.json",
        "ranker_eval.ubj",
        "ranker_serve.json",
        "ranker_serve.ubj",
    ]
    assert json.loads((models / "ranker_serve.json").read_text())["backend"] == "xgboost"
    result = pipeline.evaluate(xgb_cfg)
    assert result.run.progress()["eval"]["predictor"] == "xgboost"
    for target in ("click", "purchase"):
        ranker = metric(result.metrics, "ranker", target, "ndcg", 10)
        best_source = max(
            metric(result.metrics, s, target, "ndcg", 10) for s in cfg.candidates.sources
        )
        assert ranker > best_source, (target, ranker, best_source)
    recs = pipeline.recommend(xgb_cfg, k=5).recs
    assert recs.group_by("user_id").len()["len"].eq(5).all()
    lleaves = load_config(None, [*overrides, 'eval.predictor="lleaves"'])
    with pytest.raises(ConfigError, match="LightGBM models only"):
        pipeline.evaluate(lleaves)


HEADS = ["ranker", "ctr", "cvr", "ranker_purchase"]


def heads_config(shop: Path, workspace: Path, run_id: str, *extra: str) -> Config:
    return load_config(
        None,
        [
            f'data.events="{shop / "events.parquet"}"',
            f'data.items="{shop / "items.parquet"}"',
            f'run.workspace="{workspace}"',
            f'run.run_id="{run_id}"',
            "candidates.sources.als.iterations=8",
            f"train.heads={json.dumps(HEADS)}",
            "blend.weights.mix={ranker = 0.5, ctr = 0.25, cvr = 0.25}",
            "blend.weights.alone={ranker = 2.0}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def heads_run(
    done: tuple[Config, dict], shop: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Config, pipeline.TrainResult, pipeline.EvalResult]:
    """The CTR, CVR and a per-target head beside the ranker, on ``done``'s features."""
    import shutil

    _, results = done
    run = results["generate"].run
    workspace = tmp_path_factory.mktemp("heads")
    shutil.copytree(run.file(), workspace / "runs" / run.id)
    cfg = heads_config(shop, workspace, run.id)
    return cfg, pipeline.train(cfg), pipeline.evaluate(cfg)


def test_every_head_and_blend_is_evaluated(
    heads_run: tuple[Config, pipeline.TrainResult, pipeline.EvalResult],
) -> None:
    """The eval table lists every head and blend beside the sources; the binary heads have AUC,
    log loss and a calibration table over exactly the rows they learn from."""
    cfg, trained, result = heads_run
    metrics = result.metrics
    models = set(metrics["model"])
    assert models == {*HEADS, "ctr_cvr", "mix", "alone", *cfg.candidates.sources, "oracle"}
    for model in [*HEADS, "ctr_cvr", "mix"]:
        for target in ("click", "purchase"):
            best_source = max(
                metric(metrics, s, target, "ndcg", 10) for s in cfg.candidates.sources
            )
            value = metric(metrics, model, target, "ndcg", 10)
            if model in ("ranker", "ctr", "mix") or (model != "cvr" and target == "purchase"):
                assert value > 0.9 * best_source, (model, target, value, best_source)
    # A blend of one head orders each user's candidates exactly as that head does.
    for target in ("click", "purchase"):
        for name in ("ndcg", "recall"):
            assert metric(metrics, "alone", target, name, 10) == metric(
                metrics, "ranker", target, name, 10
            )
    features = pl.read_parquet(trained.run.file("features/eval.parquet"))
    clicked = int(features[C.label_col("click")].sum())
    for head, target, rows in (("ctr", "click", features.height), ("cvr", "purchase", clicked)):
        auc = metric(metrics, head, target, "auc", None)
        assert 0.6 < auc <= 1.0
        assert metric(metrics, head, target, "logloss", None) > 0
        counts = metrics.filter(
            (pl.col("model") == head) & (pl.col("metric") == "calibration_count")
        )["value"]
        assert counts.sum() == rows
    # The CVR head learns from the clicked rows of the training sample.
    sidecar = json.loads(trained.run.file("models/cvr_eval.json").read_text())
    train_rows = pl.read_parquet(trained.run.file("features/train.parquet"))
    in_valid = pl.Series(pipeline.validation_mask(train_rows[C.USER].to_numpy(), cfg))
    learned = train_rows.filter(~in_valid & (pl.col(C.label_col("click")) == 1)).height
    assert sidecar["data_fingerprint"].startswith(f"{learned}x")
    assert set(trained.heads) == set(HEADS)
    importance = json.loads(trained.run.file("models/importance.json").read_text())
    assert set(importance) == set(HEADS)


@pytest.mark.parametrize("serve", ["ranker", "ctr", "ctr_cvr", "mix", "alone"])
def test_recommend_serves_each_blend(
    heads_run: tuple[Config, pipeline.TrainResult, pipeline.EvalResult],
    serve: str,
    tmp_path: Path,
) -> None:
    cfg, _, _ = heads_run
    served = heads_config(
        Path(cfg.data.events).parent,
        Path(cfg.run.workspace),
        cfg.run.run_id,
        f'blend.serve="{serve}"',
    )
    recs = pipeline.recommend(served, k=5).recs
    assert recs.height > 0 and recs.group_by("user_id").len()["len"].eq(5).all()
    ranker = pipeline.recommend(cfg, k=5).recs  # blend.serve = "ranker"
    same = recs.select("user_id", "item_id").equals(ranker.select("user_id", "item_id"))
    assert same == (serve in ("ranker", "alone"))
    # The CLI writes the same lists.
    config = tmp_path / "gbrank.toml"
    config.write_text(dump_toml(served))
    out = tmp_path / "recs.csv"
    result = CliRunner().invoke(
        app, ["recommend", "--config", str(config), "--k", "5", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    written = pl.read_csv(out, schema_overrides={"user_id": recs["user_id"].dtype})
    assert written.select("user_id", "item_id").equals(recs.select("user_id", "item_id"))


def test_recommend_k_distinct_items_with_raw_ids(
    done: tuple[Config, dict], shop: Path, tmp_path: Path
) -> None:
    cfg, _ = done
    result = pipeline.recommend(cfg, k=20)
    recs = result.recs
    users = pl.read_parquet(shop / "events.parquet")["user_id"].unique()
    items = pl.read_parquet(shop / "items.parquet")["item_id"]
    assert recs["user_id"].n_unique() == users.len()
    per_user = recs.group_by("user_id").agg(
        pl.col("item_id").n_unique().alias("distinct"),
        pl.len().alias("rows"),
        pl.col("rank").min().alias("lo"),
        pl.col("rank").max().alias("hi"),
    )
    assert (per_user["distinct"] == 20).all() and (per_user["rows"] == 20).all()
    assert (per_user["lo"] == 1).all() and (per_user["hi"] == 20).all()
    assert recs["item_id"].is_in(items.implode()).all()
    # a list of users with one unknown id: the unknown one gets popularity
    wanted = tmp_path / "users.csv"
    known = users.sort().head(3).to_list()
    wanted.write_text("user_id\n" + "\n".join(str(u) for u in [*known, 987654321]) + "\n")
    out = tmp_path / "recs.csv"
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "recommend",
            "--k",
            "5",
            "--users",
            str(wanted),
            "--out",
            str(out),
            "--workspace",
            cfg.run.workspace,
            "--set",
            f'data.events="{shop / "events.parquet"}"',
            "--set",
            f'data.items="{shop / "items.parquet"}"',
            "--set",
            "candidates.sources.als.iterations=8",
        ],
    )
    assert res.exit_code == 0, res.output
    written = pl.read_csv(out)
    assert sorted(written["user_id"].unique().to_list()) == sorted([*known, 987654321])
    assert written.height == 4 * 5
    cold = written.filter(pl.col("user_id") == 987654321)
    assert cold["rank"].to_list() == [1, 2, 3, 4, 5]


def test_sampled_training_rows_carry_full_list_features(done: tuple[Config, dict]) -> None:
    """The train fold's features are built for the training sample only; each value must equal
    what the full candidate list gives (the per-user score percentiles included)."""
    from polars.testing import assert_frame_equal

    from gbrank.data.split import history
    from gbrank.features.builders import FeatureBuilder
    from gbrank.runs import Run

    cfg, results = done
    run: Run = results["features"].run
    sampled = pl.read_parquet(run.file("features/train.parquet"))
    cands = pl.read_parquet(run.file("candidates/train.parquet"))
    assert cfg.train.sample.negatives and sampled.height < cands.height
    per_user = sampled.filter(pl.col(C.GRADE) == 0).group_by(C.USER).len()["len"]
    assert per_user.max() <= cfg.train.sample.negatives
    _, verified = pipeline.verify_run(cfg, "features")
    data = pipeline._load_run_data(verified)
    fold = data.folds["train"]
    builder = FeatureBuilder.from_config(
        cfg, history(data.events, fold), fold.as_of, items=data.item_attrs, users=data.user_attrs
    )
    full = builder.build(cands)
    expected = full.join(sampled.select(C.USER, C.ITEM), on=[C.USER, C.ITEM], how="semi")
    assert_frame_equal(
        sampled.select(expected.columns).sort(C.USER, C.ITEM), expected.sort(C.USER, C.ITEM)
    )


def test_eval_in_batches_gives_the_same_metrics(done: tuple[Config, dict], shop: Path) -> None:
    """Eval streams the features file in batches of whole users and keeps only top-K lists:
    any batch size gives the metrics of one pass over everything."""
    cfg, results = done
    run_id = results["eval"].run.id
    workspace = Path(cfg.run.workspace)
    for batch_rows in (997, 10_000_000):
        small = load_config(
            None,
            [
                f'data.events="{shop / "events.parquet"}"',
                f'data.items="{shop / "items.parquet"}"',
                f'run.workspace="{workspace}"',
                "candidates.sources.als.iterations=8",
                f'run.run_id="{run_id}"',
                f"eval.batch_rows={batch_rows}",
            ],
        )
        again = pipeline.evaluate(small).metrics
        before = results["eval"].metrics
        assert again.drop("value").equals(before.drop("value"))
        # Equal up to the order of Polars' parallel float sums (seen: 5.6e-17).
        assert (again["value"] - before["value"]).abs().max() < 1e-12, batch_rows


def test_one_shard_and_four_shards_give_identical_results(
    done: tuple[Config, dict], shop: Path, tmp_path: Path
) -> None:
    """Features built in 4 shards, eval read in small batches, recommend served in 4 user
    batches of 4 feature shards each: the same metrics and the same lists as one shard."""
    cfg, results = done
    one = pipeline.recommend(cfg, k=10).recs
    n_users = one["user_id"].n_unique()
    sharded = load_config(
        None,
        [
            f'data.events="{shop / "events.parquet"}"',
            f'data.items="{shop / "items.parquet"}"',
            f'run.workspace="{tmp_path}"',
            "candidates.sources.als.iterations=8",
            "features.shards=4",
            "eval.batch_rows=5000",
            f"candidates.batch_users={n_users // 4 + 1}",
        ],
    )
    pipeline.generate(sharded)
    features = pipeline.build_features(sharded)
    pipeline.train(sharded)
    metrics = pipeline.evaluate(sharded).metrics
    progress = json.loads(features.run.file("progress.json").read_text())
    assert progress["features"]["shards"] == {"train": 4, "eval": 4}
    assert features.rows["eval"] > 4 * 5000  # eval reads several batches
    assert_frame_equal(metrics, results["eval"].metrics)
    four = pipeline.recommend(sharded, k=10).recs
    assert_frame_equal(four, one)
    out = tmp_path / "recs.parquet"
    written = pipeline.write_recommendations(sharded, 10, out)
    assert written.rows == one.height and written.path == out
    assert_frame_equal(pl.read_parquet(out), one)


def test_user_budgets_limit_each_labelled_fold(
    done: tuple[Config, dict], shop: Path, tmp_path: Path
) -> None:
    """train.sample.users and eval.users: the folds are made for that many label-window users,
    the ones with the smallest stable hash; the eval metrics count them alone."""
    cfg, results = done
    full = json.loads(results["generate"].run.file("progress.json").read_text())
    labelled = full["generate"]["users"]
    budget = {
        "train": labelled["train"]["labelled"] // 3,
        "eval": labelled["eval"]["labelled"] // 4,
    }
    small = load_config(
        None,
        [
            f'data.events="{shop / "events.parquet"}"',
            f'data.items="{shop / "items.parquet"}"',
            f'run.workspace="{tmp_path}"',
            "candidates.sources.als.iterations=8",
            f"train.sample.users={budget['train']}",
            f"eval.users={budget['eval']}",
        ],
    )
    run = pipeline.generate(small).run
    progress = json.loads(run.file("progress.json").read_text())
    for fold, salt in (("train", 3), ("eval", 4)):
        every = pl.read_parquet(results["generate"].run.file(f"labels/{fold}.parquet"))
        assert progress["generate"]["users"][fold] == {
            "labelled": labelled[fold]["labelled"],
            "kept": budget[fold],
        }
        users = every[C.USER].unique().sort().to_numpy()
        unit = stable_unit(users, small.run.seed, salt)
        chosen = np.sort(users[np.argsort(unit, kind="stable")[: budget[fold]]])
        labels = pl.read_parquet(run.file(f"labels/{fold}.parquet"))
        cands = pl.read_parquet(run.file(f"candidates/{fold}.parquet"))
        assert labels[C.USER].unique().sort().to_list() == chosen.tolist()
        assert set(cands[C.USER].unique().to_list()) <= set(chosen.tolist())
        # The kept users' labels are untouched.
        assert_frame_equal(labels, every.filter(pl.col(C.USER).is_in(chosen)))
    pipeline.build_features(small)
    pipeline.train(small)
    result = pipeline.evaluate(small)
    assert 0 < result.users["click"] <= budget["eval"]
    assert result.users["click"] < results["eval"].users["click"]


def test_every_folds_fitted_sources_are_kept(done: tuple[Config, dict]) -> None:
    """generate keeps each fold's fitted sources: loaded back, they propose exactly the
    candidates of the fold's file."""
    from gbrank.candidates.state import load_source

    cfg, results = done
    run = results["generate"].run
    budgets = json.loads(run.file("candidates/budgets.json").read_text())
    for fold in ("train", "eval"):
        cands = pl.read_parquet(run.file(f"candidates/{fold}.parquet"))
        users = pl.read_parquet(run.file(f"labels/{fold}.parquet"))[C.USER].unique().sort()
        for name in cfg.candidates.sources:
            source = load_source(run.file(f"sources/{fold}/{name}.npz"))
            proposed = source.generate(users.to_numpy(), budgets[name])
            kept = cands.filter(pl.col(C.rank_col(name)).is_not_null())
            assert_frame_equal(
                proposed.select(C.USER, C.ITEM).sort(C.USER, C.ITEM),
                kept.select(C.USER, C.ITEM).sort(C.USER, C.ITEM),
            )
        assert run.file(f"sources/inference/{name}.npz").exists()


def test_each_folds_als_starts_from_the_previous_folds(done: tuple[Config, dict]) -> None:
    """The eval fold's ALS continues from the train fold's saved factors, the inference fold's
    from the eval fold's (``warm_iterations`` sweeps on the fold's own, longer history)."""
    from gbrank.candidates.state import load_source
    from gbrank.data.split import history

    cfg, results = done
    run = results["generate"].run
    _, verified = pipeline.verify_run(cfg, "features")
    data = pipeline._load_run_data(verified)

    def unfitted(name: str) -> CandidateSource:
        return next(source for source, _ in pipeline._sources(cfg) if source.name == name)

    for fold, before in (("eval", "train"), ("inference", "eval")):
        saved = load_source(run.file(f"sources/{fold}/als.npz"))
        redo = unfitted("als")
        assert redo.warm_start(load_source(run.file(f"sources/{before}/als.npz")))
        hist = history(data.events, data.folds[fold])
        pipeline.fit_source(redo, hist, data, data.folds[fold].as_of)
        np.testing.assert_array_equal(redo.item_factors_, saved.item_factors_)
        np.testing.assert_array_equal(redo.user_factors_, saved.user_factors_)
        cold = unfitted("als")
        pipeline.fit_source(cold, hist, data, data.folds[fold].as_of)
        assert not np.allclose(cold.item_factors_, saved.item_factors_)


def test_similarity_features_come_from_the_folds_sources(
    shop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the similarity family on, features and recommend take ALS factors and
    co-visitation weights from the saved sources: the family fits and counts nothing."""
    from gbrank.candidates.state import load_source
    from gbrank.features.families import similarity

    def no_refit(*args: object, **kwargs: object) -> None:
        raise AssertionError("the similarity family fitted its own model")

    monkeypatch.setattr(similarity, "_als_factors", no_refit)
    monkeypatch.setattr(similarity, "_covisit_table", no_refit)
    cfg = load_config(
        None,
        [
            f'data.events="{shop / "events.parquet"}"',
            f'data.items="{shop / "items.parquet"}"',
            f'run.workspace="{tmp_path}"',
            "candidates.sources.als.iterations=8",
            'features.families=["user", "item", "source", "similarity"]',
        ],
    )
    run = pipeline.generate(cfg).run
    pipeline.build_features(cfg)
    frame = pl.read_parquet(run.file("features/eval.parquet"))
    als = load_source(run.file("sources/eval/als.npz"))
    warm = frame.filter(pl.col("sim_als_user").is_not_null()).head(200)
    users, items = warm[C.USER].to_numpy(), warm[C.ITEM].to_numpy()
    dots = np.einsum("rk,rk->r", als.user_factors_[users], als.item_factors_[items])
    np.testing.assert_allclose(warm["sim_als_user"].to_numpy(), dots, rtol=1e-4, atol=1e-5)
    assert frame["sim_covisit_max"].drop_nulls().gt(0).any()
    pipeline.train(cfg)
    pipeline.evaluate(cfg)
    recs = pipeline.recommend(cfg, k=5).recs
    assert recs.height > 0


def test_compiled_predictor_gives_the_same_metrics_and_lists(
    done: tuple[Config, dict], shop: Path, tmp_path: Path
) -> None:
    """eval.predictor = "lleaves" (the trees compiled to native code) against LightGBM's own
    predictor on one run: the same metrics and the same recommendations."""
    import shutil

    cfg, results = done
    source = results["eval"].run.path
    shutil.copytree(source, tmp_path / "runs" / source.name)

    def config(predictor: str) -> Config:
        return load_config(
            None,
            [
                f'data.events="{shop / "events.parquet"}"',
                f'data.items="{shop / "items.parquet"}"',
                f'run.workspace="{tmp_path}"',
                f'run.run_id="{source.name}"',
                "candidates.sources.als.iterations=8",
                f'eval.predictor="{predictor}"',
            ],
        )

    plain, compiled = config("lightgbm"), config("lleaves")
    base = pipeline.evaluate(plain)
    fast = pipeline.evaluate(compiled)
    record = json.loads(fast.run.file("progress.json").read_text())["eval"]
    assert record["predictor"] == "lleaves"
    assert_frame_equal(fast.metrics.drop("value"), base.metrics.drop("value"))
    np.testing.assert_allclose(fast.metrics["value"], base.metrics["value"], rtol=0, atol=1e-12)
    assert_frame_equal(base.metrics, results["eval"].metrics)  # the default here: LightGBM
    recommender = pipeline.Recommender(compiled, k=10)
    assert recommender.models.predictor == "lleaves"
    lists = pipeline.recommend(compiled, k=10).recs
    assert_frame_equal(
        lists.drop("score"), pipeline.recommend(plain, k=10).recs.drop("score"), check_exact=True
    )


def test_predictor_choice(done: tuple[Config, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    cfg, _ = done
    ranker = pipeline.make_ranker(cfg, num_boost_round=3, early_stopping_rounds=0)
    frame = pl.DataFrame(
        {
            C.USER: np.repeat(np.arange(10, dtype=np.int32), 5),
            C.ITEM: np.tile(np.arange(5, dtype=np.int32), 10),
            "f": np.arange(50, dtype=np.float32),
            C.GRADE: np.tile(np.array([0, 1, 0, 2, 0], dtype=np.int8), 10),
        }
    )
    ranker.fit(frame, ["f"], C.GRADE)

    def choose(predictor: str, rows: int) -> str:
        chosen = load_config(None, [f'eval.predictor="{predictor}"'])
        return pipeline.prepare_scoring(ranker, chosen, rows)

    assert choose("auto", pipeline.COMPILE_MIN_ROWS - 1) == "lightgbm"
    assert choose("lightgbm", 10**9) == "lightgbm"
    assert choose("auto", pipeline.COMPILE_MIN_ROWS) == "lleaves"
    assert choose("lleaves", 1) == "lleaves"
    monkeypatch.setitem(sys.modules, "lleaves", None)  # not installed
    assert choose("auto", 10**9) == "lightgbm"
    with pytest.raises(ConfigError, match="lleaves cannot be imported"):
        choose("lleaves", 1)
    with pytest.raises(ConfigError, match="eval.predictor must be one of"):
        load_config(None, ['eval.predictor="onnx"'])
