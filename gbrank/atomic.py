"""Atomic writes and content hashes, for every layer that writes a file.

A file is written to a temporary name in its own folder and renamed into place, so a crash
never leaves a half-written file under the final name. The finished file gets the mode the
user's umask asks for (a temporary file is created 0600). Any ``OSError`` while writing (a
read-only folder, a full disk) becomes a :class:`WorkspaceIOError` naming the path and the
errno text (exit code 74), and the temporary file is removed.
"""

from __future__ import annotations

import errno as errno_codes
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from gbrank.errors import ConfigError, WorkspaceIOError

TABLE_SUFFIXES = (".parquet", ".pq", ".csv")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def io_error(path: Path | str, exc: OSError, doing: str = "write") -> WorkspaceIOError:
    """A WorkspaceIOError that names the path and the errno text of ``exc``."""
    reason = exc.strerror or str(exc)
    if exc.errno is not None and exc.strerror:
        reason = f"{exc.strerror} (errno {exc.errno})"
    where = path if exc.filename is None or str(exc.filename).endswith(".tmp") else exc.filename
    return WorkspaceIOError(f"cannot {doing} {where}: {reason}")


_OS_ERROR = re.compile(r"os error (\d+)")


def wrapped_os_error(exc: BaseException, path: Path | str | None = None) -> OSError | None:
    """The OSError inside a library's error: Polars reports a full disk as a ComputeError
    that says "(os error 28)"."""
    if isinstance(exc, OSError):
        return exc
    match = _OS_ERROR.search(str(exc))
    if match is None:
        return None
    code = int(match.group(1))
    name = str(path) if path is not None else None
    return OSError(code, os.strerror(code) if code in errno_codes.errorcode else str(exc), name)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write; renamed to ``path`` when the block succeeds."""
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException as exc:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        os_error = wrapped_os_error(exc, path) if isinstance(exc, Exception) else None
        if os_error is not None:
            raise io_error(path, os_error) from exc
        raise


def atomic_write_bytes(data: bytes, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write_bytes(text.encode(), path)


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def atomic_write_parquet(frame: pl.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, statistics=True)


def check_table_suffix(path: Path | str, option: str = "--out") -> None:
    """A usage error unless ``path`` ends in a table format gbrank writes."""
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ConfigError(
            f"{option} {path}: unknown output format '{suffix or '(none)'}'; "
            "use a file ending in .parquet or .csv"
        )


def atomic_write_table(frame: pl.DataFrame, path: Path) -> None:
    """Parquet or CSV, chosen by the file's extension."""
    check_table_suffix(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            frame.write_csv(tmp)
        else:
            frame.write_parquet(tmp)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
