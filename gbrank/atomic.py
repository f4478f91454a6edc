"""Atomic writes and content hashes, for every layer that writes a file.

A file is written to a temporary name in its own folder, flushed to disk (``fsync``) and
renamed into place, and the folder is flushed too, so neither a crash of the process nor one
of the machine leaves a half-written file under the final name. The finished file gets the
mode the user's umask asks for (a temporary file is created 0600). Any ``OSError`` while
writing (a read-only folder, a full disk) becomes a :class:`WorkspaceIOError` naming the path
and the errno text (exit code 74), and the temporary file is removed.

Fault injection, for the crash tests and ``bench/bench_faults.py``: every write passes a few
numbered *fault points* (temporary file written, flushed, renamed). With the environment
variable ``GBRANK_KILL_AT=N`` the process sends itself SIGKILL at the N-th point;
``GBRANK_ENOSPC_AT=N`` raises "No space left on device" there instead; ``GBRANK_FAULT_TRACE``
names a file that receives one line per point passed. Unset, they cost one dictionary lookup.
"""

from __future__ import annotations

import errno as errno_codes
import hashlib
import json
import os
import re
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gbrank.errors import ConfigError, WorkspaceIOError

if TYPE_CHECKING:  # polars is imported by the writers' callers; the CLI starts faster without
    import polars as pl

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


#: Temporary files are named ``.<name>.<random>.tmp``; a crash can leave them behind, and
#: :func:`remove_temporary_files` clears them once nobody else writes the folder.
TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")

_faults = {"count": 0}


def fault_point(label: str) -> None:
    """A place where a crash or a full disk is simulated when the environment asks for it."""
    kill_at = os.environ.get("GBRANK_KILL_AT")
    enospc_at = os.environ.get("GBRANK_ENOSPC_AT")
    trace = os.environ.get("GBRANK_FAULT_TRACE")
    if kill_at is None and enospc_at is None and trace is None:
        return
    _faults["count"] += 1
    n = _faults["count"]
    if trace:
        with open(trace, "a") as fh:
            fh.write(f"{n} {label}\n")
    if kill_at is not None and n == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)
    if enospc_at is not None and n >= int(enospc_at):
        raise OSError(errno_codes.ENOSPC, os.strerror(errno_codes.ENOSPC), label)


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) data to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temporary_files(root: Path) -> list[Path]:
    """Delete the temporary files that killed writers left under ``root``; returns them.

    Call it only while holding the workspace lock: a live writer's temporary file looks the
    same."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for dirpath, dirs, files in os.walk(root):
        for name in [*files, *dirs]:  # a symlink to a folder is listed with the folders
            p = Path(dirpath) / name
            if TEMPORARY.match(name) and (name in files or p.is_symlink()):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write; flushed and renamed to ``path`` when the block succeeds."""
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        fault_point(f"written {path}")
        os.chmod(tmp_path, 0o666 & ~_umask())
        fsync_path(tmp_path)
        fault_point(f"flushed {path}")
        os.replace(tmp_path, path)
        tmp_path = None
        fsync_path(path.parent)
        fault_point(f"renamed {path}")
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
