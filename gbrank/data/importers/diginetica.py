"""DIGINETICA (CIKM Cup 2016, personalized e-commerce search): item views and purchases.

``train-item-views.csv`` rows become ``view`` events and ``train-purchases.csv`` rows
``purchase`` events, at ``eventdate`` + ``timeframe`` milliseconds, with ``session_id`` =
``sessionId``. Logged-in sessions belong to their user (``user_id`` = ``"u<userId>"``);
anonymous sessions are users of their own (``"s<sessionId>"``). ``product-categories.csv`` and
``products.csv``, when present, give the items' category and price (``2 ** pricelog2``).

Example:
    >>> from gbrank.data.importers import import_dataset
    >>> import_dataset("diginetica", "dataset-train-diginetica", "digi")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl
from polars.datatypes import DataType

from gbrank import columns as C
from gbrank.data.importers import Imported, ImportOptions, check_columns, collect, first_line
from gbrank.errors import DataError, MissingInputError

VIEWS = "train-item-views.csv"
PURCHASES = "train-purchases.csv"
CATEGORIES = "product-categories.csv"
PRODUCTS = "products.csv"
SEP = ";"
PolarsDataType = DataType | type[DataType]

VIEW_SCHEMA = {
    "sessionId": pl.Int64,
    "userId": pl.Int64,
    "itemId": pl.Int64,
    "timeframe": pl.Int64,
    "eventdate": pl.String,
}
PURCHASE_SCHEMA = {
    "sessionId": pl.Int64,
    "userId": pl.Int64,
    "timeframe": pl.Int64,
    "eventdate": pl.String,
    "ordernumber": pl.Int64,
    "itemId": pl.Int64,
}
CATEGORY_SCHEMA = {"itemId": pl.Int64, "categoryId": pl.Int64}
PRODUCT_SCHEMA = {"itemId": pl.Int64, "pricelog2": pl.Float64, "product.name.tokens": pl.String}
EVENT_MAPPING = {"item_view": "view", "purchase": "purchase"}


def read(src: Path, options: ImportOptions) -> Imported:
    folder = _folder(src)
    views_path = folder / VIEWS
    if not views_path.is_file():
        raise MissingInputError(
            f"diginetica: {VIEWS} not found in {folder}; pass the folder that holds the "
            "CIKM Cup 2016 training files"
        )
    notes: list[str] = []
    sources = [str(views_path)]
    views_scan = _scan(views_path, VIEW_SCHEMA)
    if options.limit > 0:
        views_scan = views_scan.head(options.limit)
    views = _collect(views_scan.select(_events("item_view")), views_path).with_row_index("_row")

    purchases_path = folder / PURCHASES
    if purchases_path.is_file():
        sources.append(str(purchases_path))
        purchases_scan = _scan(purchases_path, PURCHASE_SCHEMA)
        if options.limit > 0:  # only the sessions of the views read
            purchases_scan = purchases_scan.join(
                views.lazy().select(pl.col("sessionId").unique()), on="sessionId", how="semi"
            )
        purchases = _collect(purchases_scan.select(_events("purchase")), purchases_path).select(
            pl.lit(None, dtype=views.schema["_row"]).alias("_row"), pl.all()
        )
    else:
        purchases = views.clear()
        notes.append(f"{PURCHASES} not found: views only")

    both = pl.concat([views, purchases], how="vertical")
    bad = both.filter(pl.col(C.RAW_TS).is_null())
    if bad.height:
        raise DataError(
            f"{bad.height:,} rows without a valid eventdate (YYYY-MM-DD) or timeframe",
            file=str(views_path if views[C.RAW_TS].null_count() else purchases_path),
            column="eventdate",
            values=bad["eventdate"].head(5).to_list(),
            fix="check that this is the DIGINETICA file as published",
        )
    if options.limit > 0:
        both = limit_sessions(both, options.limit, "sessionId", "_row")
        notes.append(
            f"limit: read the first {options.limit:,} views, added the purchases of their "
            f"sessions and kept whole sessions up to {options.limit:,} events"
        )
    counts = dict(both.group_by("raw_event").len().iter_rows())
    # A session's user: its userId wherever one is given (views or purchases), else the session.
    session_user = both.group_by("sessionId").agg(pl.col("userId").drop_nulls().min())
    anonymous = session_user["userId"].null_count()
    user_id = (
        pl.when(pl.col("userId").is_not_null())
        .then(pl.lit("u") + pl.col("userId").cast(pl.String))
        .otherwise(pl.lit("s") + pl.col("sessionId").cast(pl.String))
        .alias(C.RAW_USER)
    )
    events = (
        both.drop("userId")
        .join(session_user, on="sessionId", how="left")
        .select(
            user_id,
            pl.col("itemId").alias(C.RAW_ITEM),
            C.RAW_TS,
            C.RAW_EVENT,
            "raw_event",
            pl.col("sessionId").alias(C.RAW_SESSION),
        )
        .sort([C.RAW_USER, C.RAW_TS, C.RAW_SESSION, C.RAW_ITEM], maintain_order=True)
    )
    notes += [
        f"{counts.get('item_view', 0):,} item views -> view, {counts.get('purchase', 0):,} "
        "purchases -> purchase; "
        "ts = eventdate + timeframe milliseconds",
        f"{session_user.height:,} sessions, {anonymous:,} of them anonymous (no userId): an "
        "anonymous session is a user of its own, user_id 's<sessionId>'; logged-in sessions "
        "belong to user_id 'u<userId>'",
    ]
    items, item_notes, item_sources = _items(folder)
    notes += item_notes
    sources += item_sources
    return Imported(
        events=events,
        items=items,
        horizon_days=7,
        event_mapping=EVENT_MAPPING,
        notes=notes,
        source_files=sources,
    )


def limit_sessions(frame: pl.DataFrame, limit: int, session: str, order: str) -> pl.DataFrame:
    """Whole sessions, taken in the order of their first ``order`` value, up to ``limit`` rows
    (the first ``limit`` rows when even the first session is longer)."""
    sizes = (
        frame.group_by(session)
        .agg(pl.len().alias("_n"), pl.col(order).min().alias("_first"))
        .sort("_first", nulls_last=True)
        .filter(pl.col("_n").cum_sum() <= limit)
    )
    if sizes.is_empty():
        return frame.sort(order, nulls_last=True).head(limit)
    return frame.join(sizes.select(session), on=session, how="semi")


def _folder(src: Path) -> Path:
    if src.is_dir():
        return src
    if src.is_file():  # one of the files: the others are next to it
        return src.parent
    raise MissingInputError(f"diginetica input not found: {src}")


def _scan(path: Path, schema: Mapping[str, PolarsDataType]) -> pl.LazyFrame:
    """The file with ``schema``'s columns typed; DataError when a column is missing."""
    try:
        header = pl.read_csv(path, separator=SEP, n_rows=0)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"cannot read: {first_line(exc)}", file=str(path)) from exc
    check_columns(header, tuple(schema), path)
    return pl.scan_csv(
        path, separator=SEP, infer_schema=False, schema_overrides=schema, null_values=["NA"]
    ).select(list(schema))


def _events(raw: str) -> list[pl.Expr]:
    day = pl.col("eventdate").str.strip_chars().str.to_date("%Y-%m-%d", strict=False)
    ts = day.cast(pl.Datetime("ms")) + pl.duration(milliseconds=pl.col("timeframe"))
    return [
        pl.col("sessionId"),
        pl.col("userId"),
        pl.col("itemId"),
        ts.alias(C.RAW_TS),
        pl.lit(EVENT_MAPPING[raw]).alias(C.RAW_EVENT),
        pl.lit(raw).alias("raw_event"),
        pl.col("eventdate"),
    ]


def _items(folder: Path) -> tuple[pl.DataFrame | None, list[str], list[str]]:
    frames = []
    notes: list[str] = []
    sources: list[str] = []
    path = folder / CATEGORIES
    if path.is_file():
        sources.append(str(path))
        cats = _collect(_scan(path, CATEGORY_SCHEMA), path)
        frames.append(
            cats.select(
                pl.col("itemId").alias(C.RAW_ITEM), pl.col("categoryId").alias("category")
            ).unique(C.RAW_ITEM, keep="first", maintain_order=True)
        )
        notes.append(f"items: {frames[-1].height:,} categories from {CATEGORIES}")
    path = folder / PRODUCTS
    if path.is_file():
        sources.append(str(path))
        products = _collect(_scan(path, PRODUCT_SCHEMA), path)
        frames.append(
            products.select(
                pl.col("itemId").alias(C.RAW_ITEM),
                (pl.lit(2.0) ** pl.col("pricelog2")).alias("price"),
                pl.col("product.name.tokens").alias("name_tokens"),
            ).unique(C.RAW_ITEM, keep="first", maintain_order=True)
        )
        notes.append(f"items: {frames[-1].height:,} prices (2 ** pricelog2) from {PRODUCTS}")
    if not frames:
        return None, [f"no {CATEGORIES} or {PRODUCTS}: no item attributes"], sources
    items = frames[0]
    for other in frames[1:]:
        items = items.join(other, on=C.RAW_ITEM, how="full", coalesce=True)
    if items.is_empty():  # an empty table would not load
        return None, [*notes, "no item attributes"], sources
    return items.sort(C.RAW_ITEM), notes, sources


def _collect(frame: pl.LazyFrame, paths: Path | list[Path]) -> pl.DataFrame:
    return collect(
        frame,
        paths,
        fix="check that this is the DIGINETICA file as published (semicolon-separated)",
    )
