"""UCI Online Retail and Online Retail II: invoice lines of a UK online wholesaler.

Every invoice line of a known customer becomes a ``purchase`` of the line's ``StockCode`` by
the customer, at the invoice time, with ``session_id`` = the invoice number, ``quantity`` and
``value`` = quantity x unit price. Cancellations, returns/adjustments (quantity or price <= 0)
and lines without a customer are dropped and counted. Reads the CSV exports and the published
workbooks (``.xlsx``, every sheet; needs the ``excel`` extra).

Example:
    >>> from gbrank.data.importers import import_dataset
    >>> import_dataset("online-retail", "online_retail_II.xlsx", "retail")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from polars.datatypes import DataType

from gbrank import columns as C
from gbrank.data.importers import Imported, ImportOptions, first_line
from gbrank.errors import ConfigError, DataError, MissingInputError

# Names the dataset is published under, tried in this order when SRC is a folder.
FILE_NAMES = (
    "online_retail_II.xlsx",
    "Online Retail.xlsx",
    "online_retail_II.csv",
    "online_retail.csv",
    "Online Retail.csv",
    "OnlineRetail.csv",
    "data.csv",
)
EXCEL_SUFFIXES = (".xlsx", ".xlsm", ".xlsb", ".xls", ".ods")
# Internal name -> accepted spellings (UCI Online Retail first, then Online Retail II).
COLUMNS: dict[str, tuple[str, ...]] = {
    "invoice": ("InvoiceNo", "Invoice"),
    "stock_code": ("StockCode",),
    "description": ("Description",),
    "quantity": ("Quantity",),
    "date": ("InvoiceDate",),
    "price": ("UnitPrice", "Price"),
    "customer": ("CustomerID", "Customer ID"),
    "country": ("Country",),
}
OPTIONAL = ("description", "country")
# "12/1/2010 8:26" (UCI CSV), "2010-12-01 08:26:00" (Online Retail II CSV, and workbook
# datetimes as the Excel reader renders them), with or without seconds / fractions.
DATE_FORMATS = (
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M:%S%.f",
)
RAW_EVENT = "invoice_line"
PolarsDataType = DataType | type[DataType]
EXCEL_HINT = 'pip install "gbrank[excel]"'


def read(src: Path, options: ImportOptions) -> Imported:
    path = _source_file(src)
    raw, notes = _read_raw(path)
    lines = _normalise(raw, path)

    cancelled = pl.col("invoice").str.starts_with("C")
    nonpositive = ~cancelled & (
        pl.col("quantity").is_null()
        | pl.col("price").is_null()
        | (pl.col("quantity") <= 0)
        | (pl.col("price") <= 0)
    )
    anonymous = ~cancelled & ~nonpositive & pl.col("customer").is_null()
    flagged = lines.with_columns(
        cancelled.alias("_cancelled"),
        nonpositive.alias("_nonpositive"),
        anonymous.alias("_anonymous"),
    )
    counts = flagged.select(
        pl.len().alias("lines"),
        pl.col("_cancelled").sum().alias("cancelled"),
        pl.col("_nonpositive").sum().alias("nonpositive"),
        pl.col("_anonymous").sum().alias("anonymous"),
    ).row(0, named=True)
    kept = flagged.filter(~pl.col("_cancelled") & ~pl.col("_nonpositive") & ~pl.col("_anonymous"))
    n_kept = kept.height
    if options.limit > 0 and n_kept > options.limit:
        kept = kept.head(options.limit)
        notes.append(f"limit: kept the first {options.limit:,} of {n_kept:,} purchase lines")

    notes += [
        f"{counts['cancelled']:,} of {counts['lines']:,} lines are cancellations (invoice "
        "starting with 'C') and were dropped",
        f"{counts['nonpositive']:,} further lines with quantity <= 0 or unit price <= 0 (returns, "
        "stock adjustments, free items) were dropped",
        f"{counts['anonymous']:,} further lines without a customer id were dropped (they cannot "
        "be attributed to a user)",
        f"{n_kept:,} lines kept as purchases: user = customer id, item = StockCode, session = "
        "invoice number, value = quantity x unit price",
    ]
    events = kept.select(
        pl.col("customer").alias(C.RAW_USER),
        pl.col("stock_code").alias(C.RAW_ITEM),
        pl.col("ts").alias(C.RAW_TS),
        pl.lit("purchase").alias(C.RAW_EVENT),
        pl.lit(RAW_EVENT).alias("raw_event"),
        pl.col("invoice").cast(pl.Int64, strict=False).alias(C.RAW_SESSION),
        (pl.col("quantity") * pl.col("price")).alias(C.RAW_VALUE),
        pl.col("quantity").alias(C.RAW_QUANTITY),
    )
    no_session = events[C.RAW_SESSION].null_count()
    if no_session:
        notes.append(f"{no_session:,} kept lines have a non-numeric invoice number: null session")
    service = kept.filter(~pl.col("stock_code").str.contains(r"\d")).height
    if service:
        notes.append(
            f"{service:,} kept lines have a StockCode without a digit (postage, manual entries, "
            "fees such as POST, M, DOT); they are kept as items"
        )
    events = events.sort([C.RAW_USER, C.RAW_TS, C.RAW_SESSION, C.RAW_ITEM], maintain_order=True)

    items = _items(kept)
    users = _users(kept) if "country" in kept.columns else None
    notes.append(
        f"items: {items.height:,} stock codes with their most frequent description and median "
        "unit price"
    )
    if users is not None:
        notes.append(f"users: {users.height:,} customers with their (most frequent) country")
    return Imported(
        events=events,
        items=items,
        users=users,
        horizon_days=14,
        event_mapping={RAW_EVENT: "purchase"},
        notes=notes,
        source_files=[str(path)],
    )


def _source_file(src: Path) -> Path:
    if src.is_file():
        return src
    if not src.is_dir():
        raise MissingInputError(f"online-retail input not found: {src}")
    for name in FILE_NAMES:
        if (src / name).is_file():
            return src / name
    found = sorted(
        p for p in src.iterdir() if p.is_file() and p.suffix.lower() in (".csv", *EXCEL_SUFFIXES)
    )
    if len(found) == 1:
        return found[0]
    raise MissingInputError(
        f"online-retail: no single .csv or .xlsx file in folder {src} (found {len(found)}; "
        f"looked for {', '.join(FILE_NAMES)}); pass the file itself"
    )


def _resolve(columns: list[str], path: Path, where: str = "") -> dict[str, str]:
    """Internal name -> the file's column name; DataError naming what is missing."""
    found: dict[str, str] = {}
    missing = []
    for name, spellings in COLUMNS.items():
        hit = next((s for s in spellings if s in columns), None)
        if hit is not None:
            found[name] = hit
        elif name not in OPTIONAL:
            missing.append(" or ".join(spellings))
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(missing)}{where}; found {columns}",
            file=str(path),
            column=missing[0].split(" or ")[0],
            fix="pass the Online Retail (UCI) or Online Retail II file as published",
        )
    return found


def _select(frame: pl.LazyFrame, found: dict[str, str]) -> pl.LazyFrame:
    exprs = [pl.col(found[n]).cast(pl.String).alias(n) for n in COLUMNS if n in found]
    exprs += [pl.lit(None, dtype=pl.String).alias(n) for n in OPTIONAL if n not in found]
    return frame.select(exprs)


def _read_raw(path: Path) -> tuple[pl.LazyFrame, list[str]]:
    """Every column as text, renamed to the internal names; plus notes on what was read."""
    if path.suffix.lower() not in EXCEL_SUFFIXES:
        # The UCI export is Latin-1 in places; a lossy decode keeps the rest of the line.
        scan = pl.scan_csv(path, infer_schema=False, encoding="utf8-lossy")
        try:
            names = scan.collect_schema().names()
        except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, OSError) as exc:
            raise DataError(f"cannot read as CSV: {first_line(exc)}", file=str(path)) from exc
        return _select(scan, _resolve(names, path)), []
    try:
        import fastexcel  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"reading {path.name} needs the optional Excel reader (fastexcel); install it with\n"
            f"{EXCEL_HINT}"
        ) from exc
    try:
        sheets = pl.read_excel(path, sheet_id=0, engine="calamine", infer_schema_length=0)
    except Exception as exc:  # fastexcel raises its own exception types
        raise DataError(f"cannot read the workbook: {first_line(exc)}", file=str(path)) from exc
    frames = []
    for sheet, frame in sheets.items():
        if frame.width == 0 or frame.height == 0:
            continue
        found = _resolve(frame.columns, path, where=f" in sheet '{sheet}'")
        frames.append(_select(frame.lazy(), found))
    if not frames:
        raise DataError("the workbook has no rows", file=str(path))
    notes = []
    if len(sheets) > 1:
        notes.append(f"read {len(frames)} sheets: {', '.join(repr(s) for s in sheets)}")
    return pl.concat(frames, how="vertical"), notes


def _numeric(name: str, dtype: PolarsDataType) -> pl.Expr:
    text = pl.col(name).str.strip_chars()
    return pl.when(text == "").then(None).otherwise(text).cast(dtype, strict=False)


def _normalise(raw: pl.LazyFrame, path: Path) -> pl.DataFrame:
    """Parse numbers and dates; DataError with examples when a column does not parse."""
    date = pl.col("date").str.strip_chars()
    parsed_date = pl.coalesce(
        [date.str.to_datetime(f, time_unit="ms", strict=False) for f in DATE_FORMATS]
    )
    plan = raw.select(
        pl.col("invoice").str.strip_chars(),
        pl.col("stock_code").str.strip_chars(),
        pl.col("description").str.strip_chars(),
        _numeric("quantity", pl.Float64).alias("quantity"),
        _numeric("price", pl.Float64).alias("price"),
        # Online Retail II writes customer ids as floats ("13085.0").
        _numeric("customer", pl.Float64).cast(pl.Int64).alias("customer"),
        parsed_date.alias("ts"),
        pl.col("country").str.strip_chars(),
        pl.col("quantity").alias("_quantity"),
        pl.col("price").alias("_price"),
        pl.col("customer").alias("_customer"),
        pl.col("date").alias("_date"),
    )
    try:
        lines = plan.collect()
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"cannot read: {first_line(exc)}", file=str(path)) from exc
    checks = (
        ("quantity", "_quantity", COLUMNS["quantity"], "numbers"),
        ("price", "_price", COLUMNS["price"], "numbers"),
        ("customer", "_customer", COLUMNS["customer"], "integer customer ids"),
        ("ts", "_date", COLUMNS["date"], "dates like 12/1/2010 8:26 or 2010-12-01 08:26:00"),
    )
    for col, text, spellings, what in checks:
        bad = lines.filter(
            pl.col(col).is_null()
            & pl.col(text).is_not_null()
            & (pl.col(text).str.strip_chars() != "")
        )
        if bad.height:
            raise DataError(
                f"{bad.height:,} values that are not {what}",
                file=str(path),
                column="/".join(spellings),
                values=bad[text].head(5).to_list(),
                fix="check that this is the Online Retail file as published",
            )
    missing_date = lines.filter(pl.col("ts").is_null()).height
    if missing_date:
        raise DataError(
            f"{missing_date:,} lines without an invoice date",
            file=str(path),
            column="InvoiceDate",
            fix="drop those lines",
        )
    return lines.drop("_quantity", "_price", "_customer", "_date")


def _most_frequent(frame: pl.DataFrame, key: str, value: str) -> pl.DataFrame:
    """Per ``key``, its most frequent non-empty ``value`` (ties: the smallest value)."""
    return (
        frame.filter(pl.col(value).is_not_null() & (pl.col(value) != ""))
        .group_by(key, value)
        .len()
        .sort([key, "len", value], descending=[False, True, False])
        .unique(key, keep="first", maintain_order=True)
        .select(key, value)
    )


def _items(kept: pl.DataFrame) -> pl.DataFrame:
    lines = kept.rename({"stock_code": C.RAW_ITEM})
    price = lines.group_by(C.RAW_ITEM).agg(pl.col("price").median())
    description = _most_frequent(lines, C.RAW_ITEM, "description")
    return (
        price.join(description, on=C.RAW_ITEM, how="left")
        .select(C.RAW_ITEM, "description", "price")
        .sort(C.RAW_ITEM)
    )


def _users(kept: pl.DataFrame) -> pl.DataFrame:
    lines = kept.rename({"customer": C.RAW_USER})
    ids = lines.select(C.RAW_USER).unique()
    country = _most_frequent(lines, C.RAW_USER, "country")
    return ids.join(country, on=C.RAW_USER, how="left").sort(C.RAW_USER)
