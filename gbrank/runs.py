"""Workspace and run folders: atomic writes, stage records, the manifest.

A workspace holds ``runs/<run_id>/``. Every file is written to a temporary name in its own
folder and renamed into place, so a crash never leaves a half-written file under the final
name. A run is complete once ``manifest.json`` exists; it is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl

from gbrank.errors import MissingInputError, WorkspaceIOError

MANIFEST = "manifest.json"
PROGRESS = "progress.json"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise WorkspaceIOError(f"could not write {path}: {exc}") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
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


def atomic_write_table(frame: pl.DataFrame, path: Path) -> None:
    """Parquet or CSV, chosen by the file's extension."""
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix in (".parquet", ".pq"):
            frame.write_parquet(tmp)
        elif suffix == ".csv":
            frame.write_csv(tmp)
        else:
            raise WorkspaceIOError(
                f"{path}: unknown output format '{suffix}'; use .parquet or .csv"
            )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(paths: list[Path]) -> str:
    """A cheap fingerprint of input files: names, sizes and modification times."""
    digest = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        digest.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    names = ["gbrank", "polars", "lightgbm", "xgboost-cpu", "implicit", "numpy", "scipy", "optuna"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass(frozen=True)
class Run:
    """One run folder and the names of the artifacts inside it."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    def file(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    def require(self, relative: str, command: str) -> Path:
        """The artifact's path, or a MissingInputError naming the command that makes it."""
        p = self.file(relative)
        if not p.exists():
            raise MissingInputError(
                f"{p} does not exist: run `{command}` first (it writes {relative})"
            )
        return p

    def record_stage(self, stage: str, seconds: float, **info: Any) -> None:
        """Append a stage's timing and facts to progress.json (rewritten atomically)."""
        progress = self.progress()
        progress[stage] = {"seconds": round(seconds, 3), "finished": time.time(), **info}
        atomic_write_json(progress, self.file(PROGRESS))

    def progress(self) -> dict[str, Any]:
        p = self.file(PROGRESS)
        return json.loads(p.read_text()) if p.exists() else {}

    def write_manifest(self, config_hash: str, seed: int, inputs: dict[str, str]) -> Path:
        """Write manifest.json last: hashes of every output file, timings, versions."""
        outputs = {
            str(p.relative_to(self.path)): file_sha256(p)
            for p in sorted(self.path.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST,) and not p.name.startswith(".")
        }
        manifest = {
            "run_id": self.id,
            "config_hash": config_hash,
            "seed": seed,
            "inputs": inputs,
            "versions": library_versions(),
            "stages": self.progress(),
            "outputs": outputs,
        }
        atomic_write_json(manifest, self.file(MANIFEST))
        return self.file(MANIFEST)


def run_folder(workspace: str | Path, run_id: str) -> Run:
    return Run(Path(workspace) / "runs" / run_id)
