"""RetailRocket e-commerce dataset: ``events.csv`` plus optional item properties.

``events.csv`` holds ``timestamp`` (epoch milliseconds), ``visitorid``, ``event`` (``view``,
``addtocart``, ``transaction``), ``itemid`` and ``transactionid``. The item property snapshots
(``item_properties_part1.csv``, ``item_properties_part2.csv``: ``timestamp,itemid,property,
value``) give each item's ``categoryid`` and ``available`` flag; ``category_tree.csv``
(``categoryid,parentid``) gives the parent of a category. See docs/datasets/retailrocket.md.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gbrank import columns as C
from gbrank.data.importers import Imported, ImportOptions, check_columns, find_file
from gbrank.errors import DataError

EVENT_MAP = {"view": "view", "addtocart": "cart", "transaction": "purchase"}
EVENTS_FILE = "events.csv"
PROPERTY_FILES = ("item_properties_part1.csv", "item_properties_part2.csv")
TREE_FILE = "category_tree.csv"

EVENTS_SCHEMA = {
    "timestamp": pl.Int64,
    "visitorid": pl.Int64,
    "event": pl.String,
    "itemid": pl.Int64,
    "transactionid": pl.Int64,
}
PROPERTIES_SCHEMA = {
    "timestamp": pl.Int64,
    "itemid": pl.Int64,
    "property": pl.String,
    "value": pl.String,
}
TREE_SCHEMA = {"categoryid": pl.Int64, "parentid": pl.Int64}


def _header(path: Path, needed: tuple[str, ...]) -> None:
    try:
        head = pl.read_csv(path, n_rows=0)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"cannot read as CSV: {exc}", file=str(path)) from exc
    check_columns(head, needed, path)


def _fail(path: Path, exc: Exception) -> DataError:
    return DataError(
        f"cannot parse the file: {exc}".split("\n")[0].rstrip("."),
        file=str(path),
        fix="check that this is the RetailRocket file of that name, unmodified",
    )


def read_events(path: Path, limit: int) -> tuple[pl.DataFrame, list[str]]:
    needed = ("timestamp", "visitorid", "event", "itemid")
    _header(path, needed)
    try:
        raw = pl.read_csv(
            path,
            columns=list(needed),
            schema_overrides={k: v for k, v in EVENTS_SCHEMA.items() if k in needed},
            n_rows=limit or None,
        )
    except pl.exceptions.PolarsError as exc:
        raise _fail(path, exc) from exc
    notes: list[str] = []
    missing = pl.any_horizontal(pl.all().is_null())
    n_missing = raw.select(missing.sum()).item()
    complete = raw.filter(~missing) if n_missing else raw
    if n_missing:
        notes.append(
            f"dropped {n_missing:,} rows of {path.name} with a missing timestamp, visitor, "
            "event or item"
        )
    unknown = complete.filter(~pl.col("event").is_in(list(EVENT_MAP)))["event"].unique().sort()
    if unknown.len():
        raise DataError(
            f"unknown event names (expected {', '.join(EVENT_MAP)})",
            file=str(path),
            column="event",
            values=unknown.to_list(),
            fix="check that this is RetailRocket's events.csv",
        )
    events = complete.select(
        pl.col("visitorid").alias(C.RAW_USER),
        pl.col("itemid").alias(C.RAW_ITEM),
        pl.from_epoch("timestamp", time_unit="ms").alias(C.RAW_TS),
        pl.col("event").replace_strict(EVENT_MAP, return_dtype=pl.String).alias(C.RAW_EVENT),
        pl.col("event").alias("raw_event"),
    )
    return events, notes


def _latest(props: pl.LazyFrame, name: str) -> pl.LazyFrame:
    """Per item, the value of property ``name`` in its most recent snapshot."""
    return (
        props.filter(pl.col("property") == name)
        .group_by("itemid")
        .agg(pl.col("value").sort_by("timestamp").last().alias(name))
    )


def read_items(
    folder: Path, event_items: pl.Series
) -> tuple[pl.DataFrame | None, list[str], list[str]]:
    """Items with ``category``, ``parent_category`` and ``available``, from the snapshots."""
    files = [folder / name for name in PROPERTY_FILES if (folder / name).exists()]
    if not files:
        return None, [f"no {' / '.join(PROPERTY_FILES)} next to {EVENTS_FILE}: no item table"], []
    for f in files:
        _header(f, tuple(PROPERTIES_SCHEMA))
    seen = pl.LazyFrame({"itemid": event_items.unique()})
    props = (
        pl.scan_csv(files, schema_overrides=PROPERTIES_SCHEMA)
        .select(list(PROPERTIES_SCHEMA))
        .filter(pl.col("property").is_in(["categoryid", "available"]))
        .join(seen, on="itemid", how="semi")
    )
    try:
        category, available = pl.collect_all(
            [_latest(props, "categoryid"), _latest(props, "available")]
        )
    except pl.exceptions.PolarsError as exc:
        raise _fail(files[0], exc) from exc
    items = (
        category.join(available, on="itemid", how="full", coalesce=True)
        .select(
            pl.col("itemid").alias(C.RAW_ITEM),
            pl.col("categoryid").cast(pl.Int64, strict=False).alias("category"),
            pl.col("available").cast(pl.Int8, strict=False).alias("available"),
        )
        .sort(C.RAW_ITEM)
    )
    n_items = event_items.n_unique()
    n_cat = items["category"].is_not_null().sum()
    notes = [
        f"category from the latest 'categoryid' snapshot for {n_cat:,} of the {n_items:,} "
        "items in the events; the others have none"
    ]
    sources = [str(f) for f in files]
    tree_path = folder / TREE_FILE
    if tree_path.exists():
        _header(tree_path, tuple(TREE_SCHEMA))
        try:
            tree = pl.read_csv(tree_path, columns=list(TREE_SCHEMA), schema_overrides=TREE_SCHEMA)
        except pl.exceptions.PolarsError as exc:
            raise _fail(tree_path, exc) from exc
        tree = tree.unique("categoryid", keep="first").rename(
            {"categoryid": "category", "parentid": "parent_category"}
        )
        items = items.join(tree, on="category", how="left").select(
            C.RAW_ITEM, "category", "parent_category", "available"
        )
        sources.append(str(tree_path))
    else:
        notes.append(f"no {TREE_FILE}: items have no parent_category")
    return items, notes, sources


def read(src: Path, options: ImportOptions) -> Imported:
    path = find_file(src, (EVENTS_FILE,), "RetailRocket events")
    events, notes = read_events(path, options.limit)
    items, item_notes, item_files = read_items(path.parent, events[C.RAW_ITEM])
    return Imported(
        events=events,
        items=items,
        horizon_days=7,
        event_mapping=dict(EVENT_MAP),
        notes=notes + item_notes,
        source_files=[str(path), *item_files],
    )
