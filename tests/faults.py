"""Crash harness: ``gbrank run`` killed with SIGKILL at random write points, then run again.

Shared by tests/test_faults.py (50 kill points) and bench/bench_faults.py (200 and more).
Each process of a chain runs ``gbrank run`` with ``GBRANK_KILL_AT=n`` (gbrank.atomic: the
process kills itself at its n-th write point: temporary file written, flushed, renamed, or
the ``current`` link swapped). After every process the workspace must hold only complete
artifacts (:func:`check_workspace`); when a process gets to the end, its run must equal an
uninterrupted run of the same config byte for byte, and ``current`` must be what the gate
decided. The next process of the chain is the recovery: it starts from whatever the killed
one left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from gbrank.atomic import TEMPORARY, file_sha256
from gbrank.config import load_config
from gbrank.runner import run_pipeline
from gbrank.runs import LOCK, STAGES, Run, current_run, promotions, run_folder, set_current

#: The champion every chain starts with, and the two kinds of challengers: a weak one that
#: the gate refuses (it is then deleted and made again, so every stage is crashed in turn)
#: and a strong one that may be promoted (crashes during the promotion itself).
CHAMPION = ["train.num_boost_round=20"]
WEAK = ["run.seed=3", "train.num_boost_round=1"]
STRONG = ["run.seed=5", "train.num_boost_round=30"]


def write_config(root: Path, events: Path) -> Path:
    path = root / "gbrank.toml"
    # No report: its writes are atomic writes like the others, and drawing it in each of the
    # chain's processes would double the test's time.
    path.write_text(
        f'[data]\nevents = "{events}"\n\n[run]\nworkspace = "{root / "ws"}"\n\n'
        "[eval]\nreport = false\n"
    )
    return path


def stage_outputs(run: Run) -> dict[str, dict[str, str]]:
    out = {}
    for stage in STAGES:
        record = run.record(stage)
        if record is not None:
            out[stage] = record["outputs"]
    return out


def reference(config: Path, overrides: list[str], workspace: Path) -> tuple[str, dict]:
    """The run id and stage outputs of an uninterrupted run (in this process)."""
    cfg = load_config(config, [*overrides, f'run.workspace="{workspace}"'])
    result = run_pipeline(cfg, gate=False)
    return result.run.id, stage_outputs(result.run)


def check_workspace(workspace: Path, allowed_current: set[str | None]) -> None:
    """Every file under its final name is complete, every record's outputs and every
    manifest's files match their hashes, and ``current`` is an allowed, complete run."""
    for dirpath, _, files in os.walk(workspace):
        for name in files:
            p = Path(dirpath) / name
            if TEMPORARY.match(name) or name == LOCK:
                continue
            if name.endswith(".parquet"):
                pq.read_metadata(p)  # a torn Parquet file has no footer
            elif name.endswith(".json"):
                json.loads(p.read_text())
    for run_dir in sorted((workspace / "runs").glob("*")):
        run = Run(run_dir)
        for stage in STAGES:
            record = run.record(stage)
            if record is None:
                continue
            for relative, sha in record["outputs"].items():
                assert file_sha256(run.file(relative)) == sha, f"{run_dir}/{relative} torn"
        if run.manifest() is not None:
            run.check_complete()
    current = current_run(workspace)
    assert current in allowed_current, f"current is {current}, expected one of {allowed_current}"
    if current is not None:
        run_folder(workspace, current).check_complete()
    promotions(workspace)  # parses


@dataclass
class ChainStats:
    kills: int = 0
    completed: int = 0
    processes: int = 0
    points: list[int] = field(default_factory=list)


def gbrank_run(config: Path, workspace: Path, overrides: list[str], kill_at: int | None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GBRANK_")}
    if kill_at is not None:
        env["GBRANK_KILL_AT"] = str(kill_at)
    args = [sys.executable, "-m", "gbrank.cli", "run", "-c", str(config), "-w", str(workspace)]
    for item in overrides:
        args += ["--set", item]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def run_chain(
    config: Path,
    workspace: Path,
    *,
    kills: int,
    seed: int,
    references: dict[str, tuple[str, dict]],
    max_point: int,
) -> ChainStats:
    """Crash ``gbrank run`` ``kills`` times in ``workspace`` (which holds the champion): the
    weak challenger first, then, for the last tenth, the strong one (crashes around the
    promotion). A challenger that got to the end is deleted (and ``current`` put back) so the
    next process makes it again from nothing."""
    rng = np.random.default_rng(seed)
    stats = ChainStats()
    champion = current_run(workspace)
    strong_from = kills - max(1, kills // 10)
    while True:
        kind = "weak" if stats.kills < strong_from else "strong"
        run_id, expected = references[kind]
        allowed = {champion, run_id} if kind == "strong" else {champion}
        point = int(rng.integers(1, max_point + 1))
        proc = gbrank_run(config, workspace, WEAK if kind == "weak" else STRONG, point)
        stats.processes += 1
        if proc.returncode == -9:
            stats.kills += 1
            stats.points.append(point)
            check_workspace(workspace, allowed)
            continue
        assert proc.returncode in (0, 3), proc.stdout + proc.stderr
        stats.completed += 1
        check_workspace(workspace, allowed)
        run = run_folder(workspace, run_id)
        assert stage_outputs(run) == expected, f"recovered run {run_id} differs"
        if kind == "weak":
            assert proc.returncode == 3 and current_run(workspace) == champion
        else:
            assert current_run(workspace) == (run_id if proc.returncode == 0 else champion)
            if stats.kills >= kills:
                return stats
            set_current(workspace, champion)
        shutil.rmtree(run.path)
