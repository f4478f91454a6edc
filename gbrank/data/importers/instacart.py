"""Instacart Market Basket Analysis: grocery orders on a relative, per-user clock.

Every order line is a ``purchase`` of ``product_id`` by ``user_id`` with ``session_id`` =
``order_id``. The data has no absolute time, only each order's ``days_since_prior_order``
and ``order_hour_of_day``; the importer builds a clock per user: order n happens on day
``sum(days_since_prior_order of orders 2..n)`` (the first order on day 0) after 2017-01-01,
at its hour, and the lines of a basket follow their ``add_to_cart_order`` one second apart.
Every user's clock starts at their first order, so calendar time is only approximated.

Reads the published folder (``orders.csv`` + ``order_products__prior.csv`` /
``order_products__train.csv``, optional ``products.csv``, ``aisles.csv``,
``departments.csv``) or one flat file that already joins orders and order lines.

Example:
    >>> from gbrank.data.importers import import_dataset
    >>> import_dataset("instacart", "instacart-market-basket-analysis", "ic")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import polars as pl
from polars.datatypes import DataType

from gbrank import columns as C
from gbrank.data.importers import Imported, ImportOptions, check_columns, collect, first_line
from gbrank.errors import DataError, MissingInputError

ORDERS = "orders.csv"
LINE_FILES = ("order_products__prior.csv", "order_products__train.csv")
PRODUCTS = "products.csv"
AISLES = "aisles.csv"
DEPARTMENTS = "departments.csv"
OFFICIAL = (ORDERS, *LINE_FILES, PRODUCTS, AISLES, DEPARTMENTS)
EPOCH = datetime(2017, 1, 1)
PolarsDataType = DataType | type[DataType]
EVAL_SETS = ("prior", "train")

# Numbers are read as floats where the flat samples write "1.0".
ORDER_SCHEMA = {
    "order_id": pl.Int64,
    "user_id": pl.Int64,
    "order_number": pl.Float64,
    "order_hour_of_day": pl.Float64,
    "days_since_prior_order": pl.Float64,
}
LINE_SCHEMA = {
    "order_id": pl.Int64,
    "product_id": pl.Int64,
    "add_to_cart_order": pl.Float64,
}
OPTIONAL_LINE = {"reordered": pl.Float64}
PRODUCT_SCHEMA = {
    "product_id": pl.Int64,
    "product_name": pl.String,
    "aisle_id": pl.Int64,
    "department_id": pl.Int64,
}
EVENT_MAPPING = {"order": "purchase", "reorder": "purchase"}


def read(src: Path, options: ImportOptions) -> Imported:
    if src.is_file() and src.name in OFFICIAL:
        src = src.parent  # one of the published files: read the whole folder
    if src.is_file():
        return _read_flat(src, options)
    if not src.is_dir():
        raise MissingInputError(f"instacart input not found: {src}")
    return _read_folder(src, options)


def _header(path: Path) -> list[str]:
    try:
        return pl.read_csv(path, n_rows=0).columns
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"cannot read: {first_line(exc)}", file=str(path)) from exc


def _scan(
    path: Path,
    schema: Mapping[str, PolarsDataType],
    optional: Mapping[str, PolarsDataType] | None = None,
) -> pl.LazyFrame:
    columns = _header(path)
    check_columns(pl.DataFrame(schema={c: pl.String for c in columns}), tuple(schema), path)
    extra: dict[str, PolarsDataType] = {k: v for k, v in (optional or {}).items() if k in columns}
    if "eval_set" in columns:
        extra["eval_set"] = pl.String
    typed: dict[str, PolarsDataType] = {**schema, **extra}
    return pl.scan_csv(path, infer_schema=False, schema_overrides=typed).select(list(typed))


def _clock(orders: pl.LazyFrame) -> pl.LazyFrame:
    """Per order: its day on the user's relative clock (first order = day 0)."""
    day = (
        pl.col("days_since_prior_order")
        .fill_null(0)
        .cum_sum()
        .over("user_id", order_by="order_number")
    )
    return orders.with_columns(day.alias("_day"))


def _events(lines: pl.LazyFrame, has_reordered: bool) -> pl.LazyFrame:
    ts = pl.lit(EPOCH, dtype=pl.Datetime("ms")) + pl.duration(
        days=pl.col("_day").round().cast(pl.Int64),
        hours=pl.col("order_hour_of_day").fill_null(0).cast(pl.Int64),
        seconds=pl.col("add_to_cart_order").fill_null(0).cast(pl.Int64),
    )
    raw = (
        pl.when(pl.col("reordered") == 1).then(pl.lit("reorder")).otherwise(pl.lit("order"))
        if has_reordered
        else pl.lit("order")
    )
    return lines.select(
        pl.col("user_id").alias(C.RAW_USER),
        pl.col("product_id").alias(C.RAW_ITEM),
        ts.cast(pl.Datetime("ms")).alias(C.RAW_TS),
        pl.lit("purchase").alias(C.RAW_EVENT),
        raw.alias("raw_event"),
        pl.col("order_id").alias(C.RAW_SESSION),
    ).sort([C.RAW_USER, C.RAW_TS, C.RAW_ITEM], maintain_order=True)


def _common_notes(events: pl.DataFrame, has_reordered: bool) -> list[str]:
    span = events.select(pl.col(C.RAW_TS).max() - pl.col(C.RAW_TS).min()).item()
    notes = [
        f"{events.height:,} order lines -> purchase in {events[C.RAW_SESSION].n_unique():,} "
        "orders (session_id = order_id)",
        "no absolute time in Instacart: each user's clock starts at their first order on "
        f"{EPOCH:%Y-%m-%d} and advances by days_since_prior_order (capped at 30 in the data); ts = "
        "day + order_hour_of_day hours + add_to_cart_order seconds; users' timelines are "
        f"aligned at their first order (span {span.days} days)",
    ]
    if has_reordered:
        notes.append("raw_event is 'reorder' for products the user bought before, else 'order'")
    return notes


# --------------------------------------------------------------------------- flat file


def _read_flat(path: Path, options: ImportOptions) -> Imported:
    columns = _header(path)
    if "user_id" not in columns and "order_id" in columns and "product_id" in columns:
        raise DataError(
            "order lines without user_id: this file needs orders.csv",
            file=str(path),
            column="user_id",
            fix="pass the folder that holds orders.csv and the order_products files",
        )
    frame = _scan(path, {**ORDER_SCHEMA, **LINE_SCHEMA}, OPTIONAL_LINE)
    notes: list[str] = []
    if "eval_set" in columns:
        frame = frame.filter(pl.col("eval_set").is_in(EVAL_SETS))
    if options.limit > 0:
        frame = frame.head(options.limit)
        notes.append(f"limit: read the first {options.limit:,} order lines")
    lines = _collect(frame, [path])
    _check_nulls(lines, path)
    orders = lines.lazy().select(*ORDER_SCHEMA).unique("order_id", keep="first")
    clocked = _collect(_clock(orders), [path]).select("order_id", "_day")
    has_reordered = "reordered" in columns
    events = _collect(
        _events(lines.lazy().join(clocked.lazy(), on="order_id", how="left"), has_reordered),
        [path],
    )
    notes += _common_notes(events, has_reordered)
    notes.append(
        "flat file: the clock uses the orders present in the file; orders missing from a sample "
        "shift that user's later days"
    )
    return Imported(
        events=events,
        horizon_days=14,
        event_mapping=EVENT_MAPPING if has_reordered else {"order": "purchase"},
        notes=notes,
        source_files=[str(path)],
    )


def _check_nulls(lines: pl.DataFrame, path: Path) -> None:
    for col in ("order_id", "user_id", "product_id", "order_number"):
        n = lines[col].null_count()
        if n:
            raise DataError(
                f"{n:,} rows without {col}", file=str(path), column=col, fix="drop those rows"
            )


# --------------------------------------------------------------------------- folder


def _read_folder(folder: Path, options: ImportOptions) -> Imported:
    orders_path = folder / ORDERS
    if not orders_path.is_file():
        raise MissingInputError(
            f"instacart: {ORDERS} not found in {folder}; pass the folder of the published "
            "files or a flat file with order and product columns"
        )
    line_paths = [folder / name for name in LINE_FILES if (folder / name).is_file()]
    if not line_paths:
        raise MissingInputError(
            f"instacart: none of {', '.join(LINE_FILES)} in {folder}; they hold the products "
            "of each order"
        )
    orders_scan = _scan(orders_path, ORDER_SCHEMA, {"eval_set": pl.String})
    orders_all = _collect(_clock(orders_scan), [orders_path])
    notes: list[str] = []
    if "eval_set" in orders_all.columns:
        counts = dict(orders_all.group_by("eval_set").len().iter_rows())
        orders = orders_all.filter(pl.col("eval_set").is_in(EVAL_SETS))
        test = counts.get("test", 0)
        if test:
            notes.append(
                f"{test:,} test orders have no products in the published data and are not used"
            )
    else:
        orders = orders_all

    scans = [_scan(path, LINE_SCHEMA, OPTIONAL_LINE) for path in line_paths]
    has_reordered = all("reordered" in scan.collect_schema().names() for scan in scans)
    keep = [*LINE_SCHEMA, "reordered"] if has_reordered else list(LINE_SCHEMA)
    scans = [scan.select(keep) for scan in scans]
    lines = pl.concat(scans, how="vertical")
    if options.limit > 0:
        lines = lines.head(options.limit)
        notes.append(f"limit: read the first {options.limit:,} order lines")
    lines_df = _collect(lines, line_paths)
    joined = lines_df.join(orders.select(*ORDER_SCHEMA, "_day"), on="order_id", how="inner")
    orphans = lines_df.height - joined.height
    if orphans:
        notes.append(
            f"{orphans:,} order lines whose order_id is not a prior/train order in {ORDERS} "
            "were dropped"
        )
    if joined.is_empty():
        raise DataError(
            f"no order line matches an order of {ORDERS}",
            file=", ".join(str(p) for p in line_paths),
            column="order_id",
            fix="check that the files come from the same download",
        )
    events = _collect(_events(joined.lazy(), has_reordered), line_paths)
    notes.append("read " + " and ".join(p.name for p in line_paths))
    notes += _common_notes(events, has_reordered)
    items, item_notes, item_sources = _items(folder)
    notes += item_notes
    return Imported(
        events=events,
        items=items,
        horizon_days=14,
        event_mapping=EVENT_MAPPING if has_reordered else {"order": "purchase"},
        notes=notes,
        source_files=[str(orders_path), *(str(p) for p in line_paths), *item_sources],
    )


def _items(folder: Path) -> tuple[pl.DataFrame | None, list[str], list[str]]:
    path = folder / PRODUCTS
    if not path.is_file():
        return None, [f"{PRODUCTS} not found: no item attributes"], []
    sources = [str(path)]
    items = (
        _collect(_scan(path, PRODUCT_SCHEMA), [path])
        .select(
            pl.col("product_id").alias(C.RAW_ITEM),
            pl.col("aisle_id").alias("category"),
            pl.col("department_id").alias("department"),
            "product_name",
        )
        .unique(C.RAW_ITEM, keep="first", maintain_order=True)
    )
    for name, key, target in (
        (AISLES, "aisle_id", "category"),
        (DEPARTMENTS, "department_id", "department"),
    ):
        names_path = folder / name
        if not names_path.is_file():
            continue
        label = key.removesuffix("_id")
        table = _collect(_scan(names_path, {key: pl.Int64, label: pl.String}), [names_path]).unique(
            key, keep="first"
        )
        items = items.join(
            table.rename({key: target, label: f"{label}_name"}), on=target, how="left"
        )
        sources.append(str(names_path))
    if items.is_empty():  # an empty table would not load
        return None, [f"{PRODUCTS} has no rows: no item attributes"], sources
    notes = [
        f"items: {items.height:,} products with category = aisle_id and department = "
        "department_id" + (" (and their names)" if len(sources) > 1 else "")
    ]
    return items.sort(C.RAW_ITEM), notes, sources


def _collect(frame: pl.LazyFrame, paths: Path | list[Path]) -> pl.DataFrame:
    return collect(frame, paths, fix="check that these are the Instacart files as published")
