"""Bad input data gets a clear error (exit 65) or a warning naming the fix, never a silent
wrong answer or a traceback: ids, timestamps, degenerate logs, attribute tables, CSV lines."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from gbrank import columns as C
from gbrank.cli import app
from gbrank.config import DataConfig, load_config
from gbrank.data.io import load_events
from gbrank.errors import EXIT_DATA, DataError, GbrankWarning
from gbrank.pipeline import load_inputs

T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC, in seconds
runner = CliRunner()


def shop_frame(users: int = 30, items: int = 20, days: int = 20, seed: int = 0) -> pl.DataFrame:
    """A small raw log with every event type, one event per (user, day, k)."""
    rows = []
    for u in range(users):
        for d in range(days):
            for k in range(2):
                item = (u * 7 + d * 3 + k + seed) % items
                event = ("view", "click", "cart", "purchase")[(u + d + k) % 4]
                rows.append((u, item, T0 + d * 86_400 + u * 60 + k, event))
    return pl.DataFrame(
        rows, schema=["user_id", "item_id", "ts", "event"], orient="row"
    ).with_columns(pl.col("user_id").cast(pl.Int64), pl.col("item_id").cast(pl.Int64))


def data_error(events: Path, **cfg: object) -> DataError:
    with pytest.raises(DataError) as info:
        load_events(DataConfig(events=str(events), **cfg))  # type: ignore[arg-type]
    assert info.value.exit_code == EXIT_DATA
    return info.value


# --------------------------------------------------------------------------- ids


def test_csv_ids_with_leading_zeros_stay_distinct(tmp_path: Path) -> None:
    """Guards: '00123' and '123' were inferred as one integer id and merged."""
    path = tmp_path / "e.csv"
    path.write_text(
        "user_id,item_id,ts,event\n"
        f"1,00123,{T0},view\n"  # line 2
        f"1,123,{T0 + 1},click\n"  # line 3: another item
        f"007,0123,{T0 + 2},view\n"  # line 4: user '007' is not user '7'
        f"7,123,{T0 + 3},view\n"
    )
    loaded = load_events(DataConfig(events=str(path)))
    assert loaded.summary.items == 3 and loaded.summary.users == 3
    assert loaded.items.table["raw"].to_list() == ["00123", "0123", "123"]
    # Integers on request, refusing the ids that would merge.
    err = data_error(path, id_dtype="int")
    assert "merge" in str(err) and "'00123' = '0123' = '123'" in str(err)
    assert "id_dtype" in str(err)


def test_canonical_integer_ids_stay_integers(tmp_path: Path) -> None:
    """Ids that are all integers written one way only are stored as integers (fast, and no
    merge is possible); one id with a leading zero keeps the whole column text."""
    path = tmp_path / "e.csv"
    path.write_text(
        "user_id,item_id,ts,event,session_id\n"
        f"10,2,{T0},view,5\n"
        f"9,10,{T0 + 1},click,05\n"  # session '05' is not session '5'
    )
    loaded = load_events(DataConfig(events=str(path)))
    assert loaded.users.dtype == pl.Int64 and loaded.users.table["raw"].to_list() == [9, 10]
    assert loaded.events[C.SESSION].n_unique() == 2


def test_id_column_numeric_then_text_loads(tmp_path: Path) -> None:
    """Guards: ids numeric for 20k rows and then 'SKU-...' failed with Polars' own advice."""
    lines = ["user_id,item_id,ts,event"]
    lines += [f"{i % 50},{i % 400},{T0 + i},view" for i in range(20_500)]
    lines += [f"1,SKU-{i},{T0 + 30_000 + i},click" for i in range(3)]
    path = tmp_path / "e.csv"
    path.write_text("\n".join(lines) + "\n")
    loaded = load_events(DataConfig(events=str(path)))
    assert loaded.summary.items == 403
    assert {"SKU-0", "SKU-1", "SKU-2"} <= set(loaded.items.table["raw"].to_list())
    err = data_error(path, id_dtype="int")
    assert "3 ids are not integers" in str(err) and "line 20,502" in str(err)


def test_float_ids_in_parquet_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pl.DataFrame({"user_id": [1], "item_id": [1.5], "ts": [T0], "event": ["view"]}).write_parquet(
        path
    )
    err = data_error(path)
    assert err.column == "item_id" and "dtype" in str(err)


# --------------------------------------------------------------------------- timestamps


def test_datetimes_before_1990_are_refused(tmp_path: Path) -> None:
    """Guards: a damaged Parquet file with dates in 1915 passed validation."""
    frame = shop_frame().with_columns(pl.from_epoch("ts", time_unit="s").alias("ts"))
    damaged = frame.with_columns(
        pl.when(pl.int_range(pl.len()) % 97 == 5)
        .then(pl.lit(datetime(1915, 3, 1)))
        .otherwise(pl.col("ts"))
        .alias("ts")
    )
    path = tmp_path / "e.parquet"
    damaged.write_parquet(path)
    err = data_error(path)
    n_bad = (damaged["ts"] < datetime(1990, 1, 1)).sum()
    assert f"{n_bad:,} of {damaged.height:,} timestamps are before 1990-01-01" in str(err)
    assert "1915-03-01" in str(err) and "row 6" in str(err)
    result = runner.invoke(app, ["data", "validate", "--events", str(path)])
    assert result.exit_code == EXIT_DATA and "before 1990" in result.output


def test_parquet_with_damaged_blocks_never_passes_silently(tmp_path: Path) -> None:
    """Guards: 4 KB flipped mid-file passed validation with a 39,516-day span from 1915; other
    flips made Polars panic (exit 1). Now: exit 65, or a log whose every timestamp is sane."""
    import random

    from gbrank.data.synth import SynthConfig, synthesize

    synthesize(SynthConfig(users=3000, items=600, days=30, seed=4), tmp_path / "shop")
    data = (tmp_path / "shop" / "events.parquet").read_bytes()
    rng = random.Random(0)
    codes = []
    for trial in range(12):
        offset = rng.randrange(len(data) // 10, len(data) * 9 // 10)
        damaged = bytearray(data)
        damaged[offset : offset + 4096] = rng.randbytes(4096)
        path = tmp_path / f"bad{trial}.parquet"
        path.write_bytes(bytes(damaged))
        result = runner.invoke(app, ["data", "validate", "--events", str(path)])
        assert result.exit_code in (0, EXIT_DATA), (offset, result.output)
        assert "Traceback" not in result.output
        if result.exit_code == 0:
            ts = load_events(DataConfig(events=str(path))).events[C.TS]
            assert ts.min() >= datetime(2020, 1, 1) and ts.max() <= datetime.now()  # type: ignore[operator]
        codes.append(result.exit_code)
    assert codes.count(EXIT_DATA) >= 6  # most damage is caught (seen: 9 of 12; the rest hit
    # value or id pages, whose garbage a file without checksums cannot tell from data)


def test_rows_far_from_the_bulk_are_flagged(tmp_path: Path) -> None:
    """A few in-range but far-off dates (damage that lands after 1990) give a warning."""
    frame = shop_frame().with_columns(pl.from_epoch("ts", time_unit="s").alias("ts"))
    far = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 3)
        .then(pl.lit(datetime(1999, 1, 1)))
        .otherwise(pl.col("ts"))
        .alias("ts")
    )
    path = tmp_path / "e.parquet"
    far.write_parquet(path)
    with pytest.warns(GbrankWarning, match="1 of 1,200 timestamps lie far outside the bulk"):
        load_events(DataConfig(events=str(path)))
    frame.write_parquet(path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", GbrankWarning)
        load_events(DataConfig(events=str(path)))  # the clean log: no warning


@pytest.mark.parametrize(
    ("scale", "unit", "phrase"),
    [
        (1, "ms", 'they look like seconds: set data.ts_unit = "s"'),  # 1970, 0-day span before
        (1000, "s", 'they look like milliseconds: set data.ts_unit = "ms"'),  # year 55971 crash
        (10**6, "ms", 'they look like microseconds: set data.ts_unit = "us"'),
    ],
)
def test_forced_unit_that_does_not_fit_is_refused(
    tmp_path: Path, scale: int, unit: str, phrase: str
) -> None:
    path = tmp_path / "e.csv"
    shop_frame().with_columns(pl.col("ts") * scale).write_csv(path)
    err = data_error(path, ts_unit=unit)
    assert phrase in str(err) and "line 2" in str(err)
    result = runner.invoke(app, ["data", "validate", "--events", str(path), "--ts-unit", unit])
    assert result.exit_code == EXIT_DATA, result.output
    assert "Traceback" not in result.output


def test_nanosecond_and_microsecond_epochs_are_detected(tmp_path: Path) -> None:
    for scale in (10**6, 10**9):
        path = tmp_path / f"e{scale}.parquet"
        shop_frame().with_columns(pl.col("ts") * scale).write_parquet(path)
        ts = load_events(DataConfig(events=str(path))).events[C.TS]
        assert ts.min() == datetime(2023, 11, 14, 22, 13, 20)


# --------------------------------------------------------------------------- degenerate logs


def _inputs(tmp_path: Path, frame: pl.DataFrame, **extra: str) -> None:
    path = tmp_path / "e.parquet"
    frame.write_parquet(path)
    overrides = [f'data.events="{path}"', "folds.horizon_days=5"]
    overrides += [f'data.{k}="{v}"' for k, v in extra.items()]
    load_inputs(load_config(None, overrides))


def test_views_only_is_refused_before_training(tmp_path: Path) -> None:
    """Guards: a log of views only trained for 42 s and printed all-nan tables."""
    with pytest.raises(DataError, match="no click, cart or purchase events: nothing to learn"):
        _inputs(tmp_path, shop_frame().with_columns(pl.lit("view").alias("event")))
    frame = shop_frame().with_columns(pl.lit("view").alias("event"))
    frame.write_parquet(tmp_path / "v.parquet")
    result = runner.invoke(
        app, ["generate", "--events", str(tmp_path / "v.parquet"), "-w", str(tmp_path / "ws")]
    )
    assert result.exit_code == EXIT_DATA and "[data.event_map]" in result.output
    assert not (tmp_path / "ws").exists()  # refused before anything was written


def test_single_user_is_refused(tmp_path: Path) -> None:
    """Guards: a single user gave 'valid 0' and a model trained on nothing."""
    with pytest.raises(DataError, match="1 user with events in its label window"):
        _inputs(tmp_path, shop_frame().filter(pl.col("user_id") == 3))


def test_a_target_without_positives_warns(tmp_path: Path) -> None:
    no_purchase = shop_frame().with_columns(
        pl.col("event").replace({"purchase": "cart"}).alias("event")
    )
    with pytest.warns(GbrankWarning, match="no purchase event in its label window"):
        _inputs(tmp_path, no_purchase)


# --------------------------------------------------------------------------- attribute tables


def test_attribute_tables_that_do_not_match_are_refused(tmp_path: Path) -> None:
    """Guards: an items table whose ids match no event was silently dropped."""
    frame = shop_frame()
    items = tmp_path / "items.csv"
    pl.DataFrame({"item_id": [f"SKU-{i}" for i in range(20)], "category": ["a"] * 20}).write_csv(
        items
    )
    with pytest.raises(DataError, match="items table's ids do not match") as info:
        _inputs(tmp_path, frame, items=str(items))
    assert "'SKU-0'" in str(info.value) and "data.columns.item_id" in str(info.value)
    # 14 of 20 ids match, and 14 of the 20 event items have a row: a warning.
    ids = [str(i) for i in range(14)] + [f"SKU-{i}" for i in range(6)]
    pl.DataFrame({"item_id": ids, "category": ["a"] * 20}).write_csv(items)
    with pytest.warns(GbrankWarning, match="match only in part"):
        _inputs(tmp_path, frame, items=str(items))
    # A table of the 14 items only (attributes known for some items): fine, and a catalogue
    # larger than the events is fine too; validate reports the coverage.
    users = tmp_path / "users.parquet"
    pl.DataFrame({"user_id": list(range(30)), "segment": ["x"] * 30}).write_parquet(users)
    config = tmp_path / "g.toml"
    config.write_text(
        f'[data]\nevents = "{tmp_path / "e.parquet"}"\nusers = "{users}"\n'
        "[folds]\nhorizon_days = 5\n"
    )
    result = runner.invoke(app, ["data", "validate", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "users       30 ids match: 100.0% of the 30 users in the events have a row" in (
        result.output
    )


# --------------------------------------------------------------------------- CSV lines


def test_ragged_csv_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    good = [f"{u},{u % 5},{T0 + u},view" for u in range(30)]
    path.write_text(
        "user_id,item_id,ts,event\n"
        + "\n".join(good[:10])
        + "\n1,2,3,view,extra\n"  # line 12
        + "\n".join(good[10:20])
        + "\n4,5\n"  # line 23: too few fields
        + "\n".join(good[20:])
        + "\n"
    )
    err = data_error(path)
    assert str(path) in str(err)
    assert "line 12 has 5" in str(err) and "line 23 has 2" in str(err)
    assert "header's 4" in str(err) and "infer_schema_length" not in str(err)


def test_mixed_type_columns_name_the_line(tmp_path: Path) -> None:
    """Guards: a numeric column holding text after 20k rows failed with Polars' advice."""
    lines = ["user_id,item_id,ts,event,value"]
    lines += [f"{i % 50},{i % 400},{T0 + i},view,{i % 7}" for i in range(20_500)]
    lines.append(f"1,1,{T0 + 30_000},click,twelve")  # line 20,502
    lines.append(f"1,1,{T0 + 30_001},click,{T0}x")  # line 20,503
    path = tmp_path / "e.csv"
    path.write_text("\n".join(lines) + "\n")
    err = data_error(path)
    assert err.column == "value" and "2 non-numeric values" in str(err)
    assert "line 20,502" in str(err) and "'twelve'" in str(err)
    assert "infer_schema_length" not in str(err)
    lines[-2:] = ["1,1,soon,click,1"]  # a timestamp that is not one
    path.write_text("\n".join(lines) + "\n")
    err = data_error(path)
    assert err.column == "ts" and "'soon'" in str(err) and "line 20,502" in str(err)


def test_future_timestamps_still_refused_and_allowed_on_request(tmp_path: Path) -> None:
    later = datetime.now() + timedelta(days=30)
    frame = shop_frame().with_columns(pl.from_epoch("ts", time_unit="s").alias("ts"))
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(later)).otherwise("ts").alias("ts")
    )
    path = tmp_path / "e.parquet"
    frame.write_parquet(path)
    assert "in the future" in str(data_error(path))
    with pytest.warns(GbrankWarning):  # allowed, but far from the bulk of the log
        load_events(DataConfig(events=str(path), allow_future=True))
