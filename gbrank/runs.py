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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from gbrank.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_table,
    atomic_write_text,
    file_sha256,
    io_error,
)
from gbrank.errors import (
    DamagedArtifactError,
    GbrankError,
    MissingInputError,
    StaleArtifactError,
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


def content_fingerprint(paths: Iterable[tuple[str, Path]], cache_dir: Path | None = None) -> str:
    """A hash over the content of input files (role, size, sha256), not their names or times.

    Full hashes are cached in ``cache_dir`` by (path, size, modification time), so an
    unchanged file is read once; ``touch`` costs one re-read and changes nothing.
    """
    cache_file = cache_dir / FINGERPRINT_CACHE if cache_dir is not None else None
    cache: dict[str, str] = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    changed = False
    digest = hashlib.sha256()
    for role, path in sorted(paths, key=lambda rp: (rp[0], str(rp[1]))):
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        sha = cache.get(key)
        if sha is None:
            sha = file_sha256(path)
            cache[key] = sha
            changed = True
        digest.update(f"{role}|{st.st_size}|{sha}\n".encode())
    if changed and cache_file is not None and cache_file.parent.is_dir():
        # Best effort: a read-only workspace only loses the cache.
        with contextlib.suppress(GbrankError, OSError):
            atomic_write_json(dict(list(cache.items())[-10_000:]), cache_file)
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
        upstream = STAGES[: STAGES.index(stage)] if stage in STAGES else STAGES
        records: dict[str, dict[str, Any]] = {}
        upstream_outputs: dict[str, str] = {}  # what a stage read: every earlier stage's output
        for name in upstream:
            record = self.record(name)
            if record is None:
                raise MissingInputError(
                    f"run {self.path}: `gbrank {name}` has not finished for this run "
                    f"({RECORDS}/{name}.json is missing): run `gbrank {name}` first"
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
        record = {
            "stage": stage,
            "finished": time.time(),
            "config_hash": config_hash,
            "inputs": dict(sorted(inputs.items())),
            "outputs": {rel: file_sha256(self.file(rel)) for rel in sorted(set(outputs))},
        }
        if data_fingerprint is not None:
            record["data_fingerprint"] = data_fingerprint
        atomic_write_json(record, self._record_file(stage))
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

    def write_manifest(self, config_hash: str, seed: int, inputs: dict[str, str]) -> Path:
        """Write manifest.json last: hashes of every output file (taken from the stage
        records, which hashed them as they were written), timings, versions."""
        outputs: dict[str, str] = {}
        for stage in STAGES:
            record = self.record(stage)
            if record is not None:
                outputs.update(record["outputs"])
                outputs[f"{RECORDS}/{stage}.json"] = file_sha256(self._record_file(stage))
        outputs[PROGRESS] = file_sha256(self.file(PROGRESS))
        outputs = dict(sorted(outputs.items()))
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
