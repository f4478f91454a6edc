"""``gbrank tune``: an Optuna study over the ranker, and optionally the candidates and the blend.

The study maximises the promotion gate's figure (``promote.metric`` at ``promote.k`` on
``promote.target`` of ``blend.serve``) on a *validation split of the train fold*: the users of
the train fold's label window whose hash falls below ``train.valid_fraction`` (the users
``gbrank train`` holds out for early stopping). A trial fits each head the served model needs
on the other users' training sample, early-stopping on the held-out users' sampled rows as
``train`` does, then ranks the held-out users' *whole* candidate lists and scores the top K
against every positive they had, found or not, exactly as ``eval`` scores the eval fold. The
eval fold is never read, so its figures stay an unbiased check of the tuned config.

- **Trial 0 is the config as it is** (the baseline), so "better than the defaults" is
  measured on the same users by the same code.
- **Ranker-only trials reuse everything upstream:** the base config's generate and features
  stages are settled once (cached, reused or run) and their frames stay in memory; the
  held-out users' full-list features are built once and kept in
  ``<workspace>/tune/valid/<key>.parquet``, keyed by the features stage's cache key.
- **Candidate trials** (``space`` has ``"candidates"``) change source budgets and parameters;
  each distinct candidate config is a run of its own, settled through the stage cache, so a
  repeated one costs nothing.
- **Pruning** goes through the backend's training callback (:meth:`Ranker.fit`'s
  ``monitor``): every 10 rounds the validation NDCG is reported, and Optuna's percentile
  pruner stops a trial in the lowest quarter of earlier trials at that round.
- **Storage:** SQLite at ``<workspace>/tune/optuna.db`` unless ``tune.storage`` names another
  database. A resumed study (same name) keeps its finished trials and runs until it holds
  ``tune.trials`` finished ones; a trial a killed process left running is marked failed (with
  the default storage, under the workspace lock, no other process can be running it; other
  databases rely on Optuna's heartbeat). The TPE sampler is seeded with ``run.seed`` plus the
  number of trials already in the study, so a fresh study is reproducible and a resumed one
  does not replay its first draws.
- **Output:** ``<workspace>/tune/<study>/best.toml``, the whole config with the best trial's
  values (``gbrank run -c`` and ``gbrank train -c`` take it; its ``tune.study`` names the
  study, so its eval report shows the study), ``study.json`` (every trial, the best, the
  parameter importances) and ``report.html`` / ``report.md`` with the optimisation history and
  the importances.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gbrank import columns as C
from gbrank import pipeline
from gbrank.atomic import atomic_path, atomic_write_json, atomic_write_text
from gbrank.config import Config, check_ranker_params, dump_toml
from gbrank.errors import ConfigError, DataError, warn
from gbrank.progress import report
from gbrank.rankers.base import Ranker
from gbrank.rankers.blend import heads_of
from gbrank.rankers.sampling import head_rows, head_spec, learnable_rows
from gbrank.runs import STAGES, Verified, WorkspaceLock

TUNE_DIR = "tune"
REPORT_EVERY = 10  # rounds between two reports of the validation metric to the pruner
#: A trial is pruned when its validation NDCG at a round is in the lowest quarter of earlier
#: trials' at that round. The median (Optuna's usual choice) pruned 13 of 20 trials at 1M
#: events after 20 rounds, among them a near copy of the best trial and every learning rate
#: below 0.05 (they start slow). Optuna's percentile is the share of trials *kept*: 75.
PRUNE_PERCENTILE = 75.0
HEARTBEAT_SECONDS = 60  # Optuna's heartbeat with a database other processes may share
GRACE_SECONDS = 180  # a running trial silent this long is failed by the next optimiser

# --------------------------------------------------------------------------- search spaces


@dataclass(frozen=True)
class Param:
    """One searched parameter: where it goes in the config and its distribution."""

    name: str  # the trial's parameter name
    low: float
    high: float
    log: bool = False
    integer: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            step = int(self.step or 1)
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)


#: The ranker's parameters per backend (train.params / train.xgboost_params).
RANKER_SPACE: dict[str, tuple[Param, ...]] = {
    "lightgbm": (
        Param("learning_rate", 0.02, 0.3, log=True),
        Param("num_leaves", 15, 255, log=True, integer=True),
        Param("min_data_in_leaf", 5, 400, log=True, integer=True),
        Param("feature_fraction", 0.4, 1.0),
        Param("lambda_l2", 1e-3, 30.0, log=True),
        Param("lambdarank_truncation_level", 10, 60, integer=True),
    ),
    "xgboost": (
        Param("learning_rate", 0.02, 0.3, log=True),
        Param("max_depth", 3, 10, integer=True),
        Param("min_child_weight", 0.1, 50.0, log=True),
        Param("colsample_bytree", 0.4, 1.0),
        Param("subsample", 0.5, 1.0),
        Param("reg_lambda", 1e-3, 30.0, log=True),
    ),
}


def _candidate_space(cfg: Config) -> list[tuple[Param, tuple[str, str]]]:
    """(parameter, (source, key)) for every source: its list length when fixed, ALS factors
    and regularisation, co-visitation windows."""
    out: list[tuple[Param, tuple[str, str]]] = []
    for name, table in cfg.candidates.sources.items():
        if isinstance(table.get("n"), int):
            out.append((Param(f"{name}.n", 10, 100, integer=True, step=10), (name, "n")))
        kind = table["kind"]
        if kind in ("als", "bpr"):
            out.append(
                (Param(f"{name}.factors", 32, 128, integer=True, step=16), (name, "factors"))
            )
            out.append(
                (Param(f"{name}.regularization", 1e-3, 1.0, log=True), (name, "regularization"))
            )
        if kind == "covisit":
            hours = (6.0, 12.0, 24.0, 48.0, 96.0, 336.0)
            out.append(
                (Param(f"{name}.max_gap_hours", 0, 0, choices=hours), (name, "max_gap_hours"))
            )
    return out


def trial_config(cfg: Config, trial: Any) -> Config:
    """``cfg`` with the trial's suggestions for every searched space."""
    out = copy.deepcopy(cfg)
    spaces = cfg.tune.space
    if "ranker" in spaces:
        params = dict(out.train.backend_params)
        for param in RANKER_SPACE[cfg.train.backend]:
            params[param.name] = param.suggest(trial)
        setattr(out.train, out.train.params_key, params)
    if "candidates" in spaces:
        for param, (source, key) in _candidate_space(cfg):
            out.candidates.sources[source][key] = param.suggest(trial)
    if "blend" in spaces:
        weights = out.blend.weights[out.blend.serve]
        for head in list(weights):
            weights[head] = trial.suggest_float(f"blend.{head}", 0.0, 1.0)
    return out


# --------------------------------------------------------------------------- the data


@dataclass
class TuneData:
    """What a trial trains and validates on, for one candidate config."""

    fit: pl.DataFrame  # training sample of the train fold's users not held out
    early: pl.DataFrame  # training sample of the held-out users: early stopping, pruning
    lists: pl.DataFrame  # the held-out users' whole candidate lists, with features
    labels: pl.DataFrame  # the held-out users' labels (every positive, found or not)
    features: list[str]
    run_id: str


def valid_users(labels: pl.DataFrame, cfg: Config) -> np.ndarray:
    """The held-out users: the train fold's labelled users below the validation hash. They do
    not depend on the candidates, so candidate trials are scored on the same users."""
    users = labels[C.USER].unique().sort().to_numpy()
    return users[pipeline.validation_mask(users, cfg)]


def settle_upstream(cfg: Config) -> Verified:
    """Generate and features for ``cfg`` (cached, reused from another run, or run), under the
    workspace lock the caller holds; returns their checked records."""
    from gbrank.runner import settle_stage

    fp = pipeline.input_fingerprint(cfg)
    run = pipeline.open_run(cfg, fp)
    hashes = pipeline._config_hashes(cfg)
    for index in range(2):
        settle_stage(cfg, run, index, hashes, fp)
    return run.verify(STAGES[2], hashes, fp)


def load_tune_data(cfg: Config) -> TuneData:
    """The train fold's sample split by the validation hash, and the held-out users' full
    candidate lists with their features (built once per features key, then read back)."""
    verified = settle_upstream(cfg)
    labels = pipeline._read_parquet(verified, "labels/train.parquet")
    held_out = pl.Series(C.USER, valid_users(labels, cfg), dtype=pl.Int32)
    rows = pipeline._read_parquet(verified, "features/train.parquet").sort(C.USER, C.ITEM)
    pipeline.check_training_rows(rows, "train")
    rows = pipeline.guarded_rows(rows, cfg)
    features = pipeline.feature_columns(rows)
    in_valid = rows[C.USER].is_in(held_out.implode())
    fit, early = rows.filter(~in_valid), rows.filter(in_valid)
    del rows
    if fit.is_empty() or early.is_empty():
        raise DataError(
            f"the train fold's sample has {fit[C.USER].n_unique()} training and "
            f"{early[C.USER].n_unique()} held-out users: nothing to tune on",
            column=C.RAW_USER,
            fix="use more data, or a train.valid_fraction that leaves users on both sides",
        )
    key = verified.records["features"]["key"]
    cache = Path(cfg.run.workspace) / TUNE_DIR / "valid" / f"{key}-{_split_tag(cfg)}.parquet"
    if not cache.exists():
        lists = _list_features(cfg, verified, labels, held_out)
        with atomic_path(cache) as tmp:
            lists.write_parquet(tmp)
    lists = pl.read_parquet(cache).sort(C.USER, C.ITEM)
    return TuneData(
        fit,
        early,
        lists,
        labels.filter(pl.col(C.USER).is_in(held_out.implode())),
        features,
        verified.run.id,
    )


def _split_tag(cfg: Config) -> str:
    return f"v{cfg.train.valid_fraction:g}-s{cfg.run.seed}"


def _list_features(
    cfg: Config, verified: Any, labels: pl.DataFrame, held_out: pl.Series
) -> pl.DataFrame:
    """Features of the held-out users' whole train-fold candidate lists, built as the eval
    fold's are (no precomputed percentiles: each list is whole)."""
    from gbrank.features.sharding import plan_shards, split_shards

    cands = pipeline._read_parquet(verified, "candidates/train.parquet")
    cands = cands.filter(pl.col(C.USER).is_in(held_out.implode()))
    builder = pipeline.fold_builder(cfg, pipeline._load_run_data(verified), verified, "train")
    shards = plan_shards(cands.height, cfg.features.shards, cfg.features.shard_rows)
    parts = [
        pipeline._labelled_features(shard, builder=builder, labels=labels, percentiles=None)
        for shard in split_shards(cands, shards)
    ]
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


# --------------------------------------------------------------------------- one trial


def fit_heads(
    cfg: Config, data: TuneData, monitor: Callable[[int, float], None] | None = None
) -> dict[str, Ranker]:
    """Every head the served model needs, fitted on the trial's training users (the first
    head's validation metric goes to ``monitor``)."""
    heads: dict[str, Ranker] = {}
    for index, name in enumerate(heads_of(cfg.blend.serve, cfg.blend.weights)):
        head = head_spec(name, cfg.train.cvr_rows)
        ranker = pipeline.head_ranker(cfg, head)  # exactly as `train` makes it
        watch = None
        if monitor is not None and index == 0:
            # Higher is better for the pruner: NDCG as it is, log loss negated.
            watch = monitor if head.kind == "rank" else (lambda r, v: monitor(r, -v))
        heads[name] = ranker.fit(
            learnable_rows(data.fit, head, "train"),
            data.features,
            head.label,
            valid=head_rows(data.early, head),
            monitor=watch,
        )
    return heads


def validation_value(cfg: Config, data: TuneData, heads: dict[str, Ranker]) -> float:
    """The gate's figure for ``heads`` on the held-out users' whole lists."""
    values = validation_values(cfg, data, heads)
    return float(values.mean()) if values.size else math.nan


def validation_values(cfg: Config, data: TuneData, heads: dict[str, Ranker]) -> np.ndarray:
    """Each held-out user's value of the gate's figure (users with a positive, by code):
    :func:`validation_value` is their mean."""
    batches = _whole_users(data.lists, max(cfg.eval.batch_rows, 1))
    found = pipeline.gate_report(
        cfg, heads, cfg.blend.serve, cfg.blend.weights, batches, data.labels
    )
    assert found.per_user is not None  # ranking_metrics always fills it
    per_user = found.per_user.filter(pl.col("k") == cfg.promote.k).sort(C.USER)
    return per_user[cfg.promote.metric].to_numpy().astype(np.float64)


def _whole_users(frame: pl.DataFrame, step: int) -> Iterator[pl.DataFrame]:
    """``frame`` (sorted by user) in slices of about ``step`` rows, each of whole users."""
    users = frame[C.USER].to_numpy()
    start = 0
    while start < users.size:
        stop = min(start + step, users.size)
        if stop < users.size:
            cut = int(np.searchsorted(users, users[stop], side="left"))
            stop = cut if cut > start else int(np.searchsorted(users, users[start], side="right"))
        yield frame.slice(start, stop - start)
        start = stop


# --------------------------------------------------------------------------- the study


@dataclass
class TuneResult:
    study: str
    storage: str
    best_value: float
    best_params: dict[str, Any]
    baseline_value: float | None
    gain: dict[str, float] | None  # the best's paired gain over trial 0: gain, se, users
    trials: int  # finished trials in the study
    ran: int  # trials run by this call
    config_path: Path
    report_path: Path
    seconds: float


def study_name(cfg: Config) -> str:
    return cfg.tune.study or f"tune-{pipeline.run_id_for(cfg)}"


def storage_url(cfg: Config) -> str:
    if cfg.tune.storage:
        return cfg.tune.storage
    path = Path(cfg.run.workspace).resolve() / TUNE_DIR / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _redacted(url: str) -> str:
    """A database URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        auth, host = rest.rsplit("@", 1)
        return f"{scheme}://{auth.split(':', 1)[0]}:***@{host}"
    return url


def _open_study(cfg: Config, name: str, url: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if cfg.tune.storage:  # a database other optimisers may share: their liveness by heartbeat
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS
            )
    else:
        storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True
    )
    if not cfg.tune.storage:
        # Our own SQLite file, under the workspace lock: a running trial is a dead process's.
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    sampler = optuna.samplers.TPESampler(
        seed=cfg.run.seed + len(study.trials), n_startup_trials=cfg.tune.startup_trials
    )
    pruner = (
        optuna.pruners.PercentilePruner(
            PRUNE_PERCENTILE,
            n_startup_trials=5,
            n_warmup_steps=cfg.tune.prune_after_rounds,
            interval_steps=1,
        )
        if cfg.tune.pruning
        else optuna.pruners.NopPruner()
    )
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def _finished(study: Any) -> list[Any]:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def tune(cfg: Config, out: str | Path | None = None) -> TuneResult:
    """Run (or resume) the study of ``cfg.tune`` and write its best config and report."""
    import optuna

    t0 = time.perf_counter()
    check_ranker_params(cfg)
    name, url = study_name(cfg), storage_url(cfg)
    folder = Path(cfg.run.workspace) / TUNE_DIR / name
    with WorkspaceLock(cfg.run.workspace, "tune"):
        study = _open_study(cfg, name, url)
        if not study.trials:
            study.enqueue_trial({}, user_attrs={"baseline": True})
        remaining = max(cfg.tune.trials - len(_finished(study)), 0)
        base_data = None if "candidates" in cfg.tune.space else load_tune_data(cfg)
        memo: dict[str, TuneData] = {}

        def data_for(trial_cfg: Config) -> TuneData:
            if base_data is not None:
                return base_data  # every ranker trial trains on these frames
            upstream = upstream_config(cfg, trial_cfg)
            key = pipeline.run_id_for(upstream)
            if key not in memo:
                memo.clear()  # one candidate config's frames alive at a time
                memo[key] = load_tune_data(upstream)
            return memo[key]

        fitted: dict[str, dict[str, Ranker]] = {}

        def objective(trial: optuna.Trial) -> float:
            started = time.perf_counter()
            try:
                return run_trial(trial)
            finally:
                trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))

        def run_trial(trial: optuna.Trial) -> float:
            baseline = bool(trial.user_attrs.get("baseline"))
            trial_cfg = cfg if baseline else trial_config(cfg, trial)
            data = data_for(trial_cfg)

            def monitor(rounds: int, value: float) -> None:
                if rounds % REPORT_EVERY:
                    return
                trial.report(value, rounds)
                if cfg.tune.pruning and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at round {rounds}")

            if "ranker" in cfg.tune.space or data.run_id not in fitted:
                fitted.clear()
                fitted[data.run_id] = fit_heads(trial_cfg, data, None if baseline else monitor)
            heads = fitted[data.run_id]  # blend trials alone score the same heads again
            trial.set_user_attr("trees", {n: r.best_iteration_ for n, r in heads.items()})
            trial.set_user_attr("run", data.run_id)
            values = validation_values(trial_cfg, data, heads)
            value = float(values.mean()) if values.size else math.nan
            _save_users(folder, trial.number, values)
            if math.isnan(value):
                raise optuna.TrialPruned("the validation metric is undefined")
            return value

        def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            best = max(complete, key=lambda t: float(t.value or 0.0)) if complete else None
            report(
                "trial",
                stage="tune",
                number=trial.number,
                state=trial.state.name.lower(),
                value=trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None,
                pruned_at=trial.last_step
                if trial.state == optuna.trial.TrialState.PRUNED
                else None,
                best=best.value if best else None,
                best_trial=best.number if best else None,
                seconds=trial.user_attrs.get("seconds")
                or (trial.duration.total_seconds() if trial.duration else None),
                params=trial.params,
                done=len(_finished(study)),
                total=cfg.tune.trials,
            )
            write_summary(cfg, study, folder, url)

        report("stage_start", stage="tune", study=name, remaining=remaining)
        if remaining:
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=cfg.tune.timeout or None,
                callbacks=[after],
                gc_after_trial=False,
            )
        ran = len(_finished(study)) - (cfg.tune.trials - remaining)
        summary = write_summary(cfg, study, folder, url)
        if summary["best"] is None:
            raise ConfigError(f"study {name} has no complete trial: nothing to write")
        best_cfg = best_config(cfg, study)
        config_path = Path(out) if out is not None else folder / "best.toml"
        header = (
            f"# gbrank config: the best trial ({summary['best']['number']}) of study {name},\n"
            f"# {summary['metric']} {summary['best']['value']:.4f} on the train fold's held-out "
            f"users (trial 0, the config as it was: {_fmt(summary['baseline'])}).\n"
        )
        atomic_write_text(header + dump_toml(best_cfg), config_path)
        report_path = write_study_report(summary, folder)
        report("stage_done", stage="tune", how="ran", seconds=round(time.perf_counter() - t0, 3))
    return TuneResult(
        name,
        _redacted(url),
        summary["best"]["value"],
        summary["best"]["params"],
        summary["baseline"],
        summary["gain"],
        summary["finished"],
        max(ran, 0),
        config_path,
        report_path,
        time.perf_counter() - t0,
    )


def upstream_config(cfg: Config, trial_cfg: Config) -> Config:
    """``cfg`` with the trial's candidate sources: what generate and features are made from.
    A changed source set gets a run id of its own (a pinned ``run.run_id`` would overwrite
    the base run)."""
    if trial_cfg.candidates.sources == cfg.candidates.sources:
        return cfg
    out = copy.deepcopy(cfg)
    out.candidates.sources = copy.deepcopy(trial_cfg.candidates.sources)
    out.run.run_id = ""
    return out


def best_config(cfg: Config, study: Any) -> Config:
    """The config with the best trial's values, naming the study, with a run id of its own."""
    import optuna

    best = study.best_trial
    out = (
        cfg
        if best.user_attrs.get("baseline")
        else trial_config(cfg, optuna.trial.FixedTrial(best.params))
    )
    out = copy.deepcopy(out)
    out.tune.study = study.study_name
    out.tune.storage = cfg.tune.storage
    out.run.run_id = ""  # a run of its own: the base run (maybe the champion) stays as it is
    return out


# --------------------------------------------------------------------------- summary, report


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def importances(study: Any) -> dict[str, float]:
    """Each parameter's importance (PED-ANOVA, Optuna's own: no scikit-learn), over the
    complete trials that drew parameters; empty with fewer than 4 of them."""
    import optuna

    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.params
    ]
    if len(complete) < 4:
        return {}
    try:
        from optuna.importance import PedAnovaImportanceEvaluator

        with warnings.catch_warnings():  # "few trials in some regimes": the figure says so
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(
                study, evaluator=PedAnovaImportanceEvaluator()
            )
    except Exception as exc:  # importance is a report figure: never fail the study for it
        warn(f"parameter importances could not be computed: {exc}")
        return {}
    return {k: float(v) for k, v in found.items()}


def write_summary(cfg: Config, study: Any, folder: Path, url: str) -> dict[str, Any]:
    """``<folder>/study.json``: every trial, the best, the baseline, the importances."""
    import optuna

    trials = []
    for t in study.get_trials(deepcopy=False):
        complete = t.state == optuna.trial.TrialState.COMPLETE
        trials.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value if complete else None,  # a pruned one's is its last report
                "params": t.params,
                "baseline": bool(t.user_attrs.get("baseline")),
                "trees": t.user_attrs.get("trees"),
                "seconds": t.user_attrs.get("seconds"),
                "pruned_at": t.last_step if t.state == optuna.trial.TrialState.PRUNED else None,
            }
        )
    complete = [t for t in trials if t["state"] == "complete"]
    best = max(complete, key=lambda t: t["value"]) if complete else None
    baseline_trial = next((t for t in complete if t["baseline"]), None)
    baseline = baseline_trial["value"] if baseline_trial else None
    gain = (
        paired_gain(folder, best["number"], baseline_trial["number"])
        if best is not None and baseline_trial is not None
        else None
    )
    p = cfg.promote
    summary = {
        "study": study.study_name,
        "storage": _redacted(url),
        "metric": f"{p.target} {p.metric}@{p.k} of {cfg.blend.serve}",
        "split": f"train fold, users below the validation hash (train.valid_fraction = "
        f"{cfg.train.valid_fraction})",
        "space": list(cfg.tune.space),
        "backend": cfg.train.backend,
        "finished": sum(t["state"] in ("complete", "pruned") for t in trials),
        "trials": trials,
        "best": best,
        "baseline": baseline,
        "gain": gain,
        "importances": importances(study),
    }
    atomic_write_json(summary, folder / "study.json")
    return summary


def _save_users(folder: Path, number: int, values: np.ndarray) -> None:
    """Each held-out user's value in trial ``number`` (for the paired gain of the best)."""
    with atomic_path(folder / "users" / f"{number}.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, values, allow_pickle=False)


def paired_gain(folder: Path, best: int, baseline: int) -> dict[str, float] | None:
    """The best trial's mean gain over the baseline on the same held-out users, with the
    standard error of that paired difference; None when either's values are not kept."""
    try:
        a = np.load(folder / "users" / f"{best}.npy", allow_pickle=False)
        b = np.load(folder / "users" / f"{baseline}.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if a.shape != b.shape or a.size < 2:
        return None
    diff = a - b
    return {
        "gain": float(diff.mean()),
        "se": float(diff.std(ddof=1) / math.sqrt(diff.size)),
        "users": int(diff.size),
    }


def read_summary(workspace: str | Path, study: str) -> dict[str, Any] | None:
    """The study summary ``gbrank tune`` wrote in ``workspace``, or None."""
    path = Path(workspace) / TUNE_DIR / study / "study.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def write_study_report(summary: dict[str, Any], folder: Path) -> Path:
    """``<folder>/report.html`` and ``report.md``: the study's section of the eval report."""
    from gbrank.report import render_study

    page, markdown, svgs = render_study(summary)
    for name, svg in svgs.items():
        atomic_write_text(svg, folder / "report" / f"{name}.svg")
    atomic_write_text(markdown, folder / "report.md")
    path = folder / "report.html"
    atomic_write_text(page, path)
    return path


__all__ = [
    "RANKER_SPACE",
    "TuneData",
    "TuneResult",
    "best_config",
    "fit_heads",
    "load_tune_data",
    "read_summary",
    "trial_config",
    "tune",
    "validation_value",
]
