"""kill -9 at 50 random write points of ``gbrank run``: every artifact is absent or complete,
``current`` stays a complete run, and the next run recovers to the same bytes as a run that
was never interrupted (the harness is tests/faults.py; bench/bench_faults.py runs 200)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faults
import pytest

from gbrank.config import load_config
from gbrank.data.synth import SynthConfig, synthesize
from gbrank.runner import run_pipeline

KILLS_PER_CHAIN = 25  # two chains side by side: 50 kill points


def test_kill_9_at_50_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synthesize(SynthConfig(users=300, items=120, days=28, seed=1), tmp_path / "shop")
    config = faults.write_config(tmp_path, tmp_path / "shop" / "events.parquet")
    trace = tmp_path / "trace"
    monkeypatch.setenv("GBRANK_FAULT_TRACE", str(trace))
    weak = faults.reference(config, faults.WEAK, tmp_path / "ref")
    max_point = len(trace.read_text().splitlines())  # the write points of a whole run
    monkeypatch.delenv("GBRANK_FAULT_TRACE")
    references = {"weak": weak, "strong": faults.reference(config, faults.STRONG, tmp_path / "ref")}
    assert max_point > 100
    assert "report.html" not in weak[1]["eval"]  # eval.report = false: metrics.json alone

    workspaces = [tmp_path / f"ws{i}" for i in range(2)]
    for ws in workspaces:
        run_pipeline(load_config(config, [*faults.CHAMPION, f'run.workspace="{ws}"']))

    def chain(i: int) -> faults.ChainStats:
        return faults.run_chain(
            config,
            workspaces[i],
            kills=KILLS_PER_CHAIN,
            seed=i,
            references=references,
            max_point=max_point,
        )

    with ThreadPoolExecutor(2) as pool:
        stats = list(pool.map(chain, range(2)))
    points = [p for s in stats for p in s.points]
    assert len(points) >= 50
    assert sum(s.completed for s in stats) >= 2  # every chain recovered to the end
    # The crashes fell all over the run, not only at its start.
    assert min(points) < max_point / 4 and max(points) > 3 * max_point / 4
    print(
        f"{len(points)} kills over {max_point} write points, "
        f"{sum(s.processes for s in stats)} processes, cpu {os.cpu_count()}"
    )
