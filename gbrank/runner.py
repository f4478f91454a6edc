"""``gbrank run``: every stage through the stage cache, then the promotion gate.

One call, under the workspace lock:

1. each stage of ``runs.STAGES`` is *settled*: kept when this run folder already holds it
   intact and made from the current config, inputs and gbrank version ("cached"); linked
   from another run whose record has the same cache key ("reused"); else run;
2. the manifest is written if the run has none (the run is complete);
3. the gate: the run becomes ``current`` only when its served model's ``promote.metric`` at
   ``promote.k`` is at least the champion's minus ``promote.tolerance``, the champion's eval
   model being scored again on this run's eval fold, so both face the same users and labels.
   A refusal raises :class:`PromotionRefused` (exit 3) after the run is complete.

``gbrank quickstart`` and the Python API use the same function.

Example (a tiny shop; about 10 s):
    >>> import tempfile, pathlib
    >>> from gbrank.config import load_config
    >>> from gbrank.data.synth import SynthConfig, synthesize
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = synthesize(SynthConfig(users=300, items=120, days=28, seed=1), root / "shop")
    >>> cfg = load_config(None, [f'data.events="{root}/shop/events.parquet"',
    ...                          f'run.workspace="{root}/ws"'])
    >>> first = run_pipeline(cfg)
    >>> [s.how for s in first.stages], first.decision.promoted
    (['ran', 'ran', 'ran', 'ran'], True)
    >>> [s.how for s in run_pipeline(cfg).stages]
    ['cached', 'cached', 'cached', 'cached']
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from gbrank import pipeline
from gbrank.config import Config, check_ranker_params, load_config
from gbrank.errors import (
    ConfigError,
    DamagedArtifactError,
    GbrankError,
    MissingInputError,
    PromotionRefused,
    StaleArtifactError,
    warn,
)
from gbrank.progress import report
from gbrank.rankers.blend import heads_of
from gbrank.runs import (
    STAGES,
    Run,
    WorkspaceLock,
    current_run,
    list_runs,
    log_promotion,
    promotions,
    run_folder,
    set_current,
)

STAGE_FUNCTIONS: dict[str, Callable[[Config], Any]] = {
    "generate": pipeline.generate,
    "features": pipeline.build_features,
    "train": pipeline.train,
    "eval": pipeline.evaluate,
}


@dataclass
class StageOutcome:
    stage: str
    how: str  # "cached" (kept in this run), "reused" (linked from `source`) or "ran"
    seconds: float
    source: str | None = None


@dataclass
class Decision:
    """What the gate decided, and on which figures."""

    promoted: bool
    reason: str
    metric: str
    challenger: float
    champion: float | None = None
    champion_run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "promoted": self.promoted,
            "reason": self.reason,
            "metric": self.metric,
            "challenger": self.challenger,
            "champion": self.champion,
            "champion_run": self.champion_run,
        }


@dataclass
class RunResult:
    run: Run
    stages: list[StageOutcome]
    decision: Decision
    seconds: float

    @property
    def skipped_all(self) -> bool:
        return all(s.how != "ran" for s in self.stages)


def run_pipeline(cfg: Config, *, command: str = "run", gate: bool = True) -> RunResult:
    """Every stage (cached where valid), the manifest, then the promotion gate.

    Raises :class:`PromotionRefused` (exit 3) when the gate keeps the champion; the run is
    complete all the same. ``gate=False`` skips the gate (``current`` is left alone).
    """
    t0 = time.perf_counter()
    check_ranker_params(cfg)  # a bad train.params fails before generate, not after it
    workspace = Path(cfg.run.workspace)
    with WorkspaceLock(workspace, command) as lock:
        if lock.recovered:
            report(
                "warning",
                message=f"recovered the workspace lock left by pid {lock.recovered.get('pid')} "
                f"(`gbrank {lock.recovered.get('command')}`, started "
                f"{lock.recovered.get('started')}), which ended without releasing it; removed "
                f"{len(lock.removed)} temporary file(s) it left",
            )
        fp = pipeline.input_fingerprint(cfg)
        run = pipeline.open_run(cfg, fp)
        hashes = pipeline._config_hashes(cfg)
        outcomes = []
        for index, stage in enumerate(STAGES):
            started = time.perf_counter()
            report("stage_start", stage=stage, run=run.id)
            how, source = settle_stage(cfg, run, index, hashes, fp)
            seconds = time.perf_counter() - started
            outcomes.append(StageOutcome(stage, how, seconds, source))
            report("stage_done", stage=stage, how=how, seconds=round(seconds, 3), source=source)
        try:
            run.check_complete()
        except (MissingInputError, DamagedArtifactError):
            pipeline.write_manifest(cfg, run, fp)
        decision = (
            promotion_gate(cfg, run)
            if gate
            else Decision(False, "gate skipped", metric_name(cfg), served_metric(cfg, run))
        )
        report("promotion", run=run.id, **decision.to_dict())
    result = RunResult(run, outcomes, decision, time.perf_counter() - t0)
    if gate and not decision.promoted and decision.reason != "already current":
        refused = PromotionRefused(
            f"run {run.id} was not promoted: {decision.reason}. `current` is still "
            f"{decision.champion_run}; promote it anyway with `gbrank runs promote {run.id}`"
        )
        refused.result = result
        raise refused
    return result


def release_memory() -> bool:
    """Hand back to the system what a finished stage freed, so that the next stage of the same
    process starts from the memory it needs: glibc keeps freed NumPy and LightGBM buffers in its
    heap (``malloc_trim`` returns them) and pyarrow its pool. ``gbrank run`` at 1M events: peak
    RSS 2.40 GB without, 2.08 GB with (a process per stage peaks at 1.8 GB), at the same wall
    time. Returns whether the C heap was trimmed (glibc only; elsewhere nothing to do)."""
    gc.collect()
    with contextlib.suppress(ImportError):
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def settle_stage(
    cfg: Config, run: Run, index: int, hashes: dict[str, str], fp: str
) -> tuple[str, str | None]:
    stage = STAGES[index]
    try:
        verified = run.verify_through(STAGES[: index + 1], hashes, fp)
        for relative in verified.records[stage]["outputs"]:
            verified.path(relative)
        return "cached", None
    except (MissingInputError, StaleArtifactError, DamagedArtifactError):
        pass
    source = pipeline.link_cached(run, index, hashes, fp)
    if source is not None:
        return "reused", source
    STAGE_FUNCTIONS[stage](cfg)
    release_memory()  # the next stage of this process (run, quickstart, tune) starts lean
    return "ran", None


# --------------------------------------------------------------------------- the gate


def metric_name(cfg: Config) -> str:
    p = cfg.promote
    return f"{p.target} {p.metric}@{p.k} of {cfg.blend.serve}"


def served_metric(cfg: Config, run: Run) -> float:
    """The gate's metric for this run's served model, from its metrics.json."""
    p = cfg.promote
    for row in run.metrics():
        if (
            row["model"] == cfg.blend.serve
            and row["target"] == p.target
            and row["metric"] == p.metric
            and row["k"] == p.k
        ):
            return float(row["value"]) if row["value"] is not None else math.nan
    raise MissingInputError(f"run {run.path}: metrics.json has no {metric_name(cfg)}: rerun eval")


def run_config(run: Run, overrides: list[str] | None = None) -> Config:
    """The config a run was made with (its config.toml), pointed at its own folder;
    ``overrides`` (``key=value``) change settings that leave its outputs alone, such as
    ``run.executor``."""
    path = run.file("config.toml")
    if not path.exists():
        raise MissingInputError(f"run {run.path} has no config.toml: it is not complete")
    cfg = load_config(path, overrides or [])
    cfg.run.workspace = str(run.workspace)
    cfg.run.run_id = run.id
    return cfg


def champion_metric(cfg: Config, run: Run, champion: Run) -> float:
    """The champion's served model (its eval-fold model, trained on its own train fold),
    scored on ``run``'s eval fold with ``cfg``'s gate metric."""
    champ_cfg = run_config(champion)
    verified = champion.verify_through(STAGES, pipeline._config_hashes(champ_cfg), None)
    serve, weights = champ_cfg.blend.serve, champ_cfg.blend.weights
    heads = {
        name: pipeline._load_ranker(verified, pipeline.model_stem(name, "eval"))
        for name in heads_of(serve, weights)
    }
    mine = run.verify_through(STAGES, pipeline._config_hashes(cfg), None)
    features_path = mine.path("features/eval.parquet")
    labels = pl.read_parquet(mine.path("labels/eval.parquet"))
    columns = set(pl.read_parquet_schema(features_path))
    for name, ranker in heads.items():
        missing = [f for f in ranker.features_ if f not in columns]
        if missing:
            raise StaleArtifactError(
                f"the champion {champion.id}'s {name} model needs features this run does not "
                f"build ({', '.join(missing[:5])}), so it cannot be scored on this run's eval fold"
            )
    batches = pipeline.user_batches(features_path, cfg.eval.batch_rows)
    found = pipeline.gate_report(cfg, heads, serve, weights, batches, labels)
    return found.value(cfg.promote.metric, cfg.promote.k)


def promotion_gate(cfg: Config, run: Run) -> Decision:
    """Promote ``run`` unless it regresses against the champion (see the module docstring)."""
    workspace = run.workspace
    name = metric_name(cfg)
    value = served_metric(cfg, run)
    champion_id = current_run(workspace)
    if champion_id == run.id:
        return Decision(False, "already current", name, value, value, run.id)

    def promote(reason: str, champion: float | None = None) -> Decision:
        decision = Decision(True, reason, name, value, champion, champion_id)
        log_promotion(
            workspace,
            {"action": "promoted", "run_id": run.id, "previous": champion_id, **decision.to_dict()},
        )
        set_current(workspace, run.id)
        return decision

    if math.isnan(value):
        decision = Decision(False, f"{name} is undefined for this run", name, value)
    elif champion_id is None:
        return promote("first run of the workspace")
    else:
        champion = run_folder(workspace, champion_id)
        try:
            champion.check_complete()
        except GbrankError as exc:
            warn(f"the champion {champion_id} cannot be used ({exc}); promoting {run.id}")
            return promote(f"champion {champion_id} unusable")
        try:
            theirs = champion_metric(cfg, run, champion)
        except StaleArtifactError as exc:
            decision = Decision(False, str(exc), name, value, None, champion_id)
        else:
            tolerance = cfg.promote.tolerance
            if value >= theirs - tolerance:
                return promote(
                    f"{name} {value:.4f} against the champion's {theirs:.4f} on this eval fold "
                    f"(tolerance {tolerance})",
                    theirs,
                )
            decision = Decision(
                False,
                f"{name} {value:.4f} is below the champion {champion_id}'s {theirs:.4f} on this "
                f"eval fold by more than promote.tolerance = {tolerance}",
                name,
                value,
                theirs,
                champion_id,
            )
    log_promotion(workspace, {"action": "refused", "run_id": run.id, **decision.to_dict()})
    return decision


# --------------------------------------------------------------------------- runs commands


def promote_run(workspace: str | Path, run_id: str) -> Run:
    """Make a complete run ``current`` by hand (no gate)."""
    workspace = Path(workspace)
    with WorkspaceLock(workspace, "runs promote"):
        run = resolve_run(workspace, run_id)
        run.check_complete()
        previous = current_run(workspace)
        log_promotion(workspace, {"action": "manual", "run_id": run.id, "previous": previous})
        set_current(workspace, run.id)
        return run


def rollback(workspace: str | Path) -> tuple[str, str]:
    """Point ``current`` back at the run it replaced; returns (from, to)."""
    workspace = Path(workspace)
    with WorkspaceLock(workspace, "runs rollback"):
        now = current_run(workspace)
        if now is None:
            raise MissingInputError(f"workspace {workspace} has no current run to roll back")
        made = [
            e
            for e in promotions(workspace)
            if e.get("run_id") == now and e.get("action") in ("promoted", "manual")
        ]
        previous = made[-1].get("previous") if made else None
        if previous is None:
            raise MissingInputError(
                f"run {now} is the first champion of workspace {workspace}: there is nothing "
                "to roll back to (see `gbrank runs list`)"
            )
        run_folder(workspace, previous).check_complete()
        log_promotion(workspace, {"action": "rollback", "run_id": previous, "previous": now})
        set_current(workspace, previous)
        return now, previous


def resolve_run(workspace: str | Path, run_id: str) -> Run:
    """A run of the workspace by id, or "current"."""
    if run_id == "current":
        current = current_run(workspace)
        if current is None:
            raise MissingInputError(
                f"workspace {workspace} has no current run yet: `gbrank run` promotes one"
            )
        run_id = current
    run = run_folder(workspace, run_id)
    if not run.path.is_dir():
        raise MissingInputError(
            f"workspace {workspace} has no run {run_id!r} (see `gbrank runs list`)"
        )
    return run


def describe_runs(workspace: str | Path) -> str:
    """A table of the workspace's runs, oldest first; ``*`` marks ``current``."""
    current = current_run(workspace)
    lines = [f"{'':1} {'run':<14} {'status':<10} {'finished':<19} {'events':>12}  gate metric"]
    for run in list_runs(workspace):
        manifest = None
        with contextlib.suppress(GbrankError):
            manifest = run.manifest()
        status = "complete" if manifest else "incomplete"
        finished, events, metric = "", "", ""
        if manifest:
            stages = manifest.get("stages", {})
            last = max((s.get("finished", 0) for s in stages.values()), default=0)
            finished = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last)) if last else ""
            events = f"{stages.get('generate', {}).get('rows', '')}"
            events = f"{int(events):,}" if events.isdigit() else events
            try:
                cfg = run_config(run)
                metric = f"{metric_name(cfg)} = {served_metric(cfg, run):.4f}"
            except GbrankError:
                metric = "?"
        mark = "*" if run.id == current else ""
        lines.append(f"{mark:1} {run.id:<14} {status:<10} {finished:<19} {events:>12}  {metric}")
    if len(lines) == 1:
        return f"workspace {workspace} has no runs yet"
    return "\n".join(lines)


def describe_run(workspace: str | Path, run_id: str) -> str:
    """A run's manifest, served metrics and promotion history, as text."""
    run = resolve_run(workspace, run_id)
    manifest = run.manifest()
    out = [f"run {run.id} ({run.path})"]
    if manifest is None:
        done = [s for s in STAGES if run.record(s) is not None]
        out.append(f"incomplete: stages finished: {', '.join(done) or 'none'}")
        return "\n".join(out)
    out.append(f"current: {'yes' if current_run(workspace) == run.id else 'no'}")
    out.append(f"config hash: {manifest.get('config_hash', '')[:12]}  seed: {manifest.get('seed')}")
    inputs = manifest.get("inputs", {})
    out.append(f"data fingerprint: {str(inputs.get('data', ''))[:12]}")
    for f in inputs.get("files", []):
        out.append(f"  {f['role']}: {f['path']} ({f['size']:,} bytes, sha256 {f['sha256'][:12]})")
    versions = manifest.get("versions", {})
    out.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    out.append("threads: " + ", ".join(f"{k} {v}" for k, v in manifest.get("threads", {}).items()))
    out.append("stages:")
    recorded = manifest.get("stages", {})
    for stage in [*[s for s in STAGES if s in recorded], *[s for s in recorded if s not in STAGES]]:
        info = recorded[stage]
        reused = f" (reused from {info['reused_from']})" if info.get("reused_from") else ""
        out.append(f"  {stage:<9} {info.get('seconds', 0):8.1f}s{reused}")
    try:
        cfg = run_config(run)
        out.append(f"{metric_name(cfg)}: {served_metric(cfg, run):.4f}")
    except GbrankError as exc:
        out.append(f"gate metric: unavailable ({exc})")
    history = [e for e in promotions(workspace) if e.get("run_id") == run.id]
    for e in history:
        reason = f" ({e['reason']})" if e.get("reason") else ""
        out.append(f"{e.get('at')}: {e.get('action')}{reason}")
    return "\n".join(out)


# --------------------------------------------------------------------------- cross-validation


@dataclass
class CVResult:
    """Each fold's metrics and their mean and spread (sample standard deviation)."""

    runs: list[Run]
    as_of: list[str]
    summary: pl.DataFrame  # model, target, metric, k, mean, std, folds

    def table(self, target: str, names: tuple[str, ...] = ("recall", "ndcg", "map")) -> str:
        sub = self.summary.filter((pl.col("target") == target) & pl.col("metric").is_in(names))
        ks = sorted(sub["k"].unique().to_list())
        cols = [(m, k) for k in ks for m in names]
        models = sub["model"].unique(maintain_order=True).to_list()
        look = {(r["model"], r["metric"], r["k"]): r for r in sub.to_dicts()}
        width = max(len(m) for m in models) + 2
        head = "model".ljust(width) + "".join(f"{m}@{k}".rjust(18) for m, k in cols)
        lines = [
            f"target: {target} (mean ± std over {len(self.runs)} folds)",
            head,
            "-" * len(head),
        ]
        for model in models:
            cells = []
            for m, k in cols:
                r = look.get((model, m, k))
                cells.append((f"{r['mean']:.4f} ± {r['std']:.4f}" if r else "").rjust(18))
            lines.append(model.ljust(width) + "".join(cells))
        return "\n".join(lines)


def cross_validate(cfg: Config, n_folds: int) -> CVResult:
    """Kaggle-style time-series CV: the whole pipeline on ``n_folds`` consecutive eval folds
    (``data.split.rolling_folds``: the last is the default eval fold, each earlier one a
    horizon before), each a run of its own through the stage cache (no promotion), then each
    metric's mean and spread over the folds."""
    import json
    from datetime import datetime

    from gbrank.data.split import rolling_folds

    if n_folds < 2:
        raise ConfigError(f"--folds needs at least 2 folds, got {n_folds}")
    workspace = Path(cfg.run.workspace)
    with WorkspaceLock(workspace, "eval --folds"):
        last = run_pipeline(cfg, command="eval --folds", gate=False).run
        folds = json.loads(last.file("folds.json").read_text())
        end = datetime.fromisoformat(folds["inference"]["as_of"])
        horizon = cfg.folds.horizon_days
        planned = rolling_folds(end, horizon, n_folds)
        runs, as_of = [], []
        for fold in planned[:-1]:
            fold_cfg = copy.deepcopy(cfg)
            fold_cfg.folds.as_of = fold.as_of.isoformat()
            fold_cfg.run.run_id = (
                f"{cfg.run.run_id}-cv{fold.as_of:%Y%m%d%H}" if cfg.run.run_id else ""
            )
            runs.append(run_pipeline(fold_cfg, command="eval --folds", gate=False).run)
            as_of.append(fold.as_of.isoformat())
        runs.append(last)
        as_of.append(planned[-1].as_of.isoformat())
    frames = [
        pl.DataFrame(run.metrics()).with_columns(pl.lit(i).alias("fold"))
        for i, run in enumerate(runs)
    ]
    ranking = pl.concat(frames, how="diagonal_relaxed").filter(pl.col("k").is_not_null())
    summary = (
        ranking.group_by("model", "target", "metric", "k", maintain_order=True)
        .agg(
            pl.col("value").mean().alias("mean"),
            pl.col("value").std().alias("std"),
            pl.len().alias("folds"),
        )
        .filter(~pl.col("metric").str.starts_with("calibration"))
    )
    return CVResult(runs, as_of, summary)
