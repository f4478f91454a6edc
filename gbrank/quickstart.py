"""``gbrank quickstart``: a synthetic shop and every stage, with no input files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gbrank import pipeline
from gbrank.atomic import atomic_write_text
from gbrank.config import load_config
from gbrank.data.synth import SynthConfig, synthesize
from gbrank.runner import RunResult, run_pipeline


@dataclass
class QuickstartResult:
    config_path: Path
    run: RunResult
    eval: pipeline.EvalResult


def quickstart_config(workspace: Path, seed: int) -> str:
    """The config quickstart writes: absolute paths, so it works from any folder."""
    shop = (workspace / "shop").resolve()
    return (
        "# Written by `gbrank quickstart`; run the stages one by one with\n"
        f"#   gbrank generate -c {workspace / 'gbrank.toml'}  (then features, train, eval)\n"
        "[data]\n"
        f'events = "{shop / "events.parquet"}"\n'
        f'items = "{shop / "items.parquet"}"\n'
        f'users = "{shop / "users.parquet"}"\n\n'
        "[run]\n"
        f'workspace = "{workspace.resolve()}"\n'
        f"seed = {seed}\n"
    )


def run_quickstart(
    workspace: str | Path,
    *,
    users: int = 10_000,
    items: int = 3_000,
    days: int = 56,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> QuickstartResult:
    """Synthesize a shop into ``workspace/shop``, write ``workspace/gbrank.toml``, run all stages."""
    workspace = Path(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    shop = workspace / "shop"
    echo(f"[1/5] synthetic shop: {users:,} users, {items:,} items, {days} days -> {shop}")
    summary = synthesize(SynthConfig(users=users, items=items, days=days, seed=seed), shop)
    echo(f"      {summary.events:,} events")
    config_path = workspace / "gbrank.toml"
    atomic_write_text(quickstart_config(workspace, seed), config_path)
    cfg = load_config(config_path)
    echo(
        "[2/5] generate: candidates from every source for the train and eval folds; "
        "[3/5] features: leak-free features and labels; [4/5] train: lambdarank on the train "
        "fold; [5/5] eval: ranker vs each source on the eval fold (as `gbrank run` does)"
    )
    result = run_pipeline(cfg, command="quickstart")
    evaluated = pipeline.eval_result(cfg, result.run)
    return QuickstartResult(config_path, result, evaluated)
