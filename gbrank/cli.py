"""The ``gbrank`` command line: parses options, calls the library, maps errors to exit codes."""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from gbrank import __version__
from gbrank.atomic import io_error, wrapped_os_error
from gbrank.config import DEFAULT_CONFIG_FILE, Config, dump_toml, load_config, workspace_of
from gbrank.errors import EXIT_INTERNAL, EXIT_IO, GbrankError, GbrankWarning

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _flags_show_no_type() -> None:
    """Typer prints a flag as ``--list <bool>``, which reads as if it took a value."""
    from typer.core import TyperOption

    display = getattr(TyperOption, "display_type_rich", None)
    if display is None or getattr(display, "_gbrank", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else display(self, ctx)

    display_type_rich._gbrank = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()

app = typer.Typer(
    name="gbrank",
    help="Two-stage recommendation for e-commerce: candidate sources, then gradient-boosted "
    "rankers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT,
)
data_app = typer.Typer(
    help="Load, check and synthesize event data.", no_args_is_help=True, context_settings=CONTEXT
)
config_app = typer.Typer(
    help="Inspect the configuration.", no_args_is_help=True, context_settings=CONTEXT
)
runs_app = typer.Typer(
    help="The runs of a workspace: list, inspect, promote, roll back.",
    no_args_is_help=True,
    context_settings=CONTEXT,
)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
app.add_typer(runs_app, name="runs")

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=f"TOML config file (default: ./{DEFAULT_CONFIG_FILE} when it exists).",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a config key, e.g. --set folds.horizon_days=14 (repeatable).",
    ),
]
WorkspaceOpt = Annotated[
    Path | None, typer.Option("--workspace", "-w", help="Workspace folder (run.workspace).")
]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        "--executor",
        help="Where the sharded stages run their shards: local or dask (run.executor).",
    ),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Dask scheduler address, tcp://host:8786 (run.scheduler; implies --executor dask); "
        "without it, --executor dask starts a LocalCluster.",
    ),
]
EventsOpt = Annotated[
    str | None, typer.Option("--events", help="Events file, glob or folder (data.events).")
]


#: "text" or "json" (--log-format): json makes every line of output one JSON object.
_LOG = {"format": "text"}


def _json_line(level: str, event: str, **fields: Any) -> None:
    from gbrank.progress import JsonReporter

    JsonReporter(sys.stdout).event(event if level == "info" else level, **fields)


def _echo(text: str = "") -> None:
    if _LOG["format"] == "json":
        if text:
            _json_line("info", "message", message=text)
        return
    typer.echo(text)


def _error(text: str, exit_code: int) -> None:
    if _LOG["format"] == "json":
        _json_line("error", "error", message=text, exit_code=exit_code)
    else:
        typer.echo(f"error: {text}", err=True)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    if _LOG["format"] == "json":
        _json_line("warning", "warning", message=str(message))
    else:
        typer.echo(f"warning: {message}", err=True)


def _reporter() -> Any:
    """JSON lines, progress bars on a terminal, or plain lines on stderr."""
    from gbrank import progress

    if _LOG["format"] == "json":
        return progress.JsonReporter(sys.stdout)
    if sys.stderr.isatty():
        return progress.RichReporter()
    return progress.LineReporter(sys.stderr)


def handle_errors(func: F) -> F:
    """Turn library errors into a one-line message and the documented exit code; print
    gbrank's warnings as ``warning: ...`` lines on stderr."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from gbrank.progress import reporting

        shown = warnings.showwarning
        try:
            with warnings.catch_warnings(), reporting(_reporter()):
                warnings.simplefilter("always", GbrankWarning)
                warnings.showwarning = _show_warning
                return func(*args, **kwargs)
        except GbrankError as exc:
            _error(str(exc), exc.exit_code)
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:  # the reader went away (`gbrank eval | head`): stop quietly
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python flushes it at exit)
            raise typer.Exit(141) from None
        except OSError as exc:  # reading or writing the disk: the path and the errno text
            error = io_error(getattr(exc, "filename", None) or "a file", exc, "read or write")
            _error(str(error), error.exit_code)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # an internal error: show the traceback, exit 70
            wrapped = wrapped_os_error(exc)
            if wrapped is not None:  # a library's report of a disk error
                _error(str(io_error("a file", wrapped, "read or write")), EXIT_IO)
                raise typer.Exit(EXIT_IO) from None
            traceback.print_exc()
            typer.echo("error: internal error (see the traceback above)", err=True)
            raise typer.Exit(EXIT_INTERNAL) from None
        except BaseException as exc:  # a Rust panic inside Polars is no Exception
            if type(exc).__name__ != "PanicException":
                raise
            traceback.print_exc()
            typer.echo("error: internal error (see the traceback above)", err=True)
            raise typer.Exit(EXIT_INTERNAL) from None
        finally:
            warnings.showwarning = shown

    return wrapper  # type: ignore[return-value]


def config_path(config: Path | None) -> Path | None:
    """``--config``, else ./gbrank.toml when it exists, else None (the defaults)."""
    if config is None and Path(DEFAULT_CONFIG_FILE).exists():
        return Path(DEFAULT_CONFIG_FILE)
    return config


def resolve_config(
    config: Path | None,
    overrides: list[str] | None,
    workspace: Path | None = None,
    events: str | None = None,
    executor: str | None = None,
    scheduler: str | None = None,
) -> Config:
    """Config file (explicit, or ./gbrank.toml), then --set overrides, then dedicated flags."""
    path = config_path(config)
    extra = list(overrides or []) + executor_overrides(executor, scheduler)
    if workspace is not None:
        extra.append(f"run.workspace={_toml_str(str(workspace))}")
    if events is not None:
        extra.append(f"data.events={_toml_str(events)}")
    return load_config(path, extra)


def executor_overrides(executor: str | None, scheduler: str | None) -> list[str]:
    """``--executor`` and ``--scheduler`` as config overrides (a scheduler implies dask)."""
    extra = []
    if scheduler is not None:
        extra.append(f"run.scheduler={_toml_str(scheduler)}")
        executor = executor or "dask"
    if executor is not None:
        extra.append(f"run.executor={_toml_str(executor)}")
    return extra


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"gbrank {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            help="text, or json: one JSON object per line on stdout (for log collectors).",
        ),
    ] = "text",
) -> None:
    """Two-stage recommendation for e-commerce."""
    if log_format not in ("text", "json"):
        typer.echo(f"error: --log-format must be text or json, got {log_format!r}", err=True)
        raise typer.Exit(2)
    _LOG["format"] = log_format


# --------------------------------------------------------------------------- data


@data_app.command("synth")
@handle_errors
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    users: Annotated[int, typer.Option(help="Number of users.")] = 20_000,
    items: Annotated[int, typer.Option(help="Number of items.")] = 5_000,
    days: Annotated[int, typer.Option(help="Days of activity.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
) -> None:
    """Write a synthetic shop (events, items, users, and the true preference model)."""
    from gbrank.data.synth import SynthConfig, synthesize

    t0 = time.perf_counter()
    summary = synthesize(SynthConfig(users=users, items=items, days=days, seed=seed), out)
    _echo(
        f"wrote {summary.events:,} events, {summary.users:,} users, {summary.items:,} items "
        f"to {out} in {time.perf_counter() - t0:.1f}s"
    )
    total = max(summary.events, 1)
    for name, n in summary.per_event_type.items():
        _echo(f"  {name:<9} {n:>12,}  {100 * n / total:5.1f}%")


@data_app.command("validate")
@handle_errors
def data_validate(
    events: EventsOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    ts_unit: Annotated[
        str | None, typer.Option(help="Force the timestamp unit: s, ms, us, ns or datetime.")
    ] = None,
) -> None:
    """Check the events (and the items and users tables of the config) against the data
    contract and the folds; print a summary, the tables' id coverage, or the errors."""
    from gbrank.data.io import Coverage
    from gbrank.pipeline import load_inputs

    overrides = list(set_ or [])
    if ts_unit:
        overrides.append(f"data.ts_unit={_toml_str(ts_unit)}")
    cfg = resolve_config(config, overrides, events=events)
    coverage: list[Coverage] = []
    inputs = load_inputs(cfg, coverage)
    _echo("\n".join(inputs.loaded.summary.lines()))
    for cov in coverage:
        _echo(cov.line())
    for name in ("train", "eval"):
        fold = inputs.folds[name]
        _echo(f"{name + ' fold':<11} as_of {fold.as_of}, labels until {fold.label_end}")
    _echo("ok: the events follow the data contract")


@data_app.command("import")
@handle_errors
def data_import(
    fmt: Annotated[
        str,
        typer.Argument(
            metavar="FORMAT",
            help="retailrocket, taobao, otto, hm, movielens, online-retail, diginetica, "
            "yoochoose or instacart.",
        ),
    ],
    src: Annotated[Path, typer.Argument(help="The dataset's file or folder, as published.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    rating_threshold: Annotated[
        float, typer.Option(help="MovieLens: ratings at or above it become purchases.")
    ] = 4.0,
    limit: Annotated[int, typer.Option(help="Read at most this many events (0: all).")] = 0,
) -> None:
    """Convert a public dataset into the data contract plus a suggested gbrank.toml."""
    from gbrank.data.importers import ImportOptions, import_dataset

    options = ImportOptions(rating_threshold=rating_threshold, limit=limit)
    result = import_dataset(fmt, src, out, options)
    _echo(
        f"wrote {result.events:,} events, {result.users:,} users, {result.items:,} items "
        f"to {result.out}"
    )
    total = max(result.events, 1)
    for name in ("view", "click", "cart", "purchase"):
        n = result.per_event_type.get(name, 0)
        _echo(f"  {name:<9} {n:>12,}  {100 * n / total:5.1f}%")
    for note in result.notes:
        _echo(f"note: {note}")
    _echo(
        f"suggested config: {result.out / 'gbrank.toml'} (folds.horizon_days = "
        f"{result.horizon_days})"
    )
    _echo(f"next: gbrank generate -c {result.out / 'gbrank.toml'}")


# --------------------------------------------------------------------------- config


@config_app.command("show")
@handle_errors
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved configuration (file, then overrides, then defaults) as TOML, once
    it is checked whole (the ranker backend's parameters included)."""
    from gbrank.config import check_ranker_params

    cfg = resolve_config(config, set_)
    check_ranker_params(cfg)
    _echo(dump_toml(cfg))


# --------------------------------------------------------------------------- stages


@app.command()
@handle_errors
def generate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
    events: EventsOpt = None,
) -> None:
    """Stage 1: load the events, cut the folds, generate candidates; print candidate recall."""
    from gbrank import pipeline

    cfg = resolve_config(config, set_, workspace, events)
    result = pipeline.generate(cfg)
    _echo(f"run {result.run.path}")
    _echo(
        f"events {result.summary.rows:,}, users {result.summary.users:,}, "
        f"items {result.summary.items:,}"
    )
    _echo(pipeline.format_recall_table(result.recall))


@app.command()
@handle_errors
def features(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
    executor: ExecutorOpt = None,
    scheduler: SchedulerOpt = None,
    list_: Annotated[
        bool,
        typer.Option(
            "--list",
            help="Print every feature with its family and description, then exit (needs no run).",
        ),
    ] = False,
) -> None:
    """Stage 2: leak-free features and labels for the train and eval folds."""
    if list_:
        from gbrank.features.base import FeatureSpec
        from gbrank.features.registry import format_listing

        cfg = resolve_config(config, set_, workspace)
        _echo(format_listing(FeatureSpec.from_config(cfg), cfg.features.families))
        return
    from gbrank import pipeline

    result = pipeline.build_features(
        resolve_config(config, set_, workspace, executor=executor, scheduler=scheduler)
    )
    _echo(f"run {result.run.path}")
    _echo(
        f"{len(result.features)} features; rows: "
        + ", ".join(f"{k} {v:,}" for k, v in result.rows.items())
    )


@app.command()
@handle_errors
def train(config: ConfigOpt = None, set_: SetOpt = None, workspace: WorkspaceOpt = None) -> None:
    """Stage 3: fit each head of train.heads (train fold) and its serving model (eval fold)."""
    from gbrank import pipeline

    result = pipeline.train(resolve_config(config, set_, workspace))
    _echo(f"run {result.run.path}")
    _echo(f"rows train {result.train_rows:,}, valid {result.valid_rows:,}")
    _echo("trees per head: " + ", ".join(f"{h} {n}" for h, n in result.heads.items()))
    _echo("top features by gain: " + ", ".join(result.importance["feature"].head(8).to_list()))


@app.command("eval")
@handle_errors
def eval_(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
    folds: Annotated[
        int,
        typer.Option(
            "--folds",
            help="Time-series CV: the whole pipeline on N consecutive eval folds, then each "
            "metric's mean and spread (each fold a run of its own, cached).",
            min=1,
        ),
    ] = 1,
) -> None:
    """Stage 4: metrics of every head, blend and source on the eval fold, with bootstrap
    intervals; writes metrics.json and the report (report.html, report.md)."""
    if folds > 1:
        from gbrank.runner import cross_validate

        cv = cross_validate(resolve_config(config, set_, workspace), folds)
        _echo("folds (eval as_of): " + ", ".join(cv.as_of))
        for target in cv.summary["target"].unique(maintain_order=True).to_list():
            _echo(cv.table(target))
            _echo("")
        _echo("runs: " + ", ".join(run.id for run in cv.runs))
        return
    from gbrank import pipeline

    result = pipeline.evaluate(resolve_config(config, set_, workspace))
    for target in result.users:
        _echo(result.table(target))
        _echo(f"({result.users[target]:,} users with a {target} in the label window)\n")
    heads = pipeline.format_head_table(result.metrics)
    if heads:
        _echo(heads + "\n")
    _echo(f"metrics: {result.run.file('metrics.json')}")
    _echo(f"report:  {result.run.file('report.html')} (and report.md)")


@app.command()
@handle_errors
def recommend(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file, .parquet or .csv.")],
    k: Annotated[int, typer.Option("--k", help="Items per user.", min=1)] = 20,
    users: Annotated[
        Path | None,
        typer.Option("--users", help="File of user ids (column user_id, or the first column)."),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="table (user_id, item_id, score, rank), otto (session_type, labels) or hm "
            "(customer_id, prediction): the competitions' submission CSVs.",
        ),
    ] = "table",
    run: Annotated[
        str | None,
        typer.Option(
            "--run",
            help="Serve this run of the workspace, or 'current' (the champion), with the config "
            "it was made with; default: the run of --config.",
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
    executor: ExecutorOpt = None,
    scheduler: SchedulerOpt = None,
) -> None:
    """Top-K items per user at the end of the data (raw ids, score, rank)."""
    from gbrank import pipeline

    pipeline.check_format(out, fmt)  # a usage error (exit 2) before any work
    if run is not None:
        from gbrank.runner import resolve_run, run_config

        ws = (
            workspace if workspace is not None else Path(resolve_config(config, set_).run.workspace)
        )
        cfg = run_config(resolve_run(ws, run), executor_overrides(executor, scheduler))
        result = pipeline.write_recommendations(cfg, k, out, users, check_inputs=False, fmt=fmt)
    else:
        cfg = resolve_config(config, set_, workspace, executor=executor, scheduler=scheduler)
        result = pipeline.write_recommendations(cfg, k, out, users, fmt=fmt)
    _echo(
        f"wrote {result.rows:,} rows for {result.n_users:,} users "
        f"({result.n_cold:,} cold, served by popularity) to {result.path}"
    )


@app.command()
@handle_errors
def quickstart(
    workspace: Annotated[
        Path, typer.Option("--workspace", "-w", help="Folder for the shop and the run.")
    ] = Path("gbrank-quickstart"),
    users: Annotated[int, typer.Option(help="Users in the synthetic shop.")] = 10_000,
    items: Annotated[int, typer.Option(help="Items in the synthetic shop.")] = 3_000,
    days: Annotated[int, typer.Option(help="Days of activity.")] = 56,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate a small synthetic shop and run every stage on it, then print the metrics."""
    from gbrank.quickstart import run_quickstart

    t0 = time.perf_counter()
    result = run_quickstart(workspace, users=users, items=items, days=days, seed=seed, echo=_echo)
    for target in result.eval.users:
        _echo(result.eval.table(target))
        _echo("")
    _echo(f"done in {time.perf_counter() - t0:.0f}s")
    _echo(f"config:    {result.config_path}")
    _echo(f"run:       {result.eval.run.path}")
    _echo(f"metrics:   {result.eval.run.file('metrics.json')}")
    _echo(f"report:    {result.eval.run.file('report.html')}")
    _echo(f"next: gbrank recommend --config {result.config_path} --k 20 --out recs.csv")


@app.command("run")
@handle_errors
def run_(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
    events: EventsOpt = None,
    executor: ExecutorOpt = None,
    scheduler: SchedulerOpt = None,
) -> None:
    """Every stage (reusing what is still valid), the evaluation, then promotion to `current`
    if the run does not regress against the champion (exit 3 when refused). For cron."""
    from gbrank.errors import PromotionRefused
    from gbrank.runs import WorkspaceLock

    # The lock first, before the config is checked (which imports the ML libraries): a second
    # run on the workspace exits 75 at once.
    ws = workspace if workspace is not None else Path(workspace_of(config_path(config), set_ or []))
    with WorkspaceLock(ws, "run"):
        from gbrank.runner import run_pipeline

        cfg = resolve_config(config, set_, workspace, events, executor, scheduler)
        try:
            result = run_pipeline(cfg)
        except PromotionRefused as exc:
            _print_run(exc.result)
            raise
    _print_run(result)


@app.command()
@handle_errors
def tune(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
    events: EventsOpt = None,
    trials: Annotated[
        int | None,
        typer.Option("--trials", "-n", help="Finished trials the study should hold (tune.trials)."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Start no trial after this many seconds (tune.timeout)."),
    ] = None,
    space: Annotated[
        str | None,
        typer.Option(
            "--space",
            help="What to search, comma-separated: ranker, candidates, blend (tune.space).",
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Study name (tune.study; resumes if it exists).")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="Optuna database URL (tune.storage; default SQLite in the workspace).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Best config file (default <workspace>/tune/<study>/best.toml)."
        ),
    ] = None,
) -> None:
    """Optuna study of the ranker (and optionally the candidates and the blend) on users held
    out of the train fold; writes the best config, which `gbrank run` and `train` take."""
    from gbrank.runs import WorkspaceLock

    extra = list(set_ or [])
    for key, value in (("trials", trials), ("timeout", timeout)):
        if value is not None:
            extra.append(f"tune.{key}={value}")
    if space is not None:
        names = [_toml_str(n.strip()) for n in space.split(",") if n.strip()]
        extra.append(f"tune.space=[{', '.join(names)}]")
    for key, text in (("study", study), ("storage", storage)):
        if text is not None:
            extra.append(f"tune.{key}={_toml_str(text)}")
    ws = workspace if workspace is not None else Path(workspace_of(config_path(config), extra))
    with WorkspaceLock(ws, "tune"):
        from gbrank.tune import tune as run_study

        result = run_study(resolve_config(config, extra, workspace, events), out)
    _echo(
        f"study {result.study} ({result.storage}): {result.trials} finished trials, "
        f"{result.ran} run now, {result.seconds:.1f}s"
    )
    baseline = "-" if result.baseline_value is None else f"{result.baseline_value:.4f}"
    _echo(f"validation: config as it was {baseline}, best {result.best_value:.4f}")
    if result.gain:
        g = result.gain
        _echo(
            f"gain of the best on the same {g['users']:,} users: {g['gain']:+.4f} "
            f"(paired standard error {g['se']:.4f})"
        )
    for key, value in result.best_params.items():
        _echo(f"  {key} = {value:.6g}" if isinstance(value, float) else f"  {key} = {value}")
    _echo(f"best config: {result.config_path}")
    _echo(f"report: {result.report_path}")


def _print_run(result: Any) -> None:
    _echo(f"run {result.run.id} ({result.run.path})")
    for s in result.stages:
        how = f"reused from {s.source}" if s.how == "reused" else s.how
        _echo(f"  {s.stage:<9} {how:<24} {s.seconds:8.1f}s")
    d = result.decision
    verdict = "promoted to current" if d.promoted else "not promoted"
    _echo(f"{d.metric}: {d.challenger:.4f}; {verdict} ({d.reason})")
    _echo(f"done in {result.seconds:.1f}s")


def _workspace_of(config: Path | None, workspace: Path | None) -> Path:
    if workspace is not None:
        return workspace
    return Path(resolve_config(config, None).run.workspace)


@runs_app.command("list")
@handle_errors
def runs_list(config: ConfigOpt = None, workspace: WorkspaceOpt = None) -> None:
    """Every run of the workspace: complete or not, when, its gate metric; * marks current."""
    from gbrank.runner import describe_runs

    _echo(describe_runs(_workspace_of(config, workspace)))


@runs_app.command("show")
@handle_errors
def runs_show(
    run_id: Annotated[str, typer.Argument(help="A run id, or 'current'.")],
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """One run: its manifest (inputs, versions, stage timings), metrics and promotions."""
    from gbrank.runner import describe_run

    _echo(describe_run(_workspace_of(config, workspace), run_id))


@runs_app.command("promote")
@handle_errors
def runs_promote(
    run_id: Annotated[str, typer.Argument(help="The run to make current.")],
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Make a complete run `current` by hand, whatever its metrics."""
    from gbrank.runner import promote_run

    run = promote_run(_workspace_of(config, workspace), run_id)
    _echo(f"current -> {run.id}")


@runs_app.command("rollback")
@handle_errors
def runs_rollback(config: ConfigOpt = None, workspace: WorkspaceOpt = None) -> None:
    """Point `current` back at the run the current one replaced."""
    from gbrank.runner import rollback

    before, after = rollback(_workspace_of(config, workspace))
    _echo(f"current -> {after} (was {before})")


def main() -> None:
    try:
        app()
    except SystemExit as exc:  # click may exit with a usage error (2)
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
