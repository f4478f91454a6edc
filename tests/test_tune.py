"""``gbrank tune``: the study, its validation split, pruning, storage and resume, the best
config and the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
import pytest
from shops import shop_config, shop_events
from typer.testing import CliRunner

from gbrank import columns as C
from gbrank import pipeline, runner
from gbrank import tune as tuning
from gbrank.candidates import state
from gbrank.cli import app
from gbrank.config import Config, load_config
from gbrank.errors import EXIT_USAGE, ConfigError
from gbrank.features.labels import relevant_items
from gbrank.rankers.lightgbm import LightGBMRanker
from gbrank.rankers.xgboost import XGBoostRanker
from gbrank.runs import STAGES

ROOT = Path(__file__).resolve().parents[1]
cli = CliRunner()


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shop_events(tmp_path_factory, users=400, items=150, seed=2)


def make_cfg(workspace: Path, events: Path, *overrides: str) -> Config:
    quick = ("train.num_boost_round=30", "eval.bootstrap=0", "eval.report=false")
    return shop_config(workspace, events, *quick, *overrides)


def trials_of(cfg: Config) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=tuning.study_name(cfg), storage=tuning.storage_url(cfg))
    return study.get_trials(deepcopy=False)


def test_ranker_trials_reuse_upstream_and_never_read_the_eval_fold(
    tmp_path: Path, events: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_cfg(tmp_path / "ws", events, "tune.trials=4")
    pipeline.generate(cfg)
    pipeline.build_features(cfg)

    def boom(cfg: Config) -> None:
        raise AssertionError("a ranker-only trial recomputed an upstream stage")

    for stage in STAGES:
        monkeypatch.setitem(runner.STAGE_FUNCTIONS, stage, boom)
    # Every file the study loads (the stage records' hash checks read bytes, never frames).
    read: list[str] = []

    def spy(load: Any) -> Any:
        def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
            read.append(str(path))
            return load(path, *args, **kwargs)

        return wrapper

    for name in ("read_parquet", "scan_parquet", "read_parquet_schema"):
        monkeypatch.setattr(pl, name, spy(getattr(pl, name)))
    monkeypatch.setattr(state, "load_source", spy(state.load_source))
    monkeypatch.setattr(np, "load", spy(np.load))
    result = tuning.tune(cfg)
    assert result.trials == 4 and result.ran == 4
    runs = str(tmp_path / "ws" / "runs")
    loaded = [Path(r).relative_to(runs).as_posix() for r in read if r.startswith(runs)]
    assert "features/train.parquet" in {p.split("/", 1)[1] for p in loaded}, loaded
    assert not [r for r in loaded if "eval" in r], loaded
    states = [t.state for t in trials_of(cfg)]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 1 and len(states) == 4
    # The held-out users' full lists were built once and kept.
    assert len(list((tmp_path / "ws" / "tune" / "valid").glob("*.parquet"))) == 1
    summary = tuning.read_summary(cfg.run.workspace, result.study)
    assert summary is not None and summary["trials"][0]["baseline"]
    assert summary["best"]["value"] == max(
        t["value"] for t in summary["trials"] if t["value"] is not None
    )
    assert summary["best"]["value"] >= summary["baseline"]


def _brute_ndcg(scores: pl.DataFrame, labels: pl.DataFrame, k: int) -> float:
    """Binary-relevance NDCG@k, one user at a time, over every user with a positive."""
    positives: dict[int, set[int]] = {}
    for user, item in relevant_items(labels, "purchase").iter_rows():
        positives.setdefault(user, set()).add(item)
    values = []
    for user, items in positives.items():
        mine = scores.filter(pl.col(C.USER) == user).sort(["_s", C.ITEM], descending=[True, False])
        ranked = mine[C.ITEM].to_list()[:k]
        dcg = sum(1 / np.log2(i + 2) for i, item in enumerate(ranked) if item in items)
        idcg = sum(1 / np.log2(i + 2) for i in range(min(len(items), k)))
        values.append(dcg / idcg)
    return float(np.mean(values))


def test_trial_zero_is_the_config_scored_like_a_brute_force_ndcg(
    tmp_path: Path, events: Path
) -> None:
    cfg = make_cfg(tmp_path / "ws", events, "tune.trials=1")
    result = tuning.tune(cfg)
    with_lock = tuning.WorkspaceLock(cfg.run.workspace, "test")
    with with_lock:
        data = tuning.load_tune_data(cfg)
    heads = tuning.fit_heads(cfg, data)
    value = tuning.validation_value(cfg, data, heads)
    assert value == pytest.approx(result.baseline_value, abs=1e-12)  # deterministic refit
    scored = data.lists.select(C.USER, C.ITEM).with_columns(
        pl.Series("_s", heads["ranker"].predict(data.lists))
    )
    assert value == pytest.approx(_brute_ndcg(scored, data.labels, cfg.promote.k), abs=1e-9)
    # Held-out users: the train fold's labelled users below the validation hash, none else.
    users = set(data.labels[C.USER].unique().to_list())
    assert set(data.early[C.USER].unique().to_list()) <= users
    assert not users & set(data.fit[C.USER].unique().to_list())
    assert set(data.lists[C.USER].unique().to_list()) <= users


def test_best_config_runs_with_train_and_run_and_the_report_shows_the_study(
    tmp_path: Path, events: Path
) -> None:
    root = tmp_path
    config = root / "gbrank.toml"
    config.write_text(
        f'[data]\nevents = "{events}"\n[run]\nworkspace = "{root / "ws"}"\n'
        "[train]\nnum_boost_round = 30\n[eval]\nbootstrap = 0\n"
    )
    done = cli.invoke(app, ["tune", "-c", str(config), "--trials", "3", "--study", "s1"])
    assert done.exit_code == 0, done.output
    assert "tune: trial 0 complete" in done.output and "best config" in done.output
    best = root / "ws" / "tune" / "s1" / "best.toml"
    tuned = load_config(best)
    summary = json.loads((root / "ws" / "tune" / "s1" / "study.json").read_text())
    params = summary["best"]["params"]
    for key, value in params.items():
        assert tuned.train.params[key] == value
    assert tuned.tune.study == "s1" and tuned.run.run_id == ""
    done = cli.invoke(app, ["train", "-c", str(best)])  # generate and features are linked
    assert done.exit_code == 0, done.output
    run = pipeline.open_run(tuned)
    sidecar = json.loads(run.file("models/ranker_eval.json").read_text())
    for key, value in params.items():
        assert sidecar["backend_params"][key] == value
    done = cli.invoke(app, ["run", "-c", str(best)])
    assert done.exit_code in (0, 3), done.output
    page = run.file("report.html").read_text()
    assert "data-plot='tune_history'" in page and "Study s1" in page
    own = (root / "ws" / "tune" / "s1" / "report.html").read_text()
    assert "data-plot='tune_importance'" in own


def test_seeded_studies_repeat_and_resume_does_not_replay(tmp_path: Path, events: Path) -> None:
    first = make_cfg(tmp_path / "ws", events, "tune.trials=3", 'tune.study="a"')
    second = make_cfg(tmp_path / "ws", events, "tune.trials=3", 'tune.study="b"')
    tuning.tune(first)
    tuning.tune(second)
    a, b = trials_of(first), trials_of(second)
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.value for t in a] == [t.value for t in b]
    more = make_cfg(tmp_path / "ws", events, "tune.trials=5", 'tune.study="a"')
    result = tuning.tune(more)
    assert result.trials == 5 and result.ran == 2
    resumed = trials_of(more)
    assert [t.params for t in resumed[:3]] == [t.params for t in a]
    assert resumed[3].params not in [t.params for t in a]


def test_a_killed_study_resumes_with_its_finished_trials(tmp_path: Path, events: Path) -> None:
    config = tmp_path / "gbrank.toml"
    config.write_text(
        f'[data]\nevents = "{events}"\n[run]\nworkspace = "{tmp_path / "ws"}"\n'
        '[train]\nnum_boost_round = 30\n[tune]\nstudy = "k"\n'
    )
    cfg = load_config(config)
    command = [sys.executable, "-m", "gbrank.cli", "tune", "-c", str(config)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [*command, "--trials", "50"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 240
    finished: list[optuna.trial.FrozenTrial] = []
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            trials = trials_of(cfg)
        except KeyError:  # the study is not created yet
            continue
        finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        if len(finished) >= 2 and running:
            break
    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = trials_of(cfg)
    kept = [(t.number, t.params, t.value) for t in before if t.state.is_finished()]
    assert len(kept) >= 2 and before[-1].state == optuna.trial.TrialState.RUNNING
    target = len(kept) + 2
    done = subprocess.run(
        [*command, "--trials", str(target)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    after = trials_of(cfg)
    assert [(t.number, t.params, t.value) for t in after[: len(kept)]] == kept
    killed = after[len(kept)]
    assert killed.state == optuna.trial.TrialState.FAIL and killed.user_attrs["interrupted"]
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert sum(t.state in states for t in after) == target


def test_pruning_goes_through_the_training_callback(
    tmp_path: Path, events: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number >= 1)
    cfg = make_cfg(tmp_path / "ws", events, "tune.trials=3", "tune.prune_after_rounds=0")
    tuning.tune(cfg)
    trials = trials_of(cfg)
    assert trials[0].state == optuna.trial.TrialState.COMPLETE  # the config is never pruned
    for trial in trials[1:]:
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert trial.last_step == tuning.REPORT_EVERY  # the first report stopped it


@pytest.mark.parametrize("cls", [LightGBMRanker, XGBoostRanker])
def test_monitor_sees_every_round_and_its_exception_stops_training(cls: type) -> None:
    rng = np.random.default_rng(0)
    n = 60 * 12
    frame = pl.DataFrame(
        {
            C.USER: np.repeat(np.arange(60, dtype=np.int32), 12),
            C.ITEM: np.tile(np.arange(12, dtype=np.int32), 60),
            "f": rng.normal(size=n).astype(np.float32),
        }
    ).with_columns((pl.col("f") > 0.8).cast(pl.Int8).alias(C.GRADE))
    seen: list[tuple[int, float]] = []

    class Stop(Exception):
        pass

    def monitor(rounds: int, value: float) -> None:
        seen.append((rounds, value))
        if rounds == 7:
            raise Stop

    ranker = cls(num_boost_round=50, early_stopping_rounds=50, label_gain=[0, 1])
    with pytest.raises(Stop):
        ranker.fit(frame, ["f"], C.GRADE, valid=frame, monitor=monitor)
    assert [r for r, _ in seen] == list(range(1, 8))
    assert all(0.0 <= v <= 1.0 for _, v in seen)  # NDCG
    assert ranker.monitor is None


def test_candidate_trials_get_runs_of_their_own(tmp_path: Path, events: Path) -> None:
    cfg = make_cfg(
        tmp_path / "ws",
        events,
        "tune.trials=2",
        'tune.space=["candidates"]',
        'run.run_id="base"',
    )
    runner.run_pipeline(cfg, gate=False)
    base = pipeline.open_run(cfg)
    hashes = {stage: base.record(stage)["outputs"] for stage in ("generate", "features")}
    result = tuning.tune(cfg)
    assert result.trials == 2
    assert {s: base.record(s)["outputs"] for s in hashes} == hashes  # the base run untouched
    trials = trials_of(cfg)
    drawn = trials[1]
    assert any(key.endswith(".n") for key in drawn.params)
    assert drawn.user_attrs["run"] != "base"
    other = pipeline.run_folder(cfg.run.workspace, drawn.user_attrs["run"])
    assert other.record("features")["outputs"]


def test_bad_tune_settings_are_config_errors(tmp_path: Path, events: Path) -> None:
    with pytest.raises(ConfigError, match="tune.space"):
        make_cfg(tmp_path / "ws", events, 'tune.space=["rankr"]')
    with pytest.raises(ConfigError, match="weighted"):
        make_cfg(tmp_path / "ws", events, 'tune.space=["blend"]')
    with pytest.raises(ConfigError, match="tune.trials"):
        make_cfg(tmp_path / "ws", events, "tune.trials=0")
    done = cli.invoke(
        app,
        ["tune", "--events", str(events), "-w", str(tmp_path / "ws"), "--space", "nope"],
    )
    assert done.exit_code == EXIT_USAGE and "unknown space 'nope'" in done.output


def test_xgboost_studies_search_its_own_parameters(tmp_path: Path, events: Path) -> None:
    cfg = make_cfg(tmp_path / "ws", events, "tune.trials=2", 'train.backend="xgboost"')
    result = tuning.tune(cfg)
    drawn = trials_of(cfg)[1]
    assert set(drawn.params) == {p.name for p in tuning.RANKER_SPACE["xgboost"]}
    tuned = load_config(result.config_path)
    if result.best_params:
        assert tuned.train.xgboost_params["max_depth"] == result.best_params["max_depth"]


def test_the_gain_of_the_best_is_paired_on_the_same_users(tmp_path: Path, events: Path) -> None:
    cfg = make_cfg(tmp_path / "ws", events, "tune.trials=4", "tune.pruning=false")
    result = tuning.tune(cfg)
    folder = tmp_path / "ws" / "tune" / result.study
    trials = trials_of(cfg)
    values = {t.number: np.load(folder / "users" / f"{t.number}.npy") for t in trials}
    assert len({v.size for v in values.values()}) == 1  # the same users in every trial
    for trial in trials:
        assert values[trial.number].mean() == pytest.approx(trial.value, abs=1e-12)
    best = max(trials, key=lambda t: t.value).number
    diff = values[best] - values[0]
    assert result.gain is not None
    assert result.gain["gain"] == pytest.approx(diff.mean(), abs=1e-12)
    assert result.gain["se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(diff.size))
    assert result.gain["users"] == diff.size


def test_json_logs_carry_one_trial_event_each(tmp_path: Path, events: Path) -> None:
    done = cli.invoke(
        app,
        [
            "--log-format",
            "json",
            "tune",
            "--events",
            str(events),
            "-w",
            str(tmp_path / "ws"),
            "--trials",
            "2",
            "--set",
            "train.num_boost_round=20",
        ],
    )
    assert done.exit_code == 0, done.output
    lines = [json.loads(line) for line in done.output.splitlines() if line.startswith("{")]
    trials = [line for line in lines if line["event"] == "trial"]
    assert [t["number"] for t in trials] == [0, 1]
    assert trials[0]["state"] == "complete" and trials[0]["best"] == trials[0]["value"]
    assert trials[1]["best"] == max(t["value"] for t in trials if t["value"] is not None)


def test_a_served_product_of_binary_heads_is_tuned_on_its_heads(
    tmp_path: Path, events: Path
) -> None:
    cfg = make_cfg(
        tmp_path / "ws",
        events,
        "tune.trials=2",
        'train.heads=["ranker", "ctr", "cvr"]',
        'blend.serve="ctr_cvr"',
    )
    tuning.tune(cfg)
    trials = trials_of(cfg)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert set(trials[0].user_attrs["trees"]) == {"ctr", "cvr"}  # the ranker is not served
