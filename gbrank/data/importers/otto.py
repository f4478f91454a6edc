"""OTTO session-based recommendation data: ``train.jsonl`` / ``test.jsonl``.

One JSON object per line: ``{"session": 1, "events": [{"aid": 5, "ts": 1661200010000,
"type": "clicks"}, ...]}``. Event types are ``clicks``, ``carts`` and ``orders``. OTTO has no
user ids: each session is a user, and its id is also the session id. Timestamps are epoch
milliseconds in the published files; copies converted to seconds are recognised by their
magnitude. See docs/datasets/otto.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import polars as pl

from gbrank import columns as C
from gbrank.data.importers import Imported, ImportOptions, find_file
from gbrank.errors import DataError

EVENT_MAP = {"clicks": "click", "carts": "cart", "orders": "purchase"}
FILES = ("train.jsonl", "test.jsonl")
SCHEMA: dict[str, pl.DataType] = {
    "session": pl.Int64(),
    "events": pl.List(pl.Struct({"aid": pl.Int64, "ts": pl.Int64, "type": pl.String})),
}
# Epoch values below this are seconds (1e11 ms is in 1973; 1e11 s is far in the future).
SECONDS_BELOW = 100_000_000_000


def _check_first_line(path: Path) -> None:
    with open(path, "rb") as fh:
        first = fh.readline()
    try:
        row = json.loads(first) if first.strip() else None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"not JSON Lines: {exc}", file=str(path), fix="pass OTTO's train.jsonl or test.jsonl"
        ) from exc
    if not (isinstance(row, dict) and "session" in row and isinstance(row.get("events"), list)):
        keys = sorted(row) if isinstance(row, dict) else []
        raise DataError(
            "expected one session per line with 'session' and an 'events' list"
            + (f"; the first line has keys {keys}" if keys else ""),
            file=str(path),
            column="events",
            fix="pass OTTO's train.jsonl or test.jsonl",
        )


def read(src: Path, options: ImportOptions) -> Imported:
    path = find_file(src, FILES, "OTTO sessions")
    _check_first_line(path)
    lf = (
        pl.scan_ndjson(path, schema=SCHEMA)
        .explode("events")
        .unnest("events")
        .filter(pl.col("aid").is_not_null())  # sessions without events
    )
    if options.limit:
        lf = lf.head(options.limit)
    try:
        raw = lf.collect(engine="streaming")
    except pl.exceptions.PolarsError as exc:
        raise DataError(
            f"cannot parse the file: {exc}".split("\n")[0].rstrip("."),
            file=str(path),
            fix="pass OTTO's train.jsonl or test.jsonl",
        ) from exc
    notes: list[str] = []
    missing = pl.any_horizontal(pl.all().is_null())
    n_missing = raw.select(missing.sum()).item()
    complete = raw.filter(~missing) if n_missing else raw  # filtering copies: only if needed
    if n_missing:
        notes.append(f"dropped {n_missing:,} events without a ts or type")
    unknown = complete.filter(~pl.col("type").is_in(list(EVENT_MAP)))["type"].unique().sort()
    if unknown.len():
        raise DataError(
            f"unknown event types (expected {', '.join(EVENT_MAP)})",
            file=str(path),
            column="type",
            values=unknown.to_list(),
            fix="check that this is OTTO's session data",
        )
    seconds = complete.height > 0 and complete["ts"].max() < SECONDS_BELOW  # type: ignore[operator]
    unit: Literal["s", "ms"] = "s" if seconds else "ms"
    if seconds:
        notes.append("timestamps are in seconds (a converted copy of OTTO); read as seconds")
    events = complete.select(
        pl.col("session").alias(C.RAW_USER),
        pl.col("aid").alias(C.RAW_ITEM),
        pl.from_epoch("ts", time_unit=unit).cast(pl.Datetime("ms")).alias(C.RAW_TS),
        pl.col("type").replace_strict(EVENT_MAP, return_dtype=pl.String).alias(C.RAW_EVENT),
        pl.col("type").alias("raw_event"),
        pl.col("session").alias(C.RAW_SESSION),
    )
    notes.append("OTTO has no user ids: every session is a user (user_id = session_id)")
    if src.is_dir() and path.name == "train.jsonl" and (src / "test.jsonl").exists():
        notes.append(
            "read train.jsonl only; test.jsonl holds the following week's truncated "
            "sessions (import it separately if needed)"
        )
    return Imported(
        events=events,
        horizon_days=7,
        event_mapping=dict(EVENT_MAP),
        notes=notes,
        source_files=[str(path)],
    )
