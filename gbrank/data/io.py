"""Load and validate events, items and users into gbrank's data contract.

Input is Parquet, CSV or JSON Lines (flat rows, or OTTO's nested sessions), from one file,
a glob or a folder. Raw column names and event names are mapped by config; timestamps may be
datetimes or integer/float seconds or milliseconds. Problems raise :class:`DataError`
(exit code 65) naming the file, the column, up to five offending values and the fix.

Example:
    >>> from gbrank.config import DataConfig
    >>> loaded = load_events(DataConfig(events="shop/events.parquet"))  # doctest: +SKIP
    >>> loaded.events.columns  # doctest: +SKIP
    ['user', 'item', 'ts', 'event', 'session', 'value', 'quantity']
"""

from __future__ import annotations

import csv
import glob as globlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from gbrank import columns as C
from gbrank.config import DataConfig
from gbrank.data.vocab import Vocab
from gbrank.errors import DataError, MissingInputError, warn

SUFFIX_FORMAT = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}

# Timestamps must fall between 1990-01-01 and now (plus a day, or 2100 with
# data.allow_future): earlier or later ones are a wrong unit or damaged rows. Numbers are
# read as seconds, milliseconds, microseconds or nanoseconds since the epoch, detected by
# which unit puts them all in that range.
EARLIEST = datetime(1990, 1, 1)
LATEST = datetime(2100, 1, 1)
_SECONDS = (631_152_000, 4_102_444_800)
UNIT_SCALE = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}  # per second
UNIT_NAME = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}


def _fitting_units(lo: float, hi: float) -> list[str]:
    return [u for u, k in UNIT_SCALE.items() if _SECONDS[0] * k <= lo and hi <= _SECONDS[1] * k]


EVENTS_SCHEMA = {
    C.USER: pl.Int32,
    C.ITEM: pl.Int32,
    C.TS: pl.Datetime("ms"),
    C.EVENT: pl.Int8,
    C.SESSION: pl.Int64,
    C.VALUE: pl.Float32,
    C.QUANTITY: pl.Float32,
}


@dataclass
class Summary:
    """What was loaded: sizes, event mix, time span, duplicates."""

    rows: int
    users: int
    items: int
    per_event_type: dict[str, int]
    start: datetime
    end: datetime
    duplicates: int
    duplicates_dropped: int
    files: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        total = max(self.rows, 1)
        out = [
            f"files       {len(self.files)} ({', '.join(self.files[:3])}"
            + (", ..." if len(self.files) > 3 else "")
            + ")",
            f"rows        {self.rows:,}",
            f"users       {self.users:,}",
            f"items       {self.items:,}",
            f"time span   {self.start:%Y-%m-%d %H:%M:%S} .. {self.end:%Y-%m-%d %H:%M:%S}"
            f" ({(self.end - self.start).total_seconds() / 86400:.1f} days)",
            f"duplicates  {self.duplicates:,} exact duplicate rows"
            + (f" ({self.duplicates_dropped:,} dropped)" if self.duplicates_dropped else " (kept)"),
            "events:",
        ]
        for name in C.EVENT_TYPES:
            n = self.per_event_type.get(name, 0)
            out.append(f"  {name:<9} {n:>12,}  {100 * n / total:5.1f}%")
        return out


@dataclass
class LoadedEvents:
    """Coded events plus the vocabularies that map codes back to raw ids."""

    events: pl.DataFrame  # EVENTS_SCHEMA columns, sorted by ts, user
    users: Vocab
    items: Vocab
    summary: Summary


def resolve_paths(spec: str | Path, what: str = "events") -> list[Path]:
    """Files named by ``spec``: one file, a glob, or a folder (searched recursively)."""
    text = str(spec)
    if not text:
        raise MissingInputError(f"no {what} input given: set data.{what} or pass --{what}")
    if any(ch in text for ch in "*?["):
        paths = sorted(Path(p) for p in globlib.glob(text, recursive=True) if Path(p).is_file())
    elif Path(text).is_dir():
        paths = sorted(
            p for p in Path(text).rglob("*") if p.is_file() and p.suffix.lower() in SUFFIX_FORMAT
        )
    elif Path(text).is_file():
        paths = [Path(text)]
    else:
        raise MissingInputError(f"{what} input {text} does not exist")
    if not paths:
        raise MissingInputError(f"{what} input {text} matches no readable file")
    return paths


def _detect_format(path: Path, configured: str) -> str:
    fmt = SUFFIX_FORMAT.get(path.suffix.lower()) if configured == "auto" else configured
    if fmt is None:
        raise DataError(
            f"unknown file type '{path.suffix}'",
            file=str(path),
            fix="use .parquet, .csv or .jsonl files, or set data.format",
        )
    if fmt == "jsonl":
        with open(path, "rb") as fh:
            first = fh.readline()
        try:
            row = json.loads(first) if first.strip() else {}
        except json.JSONDecodeError as exc:
            raise DataError(f"not JSON Lines: {exc}", file=str(path)) from exc
        if isinstance(row, dict) and "events" in row and isinstance(row["events"], list):
            return "otto"
    return fmt


def _csv_separator(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        return next(csv.reader(fh, delimiter=_csv_separator(path)), [])


def ragged_lines(path: Path, limit: int = 5) -> tuple[int, list[tuple[int, int]]]:
    """The header's field count and up to ``limit`` (line number, field count) pairs of lines
    with another count (the error path only: this reads the file in Python)."""
    out: list[tuple[int, int]] = []
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh, delimiter=_csv_separator(path))
        width = len(next(reader, []))
        for row in reader:
            if row and len(row) != width:
                out.append((reader.line_num, len(row)))
                if len(out) >= limit:
                    break
    return width, out


def _ragged_error(path: Path) -> DataError | None:
    width, bad = ragged_lines(path)
    if not bad:
        return None
    lines = ", ".join(f"line {n} has {k}" for n, k in bad)
    return DataError(
        f"rows with a different number of fields than the header's {width} ({lines})",
        file=str(path),
        fix="quote fields that contain the separator, or repair or drop those lines",
    )


def _read_file(path: Path, fmt: str, text_columns: tuple[str, ...] = ()) -> pl.DataFrame:
    """One input file. CSV columns in ``text_columns`` (the ids) are read as text, never
    inferred; a CSV whose other columns do not fit the inferred types is read as text too,
    so the checks can name the values and lines that are wrong."""
    try:
        if fmt == "parquet":
            return pl.read_parquet(path)
        if fmt == "csv":
            header = _csv_header(path)
            overrides = {c: pl.String for c in text_columns if c in header}
            sep = _csv_separator(path)
            try:
                return pl.read_csv(
                    path, separator=sep, infer_schema_length=10_000, schema_overrides=overrides
                )
            except pl.exceptions.ComputeError:
                ragged = _ragged_error(path)
                if ragged is not None:
                    raise ragged from None
                return pl.read_csv(path, separator=sep, infer_schema_length=0)
        if fmt == "jsonl":
            return pl.read_ndjson(path)
        if fmt == "otto":
            return _read_otto(path)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, OSError) as exc:
        if "empty" in str(exc).lower():
            return pl.DataFrame()
        raise DataError(
            f"cannot read as {fmt}: {str(exc).splitlines()[0]}",
            file=str(path),
            fix="check that the file is complete and in the format its name says",
        ) from exc
    except pl.exceptions.PolarsError as exc:  # e.g. a damaged Parquet footer or page
        raise DataError(
            f"cannot read as {fmt}: {str(exc).splitlines()[0]}",
            file=str(path),
            fix="check that the file is complete and in the format its name says",
        ) from exc
    except BaseException as exc:  # Polars' reader can panic on damaged pages
        if type(exc).__name__ != "PanicException":
            raise
        raise DataError(
            f"cannot read as {fmt}: the reader failed on damaged data "
            f"({str(exc).splitlines()[0][:120]})",
            file=str(path),
            fix="check that the file is complete and not damaged; rewrite it from its source",
        ) from None
    raise DataError(f"unknown format '{fmt}'", file=str(path), fix="set data.format")


def _read_otto(path: Path) -> pl.DataFrame:
    """OTTO's nested sessions: one row per session with a list of {aid, ts, type} events."""
    frame = pl.read_ndjson(path)
    if frame.is_empty():
        return frame
    return (
        frame.explode("events")
        .unnest("events")
        .select(
            pl.col("session").alias(C.RAW_USER),
            pl.col("aid").alias(C.RAW_ITEM),
            pl.col("ts").alias(C.RAW_TS),
            pl.col("type").alias(C.RAW_EVENT),
            pl.col("session").alias(C.RAW_SESSION),
        )
    )


def _read_many(
    paths: list[Path], fmt: str, what: str, text_columns: tuple[str, ...] = ()
) -> tuple[pl.DataFrame, pl.Series]:
    """Concatenate files; also return each row's file index, for error messages."""
    frames = []
    for i, p in enumerate(paths):
        frame = _read_file(p, _detect_format(p, fmt), text_columns)
        frames.append(frame.with_columns(pl.lit(i, dtype=pl.Int32).alias("__file")))
    nonempty = [f for f in frames if f.width > 1 and f.height > 0]
    if not nonempty:
        raise DataError(
            f"no {what} rows",
            file=", ".join(str(p) for p in paths[:3]),
            fix="check that the path points at the right files",
        )
    try:
        combined = pl.concat(nonempty, how="diagonal_relaxed")
    except (pl.exceptions.SchemaError, pl.exceptions.ComputeError) as exc:
        raise DataError(
            f"files disagree on their columns' types: {exc}",
            file=", ".join(str(p) for p in paths[:3]),
        ) from exc
    return combined.drop("__file"), combined["__file"]


class _Checks:
    """Collects every data problem found, then raises them together."""

    def __init__(self, paths: list[Path], file_index: pl.Series) -> None:
        self.paths = paths
        self.file_index = file_index
        self.errors: list[DataError] = []

    def locate(self, mask: pl.Series, limit: int = 5) -> list[str]:
        """Where the first rows of ``mask`` are: 'line N' of a CSV (the header is line 1),
        'row N' otherwise, with the file's name when there are several files."""
        rows = mask.arg_true().head(limit).to_list()
        files = self.file_index.to_numpy()
        starts = {i: int(np.searchsorted(files, i)) for i in set(files[rows].tolist())}
        out = []
        for row in rows:
            i = int(files[row])
            path = self.paths[i]
            within = row - starts[i]
            text = path.suffix.lower() in (".csv", ".tsv")
            place = f"line {within + 2:,}" if text else f"row {within + 1:,}"
            out.append(place if len(self.paths) == 1 else f"{path.name} {place}")
        return out

    def file_of(self, mask: pl.Series | None) -> str:
        if mask is None or len(self.paths) == 1:
            return str(self.paths[0]) if len(self.paths) == 1 else f"{len(self.paths)} files"
        idx = self.file_index.filter(mask).unique().sort().to_list()
        return ", ".join(str(self.paths[i]) for i in idx[:3]) + (", ..." if len(idx) > 3 else "")

    def add(self, problem: str, column: str, mask: pl.Series | None = None, **kw: object) -> None:
        self.errors.append(DataError(problem, file=self.file_of(mask), column=column, **kw))  # type: ignore[arg-type]

    def raise_if_any(self) -> None:
        if self.errors:  # a ragged CSV line explains nulls and type errors: say so first
            for path in self.paths:
                if path.suffix.lower() in (".csv", ".tsv"):
                    ragged = _ragged_error(path)
                    if ragged is not None:
                        self.errors.insert(0, ragged)
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            err = DataError(
                f"{len(self.errors)} problems:\n  - " + "\n  - ".join(str(e) for e in self.errors)
            )
            raise err


def _mapping(cfg: DataConfig) -> dict[str, str]:
    """Contract column -> raw column name in the files."""
    c = cfg.columns
    return {
        C.RAW_USER: c.user_id,
        C.RAW_ITEM: c.item_id,
        C.RAW_TS: c.ts,
        C.RAW_EVENT: c.event,
        C.RAW_SESSION: c.session_id,
        C.RAW_VALUE: c.value,
        C.RAW_QUANTITY: c.quantity,
    }


def _select_columns(
    raw: pl.DataFrame, cfg: DataConfig, paths: list[Path], fmt_is_otto: bool
) -> pl.DataFrame:
    mapping = _mapping(cfg)
    if fmt_is_otto:  # OTTO rows already use the contract's names
        mapping = {k: k for k in mapping}
    required = (C.RAW_USER, C.RAW_ITEM, C.RAW_TS, C.RAW_EVENT)
    missing = [(k, mapping[k]) for k in required if mapping[k] not in raw.columns]
    if missing:
        contract, name = missing[0]
        names = ", ".join(f"'{n}'" for _, n in missing)
        raise DataError(
            f"missing required column(s) {names}; the file has columns {raw.columns}",
            file=", ".join(str(p) for p in paths[:3]),
            column=name,
            fix=f'add the column, or map yours with data.columns.{contract} = "<your column>"',
        )
    exprs = [pl.col(mapping[k]).alias(k) for k in mapping if mapping[k] in raw.columns]
    return raw.select(exprs)


def _coerce_ids(
    frame: pl.DataFrame, col: str, raw_name: str, id_dtype: str, checks: _Checks
) -> pl.DataFrame:
    """Apply ``data.id_dtype``: text ids stay text unless all are canonical integers ("auto"),
    every id becomes text ("string"), or text ids are parsed as integers, refusing any two
    that would merge ("int")."""
    s = frame[col]
    if s.dtype == pl.Categorical:
        s = s.cast(pl.String)
    if id_dtype == "auto":
        s = _canonical_integers(s)
    elif id_dtype == "string" and s.dtype != pl.String and s.dtype.is_integer():
        s = s.cast(pl.String)
    elif id_dtype == "int" and s.dtype == pl.String:
        text = s.str.strip_chars()
        parsed = _parse_numbers(
            s, pl.Int64, raw_name, checks, "ids are not integers", 'set data.id_dtype = "auto"'
        )
        if parsed is None:
            return frame
        pairs = pl.DataFrame({"raw": text, "int": parsed}).drop_nulls().unique()
        clash = pairs.filter(pl.col("int").is_duplicated()).sort("int", "raw")
        if not clash.is_empty():
            examples = clash.group_by("int", maintain_order=True).agg("raw").head(5)
            checks.add(
                f"{clash['int'].n_unique():,} integer ids are written in more than one way, and "
                "reading them as integers would merge distinct ids",
                raw_name,
                values=[" = ".join(repr(r) for r in raws) for raws in examples["raw"].to_list()],
                fix='set data.id_dtype = "auto" (ids as text) to keep them apart',
            )
            return frame
        s = parsed
    return frame.with_columns(s.alias(col))


def _check_id(frame: pl.DataFrame, col: str, raw_name: str, checks: _Checks) -> None:
    dtype = frame.schema[col]
    if not (dtype.is_integer() or dtype == pl.String or dtype == pl.Categorical):
        sample = frame[col].drop_nulls().head(5).to_list()
        checks.add(
            f"ids must be integers or strings, found dtype {dtype}",
            raw_name,
            values=sample,
            fix=f"cast the column to integers or strings before loading (data.columns maps "
            f"'{raw_name}')",
        )
        return
    nulls = frame[col].is_null()
    if nulls.any():
        checks.add(
            f"{int(nulls.sum()):,} null ids (at {', '.join(checks.locate(nulls))})",
            raw_name,
            mask=nulls,
            fix="drop or fill the rows without an id",
        )


def _parse_ts(frame: pl.DataFrame, cfg: DataConfig, checks: _Checks) -> pl.Series | None:
    raw_name = cfg.columns.ts
    s = frame[C.RAW_TS]
    unit = cfg.ts_unit
    if s.dtype == pl.String:
        try:
            parsed = s.str.to_datetime(time_unit="ms", strict=False)
        except pl.exceptions.ComputeError:  # no datetime format fits any value
            parsed = pl.Series(s.name, [None] * s.len(), dtype=pl.Datetime("ms"))
        bad = parsed.is_null() & s.is_not_null()
        if not bad.any():
            return parsed.cast(pl.Datetime("ms"))
        as_num = s.str.strip_chars().cast(pl.Float64, strict=False)
        bad_num = as_num.is_null() & s.is_not_null()
        if not bad_num.any():
            s = as_num  # numbers stored as text
        else:  # the values that fit neither reading the column mostly follows
            if bad_num.sum() < bad.sum():
                bad = bad_num
            checks.add(
                f"{int(bad.sum()):,} unparseable timestamps (at {', '.join(checks.locate(bad))})",
                raw_name,
                mask=bad,
                values=s.filter(bad).head(5).to_list(),
                fix="use ISO 8601 datetimes or epoch seconds/milliseconds, or fix those rows",
            )
            return None
    if s.dtype == pl.Date:
        return s.cast(pl.Datetime("ms"))
    if isinstance(s.dtype, pl.Datetime):
        if s.dtype.time_zone is not None:
            s = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return s.cast(pl.Datetime("ms"))
    if not s.dtype.is_numeric():
        checks.add(
            f"timestamps must be datetimes or numbers, found dtype {s.dtype}",
            raw_name,
            values=s.head(5).to_list(),
            fix="convert the column, or map another one with data.columns.ts",
        )
        return None
    nulls = s.is_null()
    if nulls.any():
        checks.add(
            f"{int(nulls.sum()):,} missing timestamps (row numbers shown)",
            raw_name,
            mask=nulls,
            values=nulls.arg_true().head(5).to_list(),
            fix="drop the rows without a timestamp",
        )
        return None
    if unit == "datetime":
        checks.add(
            "data.ts_unit = 'datetime' but the column holds numbers",
            raw_name,
            values=s.head(5).to_list(),
            fix="set data.ts_unit to 's', 'ms', 'us' or 'ns'",
        )
        return None
    lo, hi = float(s.min()), float(s.max())  # type: ignore[arg-type]
    fitting = _fitting_units(lo, hi)
    if unit == "auto":
        if not fitting:
            checks.add(
                "cannot tell the unit of the numeric timestamps: no unit (seconds, milliseconds, "
                f"microseconds, nanoseconds) puts the range {lo:.0f} .. {hi:.0f} between "
                f"{EARLIEST:%Y} and {LATEST:%Y}",
                raw_name,
                values=[s.min(), s.max()],
                fix="set data.ts_unit = 's', 'ms', 'us' or 'ns' (or 'datetime'), or check the "
                "rows far from the rest",
            )
            return None
        unit = fitting[0]
    per_second = UNIT_SCALE[unit]
    outside = (s < _SECONDS[0] * per_second) | (s > _SECONDS[1] * per_second)
    if outside.any():  # a wrong unit: refuse before building dates past year 9999
        guess = (
            f'; they look like {UNIT_NAME[fitting[0]]}: set data.ts_unit = "{fitting[0]}"'
            if fitting
            else ""
        )
        checks.add(
            f"{int(outside.sum()):,} timestamps read as {UNIT_NAME[unit]} (data.ts_unit = "
            f"'{unit}') fall outside {EARLIEST:%Y} .. {LATEST:%Y}"
            + guess
            + f" (at {', '.join(checks.locate(outside))})",
            raw_name,
            mask=outside,
            values=s.filter(outside).head(5).to_list(),
            fix="set data.ts_unit to the unit of the numbers, or fix those rows",
        )
        return None
    if s.dtype.is_integer():
        micros = (
            s.cast(pl.Int64) * (1_000_000 // per_second)
            if per_second <= 1_000_000
            else (s.cast(pl.Int64) // (per_second // 1_000_000))
        )
        return pl.from_epoch(micros, time_unit="us").cast(pl.Datetime("ms"))
    millis = (s.cast(pl.Float64) * (1000.0 / per_second)).round().cast(pl.Int64)
    return pl.from_epoch(millis, time_unit="ms")


def _show_timestamps(ts: pl.Series) -> list[str]:
    """Timestamps as text, also those past what a Python datetime holds (damaged rows)."""
    out = []
    for ms in ts.cast(pl.Datetime("ms")).cast(pl.Int64).to_list():
        if ms is None:
            out.append("null")
        elif -62_135_596_800_000 <= ms <= 253_402_300_799_999:  # years 1 to 9999
            out.append(str(datetime(1970, 1, 1) + timedelta(milliseconds=ms)))
        else:
            out.append(f"{ms} ms from 1970 (not a date)")
    return out


def _check_ts_range(ts: pl.Series, cfg: DataConfig, checks: _Checks, now: datetime | None) -> None:
    """Refuse timestamps before 1990 or in the future (exit 65 with counts and examples);
    warn when a few rows lie far outside the bulk of the data (damaged rows look like that)."""
    latest = (
        LATEST
        if cfg.allow_future
        else ((now or datetime.now(UTC).replace(tzinfo=None)) + timedelta(days=1))
    )
    early, late = ts < EARLIEST, ts > latest
    for mask, what, fix in (
        (
            early,
            f"before {EARLIEST:%Y-%m-%d}",
            "check the timestamp unit (data.ts_unit) and that the file is not damaged",
        ),
        (
            late,
            f"in the future (after {latest:%Y-%m-%d})",
            "check the timestamp unit (data.ts_unit) and time zone, or set "
            "data.allow_future = true",
        ),
    ):
        if mask.any():
            checks.add(
                f"{int(mask.sum()):,} of {ts.len():,} timestamps are {what} "
                f"(at {', '.join(checks.locate(mask))})",
                cfg.columns.ts,
                mask=mask,
                values=_show_timestamps(ts.filter(mask).head(5)),
                fix=fix,
            )
    if early.any() or late.any() or ts.len() < 100:
        return
    # Quantiles of a systematic sample of at most 1M rows: exact enough, and O(1M) at any size.
    sample = ts.gather_every(max(1, ts.len() // 1_000_000))
    q_lo, q_hi = (sample.quantile(q, "nearest") for q in (0.001, 0.999))
    lo, hi = str(ts.min()), str(ts.max())
    bulk = max(q_hi - q_lo, timedelta(days=1))  # type: ignore[operator]
    far = (ts < q_lo - 5 * bulk) | (ts > q_hi + 5 * bulk)  # type: ignore[operator]
    if far.any():
        warn(
            f"column '{cfg.columns.ts}': {int(far.sum()):,} of {ts.len():,} timestamps lie far "
            f"outside the bulk of the data (99.8% fall in {q_lo} .. {q_hi}; the span is "
            f"{lo} .. {hi}, at {', '.join(checks.locate(far))}). Damaged or mis-dated rows look "
            "like this: check the file and data.ts_unit"
        )


def _map_events(frame: pl.DataFrame, cfg: DataConfig, checks: _Checks) -> pl.Series | None:
    raw_name = cfg.columns.event
    names = frame[C.RAW_EVENT].cast(pl.String).str.strip_chars()
    lookup = {k.lower(): C.EVENT_CODE[v] for k, v in cfg.event_map.items()}
    lookup.update({k: C.EVENT_CODE[v] for k, v in cfg.event_map.items()})
    codes = names.replace_strict(lookup, default=None, return_dtype=pl.Int8)
    lowered = names.str.to_lowercase().replace_strict(lookup, default=None, return_dtype=pl.Int8)
    codes = codes.fill_null(lowered)
    bad = codes.is_null()
    if bad.any():
        unknown = names.filter(bad).value_counts(sort=True)
        values = unknown[names.name].head(5).to_list()
        checks.add(
            f"{int(bad.sum()):,} rows with unknown event types",
            raw_name,
            mask=bad,
            values=values,
            fix="map them in [data.event_map], e.g. "
            + ", ".join(f'"{v}" = "view"' for v in values[:2] if v is not None)
            + f" (canonical types: {', '.join(C.EVENT_TYPES)})",
        )
        return None
    return codes


def _numeric(frame: pl.DataFrame, col: str, raw_name: str, checks: _Checks) -> pl.Series | None:
    if col not in frame.columns:
        return None
    s = frame[col]
    if s.dtype.is_numeric():
        return s.cast(pl.Float32)
    fix = "this optional column must hold numbers; fix or drop it"
    return _parse_numbers(s, pl.Float32, raw_name, checks, "non-numeric values", fix)


def _parse_numbers(
    s: pl.Series,
    dtype: type[pl.DataType] | pl.DataType,
    raw_name: str,
    checks: _Checks,
    what: str,
    fix: str,
) -> pl.Series | None:
    """``s`` (text) as numbers, or None after reporting the values that are not and where."""
    parsed = s.cast(pl.String).str.strip_chars().cast(dtype, strict=False)
    bad = parsed.is_null() & s.is_not_null()
    if bad.any():
        checks.add(
            f"{int(bad.sum()):,} {what} (at {', '.join(checks.locate(bad))})",
            raw_name,
            mask=bad,
            values=s.filter(bad).unique(maintain_order=True).head(5).to_list(),
            fix=fix,
        )
        return None
    return parsed


def _session(frame: pl.DataFrame) -> pl.Series | None:
    if C.RAW_SESSION not in frame.columns:
        return None
    s = _canonical_integers(frame[C.RAW_SESSION])
    if s.dtype.is_integer():
        return s.cast(pl.Int64)
    # Non-integer session ids become dense integers (sorted order, so deterministic).
    return s.cast(pl.String).rank("dense").cast(pl.Int64)


def _canonical_integers(s: pl.Series) -> pl.Series:
    """Text ids as Int64 when every one is an integer written in its one canonical way (no
    leading zeros, sign or spaces), so no two distinct ids can merge; else unchanged. Integer
    codes sort, join and store faster than text."""
    if s.dtype != pl.String:
        return s
    parsed = s.cast(pl.Int64, strict=False)
    if parsed.null_count() != s.null_count():
        return s
    same = parsed.cast(pl.String) == s
    return parsed if bool(same.all(ignore_nulls=True)) else s


def repeated_rows(frame: pl.DataFrame) -> pl.Series:
    """The positions of the rows that repeat an earlier row exactly (every column; nulls
    equal), in order: what ``frame.unique(maintain_order=True)`` drops.

    A hash of each row finds the few rows that can repeat one (those whose hash occurs twice);
    only they are compared column by column. Hashing every column of the whole frame at once,
    as ``is_duplicated`` does, held a table several times the frame's size (21 GB at 100M
    events); this holds one 64-bit hash per row and its sorted copy.
    """
    hashes = frame.hash_rows(seed=0).to_numpy()
    ordered = np.sort(hashes)
    twice = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if twice.size == 0:
        return pl.Series("row", [], dtype=pl.UInt32)
    maybe = pl.Series(np.flatnonzero(np.isin(hashes, twice)), dtype=pl.UInt32)
    del hashes
    rows = frame[maybe]
    later = ~rows.select(pl.struct(rows.columns).is_first_distinct()).to_series()
    return maybe.filter(later).alias("row")


def load_events(
    cfg: DataConfig, *, now: datetime | None = None, events: str | Path | None = None
) -> LoadedEvents:
    """Read, map, validate and code the events named by ``cfg.events`` (or ``events``)."""
    spec = events if events is not None else cfg.events
    paths = resolve_paths(spec, "events")
    c = cfg.columns
    text_ids = (c.user_id, c.item_id, c.session_id)  # parsed by data.id_dtype, never inferred
    raw, file_index = _read_many(paths, cfg.format, "events", text_ids)
    is_otto = all(_detect_format(p, cfg.format) == "otto" for p in paths)
    frame = _select_columns(raw, cfg, paths, is_otto)
    del raw
    checks = _Checks(paths, file_index)
    for col, raw_name in ((C.RAW_USER, c.user_id), (C.RAW_ITEM, c.item_id)):
        frame = _coerce_ids(frame, col, raw_name, cfg.id_dtype, checks)
        _check_id(frame, col, raw_name, checks)
    ts = _parse_ts(frame, cfg, checks)
    event = _map_events(frame, cfg, checks)
    value = _numeric(frame, C.RAW_VALUE, cfg.columns.value, checks)
    quantity = _numeric(frame, C.RAW_QUANTITY, cfg.columns.quantity, checks)
    if ts is not None:
        _check_ts_range(ts, cfg, checks, now)
    checks.raise_if_any()
    assert ts is not None and event is not None

    data = pl.DataFrame(
        {
            C.RAW_USER: frame[C.RAW_USER],
            C.RAW_ITEM: frame[C.RAW_ITEM],
            C.TS: ts,
            C.EVENT: event,
            C.SESSION: _session(frame),
            C.VALUE: value,
            C.QUANTITY: quantity,
        }
    )
    del frame
    copies = repeated_rows(data)
    n_dup_rows = copies.len()
    dropped = 0
    if cfg.duplicates == "drop" and n_dup_rows:
        before = data.height
        keep = np.ones(data.height, dtype=bool)
        keep[copies.to_numpy()] = False
        data = data.filter(pl.Series(keep))
        dropped = before - data.height

    users = Vocab.fit(data[C.RAW_USER])
    items = Vocab.fit(data[C.RAW_ITEM])
    coded = (
        data.with_columns(
            users.encode(data[C.RAW_USER]).alias(C.USER),
            items.encode(data[C.RAW_ITEM]).alias(C.ITEM),
        )
        .select(list(EVENTS_SCHEMA))
        .cast(EVENTS_SCHEMA)  # type: ignore[arg-type]
        .sort([C.TS, C.USER, C.ITEM, C.EVENT], maintain_order=True)
    )
    counts = dict(zip(*coded[C.EVENT].value_counts().sort(C.EVENT).get_columns(), strict=True))
    summary = Summary(
        rows=coded.height,
        users=len(users),
        items=len(items),
        per_event_type={C.EVENT_TYPES[int(k)]: int(v) for k, v in counts.items()},
        start=coded[C.TS].min(),  # type: ignore[arg-type]
        end=coded[C.TS].max(),  # type: ignore[arg-type]
        duplicates=n_dup_rows,
        duplicates_dropped=dropped,
        files=[str(p) for p in paths],
    )
    return LoadedEvents(coded, users, items, summary)


@dataclass
class Coverage:
    """How well an attribute table's ids match the events'."""

    what: str  # "items" or "users"
    table_ids: int  # distinct ids in the table
    matched: int  # of them, ids that occur in the events
    event_ids: int  # distinct ids in the events

    @property
    def event_share(self) -> float:
        """Share of the events' ids that have a row in the table."""
        return self.matched / self.event_ids if self.event_ids else 1.0

    @property
    def table_share(self) -> float:
        """Share of the table's ids that occur in the events."""
        return self.matched / self.table_ids if self.table_ids else 0.0

    @property
    def share(self) -> float:
        """The better of the two shares: a catalogue larger than the events, or attributes
        known for some items only, are fine; ids that do not match make both low."""
        return max(self.event_share, self.table_share)

    def line(self) -> str:
        return (
            f"{self.what:<11} {self.matched:,} ids match: {100 * self.event_share:.1f}% of the "
            f"{self.event_ids:,} {self.what} in the events have a row, "
            f"{100 * self.table_share:.1f}% of the table's {self.table_ids:,} ids occur in them"
        )


ERROR_COVERAGE = 0.5  # below: an error (the ids do not match)
WARN_COVERAGE = 0.95  # below: a warning


def load_table(
    spec: str,
    id_column: str,
    what: str,
    vocab: Vocab,
    fmt: str = "auto",
    *,
    coverage: list[Coverage] | None = None,
) -> pl.DataFrame:
    """Load an ``items`` or ``users`` attribute table and code its ids with ``vocab``.

    Rows whose id never occurs in the events are dropped (they cannot be recommended or served);
    duplicate ids keep their first row. When fewer than half of the table's ids occur in the
    events and fewer than half of the events' ids have a row, the ids do not match and a
    DataError says so; below 95% a warning does. ``coverage``, when given, gets the counts.
    """
    paths = resolve_paths(spec, what)
    text_ids = (id_column,) if vocab.dtype == pl.String else ()
    raw, _ = _read_many(paths, fmt, what, text_ids)
    files = ", ".join(str(p) for p in paths[:3])
    if id_column not in raw.columns:
        raise DataError(
            f"missing id column; the file has columns {raw.columns}",
            file=files,
            column=id_column,
            fix=f"add the column or map it with data.columns.{'item_id' if what == 'items' else 'user_id'}",
        )
    code = C.ITEM if what == "items" else C.USER
    coded = raw.with_columns(vocab.encode(raw[id_column]).alias(code))
    found = coded.filter(pl.col(code).is_not_null())
    cov = Coverage(what, raw[id_column].n_unique(), found[code].n_unique(), len(vocab))
    if coverage is not None:
        coverage.append(cov)
    if cov.share < WARN_COVERAGE:
        unmatched = raw.filter(coded[code].is_null())[id_column].head(3).to_list()
        examples = vocab.table["raw"].head(3).to_list()
        how = "do not match" if cov.share < ERROR_COVERAGE else "match only in part"
        text = (
            f"the {what} table's ids {how} the events': {cov.matched:,} of its "
            f"{cov.table_ids:,} ids occur in the events ({100 * cov.table_share:.1f}%), and "
            f"{cov.matched:,} of the {cov.event_ids:,} {what} in the events have a row "
            f"({100 * cov.event_share:.1f}%)"
        )
        fix = (
            f"check that the table and the events use the same {what[:-1]} ids (table: "
            f"{', '.join(repr(v) for v in unmatched)}; events: "
            f"{', '.join(repr(v) for v in examples)}) and map the id column with "
            f"data.columns.{'item_id' if what == 'items' else 'user_id'}"
        )
        if cov.share < ERROR_COVERAGE:
            raise DataError(text, file=files, column=id_column, values=unmatched, fix=fix)
        warn(f"file {files}, column '{id_column}': {text}. Fix: {fix}")
    found = found.unique(code, keep="first", maintain_order=True)
    return found.drop(id_column).select(code, pl.exclude(code)).sort(code)
