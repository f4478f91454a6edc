"""Importers for public e-commerce datasets in their original formats.

``gbrank data import FORMAT SRC --out DIR`` reads a dataset as published and writes gbrank's
data contract into ``DIR``: ``events.parquet`` (``user_id``, ``item_id``, ``ts``, ``event`` with
canonical names, plus ``raw_event`` and whatever optional columns the source has),
``items.parquet`` / ``users.parquet`` when the source has attributes, and ``gbrank.toml``: a
suggested config (paths, horizon, event mapping notes) that ``gbrank generate`` runs as is.

Each format lives in its own module exposing ``read(src: Path, options: ImportOptions) ->
Imported``; modules load lazily, so a format's optional dependency is needed only when it is
used.

Example:
    >>> result = import_dataset("movielens", "ml-latest-small/ratings.csv", "ml")  # doctest: +SKIP
    >>> result.events                                                            # doctest: +SKIP
    100836
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from gbrank import columns as C
from gbrank.atomic import atomic_write_parquet, atomic_write_text
from gbrank.errors import ConfigError, DataError, MissingInputError

# format name -> module (relative to this package)
FORMATS: dict[str, str] = {
    "retailrocket": "retailrocket",
    "taobao": "taobao",
    "otto": "otto",
    "hm": "hm",
    "movielens": "movielens",
    "online-retail": "online_retail",
    "diginetica": "diginetica",
    "yoochoose": "yoochoose",
    "instacart": "instacart",
}

EVENT_COLUMNS = (C.RAW_USER, C.RAW_ITEM, C.RAW_TS, C.RAW_EVENT)
OPTIONAL_COLUMNS = (C.RAW_SESSION, C.RAW_VALUE, C.RAW_QUANTITY, "raw_event")


@dataclass
class ImportOptions:
    """Options shared by the importers; each format reads the ones that concern it."""

    # MovieLens: ratings at or above this become purchases, the others views.
    rating_threshold: float = 4.0
    # Read at most this many event rows (for a quick look at a large dataset); 0 = all.
    limit: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Imported:
    """What a format's ``read`` returns, before anything is written."""

    events: pl.DataFrame  # EVENT_COLUMNS (+ OPTIONAL_COLUMNS); event holds canonical names
    items: pl.DataFrame | None = None  # item_id + attributes (category, price, ...)
    users: pl.DataFrame | None = None  # user_id + attributes
    horizon_days: int = 7  # suggested label window for this kind of data
    event_mapping: dict[str, str] = field(default_factory=dict)  # raw name -> canonical
    notes: list[str] = field(default_factory=list)  # what was dropped or derived, with counts
    source_files: list[str] = field(default_factory=list)


class Reader(Protocol):
    def __call__(self, src: Path, options: ImportOptions) -> Imported: ...


@dataclass
class ImportResult:
    out: Path
    events: int
    users: int
    items: int
    per_event_type: dict[str, int]
    horizon_days: int
    notes: list[str]
    files: list[Path]


def reader(fmt: str) -> Reader:
    if fmt not in FORMATS:
        import difflib

        near = difflib.get_close_matches(fmt, list(FORMATS), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ConfigError(f"unknown dataset format '{fmt}'{hint} (known: {', '.join(FORMATS)})")
    module = importlib.import_module(f"{__name__}.{FORMATS[fmt]}")
    return module.read  # type: ignore[no-any-return]


def require_file(path: Path, what: str) -> Path:
    """``path`` itself, or a MissingInputError naming the file the format needs."""
    if not path.exists():
        raise MissingInputError(f"{what} not found: {path}")
    return path


def find_file(src: Path, names: tuple[str, ...], what: str) -> Path:
    """``src`` when it is a file, else the first of ``names`` inside the folder ``src``."""
    if src.is_file():
        return src
    if src.is_dir():
        for name in names:
            if (src / name).exists():
                return src / name
        raise MissingInputError(
            f"{what}: none of {', '.join(names)} in folder {src}; pass the file itself or the "
            "folder that holds it"
        )
    raise MissingInputError(f"{what} not found: {src}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (Polars errors run to many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def collect(frame: pl.LazyFrame, paths: Path | list[Path], fix: str) -> pl.DataFrame:
    """``frame.collect()``, with a parse failure turned into a DataError naming the files."""
    files = paths if isinstance(paths, list) else [paths]
    try:
        return frame.collect()
    except pl.exceptions.PolarsError as exc:
        raise DataError(
            f"cannot parse: {first_line(exc)}",
            file=", ".join(str(p) for p in files),
            fix=fix,
        ) from exc


def check_columns(frame: pl.DataFrame, needed: tuple[str, ...], path: Path) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; found {frame.columns}",
            file=str(path),
            column=missing[0],
            fix="check that this is the file of the format you named",
        )


def suggested_horizon(events: pl.DataFrame, preferred: int) -> int:
    """``preferred`` days, shortened so that two label windows leave some history."""
    start, end = events[C.RAW_TS].min(), events[C.RAW_TS].max()
    if start is None or end is None:
        return preferred
    span = (end - start) / timedelta(days=1)  # type: ignore[operator]
    return max(1, min(preferred, int(span // 4)))


def suggested_targets(per_event_type: dict[str, int]) -> list[str]:
    """Targets that differ from one another on this data.

    A target counts events of its type or deeper, so ``click`` equals ``cart`` when there are
    no click events, and ``cart`` equals ``purchase`` without cart events; a target without
    any event is dropped.
    """
    targets = [t for t in C.TARGETS[:-1] if per_event_type.get(t, 0) > 0]
    if per_event_type.get("purchase", 0) > 0:
        targets.append("purchase")
    return targets or list(C.TARGETS)


def _config_text(out: Path, imported: Imported, horizon: int, fmt: str, targets: list[str]) -> str:
    lines = [
        f"# Suggested by `gbrank data import {fmt}`; every other key keeps its default",
        "# (see `gbrank config show`).",
    ]
    if imported.event_mapping:
        lines.append(
            "# Event names were mapped on import: "
            + ", ".join(f"{k} -> {v}" for k, v in imported.event_mapping.items())
        )
    lines += ["[data]", f'events = "{(out / "events.parquet").resolve()}"']
    if imported.items is not None:
        lines.append(f'items = "{(out / "items.parquet").resolve()}"')
    if imported.users is not None:
        lines.append(f'users = "{(out / "users.parquet").resolve()}"')
    lines += ["", "[folds]", f"horizon_days = {horizon}", ""]
    if targets != list(C.TARGETS):
        quoted = ", ".join(f'"{t}"' for t in targets)
        lines += [
            "# targets that differ on this data (see docs/metrics.md)",
            "[eval]",
            f"targets = [{quoted}]",
            "",
        ]
    return "\n".join(lines)


def import_dataset(
    fmt: str, src: str | Path, out: str | Path, options: ImportOptions | None = None
) -> ImportResult:
    """Read ``src`` in format ``fmt`` and write the contract files and a config into ``out``."""
    options = options or ImportOptions()
    read = reader(fmt)
    src, out = Path(src), Path(out)
    if not src.exists():
        raise MissingInputError(f"{fmt} input not found: {src}")
    imported = read(src, options)
    events = imported.events
    check_columns(events, EVENT_COLUMNS, src)
    if events.is_empty():
        raise DataError("the import produced no events", file=str(src))
    unknown = set(events[C.RAW_EVENT].unique().to_list()) - set(C.EVENT_TYPES)
    if unknown:  # an importer bug, not the user's: the contract says canonical names
        raise DataError(f"importer produced non-canonical event names {sorted(unknown)}")
    keep = [c for c in (*EVENT_COLUMNS, *OPTIONAL_COLUMNS) if c in events.columns]
    events = events.select(keep).with_columns(pl.col(C.RAW_TS).cast(pl.Datetime("ms")))
    horizon = suggested_horizon(events, imported.horizon_days)
    written = [out / "events.parquet"]
    atomic_write_parquet(events, written[0])
    if imported.items is not None:
        written.append(out / "items.parquet")
        atomic_write_parquet(imported.items, written[-1])
    if imported.users is not None:
        written.append(out / "users.parquet")
        atomic_write_parquet(imported.users, written[-1])
    counts = events[C.RAW_EVENT].value_counts()
    per_type = {r[C.RAW_EVENT]: int(r["count"]) for r in counts.iter_rows(named=True)}
    targets = suggested_targets(per_type)
    written.append(out / "gbrank.toml")
    atomic_write_text(_config_text(out, imported, horizon, fmt, targets), written[-1])
    return ImportResult(
        out=out,
        events=events.height,
        users=events[C.RAW_USER].n_unique(),
        items=events[C.RAW_ITEM].n_unique(),
        per_event_type=per_type,
        horizon_days=horizon,
        notes=imported.notes,
        files=written,
    )
