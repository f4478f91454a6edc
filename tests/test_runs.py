"""``gbrank run`` for cron: the stage cache, the promotion gate, ``runs`` commands, the
workspace lock, JSON logs, manifests, determinism, bad data and a full disk."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shops import shop_config, shop_events
from typer.testing import CliRunner

from gbrank import atomic, runner
from gbrank.atomic import file_sha256
from gbrank.cli import app
from gbrank.config import Config, load_config
from gbrank.errors import (
    EXIT_DATA,
    EXIT_IO,
    EXIT_LOCKED,
    EXIT_NO_INPUT,
    EXIT_PROMOTION_REFUSED,
    PromotionRefused,
)
from gbrank.progress import Reporter, reporting
from gbrank.runner import champion_metric, run_pipeline, served_metric
from gbrank.runs import LOCK, STAGES, current_run, promotions, run_folder

ROOT = Path(__file__).resolve().parents[1]
cli = CliRunner()
WEAK = ["run.seed=3", "train.num_boost_round=1"]


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shop_events(tmp_path_factory, users=300, items=120, seed=1)


def make_cfg(workspace: Path, events: Path, *overrides: str) -> Config:
    return shop_config(workspace, events, "train.num_boost_round=20", *overrides)


def write_config(root: Path, events: Path) -> Path:
    path = root / "gbrank.toml"
    path.write_text(
        f'[data]\nevents = "{events}"\n\n[run]\nworkspace = "{root / "ws"}"\n\n'
        "[train]\nnum_boost_round = 20\n"
    )
    return path


def hows(result: runner.RunResult) -> list[str]:
    return [s.how for s in result.stages]


def test_memory_is_released_after_each_stage_that_ran(
    tmp_path: Path, events: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards: one `gbrank run` process kept each stage's freed heap into the next (1M events:
    2.40 GB peak instead of 2.08)."""
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert runner.release_memory()  # the C heap was trimmed
    calls: list[int] = []
    monkeypatch.setattr(runner, "release_memory", lambda: calls.append(1) or True)
    cfg = make_cfg(tmp_path / "ws", events)
    assert hows(run_pipeline(cfg)) == ["ran"] * 4 and len(calls) == 4
    assert hows(run_pipeline(cfg)) == ["cached"] * 4 and len(calls) == 4  # nothing freed


def test_second_run_skips_every_stage(
    tmp_path: Path, events: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_cfg(tmp_path / "ws", events)
    first = run_pipeline(cfg)
    assert hows(first) == ["ran"] * 4 and first.decision.promoted
    files = {p: p.stat().st_mtime_ns for p in first.run.path.rglob("*") if p.is_file()}

    def boom(cfg: Config) -> None:
        raise AssertionError("a valid stage ran again")

    for stage in STAGES:
        monkeypatch.setitem(runner.STAGE_FUNCTIONS, stage, boom)
    second = run_pipeline(cfg)
    assert hows(second) == ["cached"] * 4
    assert second.run.id == first.run.id and second.decision.reason == "already current"
    # Nothing was rewritten: not an artifact, not a record, not the manifest.
    assert {p: p.stat().st_mtime_ns for p in files} == files


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.num_boost_round=5", ["reused", "reused", "ran", "ran"]),
        ("eval.batch_rows=1000", ["reused", "reused", "reused", "ran"]),
        ("features.windows_days=[2, 9]", ["reused", "ran", "ran", "ran"]),
        ("folds.horizon_days=5", ["ran", "ran", "ran", "ran"]),
        ("promote.tolerance=0.5", ["cached", "cached", "cached", "cached"]),
    ],
)
def test_one_parameter_reruns_only_what_reads_it(
    tmp_path: Path, events: Path, override: str, expected: list[str]
) -> None:
    base = run_pipeline(make_cfg(tmp_path / "ws", events))
    try:
        changed = run_pipeline(make_cfg(tmp_path / "ws", events, override))
    except PromotionRefused as exc:
        changed = exc.result  # type: ignore[attr-defined]
    assert hows(changed) == expected
    for outcome in changed.stages:
        if outcome.how != "reused":
            continue
        assert outcome.source == base.run.id
        record = changed.run.record(outcome.stage)
        assert record is not None and record["reused_from"] == base.run.id
        for relative in record["outputs"]:  # the same files, linked
            mine, theirs = changed.run.file(relative), base.run.file(relative)
            assert mine.stat().st_ino == theirs.stat().st_ino
    changed.run.check_complete()


def test_a_stage_reused_from_a_run_that_reused_it(tmp_path: Path, events: Path) -> None:
    ws = tmp_path / "ws"
    first = run_pipeline(make_cfg(ws, events, "promote.tolerance=1"))
    second = run_pipeline(make_cfg(ws, events, "train.num_boost_round=5", "promote.tolerance=1"))
    third = run_pipeline(make_cfg(ws, events, "train.num_boost_round=6", "promote.tolerance=1"))
    assert hows(second)[:2] == hows(third)[:2] == ["reused", "reused"]
    made = first.run.progress()["generate"]["seconds"]
    assert third.run.progress()["generate"]["seconds_when_made"] == made
    third.run.check_complete()


def test_regressed_model_is_not_promoted_and_the_runs_commands(
    tmp_path: Path, events: Path
) -> None:
    config = write_config(tmp_path, events)
    ws = tmp_path / "ws"
    first = cli.invoke(app, ["run", "-c", str(config)])
    assert first.exit_code == 0, first.output
    champion = current_run(ws)
    assert champion is not None and "promoted to current" in first.output

    weak = cli.invoke(app, ["run", "-c", str(config), *sum((["--set", s] for s in WEAK), [])])
    assert weak.exit_code == EXIT_PROMOTION_REFUSED, weak.output
    assert "not promoted" in weak.output and f"`current` is still {champion}" in weak.output
    assert current_run(ws) == champion
    refused = promotions(ws)[-1]
    assert refused["action"] == "refused" and refused["champion"] > refused["challenger"]
    weak_id = refused["run_id"]
    run_folder(ws, weak_id).check_complete()  # complete, only not promoted

    listing = cli.invoke(app, ["runs", "list", "-w", str(ws)])
    assert listing.exit_code == 0
    lines = {
        line.split()[1] if line.startswith("*") else line.split()[0]: line
        for line in listing.output.splitlines()[1:]
    }
    assert lines[champion].startswith("*") and not lines[weak_id].startswith("*")
    assert f"{refused['challenger']:.4f}" in lines[weak_id]
    shown = cli.invoke(app, ["runs", "show", "current", "-w", str(ws)])
    assert shown.exit_code == 0 and champion in shown.output and "current: yes" in shown.output

    assert cli.invoke(app, ["runs", "promote", weak_id, "-w", str(ws)]).exit_code == 0
    assert current_run(ws) == weak_id
    back = cli.invoke(app, ["runs", "rollback", "-w", str(ws)])
    assert back.exit_code == 0 and current_run(ws) == champion, back.output
    again = cli.invoke(app, ["runs", "rollback", "-w", str(ws)])
    assert again.exit_code == EXIT_NO_INPUT and "nothing to roll back" in again.output
    missing = cli.invoke(app, ["runs", "promote", "nope", "-w", str(ws)])
    assert missing.exit_code == EXIT_NO_INPUT

    out = tmp_path / "recs.parquet"
    served = cli.invoke(app, ["recommend", "-w", str(ws), "--run", "current", "--out", str(out)])
    assert served.exit_code == 0, served.output
    import polars as pl

    assert pl.read_parquet(out).height > 0


def test_the_champion_is_rescored_exactly_as_eval_scored_it(tmp_path: Path, events: Path) -> None:
    cfg = make_cfg(tmp_path / "ws", events)
    run = run_pipeline(cfg).run
    assert champion_metric(cfg, run, run) == served_metric(cfg, run)


def test_tolerance_lets_a_small_drop_through(tmp_path: Path, events: Path) -> None:
    run_pipeline(make_cfg(tmp_path / "ws", events))
    weak = run_pipeline(make_cfg(tmp_path / "ws", events, *WEAK, "promote.tolerance=1.0"))
    assert weak.decision.promoted and weak.decision.champion > weak.decision.challenger
    assert current_run(tmp_path / "ws") == weak.run.id


def test_bad_data_exits_65_and_keeps_current(tmp_path: Path, events: Path) -> None:
    config = write_config(tmp_path, events)
    assert cli.invoke(app, ["run", "-c", str(config)]).exit_code == 0
    champion = current_run(tmp_path / "ws")
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,ts,event\n,1,1700000000,view\n2,1,1700000001,click\n")
    result = cli.invoke(app, ["run", "-c", str(config), "--events", str(bad)])
    assert result.exit_code == EXIT_DATA and "user_id" in result.output
    assert current_run(tmp_path / "ws") == champion
    run_folder(tmp_path / "ws", champion).check_complete()
    assert len(list((tmp_path / "ws" / "runs").iterdir())) == 1


def test_injected_full_disk_exits_74_and_keeps_the_previous_run(
    tmp_path: Path, events: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, events)
    ws = tmp_path / "ws"
    assert cli.invoke(app, ["run", "-c", str(config)]).exit_code == 0
    champion = current_run(ws)
    monkeypatch.setitem(atomic._faults, "count", 0)
    monkeypatch.setenv("GBRANK_ENOSPC_AT", "7")
    full = cli.invoke(app, ["run", "-c", str(config), *sum((["--set", s] for s in WEAK), [])])
    assert full.exit_code == EXIT_IO, full.output
    assert "No space left on device" in full.output
    monkeypatch.delenv("GBRANK_ENOSPC_AT")
    assert current_run(ws) == champion
    run_folder(ws, champion).check_complete()
    again = cli.invoke(app, ["run", "-c", str(config), *sum((["--set", s] for s in WEAK), [])])
    assert again.exit_code == EXIT_PROMOTION_REFUSED, again.output  # recovered, then gated


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def test_a_real_full_disk_exits_74_and_keeps_the_previous_run(tmp_path: Path, events: Path) -> None:
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "64m"):
        pytest.skip("cannot mount a tmpfs here (the injected full disk test covers it)")
    try:
        ws = disk / "ws"
        config = write_config(tmp_path, events)
        first = cli.invoke(app, ["run", "-c", str(config), "-w", str(ws)])
        assert first.exit_code == 0, first.output
        champion = current_run(ws)
        used = sum(p.stat().st_size for p in disk.rglob("*") if p.is_file())
        # Room for a few more small files, not for another run.
        subprocess.run(["mount", "-o", f"remount,size={used + (256 << 10)}", str(disk)], check=True)
        args = ["run", "-c", str(config), "-w", str(ws), *sum((["--set", s] for s in WEAK), [])]
        full = cli.invoke(app, args)
        assert full.exit_code == EXIT_IO, full.output
        assert "No space left on device" in full.output
        assert current_run(ws) == champion
        run_folder(ws, champion).check_complete()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _gbrank(*args: str) -> list[str]:
    return [sys.executable, "-m", "gbrank.cli", *args]


def test_a_second_run_on_a_locked_workspace_exits_75_at_once(tmp_path: Path, events: Path) -> None:
    config = write_config(tmp_path, events)
    lock = tmp_path / "ws" / LOCK
    first = subprocess.Popen(
        _gbrank("run", "-c", str(config)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip()):
            assert first.poll() is None and time.monotonic() < deadline, "no lock taken"
            time.sleep(0.01)
        started = time.monotonic()
        second = subprocess.run(
            _gbrank("run", "-c", str(config)), capture_output=True, text=True, timeout=60
        )
        elapsed = time.monotonic() - started
        assert second.returncode == EXIT_LOCKED, second.stderr
        assert f"pid {first.pid}" in second.stderr and "is locked" in second.stderr
        assert first.poll() is None, "the second run waited for the first"
        print(f"second run refused in {elapsed:.2f}s")
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert not lock.read_text().strip()  # released cleanly


def test_a_lock_left_by_a_killed_process_is_recovered(tmp_path: Path, events: Path) -> None:
    ws = tmp_path / "ws"
    leftover = ws / "runs" / "old" / ".features.parquet.abcd1234.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a file")
    dead = {"pid": 2**22 + 17, "host": "h", "command": "run", "started": "yesterday"}
    (ws / LOCK).write_text(json.dumps(dead))

    seen: list[tuple[str, dict]] = []

    class Collect(Reporter):
        def event(self, kind: str, **fields: object) -> None:
            seen.append((kind, fields))

    with reporting(Collect()):
        result = run_pipeline(make_cfg(ws, events))
    assert result.decision.promoted and not leftover.exists()
    warnings = [f["message"] for kind, f in seen if kind == "warning"]
    assert any(f"pid {dead['pid']}" in str(m) and "1 temporary" in str(m) for m in warnings)
    assert [f["stage"] for kind, f in seen if kind == "stage_done"] == list(STAGES)


def test_json_logs(tmp_path: Path, events: Path) -> None:
    config = write_config(tmp_path, events)
    result = cli.invoke(app, ["--log-format", "json", "run", "-c", str(config)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert records and all({"ts", "level", "event"} <= set(r) for r in records)
    done = [r for r in records if r["event"] == "stage_done"]
    assert [r["stage"] for r in done] == list(STAGES) and all(r["how"] == "ran" for r in done)
    promotion = next(r for r in records if r["event"] == "promotion")
    assert promotion["promoted"] is True and promotion["metric"].startswith("purchase ndcg@10")
    missing = cli.invoke(
        app, ["--log-format", "json", "run", "-c", str(config), "--events", "/nonexistent.csv"]
    )
    assert missing.exit_code == EXIT_NO_INPUT
    error = json.loads(missing.stdout.strip().splitlines()[-1])
    assert error["level"] == "error" and error["exit_code"] == EXIT_NO_INPUT
    assert "/nonexistent.csv" in error["message"]


def test_two_runs_make_identical_artifacts(tmp_path: Path, events: Path) -> None:
    a = run_pipeline(make_cfg(tmp_path / "a", events)).run
    b = run_pipeline(make_cfg(tmp_path / "b", events)).run
    assert a.id == b.id
    for stage in STAGES:
        ra, rb = a.record(stage), b.record(stage)
        assert ra is not None and rb is not None
        assert ra["outputs"] == rb["outputs"], stage
        assert ra["key"] == rb["key"]


def test_the_manifest_says_what_made_the_run(tmp_path: Path, events: Path) -> None:
    cfg = make_cfg(tmp_path / "ws", events)
    run = run_pipeline(cfg).run
    manifest = run.check_complete()
    assert manifest["config_hash"] == cfg.hash() and manifest["seed"] == cfg.run.seed
    files = manifest["inputs"]["files"]
    assert [f["role"] for f in files] == ["events"]
    assert files[0]["sha256"] == file_sha256(events)
    assert {"gbrank", "polars", "lightgbm", "numpy"} <= set(manifest["versions"])
    assert manifest["threads"]["cpu_count"] == os.cpu_count()
    assert set(manifest["stages"]) == set(STAGES)
    assert all(manifest["stages"][s]["seconds"] > 0 for s in STAGES)
    recorded = {}
    for stage in STAGES:
        recorded.update(run.record(stage)["outputs"])  # type: ignore[index]
    assert recorded.items() <= manifest["outputs"].items()
    assert "config.toml" in manifest["outputs"]
    assert load_config(run.file("config.toml")).hash() == cfg.hash()


def test_quickstart_takes_the_run_path(tmp_path: Path) -> None:
    from gbrank.quickstart import run_quickstart

    args = {"users": 300, "items": 120, "days": 28, "echo": lambda _: None}
    first = run_quickstart(tmp_path / "q", **args)
    assert hows(first.run) == ["ran"] * 4 and current_run(tmp_path / "q") == first.run.run.id
    second = run_quickstart(tmp_path / "q", **args)  # the same shop again: nothing to redo
    assert hows(second.run) == ["cached"] * 4
    assert second.eval.metrics.height == first.eval.metrics.height > 0


FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}


def test_no_pickle_anywhere_in_the_package() -> None:
    """No module that (un)pickles is imported, and nothing is loaded with allow_pickle."""
    offences = []
    for path in sorted((ROOT / "gbrank").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                names = []
            offences += [
                f"{path}: import {n}" for n in names if n.split(".")[0] in FORBIDDEN_MODULES
            ]
            if isinstance(node, ast.Call):
                func = ast.unparse(node.func)
                for kw in node.keywords:
                    if kw.arg == "allow_pickle" and not (
                        isinstance(kw.value, ast.Constant) and kw.value.value is False
                    ):
                        offences.append(f"{path}:{node.lineno}: allow_pickle not False")
                if func.endswith(("read_pickle", "to_pickle", "torch.load")):
                    offences.append(f"{path}:{node.lineno}: {func}")
                if func.endswith("np.load") and not any(
                    kw.arg == "allow_pickle" for kw in node.keywords
                ):
                    offences.append(f"{path}:{node.lineno}: np.load without allow_pickle=False")
    assert offences == []
    assert (ROOT / "gbrank" / "candidates" / "state.py").read_text().count("allow_pickle=False")
