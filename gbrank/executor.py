"""Runs a stage's per-shard function over its shards, and writes what the shards return.

The sharded stages (features, eval, recommend) are written as a pure function of one shard
(candidate rows of some users in; a frame out: features, top-K lists, recommendations) plus the
shards to run it on. :meth:`LocalExecutor.run` calls the function for each shard and, for a
stage with an output file, appends each result to it through :class:`TableWriter`: row groups
of one Parquet file, or lines of one CSV, under a temporary name that is renamed only when the
last shard is written. The per-shard functions never touch run artifacts, so this loop is the
one place where a stage's shards meet its files.

A stage that can run on a cluster hands its shards over as a :class:`Task`: a module-level
function of (context, shard) and a :class:`Context`, a small description of what every shard
needs (the run folder, the fold, the config) that builds the heavy object (a fold's feature
builder, the serving models) once per process. :class:`LocalExecutor` builds it once here (or
takes the one the stage already holds); :class:`DaskExecutor` sends the
task to the workers, each of which builds the context once and keeps it for the next shard.

The Dask executor (``run.executor = "dask"``) sends each shard of a task to a Dask cluster. The
shard's rows are written to the workspace's staging folder (a frame) or sent as they are (a
small array of user codes); on a worker, the task builds its context once (kept per worker
process by its key: a worker given ten shards of a fold builds that fold's feature builder
once), runs the per-shard function and writes its result under a temporary name renamed into
place (Dask may run a task twice: the second run writes the same bytes over the first). The
task returns only the result's row count and sha256; this process reads each result back in
shard order, checks its hash and appends it to the stage's output, so the artifacts are the
bytes the local loop writes. The workspace must be on storage every worker sees under the same
path (a local disk for a ``LocalCluster``; NFS or a shared volume for a cluster).

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "squares.parquet"
    >>> shards = [pl.DataFrame({"x": [1, 2]}), pl.DataFrame({"x": [3]})]
    >>> LocalExecutor().run("demo", lambda s: s.with_columns(y=pl.col("x") ** 2), shards, out)
    3
    >>> pl.read_parquet(out)["y"].to_list()
    [1, 4, 9]
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import shutil
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import polars as pl

from gbrank.atomic import atomic_path, check_table_suffix, file_sha256
from gbrank.errors import ConfigError, GbrankError

T = TypeVar("T")
R = TypeVar("R")


class Context(Protocol):
    """What every shard of a task needs besides its rows, as a few plain values (it travels to
    the workers); :meth:`build` makes the object itself, once per process."""

    @property
    def key(self) -> str:
        """Names the run, the fold and the settings: equal keys build equal objects."""
        ...

    def build(self) -> Any: ...


@dataclass(frozen=True)
class Task(Generic[T, R]):
    """``fn(context.build(), shard)`` for each shard. ``fn`` must be a module-level function
    (workers import it by name); ``label`` names the task in a cluster's dashboard."""

    fn: Callable[[Any, T], R]
    context: Context
    label: str = ""


@dataclass(frozen=True)
class Shared:
    """A frame every shard of a task reads (a training sample's percentiles): held in memory
    by the local loop, a file in the staging folder for a cluster."""

    path: str = ""
    frame: pl.DataFrame | None = None

    def read(self) -> pl.DataFrame:
        return self.frame if self.frame is not None else read_staged(self.path)


class LocalExecutor:
    """Shards one after the other in this process: memory holds one shard at a time."""

    name = "local"
    #: Whether :meth:`map_task` starts the shards before the caller reads a result (a
    #: cluster) or runs each when it is asked for (this loop, which holds one at a time).
    runs_ahead = False

    def share(self, frame: pl.DataFrame) -> Shared:
        """``frame``, readable by every task of the stage."""
        return Shared(frame=frame)

    def release(self) -> None:
        """The end of a stage: shared frames and the workers' contexts are dropped."""

    def warm(self, *modules: str) -> None:
        """The workers import ``modules`` ahead of the first shard (here: they are imported)."""

    def map(self, stage: str, fn: Callable[[T], R], shards: Iterable[T]) -> Iterator[R]:
        """``fn(shard)`` for each shard, in order (lazily: the next shard starts when the
        caller asks for it)."""
        for shard in shards:
            yield fn(shard)

    def map_task(
        self, stage: str, task: Task[T, R], shards: Iterable[T], *, built: Any = None
    ) -> Iterator[R]:
        """``task.fn(context, shard)`` for each shard, in order; the context is ``built``
        when the caller already holds it, else built here once."""
        context = built if built is not None else task.context.build()
        for shard in shards:
            yield task.fn(context, shard)

    def run(
        self,
        stage: str,
        fn: Callable[[T], pl.DataFrame] | Task[T, pl.DataFrame],
        shards: Iterable[T],
        out: Path,
        *,
        empty: Callable[[], pl.DataFrame] | None = None,
        built: Any = None,
        **options: Any,
    ) -> int:
        """Write ``fn(shard)`` (or a task's results) for every shard to ``out`` (.parquet or
        .csv); returns the rows written. ``empty`` makes the frame (schema) to write when no
        shard returns a row."""
        frames = (
            self.map_task(stage, fn, shards, built=built)
            if isinstance(fn, Task)
            else self.map(stage, fn, shards)
        )
        return write_table(out, frames, empty=empty, **options)


#: The environment a worker needs before it imports Polars or a BLAS: Polars reads its thread
#: count once, at import.
THREAD_VARIABLES = (
    "POLARS_MAX_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
)


CONNECT_TIMEOUT = "20s"  # how long a client waits for an unreachable scheduler
SETTLE_TIMEOUT = 120  # seconds a failed stage waits for its shards in flight before cleaning


class DaskUnavailableError(ConfigError):
    """``run.executor = "dask"`` without Dask installed."""


def _require_dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise DaskUnavailableError(
            "run.executor is 'dask' but dask.distributed is not installed. Fix: "
            "pip install 'gbrank[dask]', or set run.executor = 'local'"
        ) from None
    return distributed


def worker_env(workers: int, cores: int = 0, threads: int = 0) -> dict[str, str]:
    """Thread settings for each of ``workers`` worker processes sharing ``cores`` cores (0:
    the cores this process may use): ``threads`` each, or (0) their share of the cores."""
    count = str(threads or max(1, (cores or _cores()) // max(workers, 1)))
    return {name: count for name in THREAD_VARIABLES}


def start_local_cluster(workers: int = 0, threads: int = 0) -> Any:
    """A ``LocalCluster`` of ``workers`` processes (0: one per core) on loopback, one task at a
    time each, each given ``threads`` threads (0: its share of the cores; :func:`worker_env`)
    before it starts."""
    distributed = _require_dask()
    import dask

    n = workers or _cores()
    # Dask's nannies set MALLOC_TRIM_THRESHOLD_ in their workers, which also turns off glibc's
    # adaptive mmap threshold: every large NumPy array is then mapped and zeroed afresh. Left
    # unset, a recommend batch on one thread took 30.1 s and 7.1 s of system time instead of
    # 33.6 s and 11.0 s (1.8M page faults instead of 4.5M; 10M events, 39.6k users).
    with dask.config.set({f"{PRE_SPAWN}.MALLOC_TRIM_THRESHOLD_": None}):
        return distributed.LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",  # any free port (the default 8787 may be taken)
            env=worker_env(n, threads=threads),
            silence_logs=logging.WARNING,  # the scheduler's INFO lines would mix into gbrank's
        )


PRE_SPAWN = "distributed.nanny.pre-spawn-environ"  # what Dask's nannies set in their workers


@contextlib.contextmanager
def local_cluster(workers: int = 0) -> Iterator[str]:
    """:func:`start_local_cluster` for the block; yields the scheduler's address."""
    cluster = start_local_cluster(workers)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --------------------------------------------------------------------------- worker side

_contexts: dict[str, Any] = {}  # context key -> built object, in this (worker) process


def _context(task: Task[Any, Any]) -> Any:
    """The task's context, built once per process: a new key (the next fold, another run)
    replaces the one kept, so a worker holds one fold's history at a time."""
    key = task.context.key
    if key not in _contexts:
        _contexts.clear()
        _contexts[key] = task.context.build()
    return _contexts[key]


def forget_contexts() -> int:
    """On a worker: drop the kept contexts (the end of a stage); returns how many."""
    n = len(_contexts)
    _contexts.clear()
    return n


def token() -> str:
    """8 random hex digits: what makes staging names and task keys unique."""
    return uuid.uuid4().hex[:8]


def write_staged(frame: pl.DataFrame, path: Path) -> None:
    """A shard's rows or result in the staging folder: Arrow IPC (LZ4), which keeps every
    type as it is and reads back without decoding pages, under a temporary name renamed into
    place. Not flushed to disk: a crash loses the staging folder with the stage anyway."""
    tmp = path.with_name(f".{path.name}.{token()}.tmp")
    try:
        frame.write_ipc(tmp, compression="lz4")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_staged(path: str | Path) -> pl.DataFrame:
    return pl.read_ipc(path)


def warm(modules: tuple[str, ...]) -> int:
    """On a worker: import ``modules`` before the first shard arrives (a worker process starts
    with none of gbrank's modules; importing them takes a second or two)."""
    for name in modules:
        importlib.import_module(name)
    return os.getpid()


def run_shard(task: Task[Any, pl.DataFrame], shard: Any, out: str) -> dict[str, Any]:
    """On a worker: one shard of ``task``, its result written atomically to ``out``."""
    rows = read_staged(shard) if isinstance(shard, str) else shard
    frame = task.fn(_context(task), rows)
    path = Path(out)
    write_staged(frame, path)
    return {"rows": frame.height, "sha256": file_sha256(path)}


# --------------------------------------------------------------------------- the executor


class DaskExecutor(LocalExecutor):
    """Runs tasks on a Dask cluster, one task per shard, ``2 x workers`` shards in flight; the
    results come back in shard order. Closures (stages not written as tasks) run here, as in
    the local loop."""

    name = "dask"
    runs_ahead = True

    def __init__(self, client: Any, staging: str | Path, cluster: Any = None) -> None:
        self.client = client
        self.staging = Path(staging).absolute()
        self.cluster = cluster  # a LocalCluster this executor started (closed with it)
        self._shared: list[Path] = []
        self._flights: list[_Flight] = []  # tasks whose shards are on the cluster
        self._warming: list[Any] = []  # the workers' imports (held, not waited for)

    @classmethod
    def connect(
        cls, address: str, staging: str | Path, *, workers: int = 0, threads: int = 0
    ) -> DaskExecutor:
        """The executor of the scheduler at ``address``; empty: of a new LocalCluster of
        ``workers`` processes of ``threads`` threads."""
        distributed = _require_dask()
        cluster = None
        if not address:
            cluster = start_local_cluster(workers, threads)
            address = cluster.scheduler_address
        try:
            client = distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {address} (run.scheduler): {exc}. Fix: "
                "start it (`dask scheduler`, then `dask worker <address>` on each machine), "
                "give its address with --scheduler, or leave run.scheduler empty for a "
                "LocalCluster"
            ) from exc
        return cls(client, staging, cluster)

    def close(self) -> None:
        self.release()
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def share(self, frame: pl.DataFrame) -> Shared:
        path = self.staging / f"shared-{token()}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_staged(frame, path)
        self._shared.append(path)
        return Shared(path=str(path))

    def release(self) -> None:
        while self._flights:  # a stage that failed before it read every result
            self._flights[-1].close()
        while self._shared:
            self._shared.pop().unlink(missing_ok=True)
        self.client.run(forget_contexts)

    def warm(self, *modules: str) -> None:
        """Each worker imports ``modules`` now, while this process prepares the stage's shards
        (a task per worker, not waited for: the first shards queue behind it)."""
        workers = list(self.client.scheduler_info(n_workers=-1)["workers"])
        stamp = token()
        self._warming = [
            self.client.submit(
                warm, modules, key=f"gbrank-warm-{stamp}-{i}", workers=[w], pure=False
            )
            for i, w in enumerate(workers)
        ]

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def map_task(
        self, stage: str, task: Task[T, R], shards: Iterable[T], *, built: Any = None
    ) -> Iterator[R]:
        """Each shard's result (a frame), in order. The first ``2 x workers`` shards are
        submitted at once, before the caller asks for a result, so a stage can prepare its
        next fold while the workers run this one (:attr:`runs_ahead`). ``built`` (the
        context in this process) is not used: the workers build their own."""
        flight = _Flight(self, stage, task, iter(shards))
        self._flights.append(flight)
        try:
            flight.fill()
        except BaseException:
            flight.close()
            raise
        return flight.results()

    def _submit(
        self, stage: str, task: Task[Any, Any], shard: Any, folder: Path, stamp: str, i: int
    ) -> tuple[Any, Path, Path | None]:
        source: Path | None = None
        payload: Any = shard
        if isinstance(shard, pl.DataFrame):  # rows travel through the shared storage
            source = folder / f"in-{i:05d}.arrow"
            write_staged(shard, source)
            payload = str(source)
        elif not isinstance(shard, np.ndarray):
            raise TypeError(f"a shard is a DataFrame or an array, not {type(shard).__name__}")
        out = folder / f"out-{i:05d}.arrow"
        key = f"gbrank-{stage}-{task.label or 'task'}-shard{i:05d}-{stamp}"
        future = self.client.submit(run_shard, task, payload, str(out), key=key, pure=False)
        return future, out, source

    def _collect(self, future: Any, out: Path, source: Path | None) -> Any:
        distributed = _require_dask()
        try:
            meta = future.result()
        except distributed.KilledWorker as exc:
            raise GbrankError(
                f"the Dask workers running task {future.key} died ({exc}), most often out of "
                "memory. Fix: smaller shards (features.shard_rows, candidates.batch_users), "
                "fewer workers per machine, or more memory per worker"
            ) from exc
        if file_sha256(out) != meta["sha256"]:
            raise GbrankError(
                f"the shard result {out} changed after its task wrote it: is the staging "
                "folder shared by another run?"
            )
        frame = read_staged(out)
        out.unlink()
        if source is not None:
            source.unlink(missing_ok=True)
        return frame


class _Flight:
    """The shards of one task on the cluster: at most ``2 x workers`` in flight, their results
    read back in shard order, the staging folder removed at the end (or on a failure)."""

    def __init__(self, executor: DaskExecutor, stage: str, task: Task[Any, Any], shards: Any):
        self.executor = executor
        self.stage = stage
        self.task = task
        self.shards = enumerate(shards)
        self.stamp = token()
        self.folder = executor.staging / f"{stage}-{self.stamp}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.window = 2 * executor.workers
        self.pending: deque[tuple[Any, Path, Path | None]] = deque()
        self.closed = False

    def fill(self) -> None:
        """Submit shards until the window is full or none is left."""
        while len(self.pending) < self.window:
            item = next(self.shards, None)
            if item is None:
                return
            i, shard = item
            self.pending.append(
                self.executor._submit(self.stage, self.task, shard, self.folder, self.stamp, i)
            )

    def results(self) -> Iterator[Any]:
        try:
            while self.pending:
                result = self.executor._collect(*self.pending.popleft())
                self.fill()
                yield result
        finally:
            self.close()

    def close(self) -> None:
        """On a failure (or the caller stopping early) the shards still in flight are let
        finish first: a task that is already running cannot be cancelled on its worker and
        would write its result after the folder is gone. At most 2 x workers shards."""
        if self.closed:
            return
        self.closed = True
        futures = [future for future, _, _ in self.pending]
        if futures:
            with self.executor.client.as_current(), contextlib.suppress(TimeoutError):
                _require_dask().wait(futures, timeout=SETTLE_TIMEOUT)  # then clean up
        for future in futures:
            future.cancel()
        self.pending.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(ValueError):
            self.executor._flights.remove(self)


_executors: dict[tuple[str, int, int, str], DaskExecutor] = {}


def dask_executor(
    scheduler: str, workers: int, staging: str | Path, threads: int = 0
) -> DaskExecutor:
    """One :class:`DaskExecutor` per scheduler (or LocalCluster shape) and staging folder for
    this process: ``gbrank run``'s stages share one cluster, closed when the process exits."""
    key = (scheduler, workers, threads, str(Path(staging).absolute()))
    if key not in _executors:
        _executors[key] = DaskExecutor.connect(scheduler, staging, workers=workers, threads=threads)
        if len(_executors) == 1:
            atexit.register(close_executors)
    return _executors[key]


def close_executors() -> None:
    """Close every executor :func:`dask_executor` opened (and the LocalClusters it started)."""
    while _executors:
        _, executor = _executors.popitem()
        with contextlib.suppress(Exception):  # a scheduler already gone
            executor.close()


def write_table(
    out: Path,
    frames: Iterable[pl.DataFrame],
    *,
    empty: Callable[[], pl.DataFrame] | None = None,
    **options: Any,
) -> int:
    """Every frame appended to ``out`` (.parquet or .csv) by a :class:`TableWriter`, renamed
    into place after the last; ``empty`` makes the frame (schema) to write when there is none.
    Returns the rows written."""
    with TableWriter(out, **options) as writer:
        writer.write_all(frames, empty=empty)
    return writer.rows


class TableWriter:
    """Appends frames to one Parquet or CSV file under a temporary name; the file appears
    under ``path`` only when the block ends without an error. Every frame must have the
    first frame's columns; values are cast to the first frame's types."""

    def __init__(self, path: Path, *, use_dictionary: bool = True) -> None:
        check_table_suffix(path)
        self.path = path
        self.csv = path.suffix.lower() == ".csv"
        self.use_dictionary = use_dictionary
        self.rows = 0
        self.frames = 0
        self._atomic = atomic_path(path)
        self._tmp: Path | None = None
        self._parquet: Any = None
        self._text: Any = None

    def __enter__(self) -> TableWriter:
        self._tmp = self._atomic.__enter__()
        return self

    def write(self, frame: pl.DataFrame) -> None:
        assert self._tmp is not None, "use TableWriter in a with block"
        if self.csv:
            if self._text is None:
                self._text = open(self._tmp, "w", newline="")  # noqa: SIM115 - closed in __exit__
            frame.write_csv(self._text, include_header=self.frames == 0)
        else:
            import pyarrow.parquet as pq

            if self.use_dictionary:
                # Where a column's dictionary falls back to plain pages depends on the arrays'
                # chunks: one chunk, so that a frame read back from staging (Arrow IPC, in
                # record batches) writes the bytes the frame made in this process does.
                frame = frame.rechunk()
            table = frame.to_arrow()
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(
                    self._tmp, table.schema, use_dictionary=self.use_dictionary
                )
            self._parquet.write_table(table.cast(self._parquet.schema))
        self.rows += frame.height
        self.frames += 1

    def write_all(
        self, frames: Iterable[pl.DataFrame], *, empty: Callable[[], pl.DataFrame] | None = None
    ) -> None:
        """Write every frame; when there was none, the frame ``empty`` makes (the schema)."""
        for frame in frames:
            self.write(frame)
        if self.frames == 0 and empty is not None:
            self.write(empty())

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            if self._parquet is not None:
                self._parquet.close()
            if self._text is not None:
                self._text.close()
        except BaseException as error:
            if exc is None:
                return self._atomic.__exit__(type(error), error, error.__traceback__)
            raise
        return self._atomic.__exit__(kind, exc, tb)
