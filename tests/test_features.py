"""Features and labels against brute-force computations; no leakage past as_of."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gbrank import columns as C
from gbrank.features.builders import build_features, feature_columns
from gbrank.features.labels import attach_labels, build_labels, relevant_items

AS_OF = datetime(2024, 2, 1)
START = AS_OF - timedelta(days=40)
SCHEMA = {C.USER: pl.Int32, C.ITEM: pl.Int32, C.TS: pl.Datetime("ms"), C.EVENT: pl.Int8}


def random_events(seed: int, n: int = 4000, users: int = 60, items: int = 40) -> pl.DataFrame:
    """Events on both sides of AS_OF (40 days before, 10 after)."""
    rng = np.random.default_rng(seed)
    seconds = rng.integers(0, 50 * 86400, n)
    return pl.DataFrame(
        {
            C.USER: rng.integers(0, users, n),
            C.ITEM: rng.zipf(1.6, n) % items,
            C.TS: [START + timedelta(seconds=int(s)) for s in seconds],
            C.EVENT: rng.choice(4, n, p=[0.6, 0.25, 0.1, 0.05]),
        },
        schema=SCHEMA,
    ).sort(C.TS)


def items_table(items: int = 40) -> pl.DataFrame:
    rng = np.random.default_rng(99)
    return pl.DataFrame(
        {
            C.ITEM: np.arange(items, dtype=np.int32),
            "category": rng.integers(0, 5, items).astype(np.int32),
            "price": rng.uniform(1, 100, items),
        }
    )


def candidates_for(events: pl.DataFrame, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    users = events[C.USER].unique().to_numpy()
    pairs = pl.DataFrame(
        {C.USER: np.repeat(users, 8), C.ITEM: rng.integers(0, 40, len(users) * 8)},
        schema={C.USER: pl.Int32, C.ITEM: pl.Int32},
    ).unique()
    return pairs.with_columns(
        pl.lit(1.0, dtype=pl.Float32).alias("pop_score"),
        pl.lit(1, dtype=pl.Int32).alias("pop_rank"),
    ).sort(C.USER, C.ITEM)


def brute_force_row(events: pl.DataFrame, items: pl.DataFrame, user: int, item: int) -> dict:
    """Every feature of one (user, item) from plain Python over events before AS_OF."""
    past = [r for r in events.iter_rows(named=True) if r[C.TS] < AS_OF]
    mine = [r for r in past if r[C.USER] == user]
    its = [r for r in past if r[C.ITEM] == item]
    pair = [r for r in mine if r[C.ITEM] == item]
    price = dict(zip(items[C.ITEM].to_list(), items["price"].to_list(), strict=True))
    category = dict(zip(items[C.ITEM].to_list(), items["category"].to_list(), strict=True))
    days = lambda ts: (AS_OF - ts).total_seconds() / 86400  # noqa: E731
    out: dict = {}
    for code, name in enumerate(C.EVENT_TYPES):
        out[f"u_n_{name}"] = sum(r[C.EVENT] == code for r in mine)
        out[f"i_n_{name}"] = sum(r[C.EVENT] == code for r in its)
        out[f"ui_n_{name}"] = sum(r[C.EVENT] == code for r in pair)
        for w in (7, 28):
            out[f"i_n_{name}_{w}d"] = sum(
                r[C.EVENT] == code and r[C.TS] >= AS_OF - timedelta(days=w) for r in its
            )
    out["u_n_events"] = len(mine)
    out["u_n_items"] = len({r[C.ITEM] for r in mine})
    out["u_active_days"] = len({r[C.TS].date() for r in mine})
    out["u_days_since_last"] = days(max(r[C.TS] for r in mine)) if mine else None
    out["u_mean_price"] = float(np.mean([price[r[C.ITEM]] for r in mine])) if mine else None
    out["i_n_users"] = len({r[C.USER] for r in its})
    out["i_days_since_first"] = days(min(r[C.TS] for r in its)) if its else None
    out["i_days_since_last"] = days(max(r[C.TS] for r in its)) if its else None
    out["i_purchase_rate"] = sum(r[C.EVENT] == 3 for r in its) / (len(its) + 20.0) if its else None
    out["ui_days_since_last"] = days(max(r[C.TS] for r in pair)) if pair else None
    bought = [r[C.TS] for r in pair if r[C.EVENT] == 3]
    out["ui_days_since_last_purchase"] = days(max(bought)) if bought else None
    out["i_price"] = price[item]
    out["x_price_ratio"] = price[item] / out["u_mean_price"] if mine else None
    in_cat = [r for r in mine if category[r[C.ITEM]] == category[item]]
    out["x_cat_share"] = len(in_cat) / len(mine) if mine else 0.0
    out["x_cat_n_purchase"] = sum(r[C.EVENT] == 3 for r in in_cat)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_features_match_brute_force(seed: int) -> None:
    events = random_events(seed)
    items = items_table()
    cands = candidates_for(events, seed)
    history = events.filter(pl.col(C.TS) < AS_OF)
    frame = build_features(cands, history, AS_OF, items)
    assert frame.height == cands.height  # no row lost or duplicated
    assert frame.select(C.USER, C.ITEM).is_unique().all()
    rng = np.random.default_rng(seed)
    for idx in rng.choice(frame.height, 25, replace=False):
        row = frame.row(int(idx), named=True)
        expected = brute_force_row(events, items, row[C.USER], row[C.ITEM])
        for name, value in expected.items():
            got = row[name]
            if value is None:
                assert got is None, (name, row[C.USER], row[C.ITEM])
            else:
                assert got == pytest.approx(value, rel=1e-4, abs=1e-4), name


def test_no_leakage_from_events_at_or_after_as_of() -> None:
    events = random_events(3)
    items = items_table()
    cands = candidates_for(events)
    base = build_features(cands, events, AS_OF, items)  # the full log, on purpose
    # Change every event at or after as_of and add new ones exactly at as_of.
    later = events.filter(pl.col(C.TS) >= AS_OF)
    shuffled = later.with_columns(
        (pl.col(C.ITEM) + 1) % 40, pl.lit(3, dtype=pl.Int8).alias(C.EVENT)
    )
    extra = pl.DataFrame(
        {C.USER: [0, 1, 2], C.ITEM: [0, 1, 2], C.TS: [AS_OF] * 3, C.EVENT: [3, 3, 3]},
        schema=SCHEMA,
    )
    changed = pl.concat([events.filter(pl.col(C.TS) < AS_OF), shuffled, extra])
    assert_frame_equal(base, build_features(cands, changed, AS_OF, items))


def test_features_without_item_table_use_event_prices() -> None:
    events = random_events(4).with_columns(
        pl.when(pl.col(C.EVENT) == 3)
        .then(pl.lit(10.0))
        .otherwise(None)
        .cast(pl.Float32)
        .alias(C.VALUE),
        pl.lit(2.0, dtype=pl.Float32).alias(C.QUANTITY),
    )
    frame = build_features(candidates_for(events), events, AS_OF, None)
    assert "x_cat_share" not in frame.columns
    prices = frame["i_price"].drop_nulls().unique().to_list()
    assert prices == [5.0]  # value / quantity
    assert set(feature_columns(frame)).isdisjoint({C.USER, C.ITEM})


def test_labels_match_brute_force() -> None:
    events = random_events(5)
    window = events.filter((pl.col(C.TS) >= AS_OF) & (pl.col(C.TS) < AS_OF + timedelta(days=7)))
    labels = build_labels(window)
    deepest: dict[tuple[int, int], int] = {}
    for r in window.iter_rows(named=True):
        key = (r[C.USER], r[C.ITEM])
        deepest[key] = max(deepest.get(key, -1), r[C.EVENT])
    assert labels.height == len(deepest)
    for row in labels.iter_rows(named=True):
        d = deepest[(row[C.USER], row[C.ITEM])]
        assert row[C.GRADE] == d + 1
        assert row[C.label_col("click")] == int(d >= 1)
        assert row[C.label_col("cart")] == int(d >= 2)
        assert row[C.label_col("purchase")] == int(d >= 3)
    purchases = relevant_items(labels, "purchase")
    assert purchases.height == sum(d == 3 for d in deepest.values())
    joined = attach_labels(candidates_for(events), labels)
    assert joined[C.GRADE].null_count() == 0
