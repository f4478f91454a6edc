"""The stages as functions: resolved config in, artifacts in the run folder out.

Each stage reads what the previous one wrote, so the CLI commands ``generate``, ``features``,
``train`` and ``eval`` can run one by one (same config, same run folder) or all at once.

Example:
    >>> from gbrank.config import load_config
    >>> cfg = load_config("gbrank.toml")          # doctest: +SKIP
    >>> generate(cfg); build_features(cfg); train(cfg)  # doctest: +SKIP
    >>> result = evaluate(cfg)                     # doctest: +SKIP
    >>> result.metrics.filter(pl.col("target") == "purchase")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl
import polars.selectors as cs

from gbrank import columns as C
from gbrank import rankers
from gbrank.budgets import BUDGET_KEYS, Budget, cap_per_user, choose_n, parse_budget, truncate
from gbrank.candidates import build_source, union_candidates
from gbrank.candidates.base import CandidateSource
from gbrank.config import Config, dump_toml
from gbrank.data.io import Coverage, LoadedEvents, Summary, load_events, load_table, resolve_paths
from gbrank.data.split import (
    Fold,
    check_fold,
    check_learnable,
    data_end,
    history,
    label_window,
    make_folds,
)
from gbrank.data.vocab import Vocab
from gbrank.errors import (
    ConfigError,
    DamagedArtifactError,
    DataError,
    MissingInputError,
    StaleArtifactError,
    warn,
)
from gbrank.evaluation import (
    ORACLE_MAX_CELLS,
    CurveCounter,
    ScoreSampler,
    breakdowns,
    by_k_curves,
    interval_rows,
    oracle_lists,
)
from gbrank.executor import LocalExecutor, Shared, Task, write_table
from gbrank.features.builders import FeatureBuilder, feature_columns
from gbrank.features.families.source import put_percentiles, sample_percentiles
from gbrank.features.labels import attach_labels, build_labels, relevant_items
from gbrank.metrics import (
    RankingReport,
    binary_rows,
    candidate_report,
    metrics_rows,
    ranking_metrics,
)
from gbrank.progress import steps
from gbrank.rankers.base import (
    Ranker,
    cap_groups,
    compiler_available,
    feature_matrix,
    query_groups,
)
from gbrank.rankers.blend import blend_names, heads_of, model_scores
from gbrank.rankers.sampling import (
    EVAL_USERS_SALT,
    TRAIN_USERS_SALT,
    Head,
    SampleSpec,
    check_head_rows,
    hashed_subset,
    head_mask,
    head_rows,
    head_spec,
    learnable_rows,
    sample_keys,
)
from gbrank.rankers.sampling import validation_mask as _validation_mask
from gbrank.report import write_report
from gbrank.runs import (
    STAGES,
    Run,
    Verified,
    WorkspaceLock,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_table,
    atomic_write_text,
    content_files,
    content_fingerprint,
    run_folder,
    stage_key,
)

LABELLED_FOLDS = ("train", "eval")

# The config each stage reads ("section" or "section.key"); a stage's record keeps a hash of
# these, so a later stage refuses artifacts made under another config. Input paths are left
# out: the data's content fingerprint stands for them.
STAGE_CONFIG: dict[str, tuple[str, ...]] = {
    "generate": (
        "data",
        "events",
        "folds",
        "candidates",
        "train.sample.users",
        "eval.users",
        "run.seed",
    ),
    "features": ("features", "events", "train.sample", "run.seed"),
    "train": ("train", "events", "eval.ks", "run.seed"),
    "eval": ("eval", "blend"),
}
INPUT_KEYS = ("events", "items", "users")  # data.<key>: paths, fingerprinted by content


def stage_config_hash(cfg: Config, stage: str) -> str:
    resolved = cfg.to_dict()
    picked: dict[str, Any] = {}
    for key in STAGE_CONFIG[stage]:
        value: Any = resolved
        for part in key.split("."):
            value = value[part]
        picked[key] = value
    picked["data"] = {k: v for k, v in picked.get("data", {}).items() if k not in INPUT_KEYS}
    text = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _config_hashes(cfg: Config) -> dict[str, str]:
    return {stage: stage_config_hash(cfg, stage) for stage in STAGE_CONFIG}


def input_fingerprint(cfg: Config) -> str:
    """A content hash of the input files (events, items, users): size and sha256 of each,
    cached by modification time in the workspace, so ``touch`` or a move changes nothing."""
    return content_fingerprint(*_input_paths(cfg))


def input_files(cfg: Config) -> list[dict[str, Any]]:
    """Role, path, size and sha256 of every input file (for the manifest)."""
    return content_files(*_input_paths(cfg))


def _input_paths(cfg: Config) -> tuple[list[tuple[str, Path]], Path | None]:
    paths: list[tuple[str, Path]] = []
    for what in INPUT_KEYS:
        spec = getattr(cfg.data, what)
        if spec:
            try:
                paths += [(what, p) for p in resolve_paths(spec, what)]
            except MissingInputError:
                continue  # reported by the stage that reads it
    workspace = Path(cfg.run.workspace)
    return paths, workspace if workspace.is_dir() else None


#: run.* keys that leave a run's outputs alone: runs that differ only in them share a folder.
NOT_IN_RUN_ID = ("workspace", "run_id", "executor", "scheduler", "workers", "worker_threads")


def run_id_for(cfg: Config, fingerprint: str | None = None) -> str:
    """``run.run_id``, or 12 hex digits over the config (without the workspace, the input
    paths and where the shards run) and the content of the inputs."""
    if cfg.run.run_id:
        return cfg.run.run_id
    resolved = cfg.to_dict()
    resolved["run"] = {k: v for k, v in resolved["run"].items() if k not in NOT_IN_RUN_ID}
    resolved["data"] = {k: v for k, v in resolved["data"].items() if k not in INPUT_KEYS}
    del resolved["promote"]  # the gate reads the artifacts, it makes none
    del resolved["tune"]  # nor does the tuner: what it finds is written into other configs
    text = json.dumps(resolved, sort_keys=True, default=str)
    fp = fingerprint if fingerprint is not None else input_fingerprint(cfg)
    return hashlib.sha256(f"{text}|{fp}".encode()).hexdigest()[:12]


def open_run(cfg: Config, fingerprint: str | None = None) -> Run:
    """The run folder of this config and these inputs.

    Its name is ``run.run_id`` when set, else a hash of the config and the content of the input
    files: stage commands run one by one with the same config and data share a folder, and new
    data (the nightly cron case) starts a new run instead of overwriting one.
    """
    return run_folder(cfg.run.workspace, run_id_for(cfg, fingerprint))


F = TypeVar("F", bound=Callable[..., Any])


def locked(stage: str) -> Callable[[F], F]:
    """Run a stage function under the workspace lock (re-entrant: ``gbrank run`` holds it)."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(cfg: Config, *args: Any, **kwargs: Any) -> Any:
            with WorkspaceLock(cfg.run.workspace, stage):
                return func(cfg, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def verify_run(
    cfg: Config, stage: str, check_inputs: bool = True, link: bool = False
) -> tuple[Run, Verified]:
    """The run folder and the checked records of every stage before ``stage``.

    ``link`` (a stage function, under the workspace lock): a stage before ``stage`` that this
    run folder lacks is taken from another run holding the same outputs (:func:`link_cached`),
    so ``gbrank train`` with a config that changed only the training runs at once.
    ``check_inputs=False`` (serving a named run, whose data the run folder holds): the run is
    ``run.run_id`` and the input files are not compared with the ones it read."""
    if not check_inputs:
        run = run_folder(cfg.run.workspace, cfg.run.run_id)
        return run, run.verify(stage, _config_hashes(cfg), None)
    fp = input_fingerprint(cfg)
    run = open_run(cfg, fp)
    hashes = _config_hashes(cfg)
    for index in range(STAGES.index(stage) if link else 0):
        # A new run folder (a config that changed only later stages, such as a tuned one)
        # takes what it would recompute identically from the run that holds it.
        try:
            run.verify_through(STAGES[: index + 1], hashes, fp)
        except (MissingInputError, StaleArtifactError, DamagedArtifactError):
            if link_cached(run, index, hashes, fp) is None:
                break
    return run, run.verify(stage, hashes, fp)


def link_cached(run: Run, index: int, hashes: dict[str, str], fp: str) -> str | None:
    """Take stage ``STAGES[index]`` from another run whose record has the same cache key
    (its config hash, upstream outputs and, for generate, data fingerprint), when one holds it
    intact; returns that run's id, or None (the stage must run). Every stage before it must
    be valid in ``run``."""
    stage = STAGES[index]
    upstream = run.verify_through(STAGES[:index], hashes, fp)
    key = stage_key(stage, hashes[stage], upstream.hashes(), fp if index == 0 else None)
    source = run.cached_run(stage, key)
    if source is None:
        return None
    run.reuse_stage(stage, source)
    return source.id


# --------------------------------------------------------------------------- data


@dataclass
class RunData:
    events: pl.DataFrame
    users: Vocab
    items: Vocab
    item_attrs: pl.DataFrame | None
    user_attrs: pl.DataFrame | None
    folds: dict[str, Fold]


def _read_parquet(verified: Verified, relative: str) -> pl.DataFrame:
    return pl.read_parquet(verified.path(relative))


def _read_json(verified: Verified, relative: str) -> Any:
    return json.loads(verified.path(relative).read_text())


def _load_run_data(
    verified: Verified, users: Vocab | None = None, items: Vocab | None = None
) -> RunData:
    """The run's events, vocabularies (``users``, ``items`` when the caller holds them),
    attribute tables and folds."""
    events = _read_parquet(verified, "data/events.parquet")
    if users is None:
        users = Vocab.load(verified.path("vocab/users.parquet"))
    if items is None:
        items = Vocab.load(verified.path("vocab/items.parquet"))
    attrs = (
        _read_parquet(verified, "data/items.parquet")
        if verified.has("data/items.parquet")
        else None
    )
    user_attrs = (
        _read_parquet(verified, "data/users.parquet")
        if verified.has("data/users.parquet")
        else None
    )
    return RunData(events, users, items, attrs, user_attrs, _load_folds(verified))


def _load_folds(verified: Verified) -> dict[str, Fold]:
    return {
        name: Fold(
            name,
            datetime.fromisoformat(f["as_of"]),
            datetime.fromisoformat(f["label_end"]) - datetime.fromisoformat(f["as_of"]),
        )
        for name, f in _read_json(verified, "folds.json").items()
    }


def _users_history(verified: Verified, fold: Fold, users: pl.Series) -> pl.DataFrame:
    """``user, item`` of the events of ``users`` before ``fold.as_of``, read from the run's
    events file with the filter pushed into the scan (not the whole log in memory)."""
    return (
        pl.scan_parquet(verified.path("data/events.parquet"))
        .filter((pl.col(C.TS) < fold.as_of) & pl.col(C.USER).is_in(users.implode()))
        .select(C.USER, C.ITEM)
        .collect()
    )


@dataclass
class Inputs:
    """The validated inputs of a run, before anything is written."""

    loaded: LoadedEvents
    item_attrs: pl.DataFrame | None
    user_attrs: pl.DataFrame | None
    folds: dict[str, Fold]


def load_inputs(cfg: Config, coverage: list[Coverage] | None = None) -> Inputs:
    """Load and check the configured inputs and folds, writing nothing: every data problem
    (the data contract, the attribute tables' coverage, folds that leave nothing to learn)
    is raised here, before a stage touches the run folder."""
    loaded = load_events(cfg.data)
    attrs = None
    if cfg.data.items:
        attrs = load_table(
            cfg.data.items, cfg.data.columns.item_id, "items", loaded.items, coverage=coverage
        )
    user_attrs = None
    if cfg.data.users:
        user_attrs = load_table(
            cfg.data.users, cfg.data.columns.user_id, "users", loaded.users, coverage=coverage
        )
    check_learnable(loaded.events)
    folds = make_folds(data_end(loaded.events), cfg.folds.horizon_days, cfg.folds.as_of)
    for name in LABELLED_FOLDS:
        check_fold(loaded.events, folds[name], cfg.eval.targets)
    return Inputs(loaded, attrs, user_attrs, folds)


GENERATE_INPUTS = [
    "data/events.parquet",
    "vocab/users.parquet",
    "vocab/items.parquet",
    "folds.json",
]


def ingest(cfg: Config, run: Run, inputs: Inputs) -> tuple[RunData, list[str]]:
    """Write the coded events, vocabularies, attribute tables and folds of a run."""
    loaded = inputs.loaded
    written = list(GENERATE_INPUTS)
    atomic_write_parquet(loaded.events, run.file("data/events.parquet"))
    loaded.users.save(run.file("vocab/users.parquet"))
    loaded.items.save(run.file("vocab/items.parquet"))
    if inputs.item_attrs is not None:
        atomic_write_parquet(inputs.item_attrs, run.file("data/items.parquet"))
        written.append("data/items.parquet")
    if inputs.user_attrs is not None:
        atomic_write_parquet(inputs.user_attrs, run.file("data/users.parquet"))
        written.append("data/users.parquet")
    atomic_write_json({k: f.to_dict() for k, f in inputs.folds.items()}, run.file("folds.json"))
    atomic_write_text(dump_toml(cfg), run.file("config.toml"))
    data = RunData(
        loaded.events,
        loaded.users,
        loaded.items,
        inputs.item_attrs,
        inputs.user_attrs,
        inputs.folds,
    )
    return data, written


# --------------------------------------------------------------------------- candidates


def _sources(cfg: Config) -> list[tuple[CandidateSource, Budget]]:
    out = []
    for name, table in cfg.candidates.sources.items():
        params = {k: v for k, v in table.items() if k != "kind" and k not in BUDGET_KEYS}
        params.setdefault("event_weights", cfg.events.weight_list())
        if table["kind"] in ("als", "bpr"):
            params.setdefault("seed", cfg.run.seed)
        source = build_source(name, table["kind"], params)
        out.append((source, parse_budget(name, table)))
    return out


def fit_source(
    source: CandidateSource, hist: pl.DataFrame, data: RunData, as_of: datetime
) -> CandidateSource:
    """``source`` fitted on ``hist`` with the run's vocabulary sizes and attribute tables."""
    return source.fit(
        hist,
        n_users=len(data.users),
        n_items=len(data.items),
        as_of=as_of,
        items=data.item_attrs,
        users=data.user_attrs,
    )


def source_lists(
    cfg: Config,
    hist: pl.DataFrame,
    users: np.ndarray | None,
    data: RunData,
    as_of: datetime,
    budgets: dict[str, int] | None = None,
    keep: Callable[[CandidateSource], None] | None = None,
    previous: Callable[[str], CandidateSource] | None = None,
) -> tuple[dict[str, pl.DataFrame], dict[str, float]]:
    """Fit every source on ``hist``, one alive at a time; each proposes its budget (or
    ``n_max`` when automatic and not yet resolved) for ``users`` (none when ``users`` is None),
    in batches of ``candidates.batch_users``, and is then handed to ``keep`` (which saves it).
    A source that can start from an earlier fit (ALS) starts from ``previous(name)``, the
    same source fitted on the previous fold, whose history is nested in ``hist``.
    Returns the lists and each source's seconds."""
    frames: dict[str, pl.DataFrame] = {}
    seconds: dict[str, float] = {}
    sources = _sources(cfg)
    while sources:  # one fitted source alive at a time
        source, budget = sources.pop(0)
        t0 = time.perf_counter()
        if previous is not None and source.warm_startable:
            source.warm_start(previous(source.name))
        fit_source(source, hist, data, as_of)
        if users is not None:
            n = budgets[source.name] if budgets else budget.generate_n
            step = max(cfg.candidates.batch_users, 1)
            batches = list(
                LocalExecutor().map(
                    "generate",
                    functools.partial(source.generate, k=n),
                    (users[i : i + step] for i in range(0, len(users), step)),
                )
            )
            frames[source.name] = pl.concat(batches) if batches else source.generate(users, n)
        if keep is not None:
            keep(source)
        seconds[source.name] = time.perf_counter() - t0
        del source
    return frames, seconds


def resolve_budgets(
    cfg: Config, frames: dict[str, pl.DataFrame], labels: pl.DataFrame
) -> dict[str, int]:
    """Every source's list length: fixed ones as configured, automatic ones chosen from the
    positive rate per rank on these (train-fold) lists."""
    positives = relevant_items(labels, cfg.candidates.budget_target)
    out = {}
    for source, budget in _sources(cfg):
        out[source.name] = (
            choose_n(frames[source.name], positives, budget) if budget.auto else budget.n
        )
    return out


def combine(cfg: Config, frames: dict[str, pl.DataFrame], budgets: dict[str, int]) -> pl.DataFrame:
    """Truncate each list to its budget, take the union, apply the per-user cap."""
    lists = {name: truncate(frame, budgets[name]) for name, frame in frames.items()}
    union = union_candidates(lists)
    return cap_per_user(union, list(lists), cfg.candidates.max_per_user)


def fold_users(cfg: Config, fold: str, users: np.ndarray) -> np.ndarray:
    """The users a labelled fold is made for, out of those with an event in its label window:
    at most ``train.sample.users`` (train fold) or ``eval.users`` (eval fold), by a stable
    hash (the training sample's own for the train fold). Candidates, labels and features are
    made for these users alone: a shop of 2M users costs no more to train and evaluate on
    than one of 100k."""
    if fold == "train":
        return hashed_subset(users, cfg.train.sample.users, cfg.run.seed, TRAIN_USERS_SALT)
    return hashed_subset(users, cfg.eval.users, cfg.run.seed, EVAL_USERS_SALT)


SOURCES_DIR = "sources"  # every fold's fitted sources, one .npz each


def source_file(fold: str, name: str) -> str:
    """Where source ``name`` fitted on fold ``fold`` (train, eval or inference) is kept."""
    return f"{SOURCES_DIR}/{fold}/{name}.npz"


def feature_models(cfg: Config, load: Callable[[str], CandidateSource]) -> dict[str, Any]:
    """What the feature families take from a fold's fitted sources (``load(name)``) instead
    of fitting it again (the similarity family's ALS factors and co-visitation weights), keyed
    as the families memoise it."""
    if "similarity" not in cfg.features.families:
        return {}
    from gbrank.features.families.similarity import models_from_sources

    kinds = {name: table["kind"] for name, table in cfg.candidates.sources.items()}
    return models_from_sources(kinds, load)


def fold_source_loader(verified: Verified, fold: str) -> Callable[[str], CandidateSource]:
    """``load(name)``: source ``name`` as the generate stage fitted it on ``fold``."""
    from gbrank.candidates.state import load_source

    return lambda name: load_source(verified.path(source_file(fold, name)))


def fold_builder(
    cfg: Config,
    data: RunData,
    verified: Verified,
    fold: str,
    load: Callable[[str], CandidateSource] | None = None,
) -> FeatureBuilder:
    """The feature builder of fold ``fold`` (train, eval or inference): its history and
    cut-off, the attribute tables, and the models the generate stage fitted on it (not fitted
    again; ``load(name)`` when the caller already holds the sources)."""
    cut = data.folds[fold]
    return FeatureBuilder.from_config(
        cfg,
        history(data.events, cut),
        cut.as_of,
        items=data.item_attrs,
        users=data.user_attrs,
        shared=feature_models(cfg, load or fold_source_loader(verified, fold)),
    )


def fit_serving_sources(
    cfg: Config, data: RunData, run: Run, seconds: dict[str, dict[str, float]]
) -> list[str]:
    """Fit every source on the whole history (the inference fold) and save it, so
    ``recommend`` scores users without refitting anything."""
    fold = data.folds["inference"]
    keep = functools.partial(_keep_source, run=run, fold="inference")
    _, seconds["inference"] = source_lists(
        cfg,
        history(data.events, fold),
        None,
        data,
        fold.as_of,
        keep=keep,
        previous=_kept_source_loader(run, "inference"),
    )
    return [source_file("inference", name) for name in cfg.candidates.sources]


def _keep_source(source: CandidateSource, *, run: Run, fold: str) -> None:
    from gbrank.candidates.state import save_source

    save_source(source, run.file(source_file(fold, source.name)))


#: The fold each fold's sources may start from: the one before it, whose history is nested in
#: its own (folds are made in this order).
PREVIOUS_FOLD = {"eval": "train", "inference": "eval"}


def _kept_source_loader(run: Run, fold: str) -> Callable[[str], CandidateSource] | None:
    """``load(name)``: source ``name`` as this generate stage kept it for the fold before
    ``fold`` (None for the first fold)."""
    from gbrank.candidates.state import load_source

    before = PREVIOUS_FOLD.get(fold)
    if before is None:
        return None
    return lambda name: load_source(run.file(source_file(before, name)))


@dataclass
class LabelledFold:
    """What making one labelled fold leaves for the rest of ``generate``."""

    budgets: dict[str, int]
    outputs: list[str]
    reports: list[pl.DataFrame]
    seconds: dict[str, float]
    users: dict[str, int]


def labelled_fold(
    cfg: Config, run: Run, data: RunData, name: str, budgets: dict[str, int] | None
) -> LabelledFold:
    """Candidates and labels of one labelled fold, written, with its fitted sources kept and
    its recall reports; resolves the automatic budgets when ``budgets`` is None. The fold's
    history and lists die with this call, before the next fold's are made."""
    fold = data.folds[name]
    hist = history(data.events, fold)
    labels = build_labels(label_window(data.events, fold))
    users = fold_users(cfg, name, labels[C.USER].unique().sort().to_numpy())
    n_users = {"labelled": labels[C.USER].n_unique(), "kept": len(users)}
    labels = labels.filter(pl.col(C.USER).is_in(users))
    keep = functools.partial(_keep_source, run=run, fold=name)
    previous = _kept_source_loader(run, name)
    frames, seconds = source_lists(cfg, hist, users, data, fold.as_of, budgets, keep, previous)
    del hist
    outputs = [source_file(name, source) for source in cfg.candidates.sources]
    if budgets is None:
        budgets = resolve_budgets(cfg, frames, labels)
        atomic_write_json(budgets, run.file("candidates/budgets.json"))
    cands = combine(cfg, frames, budgets)
    del frames
    atomic_write_parquet(cands, run.file(f"candidates/{name}.parquet"))
    atomic_write_parquet(labels, run.file(f"labels/{name}.parquet"))
    outputs += [f"candidates/{name}.parquet", f"labels/{name}.parquet"]
    reports = []
    for target in cfg.eval.targets:
        report = candidate_report(
            cands, relevant_items(labels, target), list(cfg.candidates.sources)
        )
        reports.append(
            report.with_columns(
                pl.lit(name).alias("fold"),
                pl.lit(target).alias("target"),
                (pl.col("candidates") / max(len(users), 1)).alias("candidates_per_user"),
            )
        )
    return LabelledFold(budgets, outputs, reports, seconds, n_users)


@dataclass
class GenerateResult:
    run: Run
    summary: Summary
    recall: pl.DataFrame  # fold, target, source, recall, unique_recall, positive_rate, ...
    seconds: dict[str, dict[str, float]]


@locked("generate")
def generate(cfg: Config) -> GenerateResult:
    """Stage 1: load data, make folds, generate candidates and labels for the train and eval
    folds, and measure each source's candidate recall."""
    t0 = time.perf_counter()
    fp = input_fingerprint(cfg)
    run = open_run(cfg, fp)
    inputs = load_inputs(cfg)  # every data error is raised before the run folder changes
    summary = inputs.loaded.summary
    run.begin_stage("generate")
    data, outputs = ingest(cfg, run, inputs)
    del inputs
    reports: list[pl.DataFrame] = []
    seconds: dict[str, dict[str, float]] = {}
    budgets: dict[str, int] | None = None
    n_users: dict[str, dict[str, int]] = {}
    for name in steps("generate", "labelled folds", LABELLED_FOLDS):
        # train first: it resolves the automatic budgets
        fold = labelled_fold(cfg, run, data, name, budgets)
        budgets = fold.budgets
        outputs += fold.outputs
        reports += fold.reports
        seconds[name], n_users[name] = fold.seconds, fold.users
        del fold  # nothing of a fold stays alive while the next one is made
    # The serving fold (all events): every source fitted once and saved, for recommend.
    outputs += fit_serving_sources(cfg, data, run, seconds)
    recall = pl.concat(reports).select(
        "fold",
        "target",
        "source",
        "recall",
        "unique_recall",
        "positive_rate",
        "candidates_per_user",
    )
    atomic_write_json(recall.to_dicts(), run.file("candidates/recall.json"))
    outputs += ["candidates/budgets.json", "candidates/recall.json"]
    run.record_stage(
        "generate",
        time.perf_counter() - t0,
        rows=summary.rows,
        users=n_users,
        source_seconds=seconds,
        inputs=fp,
    )
    run.finish_stage(
        "generate",
        config_hash=stage_config_hash(cfg, "generate"),
        inputs={},
        outputs=outputs,
        data_fingerprint=fp,
    )
    return GenerateResult(run, summary, recall, seconds)


# --------------------------------------------------------------------------- features


@dataclass
class FeaturesResult:
    run: Run
    rows: dict[str, int]
    features: list[str]


def _labelled_features(
    shard: pl.DataFrame,
    *,
    builder: FeatureBuilder,
    labels: pl.DataFrame,
    percentiles: pl.DataFrame | None,
) -> pl.DataFrame:
    """One shard's feature rows with their labels (and the training sample's percentiles)."""
    frame = builder.build(shard)
    if percentiles is not None:
        frame = put_percentiles(frame, percentiles)
    return attach_labels(frame, labels)


@dataclass
class FoldFeatureContext:
    """What every shard of a fold's features needs: the fold's builder, labels and (train
    fold) the training sample's score percentiles."""

    builder: FeatureBuilder
    labels: pl.DataFrame
    percentiles: pl.DataFrame | None


@dataclass(frozen=True)
class FoldFeatures:
    """The :class:`~gbrank.executor.Context` of the features stage's shards of one fold, as
    plain values: a worker rebuilds the fold's builder from the run folder (whose files it
    checks against the records, as this process did)."""

    cfg: Config
    run_dir: str
    records: dict[str, Any]
    fold: str
    percentiles: Shared | None

    @property
    def key(self) -> str:
        shared = self.percentiles.path if self.percentiles is not None else ""
        return f"features:{self.run_dir}:{self.fold}:{_stage_hash(self)}:{shared}"

    def build(self) -> FoldFeatureContext:
        verified = Verified(Run(Path(self.run_dir)), self.records)
        data = _load_run_data(verified)
        return FoldFeatureContext(
            fold_builder(self.cfg, data, verified, self.fold),
            _read_parquet(verified, f"labels/{self.fold}.parquet"),
            self.percentiles.read() if self.percentiles is not None else None,
        )


def _stage_hash(context: FoldFeatures) -> str:
    return stage_config_hash(context.cfg, "features")[:16]


def _empty_features(
    context: FoldFeatureContext | FoldFeatures, empty: pl.DataFrame
) -> pl.DataFrame:
    """The features frame (schema) of a fold with no candidate row."""
    built = context if isinstance(context, FoldFeatureContext) else context.build()
    return features_shard(built, empty)


def features_shard(context: FoldFeatureContext, shard: pl.DataFrame) -> pl.DataFrame:
    """The features stage's per-shard function (a :class:`~gbrank.executor.Task`'s)."""
    return _labelled_features(
        shard, builder=context.builder, labels=context.labels, percentiles=context.percentiles
    )


STAGING = ".staging"  # in the workspace: shard rows and results on their way to the workers


def stage_executor(cfg: Config, warm: tuple[str, ...] = ()) -> LocalExecutor:
    """The executor of ``run.executor``: the local loop, or the process's Dask executor for
    ``run.scheduler`` (a LocalCluster of ``run.workers`` when empty), whose workers start
    importing the modules ``warm`` names."""
    if cfg.run.executor != "dask":
        return LocalExecutor()
    from gbrank.executor import dask_executor

    executor = dask_executor(
        cfg.run.scheduler,
        cfg.run.workers,
        Path(cfg.run.workspace) / STAGING,
        cfg.run.worker_threads,
    )
    if warm:
        executor.warm(*warm)
    return executor


@locked("features")
def build_features(cfg: Config) -> FeaturesResult:
    """Stage 2: leak-free features (history before each fold's as_of) plus labels.

    Users are split into shards by a hash of their code; each shard's features are built and
    appended to the fold's Parquet file (one row group per shard) before the next shard starts,
    so peak memory follows the shard size. With ``run.executor = "dask"`` the shards are built
    on the cluster's workers and written in the same order: the same bytes.
    """
    from gbrank.features.sharding import plan_shards, split_shards

    t0 = time.perf_counter()
    run, verified = verify_run(cfg, "features", link=True)
    data = functools.cache(functools.partial(_load_run_data, verified))
    for name in LABELLED_FOLDS:  # check every input before the first write
        verified.path(f"candidates/{name}.parquet")
        verified.path(f"labels/{name}.parquet")
    executor = stage_executor(cfg, warm=("gbrank.pipeline", "gbrank.candidates.state"))
    run.begin_stage("features")
    rows: dict[str, int] = {}
    shards: dict[str, int] = {}
    names: list[str] = []

    def start(name: str) -> Callable[[], int]:
        """Fold ``name``'s shards, started; the returned call writes their results."""
        cands = _read_parquet(verified, f"candidates/{name}.parquet")
        labels = _read_parquet(verified, f"labels/{name}.parquet")
        percentiles: pl.DataFrame | None = None
        if name == "train":
            # The ranker learns from a sample: features are built for it alone. What depends
            # on the user's whole candidate list (score percentiles) is computed on it first.
            graded = attach_labels(cands.select(C.USER, C.ITEM, cs.ends_with("_rank")), labels)
            keys = sample_keys(graded, sample_spec(cfg))
            percentiles = sample_percentiles(cands, keys, list(cfg.candidates.sources))
            cands = cands.join(keys, on=[C.USER, C.ITEM], how="semi", maintain_order="left")
            del graded, keys
        shards[name] = plan_shards(cands.height, cfg.features.shards, cfg.features.shard_rows)
        shared = executor.share(percentiles) if percentiles is not None else None
        context = FoldFeatures(cfg, str(run.path.absolute()), verified.records, name, shared)
        task = Task(features_shard, context, label=f"{run.id}-{name}")
        # On a cluster the workers build the fold's context; this process builds it only
        # when no shard has a row, for the empty frame.
        local = None
        if executor.name == "local":
            local = FoldFeatureContext(
                fold_builder(cfg, data(), verified, name), labels, percentiles
            )
        results = executor.map_task(
            "features", task, split_shards(cands, shards[name]), built=local
        )
        empty = functools.partial(_empty_features, local or context, cands.clear())
        out = run.file(f"features/{name}.parquet")
        # Dictionary pages buy little on float features and cost half the time.
        return functools.partial(write_table, out, results, empty=empty, use_dictionary=False)

    try:
        if executor.runs_ahead:
            # On a cluster the eval fold's shards start first (they need no sample), the
            # train fold's sample is drawn here while the workers build them, and its shard
            # joins the queue: no worker waits for this process, nor for another's shard.
            writes = {name: start(name) for name in ("eval", "train")}
            for name, write in writes.items():
                rows[name] = write()
        else:
            for name in LABELLED_FOLDS:  # one fold's candidates in memory at a time
                rows[name] = start(name)()
        written = pl.read_parquet_schema(run.file(f"features/{LABELLED_FOLDS[-1]}.parquet"))
        names = feature_columns(pl.DataFrame(schema=written))
    finally:
        executor.release()
    run.record_stage(
        "features", time.perf_counter() - t0, rows=rows, shards=shards, n_features=len(names)
    )
    run.finish_stage(
        "features",
        config_hash=stage_config_hash(cfg, "features"),
        inputs=verified.hashes(),
        outputs=[f"features/{name}.parquet" for name in LABELLED_FOLDS],
    )
    return FeaturesResult(run, rows, names)


# --------------------------------------------------------------------------- train


def sample_spec(cfg: Config) -> SampleSpec:
    sample = cfg.train.sample
    return SampleSpec(
        sample.users, sample.negatives, sample.hard_share, sample.min_rows, cfg.run.seed
    )


def training_rows(frame: pl.DataFrame, cfg: Config) -> pl.DataFrame:
    """The training sample of a labelled fold's frame (``train.sample``), sorted by user."""
    keys = sample_keys(frame, sample_spec(cfg))
    return frame.join(keys, on=[C.USER, C.ITEM], how="semi").sort(C.USER, C.ITEM)


def _read_sample(path: Path, cfg: Config) -> pl.DataFrame:
    """The training sample of a features file, reading the wide columns of sampled rows only:
    the keys, grades and ranks pick the rows, then a streaming scan gathers them."""
    names = pl.scan_parquet(path).collect_schema().names()
    picked = [c for c in names if c in (C.USER, C.ITEM, C.GRADE) or c.endswith("_rank")]
    keys = sample_keys(pl.read_parquet(path, columns=picked), sample_spec(cfg))
    return (
        pl.scan_parquet(path)
        .join(keys.lazy(), on=[C.USER, C.ITEM], how="semi")
        .collect(engine="streaming")
        .sort(C.USER, C.ITEM)
    )


def check_training_rows(rows: pl.DataFrame, fold: str) -> None:
    """A DataError when a fold's labelled candidates leave nothing to rank: fewer than two
    users, or a single relevance grade (all rows equally relevant)."""
    n_users = rows[C.USER].n_unique()
    if n_users < 2:
        raise DataError(
            f"the {fold} fold has {n_users} user(s) with a labelled candidate; a ranker needs at "
            "least 2 (groups to learn from and to hold out)",
            column=C.RAW_USER,
            fix="use more data, a longer folds.horizon_days, or more candidates per user",
        )
    if rows[C.GRADE].n_unique() < 2:
        raise DataError(
            f"every labelled candidate of the {fold} fold has the same relevance grade "
            f"({rows[C.GRADE][0]}): nothing to rank",
            column=C.RAW_EVENT,
            fix="check [data.event_map]: clicks, carts or purchases must map to their types",
        )


def validation_mask(users: np.ndarray, cfg: Config) -> np.ndarray:
    """Rows of held-out users (a hash of the user code below ``train.valid_fraction``)."""
    return _validation_mask(users, cfg.train.valid_fraction, cfg.run.seed)


def make_ranker(cfg: Config, kind: str = "rank", **overrides: Any) -> Ranker:
    """An unfitted ranker of the configured backend (``train.backend``) for ``kind``."""
    backend = cfg.train.backend
    kwargs: dict[str, Any] = {
        "params": cfg.train.backend_params,
        "num_boost_round": cfg.train.num_boost_round,
        "early_stopping_rounds": cfg.train.early_stopping_rounds,
        "min_delta": cfg.train.min_delta,
        "label_gain": [0.0, *cfg.events.gain_list()],
        "seed": cfg.run.seed,
        "eval_at": cfg.eval.ks,
    }
    kwargs.update(overrides)
    objective = (cfg.train.objective or None) if kind == "rank" else None
    return rankers.make_ranker(backend, kind, objective, **kwargs)


def guarded_rows(rows: pl.DataFrame, cfg: Config) -> pl.DataFrame:
    """Training rows with at most ``train.max_group_rows`` per user (``train.group_overflow``)."""
    return cap_groups(rows, cfg.train.max_group_rows, cfg.train.group_overflow)


def model_stem(head: str, use: str) -> str:
    """Where head ``head``'s model for ``use`` ("eval": fitted on the train fold, scored on the
    eval fold; "serve": fitted on the eval fold, used by recommend) is saved."""
    return f"models/{head}_{use}"


def head_ranker(cfg: Config, head: Head, **overrides: Any) -> Ranker:
    """An unfitted ranker for ``head``: graded gains for the graded ranker, 0/1 gains for the
    per-target rankers, a binary objective for the CTR and CVR heads."""
    gains = head.label_gain([0.0, *cfg.events.gain_list()])
    return make_ranker(cfg, head.kind, **{"label_gain": gains, **overrides})


def configured_heads(cfg: Config) -> list[Head]:
    return [head_spec(name, cfg.train.cvr_rows) for name in cfg.train.heads]


@dataclass
class TrainResult:
    run: Run
    best_iteration: int  # of the first head
    train_rows: int
    valid_rows: int
    importance: pl.DataFrame  # of the first head
    heads: dict[str, int]  # each head's number of trees


@locked("train")
def train(cfg: Config) -> TrainResult:
    """Stage 3: each head of ``train.heads`` on the train fold with early stopping on held-out
    users; then its serving model, refit on the eval fold with the same number of trees."""
    from gbrank.config import check_ranker_params

    t0 = time.perf_counter()
    check_ranker_params(cfg)
    run, verified = verify_run(cfg, "train", link=True)
    heads = configured_heads(cfg)
    fit = _train_on_dask if cfg.train.engine == "dask" else _train_locally
    evaluated, served, n_train, n_valid = fit(cfg, verified, heads)
    return _finish_train(cfg, run, verified, t0, heads, evaluated, served, n_train, n_valid)


def _train_locally(
    cfg: Config, verified: Verified, heads: list[Head]
) -> tuple[dict[str, Ranker], dict[str, Ranker], int, int]:
    """Each head's eval model (train fold, early stopping on held-out users) and serving model
    (the eval fold's sample, as many trees), in this process; and the training rows."""
    # The features stage built the train fold for the training sample alone.
    rows = _read_parquet(verified, "features/train.parquet").sort(C.USER, C.ITEM)
    verified.path("features/eval.parquet")
    features = feature_columns(rows)
    check_training_rows(rows, "train")
    rows = guarded_rows(rows, cfg)
    in_valid = pl.Series(validation_mask(rows[C.USER].to_numpy(), cfg))
    train_part, valid_part = rows.filter(~in_valid), rows.filter(in_valid)
    del rows
    if valid_part.is_empty() and cfg.train.early_stopping_rounds > 0:
        warn(
            f"the train fold has only {train_part[C.USER].n_unique()} users with a labelled "
            f"candidate, too few to hold any out: no early stopping, "
            f"{cfg.train.num_boost_round} rounds. Fix: more data, a longer folds.horizon_days, "
            "or train.early_stopping_rounds = 0"
        )
    evaluated: dict[str, Ranker] = {}
    for head in heads:
        evaluated[head.name] = head_ranker(cfg, head).fit(
            learnable_rows(train_part, head, "train"),
            features,
            head.label,
            valid=head_rows(valid_part, head),
        )
    n_train, n_valid = train_part.height, valid_part.height
    del train_part, valid_part
    serve_rows = guarded_rows(_read_sample(verified.path("features/eval.parquet"), cfg), cfg)
    check_training_rows(serve_rows, "eval")
    served: dict[str, Ranker] = {}
    for head in heads:
        trees = evaluated[head.name].best_iteration_
        served[head.name] = head_ranker(
            cfg, head, num_boost_round=trees, early_stopping_rounds=0
        ).fit(learnable_rows(serve_rows, head, "eval"), features, head.label)
    return evaluated, served, n_train, n_valid


def _finish_train(
    cfg: Config,
    run: Run,
    verified: Verified,
    t0: float,
    heads: list[Head],
    evaluated: dict[str, Ranker],
    served: dict[str, Ranker],
    n_train: int,
    n_valid: int,
) -> TrainResult:
    """The train stage's models, importances and record written."""
    run.begin_stage("train")
    outputs = []
    importance = {}
    for head in heads:
        for use, ranker in (("eval", evaluated[head.name]), ("serve", served[head.name])):
            written = ranker.save(run.file(model_stem(head.name, use)))
            outputs += [f"models/{path.name}" for path in written]
        importance[head.name] = evaluated[head.name].feature_importance().to_dicts()
    atomic_write_json(importance, run.file("models/importance.json"))
    outputs.append("models/importance.json")
    _drop_other_models(run, set(outputs))
    first = evaluated[heads[0].name]
    n_trees = {name: ranker.best_iteration_ for name, ranker in evaluated.items()}
    run.record_stage(
        "train",
        time.perf_counter() - t0,
        best_iteration=first.best_iteration_,
        heads=n_trees,
        train_rows=n_train,
        valid_rows=n_valid,
    )
    run.finish_stage(
        "train",
        config_hash=stage_config_hash(cfg, "train"),
        inputs=verified.hashes(),
        outputs=outputs,
    )
    return TrainResult(
        run, first.best_iteration_, n_train, n_valid, first.feature_importance(), n_trees
    )


def training_partition(
    path: str,
    part: int,
    n_parts: int,
    cfg: Config,
    head: Head,
    features: list[str],
    role: str,
    keys: Shared | None,
) -> Any:
    """On a worker: partition ``part`` of ``n_parts`` (users by their shard hash) of a
    features file's training rows for ``head``: ``role`` "train" or "valid" (the held-out
    users) of the train fold, or "all"; ``keys`` (the serving sample's keys) picks rows. Returns
    the float32 matrix, labels, group sizes and users (see :mod:`gbrank.rankers.dask`)."""
    from gbrank.features.sharding import shard_of

    users = pl.read_parquet(path, columns=[C.USER])[C.USER].unique().sort()
    mine = users.filter(pl.Series(shard_of(users.to_numpy(), n_parts) == part))
    frame = pl.scan_parquet(path).filter(pl.col(C.USER).is_in(mine.implode())).collect()
    if keys is not None:
        frame = frame.join(keys.read(), on=[C.USER, C.ITEM], how="semi")
    frame = guarded_rows(frame.sort(C.USER, C.ITEM), cfg)
    if role != "all":
        held_out = pl.Series(validation_mask(frame[C.USER].to_numpy(), cfg))
        frame = frame.filter(held_out if role == "valid" else ~held_out)
    frame = head_rows(frame, head)
    groups = query_groups(frame)
    return (
        feature_matrix(frame, features),
        frame[head.label].cast(pl.Float64).to_numpy(),
        groups.sizes,
        frame[C.USER].unique(maintain_order=True).to_numpy(),
    )


def _train_on_dask(
    cfg: Config, verified: Verified, heads: list[Head]
) -> tuple[dict[str, Ranker], dict[str, Ranker], int, int]:
    """``train.engine = "dask"``: each head's eval model on the train fold (as many trees as
    early stopping on the held-out users keeps), and its serving model on the eval fold's
    sample with that many trees, trained by ``lightgbm.dask`` or ``xgboost.dask`` on
    partitions of whole users built and kept on the workers."""
    import pyarrow.parquet as pq

    from gbrank.executor import DaskExecutor, dask_executor, token
    from gbrank.rankers import dask as on_dask

    executor = stage_executor(cfg)
    if not isinstance(executor, DaskExecutor):
        executor = dask_executor(
            cfg.run.scheduler,
            cfg.run.workers,
            Path(cfg.run.workspace) / STAGING,
            cfg.run.worker_threads,
        )
    client = executor.client
    train_path = str(verified.path("features/train.parquet").absolute())
    features = feature_columns(pl.DataFrame(schema=pl.read_parquet_schema(train_path)))
    eval_path = verified.path("features/eval.parquet")
    # The serving sample's keys, drawn here as the local engine draws them.
    names = pl.scan_parquet(eval_path).collect_schema().names()
    picked = [c for c in names if c in (C.USER, C.ITEM, C.GRADE) or c.endswith("_rank")]
    keys = executor.share(sample_keys(pl.read_parquet(eval_path, columns=picked), sample_spec(cfg)))

    counted: dict[str, int] = {}

    # Partition i lives on worker i mod n (in address order): which rows each LightGBM machine
    # holds, and so the model, does not depend on where the scheduler would put them.
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])

    def partitions(path: str, role: str, head: Head, shared: Shared | None) -> on_dask.Layout:
        n_parts = max(len(workers), pq.ParquetFile(path).metadata.num_row_groups)
        futures = [
            client.submit(
                training_partition,
                path,
                i,
                n_parts,
                cfg,
                head,
                features,
                role,
                shared,
                key=f"gbrank-train-{role}-{head.name}-part{i:04d}-{token()}",
                workers=[workers[i % len(workers)]],
                allow_other_workers=False,
            )
            for i in range(n_parts)
        ]
        layout = on_dask.Layout.of(client, futures, f"{path} ({role} rows)")
        rows = sum(layout.rows)
        if role != "valid":
            check_head_rows(
                sum(layout.positives), rows, head, "train" if role == "train" else "eval"
            )
        counted.setdefault(role, rows)  # the first head's, as the local engine reports
        return layout.nonempty()

    evaluated: dict[str, Ranker] = {}
    served: dict[str, Ranker] = {}
    try:
        for head in heads:
            train_parts = partitions(train_path, "train", head, None)
            valid_parts = partitions(train_path, "valid", head, None)
            evaluated[head.name] = ranker = on_dask.fit(
                head_ranker(cfg, head),
                client,
                train_parts,
                features,
                head.label,
                cfg.train.num_boost_round,
                valid=valid_parts,
            )
            del train_parts, valid_parts
            serve_parts = partitions(str(eval_path.absolute()), "all", head, keys)
            served[head.name] = on_dask.fit(
                head_ranker(
                    cfg, head, num_boost_round=ranker.best_iteration_, early_stopping_rounds=0
                ),
                client,
                serve_parts,
                features,
                head.label,
                ranker.best_iteration_,
            )
            del serve_parts
    finally:
        executor.release()
    return evaluated, served, counted.get("train", 0), counted.get("valid", 0)


# --------------------------------------------------------------------------- eval


def top_k(frame: pl.DataFrame, score: str, k: int, descending: bool = True) -> pl.DataFrame:
    """The best ``k`` rows per user by ``score`` as (user, item, rank); ties by item code."""
    return (
        frame.filter(pl.col(score).is_not_null())
        .sort([C.USER, score, C.ITEM], descending=[False, descending, False])
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(C.USER).alias(C.RANK))
        .filter(pl.col(C.RANK) <= k)
        .select(C.USER, C.ITEM, C.RANK, pl.col(score).alias(C.SCORE))
    )


@dataclass
class EvalResult:
    run: Run
    metrics: pl.DataFrame  # model, target, metric, k, value
    users: dict[str, int]  # target -> users evaluated

    def table(
        self, target: str, metrics: tuple[str, ...] = ("recall", "ndcg", "map", "hitrate")
    ) -> str:
        return format_table(self.metrics, target, metrics)


def eval_result(cfg: Config, run: Run) -> EvalResult:
    """The evaluation a run recorded (metrics.json and the users counted), without scoring."""
    rows = run.metrics()
    users = run.progress().get("eval", {}).get("users", {})
    return EvalResult(run, pl.DataFrame(rows), {t: int(n) for t, n in users.items()})


def format_table(
    metrics: pl.DataFrame,
    target: str,
    names: tuple[str, ...] = ("recall", "ndcg", "map", "hitrate"),
) -> str:
    sub = metrics.filter((pl.col("target") == target) & pl.col("metric").is_in(names))
    ks = sorted(sub["k"].unique().to_list())
    cols = [(m, k) for k in ks for m in names]
    models = sub["model"].unique(maintain_order=True).to_list()
    lookup = {(r["model"], r["metric"], r["k"]): r["value"] for r in sub.to_dicts()}
    width = max(len(m) for m in models) + 2
    head = "model".ljust(width) + "".join(f"{m}@{k}".rjust(11) for m, k in cols)
    lines = [f"target: {target}", head, "-" * len(head)]
    for model in models:
        vals = "".join(f"{lookup.get((model, m, k), float('nan')):11.4f}" for m, k in cols)
        lines.append(model.ljust(width) + vals)
    return "\n".join(lines)


def format_head_table(metrics: pl.DataFrame) -> str:
    """AUC and log loss of each binary head on the rows it learns from ("" without one)."""
    sub = metrics.filter(pl.col("metric").is_in(["auc", "logloss"]))
    if sub.is_empty():
        return ""
    lines = ["binary heads        target        auc    logloss", "-" * 48]
    for (model, target), rows in sub.group_by("model", "target", maintain_order=True):
        values = dict(zip(rows["metric"], rows["value"], strict=True))
        lines.append(f"{model:<18}  {target:<10}{values['auc']:>8.4f}{values['logloss']:>11.4f}")
    return "\n".join(lines)


def format_recall_table(recall: pl.DataFrame) -> str:
    """The candidate report as text: per fold, each source's candidates per user and, per
    target, its recall, unique recall (lost without it) and positive rate."""
    lines = []
    for fold in recall["fold"].unique(maintain_order=True).to_list():
        sub = recall.filter(pl.col("fold") == fold)
        targets = sub["target"].unique(maintain_order=True).to_list()
        lines.append(f"candidates, {fold} fold: recall / unique recall / positive rate per target")
        head = "source".ljust(18) + "per user".rjust(9)
        head += "".join(f"  {t:>8} {'unique':>7} {'pos%':>6}" for t in targets)
        lines += [head, "-" * len(head)]
        for source in sub["source"].unique(maintain_order=True).to_list():
            rows = sub.filter(pl.col("source") == source)
            line = source.ljust(18) + f"{rows['candidates_per_user'][0]:9.1f}"
            for t in targets:
                r = rows.filter(pl.col("target") == t).row(0, named=True)
                line += (
                    f"  {r['recall']:8.4f} {r['unique_recall']:7.4f}"
                    f" {100 * r['positive_rate']:6.2f}"
                )
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


def load_heads(cfg: Config, verified: Verified, use: str) -> dict[str, Ranker]:
    """Every head's model for ``use`` ("eval" or "serve"), as the train stage saved it."""
    return {name: _load_ranker(verified, model_stem(name, use)) for name in cfg.train.heads}


@locked("eval")
def evaluate(cfg: Config) -> EvalResult:
    """Stage 4: score the eval fold with every head's train-fold model and every blend;
    compare them with every source. Binary heads also get AUC, log loss and calibration."""
    t0 = time.perf_counter()
    run, verified = verify_run(cfg, "eval", link=True)
    features_path = verified.path("features/eval.parquet")
    heads = load_heads(cfg, verified, "eval")
    import pyarrow.parquet as pq

    n_rows = pq.ParquetFile(features_path).metadata.num_rows
    for r in heads.values():  # compiled while the labels and the first batch are read
        prepare_scoring(r, cfg, n_rows, background=True)
    labels = _read_parquet(verified, "labels/eval.parquet")
    k_max = max(cfg.eval.ks)
    rank_cols = [C.rank_col(s) for s in cfg.candidates.sources]
    scored_models = [*heads, *blend_names(cfg.train.heads, cfg.blend.weights)]
    parts: dict[str, list[pl.DataFrame]] = {
        m: [] for m in [*scored_models, *cfg.candidates.sources]
    }
    specs = {head.name: head for head in configured_heads(cfg)}
    binary = {name: head for name, head in specs.items() if head.kind == "binary"}
    probs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in binary}
    budgets: dict[str, int] = _read_json(verified, "candidates/budgets.json")
    curves = CurveCounter(cfg.candidates.sources, cfg.eval.targets, budgets)
    sampler = ScoreSampler(scored_models, n_rows)

    def lists_of(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
        """Each model's top-K lists of one batch of whole users: top-K sorts only the keys and
        the scores, never the wide feature frame."""
        scores = {name: ranker.predict(frame) for name, ranker in heads.items()}
        for name, head in binary.items():  # scored on the rows the head learns from
            mask = head_mask(frame, head)
            probs[name].append((scores[name][mask], frame[head.label].to_numpy()[mask]))
        users = frame[C.USER].to_numpy()
        for name in blend_names(cfg.train.heads, cfg.blend.weights):
            scores[name] = model_scores(name, scores, users, cfg.blend.weights)
        curves.add(frame)
        sampler.add(frame, scores)
        scored = frame.select(C.USER, C.ITEM, *rank_cols).with_columns(
            pl.Series(f"_{name}", scores[name]) for name in scored_models
        )
        out = {name: top_k(scored, f"_{name}", k_max) for name in scored_models}
        for source, col in zip(cfg.candidates.sources, rank_cols, strict=True):
            out[source] = top_k(scored, col, k_max, descending=False)
        return out

    # Batch by batch: only the top-K lists are kept, so memory follows the batch.
    batches = user_batches(features_path, cfg.eval.batch_rows)
    for batch_lists in LocalExecutor().map("eval", lists_of, batches):
        for model, frame in batch_lists.items():
            parts[model].append(frame)
    lists = {model: _concat_lists(frames) for model, frames in parts.items()}
    for r in heads.values():
        r.wait_compiled()
    predictors = {name: r.predictor for name, r in heads.items()}
    # The metrics need the labels alone; the report, the history of the eval users.
    fold = _load_folds(verified)["eval"]
    relevant = {target: relevant_items(labels, target) for target in cfg.eval.targets}
    eval_users = labels.select(C.USER).unique().height
    items = Vocab.load(verified.path("vocab/items.parquet"))
    small = eval_users * len(items) <= ORACLE_MAX_CELLS
    if cfg.eval.oracle == "always" or (cfg.eval.oracle == "auto" and small):
        oracle = oracle_lists(
            cfg.data.events,
            fold.as_of,
            cfg.folds.horizon_days,
            labels.select(C.USER).unique().sort(C.USER),
            Vocab.load(verified.path("vocab/users.parquet")),
            items,
            k_max,
        )
        if oracle is not None:
            lists["oracle"] = oracle
    rows: list[dict[str, Any]] = []
    users: dict[str, int] = {}
    reports = {}
    for target in cfg.eval.targets:
        for model, recs in lists.items():
            report = ranking_metrics(recs, relevant[target], ks=cfg.eval.ks)
            reports[(model, target)] = report
            rows.extend(metrics_rows(report, model, target))
            users[target] = report.n_users
    if cfg.eval.bootstrap:
        interval_rows(rows, reports, n_boot=cfg.eval.bootstrap, seed=cfg.run.seed)
    for name, head in binary.items():
        p = np.concatenate([a for a, _ in probs[name]]) if probs[name] else np.zeros(0)
        y = np.concatenate([b for _, b in probs[name]]) if probs[name] else np.zeros(0)
        rows.extend(binary_rows(name, head.target, p, y))
    metrics = pl.DataFrame(rows)
    report_data = (
        _report_data(
            cfg,
            run,
            verified,
            scored_models,
            reports,
            lists,
            relevant,
            users,
            curves,
            sampler,
            fold,
            _users_history(verified, fold, labels[C.USER].unique()),
        )
        if cfg.eval.report
        else None
    )
    run.begin_stage("eval")
    atomic_write_json(rows, run.file("metrics.json"))
    outputs = ["metrics.json"]
    if report_data is not None:
        outputs += write_report(run, report_data, rows)
    predictor = predictors[cfg.train.heads[0]]
    run.record_stage(
        "eval", time.perf_counter() - t0, users=users, predictor=predictor, predictors=predictors
    )
    run.finish_stage(
        "eval",
        config_hash=stage_config_hash(cfg, "eval"),
        inputs=verified.hashes(),
        outputs=outputs,
    )
    write_manifest(cfg, run, verified.records["generate"]["data_fingerprint"])
    return EvalResult(run, metrics, users)


def _report_data(
    cfg: Config,
    run: Run,
    verified: Verified,
    scored_models: list[str],
    reports: dict[tuple[str, str], Any],
    lists: dict[str, pl.DataFrame],
    relevant: dict[str, pl.DataFrame],
    users: dict[str, int],
    curves: CurveCounter,
    sampler: ScoreSampler,
    fold: Fold,
    users_history: pl.DataFrame,
) -> dict[str, Any]:
    """What the eval report draws (``report/data.json``): see ``gbrank.evaluation``;
    ``users_history``: the eval users' events before ``fold.as_of`` (user, item)."""
    k_max = max(cfg.eval.ks)
    served = cfg.blend.serve if cfg.blend.serve in scored_models else scored_models[0]
    k0 = cfg.eval.ks[0]
    target = cfg.promote.target
    best_source = max(
        cfg.candidates.sources,
        key=lambda s: np.nan_to_num(reports[(s, target)].value("ndcg", k0), nan=-1.0),
    )
    return {
        "run_id": run.id,
        "served": served,
        "best_source": best_source,
        "models": scored_models,
        "sources": list(cfg.candidates.sources),
        "targets": list(cfg.eval.targets),
        "ks": list(cfg.eval.ks),
        "users": users,
        "as_of": str(fold.as_of),
        "recall_curves": curves.curves({t: relevant[t].unique().height for t in relevant}),
        "by_k": by_k_curves(lists, relevant, k_max),
        "breakdowns": breakdowns(
            reports, lists, relevant, users_history, [served, best_source], k0
        ),
        "scores": sampler.histograms(),
        "importance": _read_json(verified, "models/importance.json"),
        "bootstrap": cfg.eval.bootstrap,
        "tuning": _study_summary(cfg),
    }


def _study_summary(cfg: Config) -> dict[str, Any] | None:
    """The summary of the study ``tune.study`` names, when ``gbrank tune`` wrote one in this
    workspace (the report then shows how the config was tuned)."""
    if not cfg.tune.study:
        return None
    from gbrank.tune import read_summary

    return read_summary(cfg.run.workspace, cfg.tune.study)


def thread_settings(cfg: Config) -> dict[str, Any]:
    """The thread counts a run used (results can depend on them: the manifest keeps them)."""
    env = ("POLARS_MAX_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return {
        "cpu_count": os.cpu_count(),
        "polars": pl.thread_pool_size(),
        "lightgbm_num_threads": cfg.train.params.get("num_threads", 0),
        **{name: os.environ[name] for name in env if name in os.environ},
    }


def write_manifest(cfg: Config, run: Run, data_fingerprint: str) -> Path:
    """The run's resolved config, then its manifest, last: the run is complete."""
    atomic_write_text(dump_toml(cfg), run.file("config.toml"))
    files = input_files(cfg)
    inputs = {"data": data_fingerprint, "files": files if files else []}
    return run.write_manifest(cfg.hash(), cfg.run.seed, inputs, thread_settings(cfg))


def user_batches(path: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
    """The rows of a features file in batches of about ``batch_rows``, each holding whole users
    (a file's users are contiguous: each shard is sorted by user and holds its users alone)."""
    import pyarrow.parquet as pq

    carry: pl.DataFrame | None = None
    for batch in pq.ParquetFile(path).iter_batches(batch_size=max(batch_rows, 1)):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        if carry is not None:
            frame = pl.concat([carry, frame], rechunk=False)
        users = frame[C.USER].to_numpy()
        changes = np.flatnonzero(users[1:] != users[:-1])
        start = int(changes[-1]) + 1 if changes.size else 0  # the last user's first row
        carry = frame.slice(start)  # the last user may go on in the next batch
        if start:
            yield frame.slice(0, start)
    if carry is not None and carry.height:
        yield carry


def served_top_k(
    heads: dict[str, Ranker],
    serve: str,
    weights: dict[str, dict[str, float]],
    batches: Iterable[pl.DataFrame],
    k: int,
) -> pl.DataFrame:
    """The top ``k`` of model ``serve`` (a head of ``heads`` or a blend of them) over feature
    ``batches`` of whole users: ``user, item, rank, score``."""
    lists = []
    for batch in batches:
        scores = {name: ranker.predict(batch) for name, ranker in heads.items()}
        users = batch[C.USER].to_numpy()
        scored = batch.select(C.USER, C.ITEM).with_columns(
            pl.Series("_score", model_scores(serve, scores, users, weights))
        )
        lists.append(top_k(scored, "_score", k))
    return _concat_lists(lists)


def gate_report(
    cfg: Config,
    heads: dict[str, Ranker],
    serve: str,
    weights: dict[str, dict[str, float]],
    batches: Iterable[pl.DataFrame],
    labels: pl.DataFrame,
) -> RankingReport:
    """``promote.metric`` at ``promote.k`` on ``promote.target`` of model ``serve`` over
    ``batches``, against ``labels`` (every labelled user counts, found or not), as a
    :class:`~gbrank.metrics.RankingReport` with each user's value: the figure the promotion
    gate compares (``.value(metric, k)``) and the tuner maximises."""
    p = cfg.promote
    recs = served_top_k(heads, serve, weights, batches, p.k)
    return ranking_metrics(recs, relevant_items(labels, p.target), ks=[p.k], metrics=[p.metric])


def _concat_lists(frames: list[pl.DataFrame]) -> pl.DataFrame:
    if frames:
        return pl.concat(frames)
    return pl.DataFrame(
        schema={C.USER: pl.Int32, C.ITEM: pl.Int32, C.RANK: pl.Int32, C.SCORE: pl.Float64}
    )


#: With eval.predictor = "auto", a model is compiled when a stage scores at least this many
#: rows; below that, compiling (about 5 s per 100 trees) costs more than it saves.
COMPILE_MIN_ROWS = 1_000_000
COMPILED_CACHE = "compiled"  # <workspace>/compiled/<key>.o: lleaves objects, see LightGBMRanker


def prepare_scoring(ranker: Ranker, cfg: Config, rows: int, *, background: bool = False) -> str:
    """Compile ``ranker`` when ``eval.predictor`` asks for it (``auto``: a LightGBM model,
    lleaves installed and about ``rows`` rows to score, at least ``COMPILE_MIN_ROWS``).
    Returns the predictor: "lleaves", or the backend's own ("lightgbm", "xgboost"). A failed
    compile is raised when ``eval.predictor`` is "lleaves", else warned about (the backend
    then scores).

    With ``background``, the compile runs on a thread while the caller goes on and "lleaves"
    is returned at once: the ranker's first scores wait for it (and meet a failure), and
    ``ranker.predictor`` tells what scored. ``eval`` reads its first batch meanwhile,
    ``recommend`` makes its first batch's candidates and features."""
    choice = cfg.eval.predictor
    own = ranker.backend
    if choice == "lleaves" and ranker.compiler != "lleaves":
        raise ConfigError(
            f"eval.predictor is 'lleaves', which compiles LightGBM models only, but "
            f"train.backend is '{own}'. Fix: eval.predictor = 'auto'"
        )
    small = choice == "auto" and rows < COMPILE_MIN_ROWS
    if ranker.compiler is None or choice == "lightgbm" or small:
        return own
    if not compiler_available():
        if choice == "lleaves":
            raise ConfigError(
                "eval.predictor is 'lleaves' but lleaves cannot be imported. Fix: "
                "pip install 'lleaves>=1.3' 'llvmlite<0.45', or set eval.predictor = 'lightgbm'"
            )
        return own
    # eval.compile_cache: compiled code kept in the workspace, keyed by the model, so serving
    # the same champion again (a daily `recommend --run current`) loads it.
    cache = Path(cfg.run.workspace) / COMPILED_CACHE if cfg.eval.compile_cache else None
    # LLVM failures are not ours to crash on when "auto" chose lleaves: fall back then.
    ranker.compile_in_background(cache, fallback=choice != "lleaves")
    if background:
        return "lleaves"
    ranker.wait_compiled()
    return ranker.predictor


def _drop_other_models(run: Run, keep: set[str]) -> None:
    """Remove the model files in ``models/`` that this training did not write (another
    backend's, or a head no longer trained), so no stale model sits beside the current ones."""
    suffixes = {".json", *(rankers.backend_class(b).model_suffix for b in rankers.BACKENDS)}
    folder = run.file("models")
    for path in folder.iterdir() if folder.exists() else ():
        if path.suffix in suffixes and f"models/{path.name}" not in keep:
            path.unlink()


def _load_ranker(verified: Verified, stem: str) -> Ranker:
    """A model the train stage saved, both files checked against the stage's record."""
    sidecar = verified.path(f"{stem}.json")
    for name in verified.records["train"]["outputs"]:
        if name.startswith(f"{stem}.") and name != f"{stem}.json":
            verified.path(name)  # the model file, against the stage's record
    return rankers.load_ranker(sidecar.with_suffix(""))


# --------------------------------------------------------------------------- recommend


@dataclass
class RecommendResult:
    recs: pl.DataFrame  # user_id, item_id, score, rank (raw ids); empty when written to a file
    n_users: int
    n_cold: int
    rows: int = 0
    path: Path | None = None


def read_user_list(path: Path) -> pl.Series:
    """The user ids of a ``--users`` file: column ``user_id``, else the first column."""
    if not path.is_file():
        raise MissingInputError(f"users file {path} does not exist")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pl.read_parquet(path)
        else:
            frame = pl.read_csv(path, infer_schema_length=0)  # keep ids as text; cast below
    except pl.exceptions.NoDataError:
        frame = pl.DataFrame()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(
            f"cannot read the users file: {exc}",
            file=str(path),
            fix="give a CSV or Parquet file with a user_id column",
        ) from exc
    col: str | None = C.RAW_USER if C.RAW_USER in frame.columns else None
    if col is None and frame.columns:
        col = frame.columns[0]
    ids = frame[col].drop_nulls().unique(maintain_order=True) if col else pl.Series([])
    if ids.is_empty():
        raise DataError(
            "the users file holds no user ids",
            file=str(path),
            column=col,
            fix="list one user id per line under a user_id header, or leave out --users to "
            "recommend for every known user",
        )
    return ids


@dataclass
class ServingModels:
    sources: list[CandidateSource]
    heads: dict[str, Ranker]
    predictor: str  # the served head's: lleaves, lightgbm or xgboost
    builder: FeatureBuilder


@dataclass(frozen=True)
class Serving:
    """The :class:`~gbrank.executor.Context` of ``recommend``'s batches: a worker loads the
    same run (named, its files checked against their records) and serves batches of it."""

    cfg: Config  # run.run_id names the run
    k: int
    users_file: str | None

    @property
    def key(self) -> str:
        text = json.dumps(self.cfg.to_dict(), sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        return f"recommend:{self.cfg.run.workspace}:{self.cfg.run.run_id}:{self.k}:{digest}"

    def build(self) -> Recommender:
        return Recommender(self.cfg, self.k, self.users_file, check_inputs=False)


def serve_batch(recommender: Recommender, batch: np.ndarray) -> pl.DataFrame:
    """``recommend``'s per-batch function (a :class:`~gbrank.executor.Task`'s)."""
    return recommender.serve(batch)


class Recommender:
    """Serves top-``k`` lists at the end of the data, batch by batch of users.

    The sources come fitted from the generate stage (``sources/*.npz``, fitted on every event),
    the serving ranker from the train stage; nothing is refit. Known users are served in
    batches of ``candidates.batch_users`` (in user-code order); within a batch, features are
    built and scored shard by shard (``features.shard_rows``), keeping only each shard's top-k.
    So memory follows those two settings, not the number of users. Users unknown to the data
    get popularity, after the known ones.
    """

    def __init__(
        self,
        cfg: Config,
        k: int,
        users_file: str | Path | None = None,
        *,
        check_inputs: bool = True,
    ) -> None:
        raw = read_user_list(Path(users_file)) if users_file is not None else None
        run, self.verified = verify_run(cfg, "eval", check_inputs)  # every stage up to train
        self.cfg, self.k, self.users_file = cfg, k, users_file
        self.run_dir = str(run.path.absolute())
        # The vocabularies now; the events when a batch is served here (a cluster's
        # workers load their own, so this process never reads them).
        self.users = users = Vocab.load(self.verified.path("vocab/users.parquet"))
        self.items = Vocab.load(self.verified.path("vocab/items.parquet"))
        self.budgets: dict[str, int] = _read_json(self.verified, "candidates/budgets.json")
        if raw is not None:
            codes = users.encode(raw)
            self.known = codes.drop_nulls().unique().sort().to_numpy()
            self.cold_raw = raw.filter(codes.is_null())
        else:
            self.known = np.arange(len(users), dtype=np.int32)
            self.cold_raw = pl.Series(C.RAW_USER, [], dtype=users.dtype)
        # Raw user ids keep the vocabulary's type, unless an unknown id does not parse as it:
        # then every id is written as text (decided now, so every batch has one schema).
        self.user_dtype: pl.DataType = users.dtype
        if self.cold_raw.len():
            parsed = self.cold_raw.cast(self.user_dtype, strict=False)
            if parsed.null_count() > 0:
                self.user_dtype = pl.String()

    @functools.cached_property
    def data(self) -> RunData:
        return _load_run_data(self.verified, self.users, self.items)

    @functools.cached_property
    def sources(self) -> dict[str, CandidateSource]:
        """The sources the generate stage fitted on every event."""
        load = fold_source_loader(self.verified, "inference")
        return {name: load(name) for name in self.cfg.candidates.sources}

    @functools.cached_property
    def builder(self) -> FeatureBuilder:
        """The serving fold's feature builder (whole history), with the sources' models."""
        return fold_builder(
            self.cfg, self.data, self.verified, "inference", self.sources.__getitem__
        )

    @functools.cached_property
    def models(self) -> ServingModels:
        """The fitted sources, the serving heads (compiled when ``eval.predictor`` says so)
        and the feature builder: loaded on the first batch this process serves (a cluster's
        workers load their own)."""
        cfg, verified = self.cfg, self.verified
        needed = heads_of(cfg.blend.serve, cfg.blend.weights)
        heads = {name: _load_ranker(verified, model_stem(name, "serve")) for name in needed}
        # At most this many candidates per user: the predictor is chosen on the bound.
        per_user = sum(self.budgets.values())
        if cfg.candidates.max_per_user > 0:
            per_user = min(per_user, cfg.candidates.max_per_user)
        predictors = {
            name: prepare_scoring(ranker, cfg, len(self.known) * per_user, background=True)
            for name, ranker in heads.items()
        }
        return ServingModels(
            list(self.sources.values()), heads, predictors[needed[0]], self.builder
        )

    @functools.cached_property
    def pop_list(self) -> list[int]:
        """The most popular items at the end of the data: what short lists are topped up
        with, and what unknown users get."""
        data = self.data
        fold = data.folds["inference"]
        popularity = build_source("popularity", "popularity", {"filter_seen": False}).fit(
            history(data.events, fold),
            n_users=len(data.users),
            n_items=len(data.items),
            as_of=fold.as_of,
        )
        return popularity.generate(np.array([0], dtype=np.int32), self.k)[C.ITEM].to_list()

    @property
    def n_users(self) -> int:
        return len(self.known) + self.cold_raw.len()

    def user_batches(self) -> Iterator[np.ndarray]:
        """The known users' codes in code order, in the fewest batches of at most
        ``candidates.batch_users``, all of one size (give or take a user): on a cluster, four
        batches keep two workers busy to the end, where 50k, 50k, 50k and 8k users left one
        idle for a whole batch."""
        n = len(self.known)
        count = max(1, -(-n // max(self.cfg.candidates.batch_users, 1)))
        yield from (batch for batch in np.array_split(self.known, count) if len(batch))

    def serve(self, batch: np.ndarray) -> pl.DataFrame:
        """The lists of one batch of known users: ``user_id, item_id, score, rank``."""
        from gbrank.features.sharding import plan_shards, split_shards

        cfg, models = self.cfg, self.models
        frames = {s.name: s.generate(batch, self.budgets[s.name]) for s in models.sources}
        cands = combine(cfg, frames, self.budgets)
        del frames
        n_shards = plan_shards(cands.height, cfg.features.shards, cfg.features.shard_rows)
        lists = []
        for shard in split_shards(cands, n_shards):
            feats = models.builder.build(shard)
            scored = feats.select(C.USER, C.ITEM).with_columns(
                pl.Series(C.SCORE, self.score(feats), dtype=pl.Float64)
            )
            del feats
            lists.append(top_k(scored, C.SCORE, self.k))
        del cands
        scored = _concat_lists(lists).select(C.USER, C.ITEM, C.SCORE)
        return self._raw(_fill_to_k(scored, batch, self.pop_list, self.k))

    def score(self, feats: pl.DataFrame) -> np.ndarray:
        """The served score (``blend.serve``) of feature rows holding whole users."""
        scores = {name: ranker.predict(feats) for name, ranker in self.models.heads.items()}
        users = feats[C.USER].to_numpy()
        return model_scores(self.cfg.blend.serve, scores, users, self.cfg.blend.weights)

    def batches(self, executor: LocalExecutor | None = None) -> Iterator[pl.DataFrame]:
        """Frames of ``user_id, item_id, score, rank`` (raw ids), known users first; the
        batches are served by ``executor`` (default: ``run.executor``)."""
        batches = list(self.user_batches())
        executor = executor or stage_executor(
            self.cfg,
            warm=(
                "gbrank.pipeline",
                "gbrank.candidates",
                f"gbrank.rankers.{self.cfg.train.backend}",
            ),
        )
        # A worker serves the same run: the one this process verified, named.
        pinned = copy.deepcopy(self.cfg)
        pinned.run.workspace = str(Path(self.run_dir).parent.parent)
        pinned.run.run_id = Path(self.run_dir).name
        users_file = str(Path(self.users_file).absolute()) if self.users_file else None
        task = Task(serve_batch, Serving(pinned, self.k, users_file), label=pinned.run.run_id)
        served = executor.map_task("recommend", task, batches, built=self)
        try:
            yield from steps("recommend", "user batches", served, len(batches))
        finally:
            executor.release()
        if self.cold_raw.len():
            yield self._cold()

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(
            schema={
                C.RAW_USER: self.user_dtype,
                C.RAW_ITEM: self.items.dtype,
                C.SCORE: pl.Float64,
                C.RANK: pl.Int32,
            }
        )

    def _raw(self, recs: pl.DataFrame) -> pl.DataFrame:
        return pl.DataFrame(
            {
                C.RAW_USER: self.users.decode(recs[C.USER]).cast(self.user_dtype),
                C.RAW_ITEM: self.items.decode(recs[C.ITEM]),
                C.SCORE: recs[C.SCORE],
                C.RANK: recs[C.RANK],
            }
        )

    def _cold(self) -> pl.DataFrame:
        pop_items = self.items.decode(pl.Series(self.pop_list, dtype=pl.Int32))
        n = len(self.pop_list)
        return pl.DataFrame({C.RAW_USER: self.cold_raw.cast(self.user_dtype)}).join(
            pl.DataFrame(
                {
                    C.RAW_ITEM: pop_items,
                    C.SCORE: pl.Series([None] * n, dtype=pl.Float64),
                    C.RANK: pl.int_range(1, n + 1, dtype=pl.Int32, eager=True),
                }
            ),
            how="cross",
        )


def recommend(
    cfg: Config, k: int, users_file: str | Path | None = None, *, check_inputs: bool = True
) -> RecommendResult:
    """Top-``k`` items per user at the end of the data, with raw ids, as one frame.

    For every user of a large shop, :func:`write_recommendations` streams to a file instead.
    ``check_inputs=False`` serves the run named by ``run.run_id`` (see :func:`verify_run`).
    """
    rec = Recommender(cfg, k, users_file, check_inputs=check_inputs)
    recs = pl.concat([rec.empty(), *rec.batches()])
    return RecommendResult(recs, rec.n_users, rec.cold_raw.len(), recs.height)


#: ``recommend --format``: the plain table, or a competition's submission file.
FORMATS = ("table", "otto", "hm")
OTTO_TYPES = ("clicks", "carts", "orders")


def check_format(out: str | Path, fmt: str) -> None:
    """A usage error (exit 2) for an output format or file name recommend cannot write."""
    from gbrank.atomic import check_table_suffix

    check_table_suffix(out)
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt != "table" and Path(out).suffix.lower() != ".csv":
        raise ConfigError(f"--format {fmt} writes a submission CSV: name the file .csv, not {out}")


def submission_rows(recs: pl.DataFrame, fmt: str) -> pl.DataFrame:
    """One batch of ``user_id, item_id, score, rank`` (whole users) as submission rows.

    ``otto``: ``session_type, labels``: a row per session and type (``<session>_clicks``,
    ``_carts``, ``_orders``), each with the served list, item ids joined by spaces.
    ``hm``: ``customer_id, prediction``: article ids joined by spaces; integer ids are written
    with the ten digits of H&M's article ids (leading zeros).
    """
    items = pl.col(C.RAW_ITEM)
    if fmt == "hm" and recs.schema[C.RAW_ITEM].is_integer():
        items = items.cast(pl.String).str.zfill(10)
    lists = (
        recs.sort(C.RAW_USER, C.RANK)
        .group_by(C.RAW_USER, maintain_order=True)
        .agg(items.cast(pl.String).str.join(" ").alias("labels"))
    )
    if fmt == "hm":
        return lists.select(
            pl.col(C.RAW_USER).cast(pl.String).alias("customer_id"),
            pl.col("labels").alias("prediction"),
        )
    kinds = pl.DataFrame({"_type": list(OTTO_TYPES)})
    return lists.join(kinds, how="cross").select(
        pl.format("{}_{}", pl.col(C.RAW_USER), pl.col("_type")).alias("session_type"), "labels"
    )


def write_recommendations(
    cfg: Config,
    k: int,
    out: str | Path,
    users_file: str | Path | None = None,
    *,
    check_inputs: bool = True,
    fmt: str = "table",
) -> RecommendResult:
    """Top-``k`` items per user, written to ``out`` (.parquet or .csv) batch by batch as they
    are made; the file appears under its name only when complete."""
    path = Path(out)
    check_format(path, fmt)
    rec = Recommender(cfg, k, users_file, check_inputs=check_inputs)
    batches: Iterator[pl.DataFrame] = rec.batches()
    empty: Callable[[], pl.DataFrame] = rec.empty
    if fmt != "table":
        batches = (submission_rows(batch, fmt) for batch in batches)
        empty = functools.partial(submission_rows, rec.empty(), fmt)
    rows = write_table(path, batches, empty=empty)
    return RecommendResult(pl.DataFrame(), rec.n_users, rec.cold_raw.len(), rows, path)


def _fill_to_k(
    scored: pl.DataFrame, users: np.ndarray, pop_list: list[int], k: int
) -> pl.DataFrame:
    """Top-k of the ranked candidates; users with fewer than k are topped up with popular items
    they were not already given, scored below each user's own lowest score (so a user's list
    does not depend on who else is in the batch)."""
    floors = scored.group_by(C.USER).agg((pl.col(C.SCORE).min() - 1.0).alias("_floor"))
    pop = pl.DataFrame(
        {
            C.ITEM: pl.Series(pop_list, dtype=pl.Int32),
            "_step": np.arange(len(pop_list), dtype=np.float64),
        }
    )
    filler = (
        pl.DataFrame({C.USER: pl.Series(users, dtype=pl.Int32)})
        .join(pop, how="cross")
        .join(scored, on=[C.USER, C.ITEM], how="anti")
        .join(floors, on=C.USER, how="left")
        .select(C.USER, C.ITEM, (pl.col("_floor").fill_null(-1.0) - pl.col("_step")).alias(C.SCORE))
    )
    both = pl.concat([scored, filler.select(scored.columns)])
    return top_k(both, C.SCORE, k)


def save_recommendations(result: RecommendResult, out: str | Path) -> Path:
    """Write collected recommendations to ``out`` (.parquet or .csv), atomically."""
    path = Path(out)
    atomic_write_table(result.recs, path)
    return path
