"""Errors that the CLI turns into messages and exit codes (see docs/architecture.md)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PROMOTION_REFUSED = 3
EXIT_DATA = 65
EXIT_NO_INPUT = 66
EXIT_INTERNAL = 70
EXIT_IO = 74
EXIT_LOCKED = 75


class GbrankError(Exception):
    """Base class: a message for the user and the process exit code."""

    exit_code = EXIT_INTERNAL


class ConfigError(GbrankError):
    """Invalid configuration or command-line usage."""

    exit_code = EXIT_USAGE


class DataError(GbrankError):
    """The input data breaks the data contract."""

    exit_code = EXIT_DATA

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        column: str | None = None,
        values: Iterable[Any] | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.column = column
        self.values = list(values)[:5] if values is not None else None
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file:
            where.append(f"file {self.file}")
        if self.column:
            where.append(f"column '{self.column}'")
        text = (", ".join(where) + ": " if where else "") + self.problem
        if self.values:
            text += f" (e.g. {', '.join(repr(v) for v in self.values)})"
        if self.fix:
            text += f". Fix: {self.fix}"
        return text


class MissingInputError(GbrankError):
    """A file or a stage's artifact that is needed does not exist."""

    exit_code = EXIT_NO_INPUT


class StaleArtifactError(MissingInputError):
    """An artifact exists but was made from other inputs or another config than the stage
    needs now: the message names the command to rerun."""


class DamagedArtifactError(GbrankError):
    """An artifact's bytes no longer match the hash recorded when it was written."""

    exit_code = EXIT_DATA


class WorkspaceIOError(GbrankError):
    """Reading or writing the workspace failed (permissions, a full disk): path and errno."""

    exit_code = EXIT_IO


class WorkspaceLockedError(GbrankError):
    """Another gbrank process holds the workspace lock."""

    exit_code = EXIT_LOCKED


class PromotionRefused(GbrankError):
    """The new run scores worse than the current champion: it was not promoted. ``result``
    holds the complete run's result (set by the runner)."""

    exit_code = EXIT_PROMOTION_REFUSED
    result: Any = None


class NotFittedError(GbrankError):
    """A model was used before ``fit``."""

    exit_code = EXIT_INTERNAL


class GbrankWarning(UserWarning):
    """Something looks wrong but need not be: the message names the fix."""


def warn(message: str) -> None:
    """Emit a :class:`GbrankWarning` (the CLI prints it as ``warning: ...`` on stderr)."""
    warnings.warn(message, GbrankWarning, stacklevel=2)
