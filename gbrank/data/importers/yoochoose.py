"""YOOCHOOSE (RecSys Challenge 2015): anonymous shopping sessions with clicks and buys.

Two layouts are read:

* the challenge files: ``yoochoose-clicks.dat`` (``SessionID,Timestamp,ItemID,Category``, no
  header) -> ``click`` events, and the optional ``yoochoose-buys.dat``
  (``SessionID,Timestamp,ItemID,Price,Quantity``) -> ``purchase`` events with ``value`` =
  price x quantity (null where the price or quantity is 0, i.e. unknown);
* the prepared session files of session-based recommendation research: tab-separated
  ``SessionId, ItemId, Time`` (epoch seconds) with a header, one file or a folder holding
  ``*train_full.txt`` and/or ``*test.txt`` -> ``click`` events.

There are no user ids: every session is a user (``user_id`` = ``session_id`` = the session id).

Example:
    >>> from gbrank.data.importers import import_dataset
    >>> import_dataset("yoochoose", "yoochoose-data", "yc")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl
from polars.datatypes import DataType

from gbrank import columns as C
from gbrank.data.importers import Imported, ImportOptions, check_columns, collect, first_line
from gbrank.data.importers.diginetica import limit_sessions
from gbrank.errors import DataError, MissingInputError

CLICKS = "yoochoose-clicks.dat"
BUYS = "yoochoose-buys.dat"
CLICK_SCHEMA = {
    "SessionID": pl.Int64,
    "Timestamp": pl.String,
    "ItemID": pl.Int64,
    "Category": pl.String,
}
BUY_SCHEMA = {
    "SessionID": pl.Int64,
    "Timestamp": pl.String,
    "ItemID": pl.Int64,
    "Price": pl.Float64,
    "Quantity": pl.Float64,
}
PREPARED_SCHEMA = {"SessionId": pl.Int64, "ItemId": pl.Int64, "Time": pl.Float64}
PREPARED_PATTERNS = ("*train_full.txt", "*test.txt")
TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.fZ"  # 2014-04-07T10:51:09.277Z (UTC)
EVENT_MAPPING = {"click": "click", "buy": "purchase"}
PolarsDataType = DataType | type[DataType]


def read(src: Path, options: ImportOptions) -> Imported:
    if src.is_file():
        if _is_prepared(src):
            return _read_prepared([src], options, [])
        return _read_challenge(
            src, None, options, [f"{BUYS} not read: pass the folder to include buys"]
        )
    if not src.is_dir():
        raise MissingInputError(f"yoochoose input not found: {src}")
    if (src / CLICKS).is_file():
        buys = src / BUYS if (src / BUYS).is_file() else None
        notes = [] if buys else [f"{BUYS} not found: clicks only"]
        return _read_challenge(src / CLICKS, buys, options, notes)
    prepared = [
        p for pattern in PREPARED_PATTERNS for p in sorted(src.glob(pattern)) if p.is_file()
    ]
    if prepared:
        return _read_prepared(prepared, options, [])
    raise MissingInputError(
        f"yoochoose: neither {CLICKS} nor prepared session files ({', '.join(PREPARED_PATTERNS)}) "
        f"in folder {src}; pass the folder of the challenge files or a prepared file"
    )


def _head(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().rstrip("\r\n")
    except OSError as exc:
        raise DataError(f"cannot read: {exc}", file=str(path)) from exc


def _is_prepared(path: Path) -> bool:
    return "\t" in _head(path)


# --------------------------------------------------------------------------- challenge files


def _scan_dat(path: Path, schema: Mapping[str, PolarsDataType]) -> pl.LazyFrame:
    first = _head(path)
    fields = first.split(",")
    if len(fields) != len(schema) or not fields[0].strip().isdigit():
        raise DataError(
            f"expected {len(schema)} comma-separated fields without a header "
            f"({','.join(schema)}), found the line {first[:80]!r}",
            file=str(path),
            column=list(schema)[0],
            fix="check that this is the YOOCHOOSE challenge file as published",
        )
    return pl.scan_csv(path, has_header=False, schema=schema)


def _timestamp() -> pl.Expr:
    return pl.col("Timestamp").str.to_datetime(TS_FORMAT, time_unit="ms", strict=False)


def _read_dat(scan: pl.LazyFrame, path: Path) -> pl.DataFrame:
    """Collect ``scan`` with the Timestamp parsed (in the scan, so the text is never held)."""
    frame = _collect(scan.with_columns(_timestamp().alias(C.RAW_TS)).drop("Timestamp"), [path])
    if frame[C.RAW_TS].null_count():
        bad = _collect(scan.filter(_timestamp().is_null()).select("Timestamp"), [path])
        raise DataError(
            f"{bad.height:,} unparseable timestamps",
            file=str(path),
            column="Timestamp",
            values=bad["Timestamp"].head(5).to_list(),
            fix="timestamps look like 2014-04-07T10:51:09.277Z in the published files",
        )
    return frame


def _read_challenge(
    clicks_path: Path, buys_path: Path | None, options: ImportOptions, notes: list[str]
) -> Imported:
    clicks_scan = _scan_dat(clicks_path, CLICK_SCHEMA)
    if options.limit > 0:
        clicks_scan = clicks_scan.head(options.limit)
    clicks = _read_dat(clicks_scan, clicks_path).with_row_index("_row")
    frames = [
        clicks.select(
            "_row",
            "SessionID",
            "ItemID",
            C.RAW_TS,
            pl.lit("click").alias("raw_event"),
            pl.lit(None, dtype=pl.Float64).alias(C.RAW_VALUE),
            pl.lit(None, dtype=pl.Float64).alias(C.RAW_QUANTITY),
            pl.lit(None, dtype=pl.Boolean).alias("_no_price"),
        )
    ]
    sources = [str(clicks_path)]
    if buys_path is not None:
        sources.append(str(buys_path))
        buys_scan = _scan_dat(buys_path, BUY_SCHEMA)
        if options.limit > 0:  # only the sessions of the clicks read
            buys_scan = buys_scan.join(
                clicks.lazy().select(pl.col("SessionID").unique()), on="SessionID", how="semi"
            )
        buys = _read_dat(buys_scan, buys_path)
        known_price = pl.col("Price") > 0
        known_quantity = pl.col("Quantity") > 0
        frames.append(
            buys.select(
                pl.lit(None, dtype=frames[0].schema["_row"]).alias("_row"),
                "SessionID",
                "ItemID",
                C.RAW_TS,
                pl.lit("buy").alias("raw_event"),
                pl.when(known_price & known_quantity)
                .then(pl.col("Price") * pl.col("Quantity"))
                .alias(C.RAW_VALUE),
                pl.when(known_quantity).then(pl.col("Quantity")).alias(C.RAW_QUANTITY),
                (~known_price).alias("_no_price"),
            )
        )
    both = pl.concat(frames, how="vertical")
    if options.limit > 0:
        both = limit_sessions(both, options.limit, "SessionID", "_row")
        notes.append(
            f"limit: read the first {options.limit:,} clicks, added the buys of their sessions "
            f"and kept whole sessions up to {options.limit:,} events"
        )
        clicks = clicks.join(both.select("SessionID").unique(), on="SessionID", how="semi")
    is_buy = pl.col("raw_event") == "buy"
    counts = both.select(
        (~is_buy).sum().alias("clicks"),
        is_buy.sum().alias("buys"),
        pl.col("_no_price").sum().alias("no_price"),
        (is_buy & pl.col(C.RAW_QUANTITY).is_null()).sum().alias("no_quantity"),
    ).row(0, named=True)
    notes.append(f"{counts['clicks']:,} clicks -> click")
    if buys_path is not None:
        notes.append(
            f"{counts['buys']:,} buys -> purchase, all kept; value = price x quantity, null for "
            f"{counts['no_price']:,} buys with price 0 and {counts['no_quantity']:,} with "
            "quantity 0 (unknown in the published data)"
        )
    events = both.select(
        pl.col("SessionID").alias(C.RAW_USER),
        pl.col("ItemID").alias(C.RAW_ITEM),
        C.RAW_TS,
        pl.col("raw_event").replace_strict(EVENT_MAPPING).alias(C.RAW_EVENT),
        "raw_event",
        pl.col("SessionID").alias(C.RAW_SESSION),
        C.RAW_VALUE,
        C.RAW_QUANTITY,
    )
    items, item_notes = _items(clicks)
    notes += item_notes
    return Imported(
        events=_finish(events, notes),
        items=items if items.height else None,  # an empty table would not load
        horizon_days=1,
        event_mapping=EVENT_MAPPING if buys_path is not None else {"click": "click"},
        notes=notes,
        source_files=sources,
    )


def _items(clicks: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Per item its most frequent known Category (ties: the smallest), and what kind it is."""
    known = pl.col("Category").is_not_null() & (pl.col("Category") != "0")
    unknown = clicks.height - clicks.select(known.sum()).item()
    number = pl.col("category").cast(pl.Int64, strict=False)
    items = (
        clicks.filter(known)
        .group_by("ItemID", "Category")
        .len()
        .group_by("ItemID")
        .agg(pl.col("Category").sort_by(["len", "Category"], descending=[True, False]).first())
        .select(
            pl.col("ItemID").alias(C.RAW_ITEM),
            pl.col("Category").alias("category"),
        )
        .with_columns(
            pl.when(pl.col("category") == "S")
            .then(pl.lit("special_offer"))
            .when(number.is_between(1, 12))
            .then(pl.lit("category"))
            .when(number > 12)
            .then(pl.lit("brand"))
            .otherwise(pl.lit("other"))
            .alias("category_kind"),
        )
        .sort(C.RAW_ITEM)
    )
    n_items = clicks["ItemID"].n_unique()
    kinds = dict(items["category_kind"].value_counts().iter_rows())
    notes = [
        f"items: {items.height:,} of {n_items:,} clicked items have a known Category (the most "
        f"frequent per item; {unknown:,} clicks carry 0 = unknown): "
        + ", ".join(f"{kinds.get(k, 0):,} {k}" for k in ("category", "special_offer", "brand"))
        + " (1-12 are categories, S a special offer, larger numbers brands)"
    ]
    return items, notes


def _finish(events: pl.DataFrame, notes: list[str]) -> pl.DataFrame:
    notes.append(
        "sessions are the users (user_id = session_id = the session id): there are no user ids, "
        "so history-based sources see one session per user"
    )
    return events.sort([C.RAW_USER, C.RAW_TS, C.RAW_ITEM], maintain_order=True)


# --------------------------------------------------------------------------- prepared files


def _read_prepared(paths: list[Path], options: ImportOptions, notes: list[str]) -> Imported:
    scans = []
    for path in paths:
        try:
            header = pl.read_csv(path, separator="\t", n_rows=0)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise DataError(f"cannot read: {first_line(exc)}", file=str(path)) from exc
        check_columns(header, tuple(PREPARED_SCHEMA), path)
        scan = pl.scan_csv(
            path, separator="\t", infer_schema=False, schema_overrides=PREPARED_SCHEMA
        ).select(*PREPARED_SCHEMA, pl.lit(path.name).alias("_file"))
        scans.append(scan)
    plan = pl.concat(scans, how="vertical")
    if options.limit > 0:
        plan = plan.head(options.limit)
    frame = _collect(plan, paths)
    bad = frame.filter(pl.col("Time").is_null() | pl.col("SessionId").is_null())
    if bad.height:
        raise DataError(
            f"{bad.height:,} rows without a session or time",
            file=", ".join(str(p) for p in paths),
            column="Time",
            fix="drop those rows",
        )
    if options.limit > 0:
        frame = limit_sessions(frame.with_row_index("_row"), options.limit, "SessionId", "_row")
        notes.append(
            f"limit: read the first {options.limit:,} rows and kept the whole sessions among them"
        )
    if len(paths) > 1:
        per_file = dict(frame.group_by("_file").len().iter_rows())
        shared = (
            frame.group_by("SessionId")
            .agg(pl.col("_file").n_unique())
            .filter(pl.col("_file") > 1)
            .height
        )
        notes.append(
            "read "
            + " and ".join(f"{p.name} ({per_file.get(p.name, 0):,} clicks)" for p in paths)
            + f"; {shared:,} sessions occur in more than one file"
        )
    millis = (pl.col("Time") * 1000).round().cast(pl.Int64)
    events = frame.select(
        pl.col("SessionId").alias(C.RAW_USER),
        pl.col("ItemId").alias(C.RAW_ITEM),
        pl.from_epoch(millis, time_unit="ms").alias(C.RAW_TS),
        pl.lit("click").alias(C.RAW_EVENT),
        pl.lit("click").alias("raw_event"),
        pl.col("SessionId").alias(C.RAW_SESSION),
    )
    notes.append(f"{events.height:,} clicks -> click; Time is epoch seconds")
    return Imported(
        events=_finish(events, notes),
        items=None,
        horizon_days=1,
        event_mapping={"click": "click"},
        notes=notes,
        source_files=[str(p) for p in paths],
    )


def _collect(frame: pl.LazyFrame, paths: Path | list[Path]) -> pl.DataFrame:
    return collect(frame, paths, fix="check that this is the YOOCHOOSE file as published")
