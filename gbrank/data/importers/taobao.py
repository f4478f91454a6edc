"""Taobao UserBehavior (Alibaba): ``UserBehavior.csv``, five columns and no header.

Columns: user id, item id, category id, behaviour (``pv``, ``fav``, ``cart``, ``buy``) and an
epoch timestamp in seconds. The documented period is 2017-11-25 to 2017-12-03 in China
Standard Time (UTC+8); the rows outside it come from wrong clocks and are dropped. The full
file has about 100 million rows, so it is scanned lazily and collected with the streaming
engine. See docs/datasets/taobao.md.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gbrank import columns as C
from gbrank.data.importers import Imported, ImportOptions, find_file
from gbrank.errors import DataError

# pv is a view of the item's page; fav (adding to favourites) is an expression of intent
# like adding to the cart, so both fav and cart become cart.
EVENT_MAP = {"pv": "view", "fav": "cart", "cart": "cart", "buy": "purchase"}
FILES = ("UserBehavior.csv",)
SCHEMA = {
    "user_id": pl.Int64,
    "item_id": pl.Int64,
    "category_id": pl.Int64,
    "behavior": pl.String,
    "timestamp": pl.Int64,
}
# [2017-11-25 00:00, 2017-12-04 00:00) at UTC+8, as epoch seconds.
PERIOD = (1_511_539_200, 1_512_316_800)
PERIOD_TEXT = "2017-11-25 .. 2017-12-03 (UTC+8)"


def _has_header(path: Path) -> bool:
    """Whether the first line is a header (the published file has none; some copies do)."""
    with open(path, "rb") as fh:
        first = fh.readline().decode("utf-8", errors="replace").strip()
    fields = first.split(",")
    if len(fields) != len(SCHEMA):
        raise DataError(
            f"expected {len(SCHEMA)} comma-separated fields (user, item, category, behaviour, "
            f"timestamp), found {len(fields)} in the first line",
            file=str(path),
            values=[first[:80]],
            fix="pass Taobao's UserBehavior.csv",
        )
    return not fields[0].lstrip("-").isdigit()


def _scan(path: Path, limit: int) -> tuple[pl.LazyFrame, bool]:
    header = _has_header(path)
    lf = pl.scan_csv(
        path,
        has_header=False,
        skip_rows=1 if header else 0,
        schema=SCHEMA,
        n_rows=limit or None,
    )
    return lf, header


def read(src: Path, options: ImportOptions) -> Imported:
    path = find_file(src, FILES, "Taobao user behaviour")
    raw, header = _scan(path, options.limit)
    in_period = pl.col("timestamp").is_between(PERIOD[0], PERIOD[1], closed="left")
    complete = pl.all_horizontal(pl.col(c).is_not_null() for c in SCHEMA)
    kept = raw.filter(complete & in_period)
    counts = raw.select(
        pl.len().alias("rows"),
        (~complete).sum().alias("incomplete"),
        (complete & ~in_period).sum().alias("outside"),
    )
    frame_lf = kept.select(
        pl.col("user_id").alias(C.RAW_USER),
        pl.col("item_id").alias(C.RAW_ITEM),
        pl.from_epoch("timestamp", time_unit="s").cast(pl.Datetime("ms")).alias(C.RAW_TS),
        pl.col("behavior")
        .replace_strict(EVENT_MAP, default=None, return_dtype=pl.String)
        .alias(C.RAW_EVENT),
        pl.col("behavior").alias("raw_event"),
    )
    items_lf = (
        kept.group_by("item_id")
        .agg(pl.col("category_id").sort_by("timestamp").last().alias("category"))
        .rename({"item_id": C.RAW_ITEM})
        .sort(C.RAW_ITEM)
    )
    try:
        events, items, counts_df = pl.collect_all([frame_lf, items_lf, counts], engine="streaming")
    except pl.exceptions.PolarsError as exc:
        raise DataError(
            f"cannot parse the file: {exc}".split("\n")[0].rstrip("."),
            file=str(path),
            fix="pass Taobao's UserBehavior.csv: user, item, category, behaviour, timestamp",
        ) from exc
    unknown = events.filter(pl.col(C.RAW_EVENT).is_null())["raw_event"].unique().sort()
    if unknown.len():
        raise DataError(
            f"unknown behaviour types (expected {', '.join(EVENT_MAP)})",
            file=str(path),
            column="behavior (4th field)",
            values=unknown.to_list(),
            fix="check that this is Taobao's UserBehavior.csv",
        )
    stats = counts_df.row(0, named=True)
    notes = []
    if header:
        notes.append(f"skipped a header line in {path.name} (the published file has none)")
    if stats["incomplete"]:
        notes.append(f"dropped {stats['incomplete']:,} rows with an empty field")
    if stats["outside"]:
        notes.append(
            f"dropped {stats['outside']:,} of {stats['rows']:,} rows timestamped outside the "
            f"documented period {PERIOD_TEXT} (wrong clocks)"
        )
    n_fav = events.filter(pl.col("raw_event") == "fav").height
    if n_fav:
        notes.append(f"{n_fav:,} 'fav' (favourite) rows became cart events")
    notes.append("item category = the item's category id in its latest row")
    return Imported(
        events=events,
        items=items,
        horizon_days=1,
        event_mapping=dict(EVENT_MAP),
        notes=notes,
        source_files=[str(path)],
    )
