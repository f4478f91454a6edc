"""Workspace and run folders: stage records, artifact checks, the manifest.

A workspace holds ``runs/<run_id>/``. Every file is written atomically (``gbrank.atomic``).
Each stage ends by writing ``stages/<stage>.json``: the sha256 of every file it wrote, the
hashes of the upstream artifacts it read (which include the vocabularies), a hash of the config
sections it used and, for ``generate``, the content fingerprint of the input files. A stage
trusts its inputs only after checking that chain:

- an upstream record is missing (the stage never finished, or was invalidated): exit 66,
  naming the command to run;
- a record's inputs differ from its upstream's outputs, its config differs from the current
  one, or the input data changed: the artifacts are stale, exit 66, naming the command to rerun;
- a file's bytes differ from its recorded hash: the artifact is damaged, exit 65.

A stage that rewrites its outputs first removes its own record and every downstream record and
output, so a stage killed half-way leaves nothing that a later stage would take as valid. A
run is complete once ``manifest.json`` exists; it is written last.

Also here, for ``gbrank run`` and cron (see docs/architecture.md "Runs, the cache and
promotion"):

- the stage cache: each record carries a key over the stage, the gbrank version, the config
  it read and its inputs; ``cache/<stage>/<key>.json`` names the run that made it, and another
  run that needs the same key links those files instead of computing them again;
- the workspace lock (:class:`WorkspaceLock`, exit 75 when held);
- the champion: ``current`` (a symlink to ``runs/<id>``) and ``promotions.json``, the log of
  every promotion, refusal and rollback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from gbrank import __version__
from gbrank.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_table,
    atomic_write_text,
    fault_point,
    file_sha256,
    fsync_path,
    io_error,
    remove_temporary_files,
)
from gbrank.errors import (
    DamagedArtifactError,
    GbrankError,
    MissingInputError,
    StaleArtifactError,
    WorkspaceLockedError,
)

__all__ = [
    "MANIFEST",
    "PROGRESS",
    "STAGES",
    "Run",
    "Verified",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_table",
    "atomic_write_text",
    "content_fingerprint",
    "file_sha256",
    "run_folder",
]

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
STAGES = ("generate", "features", "train", "eval")  # each reads the outputs of the ones before
RECORDS = "stages"
FINGERPRINT_CACHE = ".fingerprints.json"
CACHE = "cache"  # cache/<stage>/<key>.json: which run holds a stage's outputs for that key
CURRENT = "current"  # symlink to runs/<id>, the champion that serving uses
PROMOTIONS = "promotions.json"
LOCK = ".gbrank.lock"


def stage_key(
    stage: str, config_hash: str, inputs: Mapping[str, str], data_fingerprint: str | None
) -> str:
    """The cache key of a stage's outputs: what they are a function of."""
    payload = {
        "stage": stage,
        "version": __version__,
        "config_hash": config_hash,
        "inputs": dict(sorted(inputs.items())),
        "data": data_fingerprint,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def content_fingerprint(paths: Iterable[tuple[str, Path]], cache_dir: Path | None = None) -> str:
    """A hash over the content of input files (role, size, sha256), not their names or times.

    Full hashes are cached in ``cache_dir`` by (path, size, modification time), so an
    unchanged file is read once; ``touch`` costs one re-read and changes nothing.
    """
    digest = hashlib.sha256()
    for entry in content_files(paths, cache_dir):
        digest.update(f"{entry['role']}|{entry['size']}|{entry['sha256']}\n".encode())
    return digest.hexdigest()


def content_files(
    paths: Iterable[tuple[str, Path]], cache_dir: Path | None = None
) -> list[dict[str, Any]]:
    """``{role, path, size, sha256}`` of each input file, in a stable order (see
    :func:`content_fingerprint` for the cache)."""
    cache_file = cache_dir / FINGERPRINT_CACHE if cache_dir is not None else None
    cache: dict[str, str] = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    changed = False
    out = []
    for role, path in sorted(paths, key=lambda rp: (rp[0], str(rp[1]))):
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        sha = cache.get(key)
        if sha is None:
            sha = file_sha256(path)
            cache[key] = sha
            changed = True
        out.append({"role": role, "path": str(path), "size": st.st_size, "sha256": sha})
    if changed and cache_file is not None and cache_file.parent.is_dir():
        # Best effort: a read-only workspace only loses the cache.
        with contextlib.suppress(GbrankError, OSError):
            atomic_write_json(dict(list(cache.items())[-10_000:]), cache_file)
    return out


def library_versions() -> dict[str, str]:
    names = ["gbrank", "polars", "lightgbm", "xgboost-cpu", "implicit", "numpy", "scipy", "optuna"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass
class Verified:
    """The checked records of the stages before one; hands out artifact paths after checking
    each file's bytes against its recorded hash (once per file)."""

    run: Run
    records: dict[str, dict[str, Any]]
    checked: dict[str, str] = field(default_factory=dict)

    def owner(self, relative: str) -> str | None:
        for stage, record in self.records.items():
            if relative in record["outputs"]:
                return stage
        return None

    def has(self, relative: str) -> bool:
        return self.owner(relative) is not None

    def path(self, relative: str) -> Path:
        """The artifact's path, after checking it is the one its stage recorded."""
        stage = self.owner(relative)
        p = self.run.file(relative)
        if stage is None:
            last = next(reversed(self.records), STAGES[0])
            raise MissingInputError(
                f"{p} is not an output of this run: run `gbrank {last}` (it writes {relative})"
            )
        if relative not in self.checked:
            expected = self.records[stage]["outputs"][relative]
            try:
                actual = file_sha256(p)
            except FileNotFoundError:
                raise MissingInputError(
                    f"{p} is missing although `gbrank {stage}` wrote it: rerun `gbrank {stage}`"
                ) from None
            except OSError as exc:
                raise io_error(p, exc, "read") from exc
            if actual != expected:
                raise DamagedArtifactError(
                    f"artifact {p} is damaged (hash mismatch): rerun `gbrank {stage}`"
                )
            self.checked[relative] = actual
        return p

    def hashes(self) -> dict[str, str]:
        """Every upstream output and its hash: the inputs a stage records."""
        out: dict[str, str] = {}
        for record in self.records.values():
            out.update(record["outputs"])
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

    # ------------------------------------------------------------------ stage records

    def _record_file(self, stage: str) -> Path:
        return self.file(RECORDS, f"{stage}.json")

    def record(self, stage: str) -> dict[str, Any] | None:
        """The stage's record, or None when the stage has not finished for this run."""
        p = self._record_file(stage)
        try:
            text = p.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise io_error(p, exc, "read") from exc
        try:
            record = json.loads(text)
            if not isinstance(record.get("outputs"), dict) or record.get("stage") != stage:
                raise ValueError("not a stage record")
        except (ValueError, AttributeError):
            raise DamagedArtifactError(
                f"artifact {p} is damaged (not a stage record): rerun `gbrank {stage}`"
            ) from None
        return dict(record)

    def verify(
        self, stage: str, config_hashes: Mapping[str, str], inputs_fingerprint: str | None
    ) -> Verified:
        """Check the records of every stage before ``stage`` (see the module docstring).

        ``config_hashes`` maps each upstream stage to the hash of the config sections it reads,
        computed from the current config; ``inputs_fingerprint`` is the current content
        fingerprint of the input files (None: not checked).
        """
        return self.verify_through(
            STAGES[: STAGES.index(stage)] if stage in STAGES else STAGES,
            config_hashes,
            inputs_fingerprint,
        )

    def verify_through(
        self,
        upstream: Sequence[str],
        config_hashes: Mapping[str, str],
        inputs_fingerprint: str | None,
    ) -> Verified:
        """:meth:`verify` over the records of the stages ``upstream`` (a prefix of STAGES)."""
        records: dict[str, dict[str, Any]] = {}
        upstream_outputs: dict[str, str] = {}  # what a stage read: every earlier stage's output
        for name in upstream:
            record = self.record(name)
            if record is None:
                raise MissingInputError(
                    f"run {self.path}: `gbrank {name}` has not finished for this run "
                    f"({RECORDS}/{name}.json is missing): run `gbrank {name}` first"
                )
            if record.get("version") != __version__:
                raise StaleArtifactError(
                    f"run {self.path}: the outputs of `gbrank {name}` were made by gbrank "
                    f"{record.get('version', 'before 0.1.0')}, this is {__version__}: rerun "
                    f"`gbrank {name}`"
                )
            if name in config_hashes and record.get("config_hash") != config_hashes[name]:
                raise StaleArtifactError(
                    f"run {self.path}: the outputs of `gbrank {name}` were made with a different "
                    f"config than the current one: rerun `gbrank {name}`"
                )
            if records and record.get("inputs") != upstream_outputs:
                raise StaleArtifactError(
                    f"run {self.path}: `gbrank {name}` read outputs of `gbrank "
                    f"{next(reversed(records))}` that have since been rewritten: rerun "
                    f"`gbrank {name}`"
                )
            if (
                name == STAGES[0]
                and inputs_fingerprint is not None
                and record.get("data_fingerprint") != inputs_fingerprint
            ):
                raise StaleArtifactError(
                    f"run {self.path}: the input data changed since `gbrank {name}` read it: "
                    f"rerun `gbrank {name}`"
                )
            records[name] = record
            upstream_outputs.update(record["outputs"])
        return Verified(self, records)

    def begin_stage(self, stage: str) -> None:
        """Invalidate ``stage`` and everything downstream before ``stage`` rewrites its outputs:
        their records go first, then the downstream outputs and the manifest."""
        later = STAGES[STAGES.index(stage) :]
        doomed: list[str] = []
        for name in later:
            try:
                record = self.record(name)
            except DamagedArtifactError:
                record = None
            if record is not None and name != stage:
                doomed += list(record["outputs"])
            try:
                self._record_file(name).unlink(missing_ok=True)
            except OSError as exc:
                raise io_error(self._record_file(name), exc, "remove") from exc
        for relative in [MANIFEST, *doomed]:
            try:
                self.file(relative).unlink(missing_ok=True)
            except OSError as exc:
                raise io_error(self.file(relative), exc, "remove") from exc

    def finish_stage(
        self,
        stage: str,
        *,
        config_hash: str,
        inputs: Mapping[str, str],
        outputs: Iterable[str],
        data_fingerprint: str | None = None,
    ) -> dict[str, Any]:
        """Write the stage's record: hashes of its outputs (which must exist) and inputs."""
        key = stage_key(stage, config_hash, inputs, data_fingerprint)
        record = {
            "stage": stage,
            "version": __version__,
            "key": key,
            "finished": time.time(),
            "config_hash": config_hash,
            "inputs": dict(sorted(inputs.items())),
            "outputs": {rel: file_sha256(self.file(rel)) for rel in sorted(set(outputs))},
        }
        if data_fingerprint is not None:
            record["data_fingerprint"] = data_fingerprint
        atomic_write_json(record, self._record_file(stage))
        self._index(stage, key)
        return record

    # ------------------------------------------------------------------ stage cache

    @property
    def workspace(self) -> Path:
        return self.path.parent.parent

    def _cache_entry(self, stage: str, key: str) -> Path:
        return self.workspace / CACHE / stage / f"{key}.json"

    def _index(self, stage: str, key: str) -> None:
        atomic_write_json({"run_id": self.id, "stage": stage}, self._cache_entry(stage, key))

    def cached_run(self, stage: str, key: str) -> Run | None:
        """Another run whose ``stage`` outputs have this key and are intact, if any."""
        entry = self._cache_entry(stage, key)
        try:
            run_id = json.loads(entry.read_text())["run_id"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(run_id, str) or run_id == self.id:
            return None
        source = Run(self.path.parent / run_id)
        try:
            record = source.record(stage)
        except DamagedArtifactError:
            return None
        if record is None or record.get("key") != key:
            return None
        for relative, sha in record["outputs"].items():
            try:
                if file_sha256(source.file(relative)) != sha:
                    return None
            except OSError:
                return None
        return source

    def reuse_stage(self, stage: str, source: Run) -> dict[str, Any]:
        """Take ``stage``'s outputs from ``source`` (hard links, else copies) and its record.

        Artifacts are never changed in place (every write is a new file renamed over the old
        name), so a file shared by two runs stays what both records say it is.
        """
        record = source.record(stage)
        assert record is not None
        self.begin_stage(stage)
        for relative in record["outputs"]:
            _link_or_copy(source.file(relative), self.file(relative))
        info = dict(source.progress().get(stage, {}))
        made = info.pop("seconds", None)
        made = info.pop("seconds_when_made", None) or made  # the source reused it too
        for key in ("finished", "reused_from"):
            info.pop(key, None)
        self.record_stage(stage, 0.0, **info, seconds_when_made=made, reused_from=source.id)
        record = {**record, "finished": time.time(), "reused_from": source.id}
        atomic_write_json(record, self._record_file(stage))
        self._index(stage, record["key"])
        return record

    # ------------------------------------------------------------------ progress, manifest

    def record_stage(self, stage: str, seconds: float, **info: Any) -> None:
        """Append a stage's timing and facts to progress.json (rewritten atomically)."""
        progress = self.progress()
        progress[stage] = {"seconds": round(seconds, 3), "finished": time.time(), **info}
        atomic_write_json(progress, self.file(PROGRESS))

    def progress(self) -> dict[str, Any]:
        p = self.file(PROGRESS)
        try:
            return dict(json.loads(p.read_text())) if p.exists() else {}
        except ValueError:
            return {}  # timings only: a damaged file is replaced, not trusted

    def write_manifest(
        self,
        config_hash: str,
        seed: int,
        inputs: dict[str, Any],
        threads: dict[str, Any] | None = None,
    ) -> Path:
        """Write manifest.json last: hashes of every output file (taken from the stage
        records, which hashed them as they were written), timings, versions."""
        outputs: dict[str, str] = {}
        for stage in STAGES:
            record = self.record(stage)
            if record is not None:
                outputs.update(record["outputs"])
                outputs[f"{RECORDS}/{stage}.json"] = file_sha256(self._record_file(stage))
        outputs[PROGRESS] = file_sha256(self.file(PROGRESS))
        if self.file("config.toml").exists():
            outputs["config.toml"] = file_sha256(self.file("config.toml"))
        outputs = dict(sorted(outputs.items()))
        manifest = {
            "run_id": self.id,
            "config_hash": config_hash,
            "seed": seed,
            "inputs": inputs,
            "versions": library_versions(),
            "threads": threads or {},
            "stages": self.progress(),
            "outputs": outputs,
        }
        atomic_write_json(manifest, self.file(MANIFEST))
        return self.file(MANIFEST)

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.json (``gbrank eval``'s output)."""
        p = self.file("metrics.json")
        try:
            return list(json.loads(p.read_text()))
        except FileNotFoundError:
            raise MissingInputError(
                f"run {self.path} has no metrics.json: run `gbrank eval`"
            ) from None
        except OSError as exc:
            raise io_error(p, exc, "read") from exc
        except ValueError:
            raise DamagedArtifactError(
                f"artifact {p} is damaged (not JSON): rerun `gbrank eval`"
            ) from None

    def manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when the run is not complete."""
        p = self.file(MANIFEST)
        try:
            manifest = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise io_error(p, exc, "read") from exc
        except ValueError:
            raise DamagedArtifactError(
                f"artifact {p} is damaged (not JSON): rerun the run"
            ) from None
        return dict(manifest)

    def check_complete(self) -> dict[str, Any]:
        """The manifest, after checking every file it lists against its hash."""
        manifest = self.manifest()
        if manifest is None:
            raise MissingInputError(
                f"run {self.path} is not complete (no {MANIFEST}): rerun it with `gbrank run`"
            )
        for relative, sha in manifest.get("outputs", {}).items():
            try:
                actual = file_sha256(self.file(relative))
            except FileNotFoundError:
                raise MissingInputError(f"run {self.path}: {relative} is missing") from None
            except OSError as exc:
                raise io_error(self.file(relative), exc, "read") from exc
            if actual != sha:
                raise DamagedArtifactError(
                    f"artifact {self.file(relative)} is damaged (hash mismatch): rerun the run"
                )
        return manifest


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes the same file as ``source``: a hard link, or a copy where the file
    system has none; either way under a temporary name first."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(source, tmp)


def run_folder(workspace: str | Path, run_id: str) -> Run:
    return Run(Path(workspace) / "runs" / run_id)


# --------------------------------------------------------------------------- the lock

_held: dict[str, list[Any]] = {}  # lock path -> [fd, depth, recovered, removed] (re-entrant)


class WorkspaceLock:
    """An exclusive lock on a workspace for the commands that write it.

    ``flock`` on ``<workspace>/.gbrank.lock``: the kernel drops it when the holder exits,
    however it exits, so a lock left by a killed process is free at once. The file names the
    holder (pid, host, command, start); a non-empty file found unlocked is such a leftover,
    reported in :attr:`recovered`, and the temporary files its writer left are removed. A
    second writer fails at once with :class:`WorkspaceLockedError` (exit 75). Re-entrant in
    one process: the stages that ``gbrank run`` calls take it again freely.
    """

    def __init__(self, workspace: str | Path, command: str) -> None:
        self.workspace = Path(workspace)
        self.command = command
        self.recovered: dict[str, Any] | None = None
        self.removed: list[Path] = []
        self._key = ""
        self._created = False

    def __enter__(self) -> WorkspaceLock:
        try:
            self._created = not self.workspace.exists()
            self.workspace.mkdir(parents=True, exist_ok=True)
            path = self.workspace / LOCK
            self._key = str(path.resolve())
            if self._key in _held:
                entry = _held[self._key]
                entry[1] += 1
                self.recovered, self.removed = entry[2], entry[3]
                return self
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise io_error(self.workspace / LOCK, exc, "lock") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise io_error(path, exc, "lock") from exc
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')} (`gbrank "
                f"{holder.get('command')}`, started {holder.get('started')})"
                if holder
                else "another process"
            )
            raise WorkspaceLockedError(
                f"workspace {self.workspace} is locked by {who}: wait for it to finish, or use "
                "another --workspace"
            ) from None
        self.recovered = _read_holder(fd) or None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self.removed = remove_temporary_files(self.workspace)
        _held[self._key] = [fd, 1, self.recovered, self.removed]
        return self

    def __exit__(self, *exc: object) -> None:
        entry = _held.get(self._key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        fd = entry[0]
        del _held[self._key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # released cleanly: nothing to recover next time
        if self._created and {p.name for p in self.workspace.iterdir()} <= {
            LOCK,
            FINGERPRINT_CACHE,
        }:
            # A command that made no artifact (it refused its input) leaves no workspace.
            with contextlib.suppress(OSError):
                (self.workspace / FINGERPRINT_CACHE).unlink(missing_ok=True)
                (self.workspace / LOCK).unlink()
                self.workspace.rmdir()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        holder = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {"pid": "?"}
    return holder if isinstance(holder, dict) else {"pid": "?"}


# --------------------------------------------------------------------------- the champion


def current_run(workspace: str | Path) -> str | None:
    """The id of the run ``current`` points to, or None before the first promotion."""
    link = Path(workspace) / CURRENT
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise io_error(link, exc, "read") from exc
    return Path(target).name


def promotions(workspace: str | Path) -> list[dict[str, Any]]:
    """Every promotion decision so far, oldest first."""
    p = Path(workspace) / PROMOTIONS
    try:
        log = json.loads(p.read_text())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise io_error(p, exc, "read") from exc
    except ValueError:
        raise DamagedArtifactError(f"artifact {p} is damaged (not JSON)") from None
    return list(log)


def log_promotion(workspace: str | Path, entry: dict[str, Any]) -> None:
    log = promotions(workspace)
    log.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry})
    atomic_write_json(log, Path(workspace) / PROMOTIONS)


def set_current(workspace: str | Path, run_id: str) -> None:
    """Point ``current`` at ``runs/<run_id>`` with one atomic rename of a new symlink."""
    workspace = Path(workspace)
    link = workspace / CURRENT
    tmp = workspace / f".{CURRENT}.{secrets.token_hex(4)}.tmp"  # as atomic.TEMPORARY
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(Path("runs") / run_id, tmp)
        fault_point(f"linked {link}")
        os.replace(tmp, link)
        fsync_path(workspace)
        fault_point(f"renamed {link}")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise io_error(link, exc) from exc


def list_runs(workspace: str | Path) -> list[Run]:
    """The workspace's run folders, oldest first (by the time they were last written)."""
    root = Path(workspace) / "runs"
    if not root.is_dir():
        return []
    runs = [Run(p) for p in root.iterdir() if p.is_dir()]
    return sorted(runs, key=lambda r: (r.path.stat().st_mtime, r.id))
