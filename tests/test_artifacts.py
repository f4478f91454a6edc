"""Artifacts are checked before use: stale ones exit 66 naming the stage to rerun, damaged ones
exit 65, I/O failures exit 74, usage errors exit 2; run ids follow content, not paths."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from gbrank import atomic
from gbrank.cli import app
from gbrank.config import load_config
from gbrank.data.synth import SynthConfig, synthesize
from gbrank.errors import (
    EXIT_DATA,
    EXIT_IO,
    EXIT_NO_INPUT,
    EXIT_USAGE,
    ConfigError,
    DamagedArtifactError,
)
from gbrank.pipeline import run_id_for
from gbrank.rankers.lightgbm import LightGBMRanker

runner = CliRunner()
STAGES = ("generate", "features", "train", "eval")

CONFIG = """\
[data]
events = "{shop}/events.parquet"
items = "{shop}/items.parquet"
[run]
workspace = "{workspace}"
run_id = "fixed"
[candidates.sources.popularity]
kind = "popularity"
n = 20
[candidates.sources.history]
kind = "history"
n = 20
[candidates.sources.covisit]
kind = "covisit"
n = 20
[train]
num_boost_round = 30
"""


@pytest.fixture(scope="module")
def shops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shops")
    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        synthesize(SynthConfig(users=600, items=200, days=28, seed=seed), root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def finished(shops: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with shop A, a config with a fixed run id, and every stage run."""
    root = tmp_path_factory.mktemp("finished")
    shutil.copytree(shops["a"], root / "shop")
    config = write_config(root)
    for stage in STAGES:
        result = runner.invoke(app, [stage, "-c", str(config)])
        assert result.exit_code == 0, (stage, result.output)
    return root


def write_config(root: Path, extra: str = "") -> Path:
    path = root / "gbrank.toml"
    path.write_text(CONFIG.format(shop=root / "shop", workspace=root / "ws") + extra)
    return path


@pytest.fixture
def project(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished project (its config rewritten to point inside it)."""
    root = tmp_path / "p"
    shutil.copytree(finished, root)
    write_config(root)
    return root


def invoke(root: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "-c", str(root / "gbrank.toml")])
    return result.exit_code, result.output


def run_dir(root: Path) -> Path:
    return root / "ws" / "runs" / "fixed"


# --------------------------------------------------------------------------- stale artifacts


def test_killed_generate_on_new_data_leaves_nothing_downstream_valid(
    project: Path, shops: dict[str, Path]
) -> None:
    """Guards: events replaced, `generate` killed after rewriting candidates/train.parquet, and
    features/train/eval exited 0 on candidates coded against the old vocabulary."""
    shutil.rmtree(project / "shop")
    shutil.copytree(shops["b"], project / "shop")
    target = run_dir(project) / "candidates" / "train.parquet"
    before = target.stat().st_mtime_ns
    proc = subprocess.Popen(
        [sys.executable, "-m", "gbrank.cli", "generate", "-c", str(project / "gbrank.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if target.exists() and target.stat().st_mtime_ns != before:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    assert proc.wait() == -signal.SIGKILL, "generate finished before it could be killed"
    for stage in ("features", "train", "eval"):
        code, output = invoke(project, stage)
        assert code == EXIT_NO_INPUT, (stage, output)
        assert "run `gbrank generate`" in output
    code, output = invoke(project, "recommend", "--out", str(project / "recs.csv"))
    assert code == EXIT_NO_INPUT and not (project / "recs.csv").exists()
    assert not (run_dir(project) / "manifest.json").exists()  # the run is no longer complete


def test_new_data_under_a_fixed_run_id_is_refused(project: Path, shops: dict[str, Path]) -> None:
    shutil.rmtree(project / "shop")
    shutil.copytree(shops["b"], project / "shop")
    for stage in ("features", "train", "eval"):
        code, output = invoke(project, stage)
        assert code == EXIT_NO_INPUT, (stage, output)
        assert "the input data changed" in output and "rerun `gbrank generate`" in output
    assert invoke(project, "generate")[0] == 0
    code, output = invoke(project, "train")  # generate invalidated the features
    assert code == EXIT_NO_INPUT and "run `gbrank features` first" in output
    assert not (run_dir(project) / "features" / "train.parquet").exists()


@pytest.mark.parametrize("key", ["eval.users", "train.sample.users"])
def test_a_new_user_budget_makes_generates_outputs_stale(project: Path, key: str) -> None:
    """The user budgets decide which users generate makes candidates for: changing one under a
    fixed run id is refused downstream until generate reruns."""
    section, _, name = key.rpartition(".")
    write_config(project, f"\n[{section}]\n{name} = 50\n")
    code, output = invoke(project, "features")
    assert code == EXIT_NO_INPUT, output
    assert "different config" in output and "rerun `gbrank generate`" in output


def test_rewritten_upstream_output_is_stale(project: Path) -> None:
    run = run_dir(project)
    record = json.loads((run / "stages" / "features.json").read_text())
    record["inputs"]["candidates/train.parquet"] = "0" * 64  # built from other candidates
    (run / "stages" / "features.json").write_text(json.dumps(record))
    code, output = invoke(project, "train")
    assert code == EXIT_NO_INPUT and "rerun `gbrank features`" in output


def test_changed_config_under_a_fixed_run_id_is_refused(project: Path) -> None:
    write_config(project, "[features]\nwindows_days = [2, 9]\n")
    code, output = invoke(project, "train")
    assert code == EXIT_NO_INPUT and "different config" in output
    assert "rerun `gbrank features`" in output
    write_config(project, '[eval]\ntargets = ["click"]\n')  # read by eval alone: it reruns
    assert invoke(project, "eval")[0] == 0


# --------------------------------------------------------------------------- damaged artifacts


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    ("relative", "stage", "rerun"),
    [
        ("models/ranker_eval.txt", "eval", "train"),
        ("models/ranker_serve.txt", "recommend", "train"),
        ("features/eval.parquet", "eval", "features"),
        ("folds.json", "features", "generate"),
        ("candidates/budgets.json", "recommend", "generate"),
        ("sources/inference/covisit.npz", "recommend", "generate"),
        ("stages/generate.json", "features", "generate"),
    ],
)
def test_damaged_artifact_exits_65(project: Path, relative: str, stage: str, rerun: str) -> None:
    """Guards: a truncated model aborted the process (exit 134); a truncated JSON or Parquet
    artifact gave a traceback (exit 70)."""
    truncate(run_dir(project) / relative)
    args = [stage] if stage != "recommend" else [stage, "--out", str(project / "r.csv")]
    code, output = invoke(project, *args)
    assert code == EXIT_DATA, output
    assert f"{relative} is damaged" in output and f"rerun `gbrank {rerun}`" in output
    assert "Traceback" not in output and "[LightGBM]" not in output


def test_truncated_model_is_refused_by_the_library_too(project: Path) -> None:
    stem = run_dir(project) / "models" / "ranker_eval"
    LightGBMRanker.load(stem)  # intact
    truncate(stem.with_suffix(".txt"), 0.3)
    with pytest.raises(DamagedArtifactError, match="damaged .its SHA-256 differs"):
        LightGBMRanker.load(stem)


# --------------------------------------------------------------------------- I/O errors


def test_unwritable_workspace_exits_74(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards: a read-only workspace gave exit 70 and a traceback (a file where a folder
    should be fails for root too, unlike file modes; so does a read-only file system)."""
    blocker = project / "blocker"
    blocker.write_text("not a folder")
    result = runner.invoke(
        app, ["generate", "-c", str(project / "gbrank.toml"), "-w", str(blocker / "ws")]
    )
    assert result.exit_code == EXIT_IO, result.output
    assert str(blocker) in result.output and "Not a directory" in result.output

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kwargs.get("dir")))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    for stage in reversed(STAGES):  # each stage invalidates the ones after it first
        code, output = invoke(project, stage)
        assert code == EXIT_IO and "Read-only file system (errno 30)" in output, (stage, output)


@pytest.fixture
def mount_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Mount a small tmpfs (``size``, optionally read-only); skipped where mounting is not
    allowed. The injected-error tests below cover every stage wherever this cannot run."""
    mounted: list[Path] = []

    def mount(name: str, size: str, read_only: bool = False) -> Path:
        point = tmp_path / name
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


@pytest.mark.parametrize(
    ("size", "read_only", "reason"),
    [("4m", True, "Read-only file system (errno 30)"), ("96k", False, "No space left on device")],
)
def test_real_read_only_or_full_workspace_exits_74(
    project: Path,
    mount_tmpfs,
    size: str,
    read_only: bool,
    reason: str,  # type: ignore[no-untyped-def]
) -> None:
    """Guards: a read-only workspace or a full disk during `generate` gave exit 70 and a
    traceback."""
    workspace = mount_tmpfs("ws", size, read_only)
    result = runner.invoke(
        app, ["generate", "-c", str(project / "gbrank.toml"), "-w", str(workspace)]
    )
    assert result.exit_code == EXIT_IO, result.output
    assert reason in result.output and str(workspace) in result.output
    assert "Traceback" not in result.output
    assert [p for p in workspace.rglob(".*.tmp")] == []  # no temporary file left behind


@pytest.mark.parametrize("stage", [*STAGES, "recommend"])
def test_full_disk_exits_74_at_every_stage(
    project: Path, stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards: a full disk gave exit 70 and a traceback; the failed file is not left behind."""
    real_replace = os.replace

    def full(src: str | Path, dst: str | Path) -> None:
        if str(dst).endswith((".parquet", ".txt", ".csv", "metrics.json")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full)
    args = [stage] if stage != "recommend" else [stage, "--out", str(project / "r.csv")]
    code, output = invoke(project, *args)
    assert code == EXIT_IO, output
    assert "No space left on device (errno 28)" in output and "Traceback" not in output
    leftovers = [p for p in project.rglob(".*.tmp")]
    assert leftovers == []
    assert not (project / "r.csv").exists()


# --------------------------------------------------------------------------- usage errors


def test_recommend_usage_errors(project: Path) -> None:
    """Guards: `--out recs.json` exited 70; an empty --users file gave a traceback."""
    code, output = invoke(project, "recommend", "--out", str(project / "recs.json"))
    assert code == EXIT_USAGE and ".parquet or .csv" in output
    empty = project / "users.csv"
    empty.write_text("")
    code, output = invoke(
        project, "recommend", "--out", str(project / "r.csv"), "--users", str(empty)
    )
    assert code == EXIT_DATA and "holds no user ids" in output and str(empty) in output
    empty.write_text("user_id\n")
    code, output = invoke(
        project, "recommend", "--out", str(project / "r.csv"), "--users", str(empty)
    )
    assert code == EXIT_DATA and "holds no user ids" in output
    assert not (project / "r.csv").exists()


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ("candidates.sources.history.kind='histroy'", "did you mean 'history'"),
        ("candidates.sources.covisit.max_gap_hour=3", "did you mean 'max_gap_hours'"),
    ],
)
def test_config_errors_before_any_stage(tmp_path: Path, override: str, phrase: str) -> None:
    """Guards: a source typo was caught only after the data was loaded, leaving half a run
    folder."""
    with pytest.raises(ConfigError, match=phrase):
        load_config(None, [override])
    result = runner.invoke(app, ["generate", "-w", str(tmp_path / "ws"), "--set", override])
    assert result.exit_code == EXIT_USAGE and phrase in result.output
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ("train.params.learning_rate=-1", "Check failed: (learning_rate) > (0.0)"),
        ("train.params.num_leavs=15", "did you mean 'num_leaves'"),
    ],
)
def test_ranker_param_errors_before_anything_trains_or_runs(
    shops: dict[str, Path], tmp_path: Path, override: str, phrase: str
) -> None:
    """Guards: invalid train.params gave a LightGBM traceback after training had started. The
    backend's parameters are checked by what trains (not by every config load, which would
    import LightGBM for commands that train nothing): `run` before its first stage, `train`
    before it reads anything, and `config show`."""
    from gbrank.config import check_ranker_params

    cfg = load_config(None, [override])  # loading alone imports no backend
    with pytest.raises(ConfigError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        check_ranker_params(cfg)
    result = runner.invoke(app, ["config", "show", "--set", override])
    assert result.exit_code == EXIT_USAGE and phrase in result.output
    events = f'data.events="{shops["a"] / "events.parquet"}"'
    for command in ("run", "train"):
        workspace = tmp_path / command
        result = runner.invoke(
            app, [command, "-w", str(workspace), "--set", events, "--set", override]
        )
        assert result.exit_code == EXIT_USAGE and phrase in result.output, command
        assert not (workspace / "runs").exists(), command


def test_help_short_flag_and_flags_without_a_type() -> None:
    for args in (["-h"], ["features", "-h"], ["data", "-h"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output, args
    result = runner.invoke(app, ["features", "--help"])
    assert "--list" in result.output and "<bool>" not in result.output


# --------------------------------------------------------------------------- run identity, modes


def test_run_id_follows_content_not_paths_or_times(shops: dict[str, Path], tmp_path: Path) -> None:
    """Guards: `touch events` or moving the workspace orphaned a run."""
    shop = tmp_path / "shop"
    shutil.copytree(shops["a"], shop)

    def run_id(workspace: str, events: Path) -> str:
        cfg = load_config(None, [f'data.events="{events}"', f'run.workspace="{workspace}"'])
        return run_id_for(cfg)

    first = run_id(str(tmp_path / "ws1"), shop / "events.parquet")
    os.utime(shop / "events.parquet", (time.time() + 60, time.time() + 60))
    assert run_id(str(tmp_path / "ws2"), shop / "events.parquet") == first
    moved = tmp_path / "elsewhere.parquet"
    shutil.copy(shop / "events.parquet", moved)
    assert run_id(str(tmp_path / "ws1"), moved) == first
    pl.read_parquet(moved).head(-1).write_parquet(moved)  # one event fewer: another run
    assert run_id(str(tmp_path / "ws1"), moved) != first


def test_files_respect_the_umask(project: Path) -> None:
    """Guards: artifacts and --out files were written 0600 whatever the umask."""
    old = os.umask(0o022)
    try:
        assert invoke(project, "eval")[0] == 0
        code, _ = invoke(project, "recommend", "--out", str(project / "r.csv"), "--k", "3")
        assert code == 0
    finally:
        os.umask(old)
    for path in (run_dir(project) / "metrics.json", project / "r.csv"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
