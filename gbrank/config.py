"""Configuration: one TOML file (``gbrank.toml``), every key with a default.

Unknown keys are rejected with the nearest valid name, so a typo never silently falls back
to a default. Command-line flags override keys through :func:`apply_overrides`.

Example:
    >>> cfg = load_config(None, overrides=["folds.horizon_days=14"])
    >>> cfg.folds.horizon_days
    14
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from gbrank.budgets import parse_budget
from gbrank.columns import EVENT_TYPES, TARGETS
from gbrank.errors import ConfigError, MissingInputError

DEFAULT_CONFIG_FILE = "gbrank.toml"
PREDICTORS = ("auto", "lightgbm", "lleaves")
EXECUTORS = ("local", "dask")


def _default_event_map() -> dict[str, str]:
    # Raw event names seen in public logs, mapped to the canonical funnel types.
    return {
        "view": "view",
        "pv": "view",
        "page_view": "view",
        "impression": "view",
        "click": "click",
        "clicks": "click",
        "cart": "cart",
        "carts": "cart",
        "addtocart": "cart",
        "add_to_cart": "cart",
        "fav": "cart",
        "purchase": "purchase",
        "buy": "purchase",
        "order": "purchase",
        "orders": "purchase",
        "transaction": "purchase",
    }


@dataclass
class ColumnsConfig:
    """Names of the raw columns in the input files."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    ts: str = "ts"
    event: str = "event"
    session_id: str = "session_id"
    value: str = "value"
    quantity: str = "quantity"


@dataclass
class DataConfig:
    events: str = "events.parquet"
    items: str = ""
    users: str = ""
    format: str = "auto"  # auto | parquet | csv | jsonl | otto
    ts_unit: str = "auto"  # auto | s | ms | us | ns | datetime
    # How raw ids are read: "auto" keeps the type a typed file gives (Parquet, JSON numbers)
    # and reads text files' ids as text, so "00123" and "123" stay two ids (as integers when
    # every id is one written canonically); "string" makes every id text; "int" requires
    # integers and refuses ids that would merge ("00123" and "123").
    id_dtype: str = "auto"
    duplicates: str = "keep"  # keep | drop (exact duplicate rows)
    allow_future: bool = False
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    event_map: dict[str, str] = field(default_factory=_default_event_map)


@dataclass
class EventsConfig:
    """Per event type: weight in interaction matrices, gain in graded labels."""

    weights: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 8.0}
    )
    gains: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "click": 2.0, "cart": 6.0, "purchase": 16.0}
    )

    def weight_list(self) -> list[float]:
        return [float(self.weights[t]) for t in EVENT_TYPES]

    def gain_list(self) -> list[float]:
        return [float(self.gains[t]) for t in EVENT_TYPES]


@dataclass
class FoldsConfig:
    horizon_days: int = 7
    # The eval fold's cut-off (ISO date/datetime). Empty: end of data minus one horizon.
    as_of: str = ""


def _default_sources() -> dict[str, dict[str, Any]]:
    return {
        "popularity": {"kind": "popularity", "n": 50, "window_days": 7},
        "history": {"kind": "history", "n": 50, "half_life_days": 14},
        "als": {"kind": "als", "n": 50, "factors": 48, "iterations": 12},
        "itemknn_cosine": {"kind": "itemknn", "n": 50, "similarity": "cosine"},
        # Items touched soon after the user's recent items (the strongest single source in
        # the winning OTTO pipelines), and what is carted or bought with what they bought.
        "covisit": {
            "kind": "covisit",
            "n": 50,
            "src_events": ["view", "click"],
            "dst_events": ["click", "cart", "purchase"],
            "max_gap_hours": 24,
            "time_weight": "linear",
        },
        "covisit_buy2buy": {
            "kind": "covisit",
            "n": 30,
            "src_events": ["cart", "purchase"],
            "dst_events": ["cart", "purchase"],
            "max_gap_hours": 336,
        },
    }


@dataclass
class CandidatesConfig:
    # Each table is one source: `kind` picks the class, `n` its list length, the rest are
    # the source's own parameters (see docs/candidates.md).
    sources: dict[str, dict[str, Any]] = field(default_factory=_default_sources)
    # Users are generated in batches of this many, bounding peak memory.
    batch_users: int = 50_000
    # Keep at most this many candidates per user after the union (0: no cap).
    max_per_user: int = 0
    # Target whose positive rate per rank sets the automatic budgets (sources with n = "auto").
    budget_target: str = "click"


@dataclass
class FeaturesConfig:
    """Feature families and their knobs (see docs/features.md, `gbrank features --list`)."""

    @staticmethod
    def _default_families() -> list[str]:
        from gbrank.features.registry import default_family_names

        return default_family_names()

    # Families to build, in any order: user, item, user_item, user_category, user_brand,
    # cross, source, similarity (off by default, see docs/features.md).
    families: list[str] = field(default_factory=_default_families)
    # Count windows in days, for the user and item families (all history is always added).
    windows_days: list[int] = field(default_factory=lambda: [1, 7, 30])
    # Windows of the item family when they should differ (empty: windows_days).
    item_windows_days: list[int] = field(default_factory=list)
    # Similarity family: the user's last N distinct items the candidate is compared with.
    recent_items: int = 10
    # User x category / brand: the short-term share counts the user's last N events.
    short_term_events: int = 20
    # Sessions split where this much time passes without an event (when `session` is null).
    session_gap_minutes: float = 30.0
    # Pseudo-counts of the smoothed rates (CTR, CVR, the user's funnel), toward the global rate.
    prior_strength: float = 20.0
    # Similarity family, when no candidate source offers its models (it reuses the fold's first
    # covisit and ALS sources): its own co-visitation window and ALS.
    covisit_hours: float = 24.0
    als_factors: int = 32
    als_iterations: int = 8
    # Users are split into this many shards by a hash of their code (0: automatic, so that a
    # shard has at most about shard_rows candidate rows); each shard is written as it is made.
    shards: int = 0
    shard_rows: int = 2_000_000
    # Candidate rows per batch of the similarity family (memory: batch_rows x recent_items).
    batch_rows: int = 50_000

    def __post_init__(self) -> None:
        from gbrank.features.registry import check_config

        check_config(self)


@dataclass
class SampleConfig:
    """The training sample (docs/architecture.md, "Training sample"): features are built
    only for these rows of the train fold, and the serving model draws the same way."""

    # At most this many users with an event in the train fold's label window, chosen by a
    # stable hash (0: all): candidates are generated for them alone, and those of them with a
    # labelled candidate are learned from (the serving model: the same among the eval users).
    users: int = 50_000
    # Unlabelled candidates kept per user (0: every one); every labelled one is kept.
    negatives: int = 20
    # Share of those negatives taken by best candidate rank (hard ones); the rest at random.
    # Measured on the synthetic shop, hard ones hurt (docs/architecture.md, "Training sample").
    hard_share: float = 0.0
    # Folds with fewer candidate rows (of the chosen users) keep every negative.
    min_rows: int = 100_000


@dataclass
class TrainConfig:
    # "lightgbm" (parameters in train.params) or "xgboost" (in train.xgboost_params).
    backend: str = "lightgbm"
    # The rank objective: "" is the backend's default (lightgbm: lambdarank; xgboost:
    # rank:ndcg, or rank:pairwise).
    objective: str = ""
    num_boost_round: int = 400
    early_stopping_rounds: int = 40
    # Early stopping counts a round as better only when it beats the best held-out score by
    # more than this (NDCG, or log loss for the binary heads): the validation curve flattens
    # long before it peaks, and every tree costs its share of training and scoring. 0.0002
    # kept 131 trees instead of 233 at 10M events for 0.0005 of held-out NDCG@10
    # (docs/architecture.md, "Ranker").
    min_delta: float = 0.0002
    valid_fraction: float = 0.2
    sample: SampleConfig = field(default_factory=SampleConfig)
    # learning_rate 0.1 rather than 0.05: about a third fewer trees to score at 1M events (95
    # against 131) for 0.002 of purchase NDCG@10; scoring is most of eval and recommend.
    params: dict[str, Any] = field(
        default_factory=lambda: {
            "learning_rate": 0.1,
            "num_leaves": 31,
            "min_data_in_leaf": 20,
            "feature_fraction": 0.9,
            "lambdarank_truncation_level": 20,
        }
    )
    xgboost_params: dict[str, Any] = field(
        default_factory=lambda: {
            "learning_rate": 0.1,
            "max_depth": 6,
            "min_child_weight": 1.0,
            "colsample_bytree": 0.9,
            "lambdarank_num_pair_per_sample": 20,  # pairs cut at rank 20, as LightGBM's
        }
    )
    # A user with more candidate rows than this is one query too large (LightGBM aborts above
    # 10,000): "cap" keeps the best-ranked rows with a warning, "error" refuses.
    max_group_rows: int = 10_000
    group_overflow: str = "cap"
    # "local": the training sample on this machine, LightGBM with early stopping on held-out
    # users. "dask": lightgbm.dask on the cluster of run.scheduler (a LocalCluster when empty),
    # one partition of whole users per shard, num_boost_round trees, then cut at the best
    # held-out score; for a sample that no longer fits one machine (docs/architecture.md).
    engine: str = "local"

    @property
    def params_key(self) -> str:
        """The key holding the configured backend's parameters."""
        return "xgboost_params" if self.backend == "xgboost" else "params"

    @property
    def backend_params(self) -> dict[str, Any]:
        """The configured backend's parameters (``train.params`` or ``train.xgboost_params``)."""
        params: dict[str, Any] = getattr(self, self.params_key)
        return params

    # The models trained (docs/architecture.md, "Heads and blends"): "ranker" (the rank objective
    # on graded labels), "ctr" (binary, click), "cvr" (binary, purchase), and per-target rankers
    # "ranker_click", "ranker_cart", "ranker_purchase". Each head costs its own training and
    # scoring time, so only "ranker" is on by default.
    heads: list[str] = field(default_factory=lambda: ["ranker"])
    # Rows the CVR head learns from: "clicked" (p(purchase | click), for the ctr_cvr blend) or
    # "all" (p(purchase) directly).
    cvr_rows: str = "clicked"


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 20])
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    # Candidate rows scored at a time (whole users each): sets eval's peak memory.
    batch_rows: int = 500_000
    # At most this many users with an event in the eval fold's label window, chosen by a stable
    # hash (0: all). Candidates, features and metrics are made for them alone, and the serving
    # model learns from them; 50,000 users put NDCG@10's standard error near 0.002.
    users: int = 50_000
    # How eval and recommend score candidates: "lightgbm" (LightGBM's own predictor), "lleaves"
    # (the trees compiled to native code: about 5x faster, compiled in about 5 s per 100 trees)
    # or "auto" (lleaves when it is installed and a stage scores at least 1M rows).
    predictor: str = "auto"
    # Keep lleaves' compiled code in <workspace>/compiled and load it when the same model is
    # scored again (saves the compile, 5-7 s per call at 1M events). Off by default: loading a
    # native object runs whatever it holds, so whoever can write the workspace could run code.
    compile_cache: bool = False
    # Bootstrap resamples of the users for the metrics' confidence intervals (0: none).
    bootstrap: int = 200
    # Write report.html and report.md (matplotlib plots; about 1-2 s).
    report: bool = True
    # On a synthetic shop (a truth/ folder beside the events), also score the oracle: the true
    # expected purchases, the ceiling of any model. "auto": when eval users x items is at most
    # 2e7 (its cost is one dense score per user and item); "always"; "never".
    oracle: str = "auto"


@dataclass
class RunConfig:
    workspace: str = "gbrank-workspace"
    seed: int = 0
    # Empty: a name derived from the hash of the resolved config, so stage commands run one by
    # one with the same config share a run folder.
    run_id: str = ""
    # Where the sharded stages (features, recommend) run their shards: "local" (this process,
    # one shard after the other) or "dask" (one Dask task per shard; pip install 'gbrank[dask]').
    # The outputs are the same bytes either way.
    executor: str = "local"
    # executor = "dask": the scheduler's address (tcp://host:8786); empty starts a LocalCluster
    # of `workers` processes on this machine for the command's duration.
    scheduler: str = ""
    # LocalCluster workers (0: one per core), each given worker_threads threads (Polars, BLAS;
    # 0: cores / workers).
    workers: int = 0
    worker_threads: int = 0


@dataclass
class PromoteConfig:
    """The gate of ``gbrank run``: a new run becomes ``current`` only if its served model's
    ``metric@k`` on ``target`` is at least the champion's minus ``tolerance``, both scored on
    the new run's eval fold."""

    metric: str = "ndcg"
    k: int = 0  # 0: the first of eval.ks
    target: str = ""  # "": the last of eval.targets (purchase by default)
    # Absolute drop allowed: the metric's noise across folds is about 0.002 at 50,000 users.
    tolerance: float = 0.0


#: What ``gbrank tune`` may search (docs/tuning.md): the ranker's parameters, the candidate
#: sources' budgets and parameters, the weights of the served blend.
TUNE_SPACES = ("ranker", "candidates", "blend")


@dataclass
class TuneConfig:
    """``gbrank tune``: an Optuna study maximising the gate's metric (``[promote]``: metric,
    k, target of ``blend.serve``) on users held out of the train fold, never the eval fold."""

    # Finished trials (complete or pruned) the study should hold: a resumed study runs the rest.
    trials: int = 20
    # Stop starting trials after this many seconds (0: no limit).
    timeout: float = 0.0
    # What is searched: any of "ranker", "candidates", "blend".
    space: list[str] = field(default_factory=lambda: ["ranker"])
    # The study's name ("": tune-<run id of the base config>); the eval report of a config that
    # names a study shows its history and parameter importances.
    study: str = ""
    # Any database URL Optuna takes ("": SQLite at <workspace>/tune/optuna.db), e.g.
    # postgresql://host/db for several machines.
    storage: str = ""
    # Prune trials whose validation NDCG is in the lowest quarter of earlier trials' at the same
    # round (LightGBM/XGBoost callback), after this many rounds.
    pruning: bool = True
    prune_after_rounds: int = 30
    # Trials drawn at random before TPE models the results (the first trial is the config).
    startup_trials: int = 8


@dataclass
class BlendConfig:
    """Scores from several heads (rankers/blend.py)."""

    # What recommend serves: a head of train.heads, "ctr_cvr" (p(click) * p(purchase | click),
    # with the ctr and cvr heads) or a blend of `weights`.
    serve: str = "ranker"
    # Weighted blends, name = {head = weight}, e.g. otto = {ranker_click = 0.1, ranker_cart =
    # 0.3, ranker_purchase = 0.6}; each head's scores are standardised within the user first.
    weights: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A stable hash of the resolved configuration."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def section_hash(self, *sections: str) -> str:
        data = {s: self.to_dict()[s] for s in sections}
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def _nearest(key: str, valid: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(valid)}"


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotated type ``tp`` (the small subset the config uses)."""
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        return _build(tp, value, path)
    if origin in (list,):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict,):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        _, inner = typing.get_args(tp)
        return {str(k): _coerce(v, inner, f"{path}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            raise ConfigError(f"unknown key '{where}'{_nearest(key, fields)}")
        kwargs[key] = _coerce(value, hints[key], where)
    obj = cls(**kwargs)
    return obj


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is taken as a string
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values in TOML syntax) to a raw config dict."""
    for item in overrides:
        keys, value = _parse_override(item)
        update: dict[str, Any] = {keys[-1]: value}
        for key in reversed(keys[:-1]):
            update = {key: update}
        data = _merge(data, update)
    return data


def validate(cfg: Config) -> Config:
    """Cross-field checks that the type annotations cannot express."""
    for section, mapping in (
        ("events.weights", cfg.events.weights),
        ("events.gains", cfg.events.gains),
    ):
        missing = [t for t in EVENT_TYPES if t not in mapping]
        unknown = [t for t in mapping if t not in EVENT_TYPES]
        if unknown:
            raise ConfigError(
                f"{section}: unknown event type '{unknown[0]}'{_nearest(unknown[0], EVENT_TYPES)}"
            )
        if missing:
            raise ConfigError(f"{section}: missing event type(s) {missing}")
    bad = {raw: canon for raw, canon in cfg.data.event_map.items() if canon not in EVENT_TYPES}
    if bad:
        raw, canon = next(iter(bad.items()))
        raise ConfigError(
            f"data.event_map: '{raw}' maps to '{canon}', which is not one of {list(EVENT_TYPES)}"
        )
    for t in cfg.eval.targets:
        if t not in TARGETS:
            raise ConfigError(f"eval.targets: unknown target '{t}'{_nearest(t, TARGETS)}")
    if cfg.eval.predictor not in PREDICTORS:
        raise ConfigError(
            f"eval.predictor must be one of {', '.join(PREDICTORS)}, got {cfg.eval.predictor!r}"
        )
    if cfg.run.executor not in EXECUTORS:
        raise ConfigError(f"run.executor must be 'local' or 'dask', got {cfg.run.executor!r}")
    if cfg.train.engine not in EXECUTORS:
        raise ConfigError(f"train.engine must be 'local' or 'dask', got {cfg.train.engine!r}")
    if cfg.run.workers < 0:
        raise ConfigError(f"run.workers must be 0 (one per core) or more, got {cfg.run.workers}")
    if cfg.run.worker_threads < 0:
        raise ConfigError(
            f"run.worker_threads must be 0 (cores / workers) or more, got {cfg.run.worker_threads}"
        )
    if cfg.eval.users < 0:
        raise ConfigError(f"eval.users must be 0 (every user) or positive, got {cfg.eval.users}")
    if cfg.eval.oracle not in ("auto", "always", "never"):
        raise ConfigError(f"eval.oracle must be auto, always or never, got {cfg.eval.oracle!r}")
    if cfg.eval.bootstrap < 0:
        raise ConfigError("eval.bootstrap must be 0 (no intervals) or more resamples")
    if cfg.eval.batch_rows < 1:
        raise ConfigError("eval.batch_rows must be at least 1")
    if cfg.folds.horizon_days < 1:
        raise ConfigError("folds.horizon_days must be at least 1")
    choices = {
        "data.format": (cfg.data.format, ("auto", "parquet", "csv", "jsonl", "otto")),
        "data.ts_unit": (cfg.data.ts_unit, ("auto", "s", "ms", "us", "ns", "datetime")),
        "data.id_dtype": (cfg.data.id_dtype, ("auto", "string", "int")),
        "data.duplicates": (cfg.data.duplicates, ("keep", "drop")),
        "train.backend": (cfg.train.backend, ("lightgbm", "xgboost")),
        "train.group_overflow": (cfg.train.group_overflow, ("cap", "error")),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{name} = '{value}' is not one of {list(allowed)}")
    sample = cfg.train.sample
    if sample.users < 0 or sample.negatives < 0 or sample.min_rows < 0:
        raise ConfigError("train.sample.users, negatives and min_rows must be 0 (no limit) or more")
    if not 0.0 <= sample.hard_share <= 1.0:
        raise ConfigError("train.sample.hard_share must be in [0, 1]")
    if not 0.0 < cfg.train.valid_fraction < 1.0:
        raise ConfigError("train.valid_fraction must be in (0, 1)")
    if not cfg.train.min_delta >= 0.0:
        raise ConfigError(
            f"train.min_delta must be 0 (any gain counts) or more, got {cfg.train.min_delta!r}"
        )
    if cfg.candidates.budget_target not in TARGETS:
        raise ConfigError(
            f"candidates.budget_target: unknown target '{cfg.candidates.budget_target}'"
            f"{_nearest(cfg.candidates.budget_target, TARGETS)}"
        )
    if cfg.candidates.max_per_user < 0:
        raise ConfigError("candidates.max_per_user must be 0 (no cap) or positive")
    if not cfg.candidates.sources:
        raise ConfigError("candidates.sources is empty: configure at least one source")
    for name, params in cfg.candidates.sources.items():
        if "kind" not in params:
            raise ConfigError(f"candidates.sources.{name}: missing key 'kind'")
        parse_budget(name, params)
    _check_sources(cfg)
    if not 1 <= cfg.train.max_group_rows <= 10_000:
        raise ConfigError("train.max_group_rows must be in 1..10000 (LightGBM's query limit)")
    # The backend's parameters are checked where a model is trained (check_ranker_params):
    # importing LightGBM (and the scikit-learn and pandas it loads when installed) costs
    # 1.4 s, which every command and stage that trains nothing would pay.
    _check_heads(cfg)
    _check_promote(cfg)
    _check_tune(cfg)
    return cfg


def _check_tune(cfg: Config) -> None:
    tune = cfg.tune
    if tune.trials < 1:
        raise ConfigError(f"tune.trials must be at least 1, got {tune.trials}")
    if tune.timeout < 0:
        raise ConfigError(f"tune.timeout must be 0 (no limit) or more seconds, got {tune.timeout}")
    for space in tune.space:
        if space not in TUNE_SPACES:
            raise ConfigError(f"tune.space: unknown space '{space}'{_nearest(space, TUNE_SPACES)}")
    if not tune.space:
        raise ConfigError(f"tune.space is empty: search at least one of {list(TUNE_SPACES)}")
    if "blend" in tune.space and cfg.blend.serve not in cfg.blend.weights:
        raise ConfigError(
            f"tune.space has 'blend', but blend.serve = '{cfg.blend.serve}' is not a weighted "
            "blend: define blend.weights.<name> and serve it, or drop 'blend'"
        )
    if tune.prune_after_rounds < 0 or tune.startup_trials < 0:
        raise ConfigError("tune.prune_after_rounds and tune.startup_trials must be 0 or more")


def _check_promote(cfg: Config) -> None:
    from gbrank.metrics import RANKING_METRICS as METRICS

    promote = cfg.promote
    if promote.k == 0 and cfg.eval.ks:
        promote.k = cfg.eval.ks[0]
    if not promote.target and cfg.eval.targets:
        promote.target = cfg.eval.targets[-1]
    if promote.metric not in METRICS:
        raise ConfigError(
            f"promote.metric: unknown metric '{promote.metric}'{_nearest(promote.metric, METRICS)}"
        )
    if promote.k not in cfg.eval.ks:
        raise ConfigError(
            f"promote.k = {promote.k} is not one of eval.ks {cfg.eval.ks}: add it there"
        )
    if promote.target not in cfg.eval.targets:
        raise ConfigError(
            f"promote.target '{promote.target}' is not one of eval.targets {cfg.eval.targets}"
        )
    if not promote.tolerance >= 0:
        raise ConfigError(f"promote.tolerance must be 0 or more, got {promote.tolerance}")


def _check_heads(cfg: Config) -> None:
    from gbrank.rankers.blend import PRODUCT, blend_names
    from gbrank.rankers.sampling import CVR_ROWS, HEADS

    heads = cfg.train.heads
    if not heads:
        raise ConfigError('train.heads is empty: train at least one head, e.g. ["ranker"]')
    for head in heads:
        if head not in HEADS:
            raise ConfigError(f"train.heads: unknown head '{head}'{_nearest(head, list(HEADS))}")
    if len(set(heads)) != len(heads):
        raise ConfigError(f"train.heads lists a head twice: {heads}")
    if cfg.train.cvr_rows not in CVR_ROWS:
        raise ConfigError(f"train.cvr_rows = '{cfg.train.cvr_rows}' is not one of {list(CVR_ROWS)}")
    for name, weights in cfg.blend.weights.items():
        if name in HEADS or name == PRODUCT or name in cfg.candidates.sources:
            raise ConfigError(f"blend.weights.{name}: the name is taken by a head or a source")
        if not weights:
            raise ConfigError(f"blend.weights.{name} is empty: give {{head = weight}}")
        for head, weight in weights.items():
            if head not in heads:
                raise ConfigError(
                    f"blend.weights.{name}: head '{head}' is not trained; add it to train.heads "
                    f"(now {heads})"
                )
            if not isinstance(weight, (int, float)) or isinstance(weight, bool):
                raise ConfigError(f"blend.weights.{name}.{head} must be a number, got {weight!r}")
    offered = [*heads, *blend_names(heads, cfg.blend.weights)]
    if cfg.blend.serve not in offered:
        hint = " (ctr_cvr needs the ctr and cvr heads)" if cfg.blend.serve == PRODUCT else ""
        raise ConfigError(
            f"blend.serve = '{cfg.blend.serve}' is not a trained head or a blend{hint}; "
            f"one of {offered}"
        )


def check_ranker_params(cfg: Config) -> None:
    """The configured backend's objective and parameters (a one-round fit on a tiny frame),
    checked before any data is read by what trains a model: ``gbrank run`` and ``quickstart``
    before their first stage, ``train``, ``tune``, and ``gbrank config show``."""
    from gbrank.rankers import DEFAULT_OBJECTIVES, backend_class

    cls = backend_class(cfg.train.backend)
    if cfg.train.objective and cls.objectives.get(cfg.train.objective) != "rank":
        ranks = [o for o, kind in cls.objectives.items() if kind == "rank"]
        raise ConfigError(
            f"train.objective = '{cfg.train.objective}' is not a {cfg.train.backend} rank "
            f'objective; one of {ranks} (or "" for {DEFAULT_OBJECTIVES[cfg.train.backend]["rank"]})'
        )
    cls.check_params(cfg.train.backend_params, f"train.{cfg.train.params_key}")


def _check_sources(cfg: Config) -> None:
    """Build every configured source (kind, parameter names and values are checked), so a typo
    fails before any data is read."""
    from gbrank.budgets import BUDGET_KEYS
    from gbrank.candidates import build_source

    for name, table in cfg.candidates.sources.items():
        params = {k: v for k, v in table.items() if k != "kind" and k not in BUDGET_KEYS}
        build_source(name, str(table["kind"]), params)


def load_config(path: str | Path | None, overrides: typing.Iterable[str] = ()) -> Config:
    """Load ``path`` (or only defaults when None), apply overrides and validate.

    Source tables given in the file replace the default source set as a whole, so a file
    that lists two sources runs exactly those two.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise MissingInputError(f"config file {p} does not exist")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    base = Config().to_dict()
    if "sources" in data.get("candidates", {}):
        base["candidates"]["sources"] = {}
    # Merge onto the defaults so a partial table (say one extra event_map entry) keeps the rest.
    data = apply_overrides(_merge(base, data), overrides)
    cfg = _build(Config, data, "")
    return validate(cfg)


def workspace_of(path: str | Path | None, overrides: typing.Iterable[str] = ()) -> str:
    """``run.workspace`` from the file and the overrides alone, without validating the rest
    (which imports the libraries that check parameters): for taking the lock first."""
    data: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        try:
            data = tomllib.loads(Path(path).read_text())
        except tomllib.TOMLDecodeError:
            data = {}
    with contextlib.suppress(ConfigError):
        data = apply_overrides(data, overrides)
    value = data.get("run", {}).get("workspace", RunConfig.workspace)
    return value if isinstance(value, str) else RunConfig.workspace


def dump_toml(cfg: Config) -> str:
    """Render the resolved config as TOML (round-trips through :func:`load_config`)."""
    lines: list[str] = []

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{_key(k)} = {fmt(x)}" for k, x in v.items()) + " }"
        raise TypeError(type(v))

    def emit(table: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in d.items() if isinstance(v, dict)}
        if scalars or not tables:
            lines.append(f"[{table}]")
            lines.extend(f"{_key(k)} = {fmt(v)}" for k, v in scalars.items())
            lines.append("")
        for k, v in tables.items():
            emit(f"{table}.{_key(k)}", v)

    for section, values in cfg.to_dict().items():
        emit(section, values)
    return "\n".join(lines)


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)
