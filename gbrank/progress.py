"""What long commands report while they run: stage starts and ends, and steps within a stage.

The library calls :func:`report` and :func:`steps`; by default they do nothing. The CLI
installs a :class:`Reporter` for the command (:func:`reporting`): progress bars on a terminal,
one plain line per event otherwise, or one JSON object per line with ``--log-format json``.

Example:
    >>> seen = []
    >>> class Collect(Reporter):
    ...     def event(self, kind, **fields):
    ...         seen.append((kind, fields))
    >>> with reporting(Collect()):
    ...     report("stage_start", stage="generate")
    ...     total = sum(steps("recommend", "batches", [1, 2, 3]))
    >>> seen[0], total
    (('stage_start', {'stage': 'generate'}), 6)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


class Reporter:
    """Receives events; the default one ignores them."""

    def event(self, kind: str, **fields: Any) -> None:
        """``kind``: stage_start, stage_done, step, message, warning, error; ``fields``: facts."""

    def close(self) -> None:
        """The command ended."""


_SILENT = Reporter()
_current: ContextVar[Reporter | None] = ContextVar("gbrank_reporter", default=None)


def report(kind: str, **fields: Any) -> None:
    (_current.get() or _SILENT).event(kind, **fields)


def steps(stage: str, unit: str, items: Iterable[T], total: int | None = None) -> Iterator[T]:
    """Yield ``items``, reporting each one done as a ``step`` of ``stage``."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    for done, item in enumerate(items, start=1):
        yield item
        report("step", stage=stage, unit=unit, done=done, total=total)


@contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    token = _current.set(reporter)
    try:
        yield reporter
    finally:
        _current.reset(token)
        reporter.close()


def _describe(kind: str, fields: dict[str, Any]) -> str | None:
    stage = fields.get("stage", "")
    if kind == "stage_start":
        return f"{stage}: started"
    if kind == "stage_done":
        how = fields.get("how", "ran")
        seconds = fields.get("seconds", 0.0)
        if how == "ran":
            return f"{stage}: done in {seconds:.1f}s"
        return f"{stage}: {how} ({seconds:.1f}s)"
    if kind == "step":
        total = fields.get("total")
        of = f"/{total}" if total else ""
        return f"{stage}: {fields.get('unit', 'steps')} {fields.get('done')}{of}"
    if kind == "trial":
        value, best = fields.get("value"), fields.get("best")
        shown = "-" if value is None else f"{value:.4f}"
        if fields.get("pruned_at") is not None:
            shown = f"at round {fields['pruned_at']}"
        best_shown = "-" if best is None else f"{best:.4f} (trial {fields.get('best_trial')})"
        seconds = fields.get("seconds")
        took = f", {seconds:.1f}s" if seconds is not None else ""
        return (
            f"tune: trial {fields.get('number')} {fields.get('state')}: {shown}, best "
            f"{best_shown}{took} [{fields.get('done')}/{fields.get('total')}]"
        )
    return str(fields.get("message", ""))


class LineReporter(Reporter):
    """One plain line per stage event on ``stream`` (for cron mail and CI logs). Steps are
    printed at most every ``every`` seconds, and the last one always."""

    def __init__(self, stream: TextIO | None = None, every: float = 30.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self._last = 0.0

    def event(self, kind: str, **fields: Any) -> None:
        if kind in ("message", "warning", "error"):
            return  # the CLI prints these itself
        if kind == "step":
            now = time.monotonic()
            last = fields.get("done") == fields.get("total")
            if now - self._last < self.every and not last:
                return
            self._last = now
        text = _describe(kind, fields)
        if text:
            print(text, file=self.stream, flush=True)


class JsonReporter(Reporter):
    """One JSON object per line on ``stream``: ``ts``, ``level``, ``event`` and the fields."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def event(self, kind: str, **fields: Any) -> None:
        level = kind if kind in ("warning", "error") else "info"
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "level": level,
            "event": kind,
            **fields,
        }
        print(json.dumps(record, default=str), file=self.stream, flush=True)


class RichReporter(Reporter):
    """A progress bar per stage on a terminal (rich)."""

    def __init__(self) -> None:
        self.progress: Any = None  # started at the first stage event: quiet commands stay so
        self.tasks: dict[str, Any] = {}

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.progress.start()

    def event(self, kind: str, **fields: Any) -> None:
        stage = str(fields.get("stage", ""))
        if kind in ("message", "warning", "error"):
            return  # the CLI prints these itself
        if self.progress is None:
            self._start()
        if kind == "trial":  # one line per trial, above the bars
            self.progress.console.print(_describe(kind, fields))
            return
        if kind in ("step", "stage_done") and stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=None)
        if kind == "stage_start":
            self.tasks[stage] = self.progress.add_task(stage, total=None)
        elif kind == "step" and stage in self.tasks:
            self.progress.update(
                self.tasks[stage],
                completed=fields.get("done"),
                total=fields.get("total"),
                description=f"{stage}: {fields.get('unit', '')}",
            )
        elif kind == "stage_done" and stage in self.tasks:
            how = fields.get("how", "ran")
            task = self.tasks[stage]
            total = self.progress.tasks[task].total or 1
            self.progress.update(
                task,
                total=total,
                completed=total,
                description=stage if how == "ran" else f"{stage} ({how})",
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
