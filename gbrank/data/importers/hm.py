"""H&M Personalized Fashion Recommendations: transactions plus article and customer tables.

``transactions_train.csv`` (``t_dat``, ``customer_id``, ``article_id``, ``price``,
``sales_channel_id``) holds purchases only, one row per unit, dated to the day. Optional
``articles.csv`` and ``customers.csv`` in the same folder give item and user attributes.
Article ids are written zero-padded ("0108775015") and read as integers; customer ids are
64-character hashes and stay strings. See docs/datasets/hm.md.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gbrank import columns as C
from gbrank.data.importers import Imported, ImportOptions, check_columns, find_file
from gbrank.errors import DataError

TRANSACTIONS = "transactions_train.csv"
ARTICLES = "articles.csv"
CUSTOMERS = "customers.csv"
RAW_EVENT = "transaction"
EVENT_MAP = {RAW_EVENT: "purchase"}

TX_COLUMNS = ("t_dat", "customer_id", "article_id", "price")
# articles.csv column -> items column (product_type_no is the category)
ARTICLE_ATTRS = {
    "product_type_no": "category",
    "product_code": "product_code",
    "product_group_name": "product_group_name",
    "department_no": "department_no",
    "index_group_no": "index_group_no",
    "garment_group_no": "garment_group_no",
    "colour_group_code": "colour_group_code",
}
ARTICLE_INTS = (
    "product_type_no",
    "product_code",
    "department_no",
    "index_group_no",
    "garment_group_no",
    "colour_group_code",
)
CUSTOMER_COLUMNS = (
    "customer_id",
    "FN",
    "Active",
    "club_member_status",
    "fashion_news_frequency",
    "age",
)


def _header(path: Path, needed: tuple[str, ...]) -> None:
    try:
        head = pl.read_csv(path, n_rows=0)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"cannot read as CSV: {exc}", file=str(path)) from exc
    check_columns(head, needed, path)


def _read_csv(path: Path, needed: tuple[str, ...], **kwargs: object) -> pl.DataFrame:
    _header(path, needed)
    try:
        return pl.read_csv(path, columns=list(needed), **kwargs)  # type: ignore[arg-type]
    except pl.exceptions.PolarsError as exc:
        raise DataError(
            f"cannot parse the file: {exc}".split("\n")[0].rstrip("."),
            file=str(path),
            fix="check that this is the H&M file of that name, unmodified",
        ) from exc


def read_transactions(path: Path, limit: int) -> tuple[pl.DataFrame, list[str]]:
    _header(path, TX_COLUMNS)
    customer = pl.col("customer_id").str.strip_chars()
    # The full file has 31 million rows: parse lazily so only the result is held in memory.
    lf = pl.scan_csv(
        path,
        schema_overrides={
            "t_dat": pl.String,
            "customer_id": pl.String,
            "article_id": pl.String,
            "price": pl.Float64,
        },
        n_rows=limit or None,
    ).select(
        pl.when(customer != "").then(customer).alias(C.RAW_USER),
        pl.col("article_id").str.strip_chars().cast(pl.Int64, strict=False).alias(C.RAW_ITEM),
        pl.col("t_dat").str.to_date("%Y-%m-%d", strict=False).alias("day"),
        pl.col("price"),
    )
    try:
        parsed = lf.collect(engine="streaming")
    except pl.exceptions.PolarsError as exc:
        raise DataError(
            f"cannot parse the file: {exc}".split("\n")[0].rstrip("."),
            file=str(path),
            fix="check that this is H&M's transactions_train.csv, unmodified",
        ) from exc
    notes: list[str] = []
    if parsed.height and parsed["day"].null_count() == parsed.height:
        raise DataError(
            "no date in the YYYY-MM-DD form",
            file=str(path),
            column="t_dat",
            values=pl.read_csv(path, n_rows=5, columns=["t_dat"], infer_schema=False)["t_dat"],
            fix="pass H&M's transactions_train.csv, unmodified",
        )
    for col, what in (
        (C.RAW_USER, "no customer id"),
        (C.RAW_ITEM, "no or a non-numeric article id"),
        ("day", "no or an unreadable date"),
    ):
        n = parsed[col].null_count()
        if n:
            notes.append(f"dropped {n:,} rows with {what}")
    complete = parsed.drop_nulls([C.RAW_USER, C.RAW_ITEM, "day"]) if notes else parsed
    events = complete.select(
        C.RAW_USER,
        C.RAW_ITEM,
        pl.col("day").cast(pl.Datetime("ms")).alias(C.RAW_TS),
        pl.lit("purchase").alias(C.RAW_EVENT),
        pl.lit(RAW_EVENT).alias("raw_event"),
        pl.col("price").cast(pl.Float64).alias(C.RAW_VALUE),
        pl.lit(1.0).alias(C.RAW_QUANTITY),
    )
    # Rows per distinct (customer, article, day), counted on a 64-bit hash to save memory.
    keys = events.select(pl.struct(C.RAW_USER, C.RAW_ITEM, C.RAW_TS).hash().n_unique())
    repeats = events.height - int(keys.item())
    notes.append("timestamps have day resolution (t_dat at 00:00): events of one day are unordered")
    if repeats:
        notes.append(
            f"{repeats:,} rows repeat a (customer, article, day) of another row: each unit "
            "bought is its own row; kept, quantity 1 each"
        )
    notes.append("every row is a purchase: graded labels reduce to binary purchase labels")
    return events, notes


def read_articles(path: Path, seen: pl.Series) -> tuple[pl.DataFrame, list[str]]:
    raw = _read_csv(
        path,
        ("article_id", *ARTICLE_ATTRS),
        schema_overrides={"article_id": pl.String, **dict.fromkeys(ARTICLE_INTS, pl.Int64)},
    )
    items = raw.select(
        pl.col("article_id").str.strip_chars().cast(pl.Int64, strict=False).alias(C.RAW_ITEM),
        *(pl.col(src).alias(dst) for src, dst in ARTICLE_ATTRS.items()),
    )
    notes = []
    bad = items[C.RAW_ITEM].null_count()
    if bad:
        notes.append(f"dropped {bad:,} rows of {path.name} with no numeric article id")
    items = items.drop_nulls(C.RAW_ITEM).unique(C.RAW_ITEM, keep="first").sort(C.RAW_ITEM)
    kept = items.join(seen.unique().to_frame(C.RAW_ITEM), on=C.RAW_ITEM, how="semi")
    if kept.height < items.height:
        notes.append(
            f"kept {kept.height:,} of {items.height:,} articles (the others are never bought "
            "in the transactions read)"
        )
    return kept, notes


def read_customers(path: Path, seen: pl.Series) -> tuple[pl.DataFrame, list[str]]:
    raw = _read_csv(
        path,
        CUSTOMER_COLUMNS,
        schema_overrides={
            "customer_id": pl.String,
            "FN": pl.Float64,
            "Active": pl.Float64,
            "club_member_status": pl.String,
            "fashion_news_frequency": pl.String,
            "age": pl.Float64,
        },
    )
    users = (
        raw.select(
            pl.col("customer_id").alias(C.RAW_USER),
            # FN and Active are 1 or empty in the file: empty means 0.
            pl.col("FN").fill_null(0).cast(pl.Int8).alias("fn"),
            pl.col("Active").fill_null(0).cast(pl.Int8).alias("active"),
            pl.col("club_member_status"),
            # The file spells "no news" both NONE and None.
            pl.col("fashion_news_frequency").str.to_uppercase().alias("fashion_news_frequency"),
            pl.col("age").cast(pl.Int64),
        )
        .drop_nulls(C.RAW_USER)
        .unique(C.RAW_USER, keep="first")
        .sort(C.RAW_USER)
    )
    kept = users.join(seen.unique().to_frame(C.RAW_USER), on=C.RAW_USER, how="semi")
    notes = ["customers: postal_code dropped; empty FN / Active read as 0"]
    if kept.height < users.height:
        notes.append(
            f"kept {kept.height:,} of {users.height:,} customers (the others never buy in "
            "the transactions read)"
        )
    return kept, notes


def read(src: Path, options: ImportOptions) -> Imported:
    path = find_file(src, (TRANSACTIONS,), "H&M transactions")
    events, notes = read_transactions(path, options.limit)
    files = [str(path)]
    items = users = None
    if (path.parent / ARTICLES).exists():
        items, more = read_articles(path.parent / ARTICLES, events[C.RAW_ITEM])
        notes += more
        files.append(str(path.parent / ARTICLES))
    else:
        notes.append(f"no {ARTICLES} next to {path.name}: no item table")
    if (path.parent / CUSTOMERS).exists():
        users, more = read_customers(path.parent / CUSTOMERS, events[C.RAW_USER])
        notes += more
        files.append(str(path.parent / CUSTOMERS))
    else:
        notes.append(f"no {CUSTOMERS} next to {path.name}: no user table")
    return Imported(
        events=events,
        items=items,
        users=users,
        horizon_days=7,
        event_mapping=dict(EVENT_MAP),
        notes=notes,
        source_files=files,
    )
