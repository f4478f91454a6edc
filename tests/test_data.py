"""Loading, validation, vocabularies, folds and config: the data contract."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from gbrank import columns as C
from gbrank.config import ConfigError, DataConfig, dump_toml, load_config
from gbrank.data.io import load_events, repeated_rows
from gbrank.data.split import (
    check_fold,
    data_end,
    history,
    label_window,
    make_folds,
    rolling_folds,
)
from gbrank.data.vocab import Vocab
from gbrank.errors import EXIT_DATA, EXIT_NO_INPUT, DataError, MissingInputError

T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC, in seconds


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- formats


def test_otto_nested_jsonl(tmp_path: Path) -> None:
    rows = [
        {
            "session": 7,
            "events": [
                {"aid": 5, "ts": 1661200010000, "type": "clicks"},  # row 0: click
                {"aid": 6, "ts": 1661200020000, "type": "carts"},  # row 1: cart
            ],
        },
        {
            "session": 9,
            "events": [
                {"aid": 5, "ts": 1661200030000, "type": "orders"},  # row 2: purchase
            ],
        },
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loaded = load_events(DataConfig(events=str(path)))
    ev = loaded.events
    assert ev.height == 3
    assert ev[C.EVENT].to_list() == [1, 2, 3]
    assert loaded.users.decode(ev[C.USER]).to_list() == [7, 7, 9]
    assert loaded.items.decode(ev[C.ITEM]).to_list() == [5, 6, 5]
    assert ev[C.SESSION].to_list() == [7, 7, 9]
    assert ev[C.TS][0] == datetime(2022, 8, 22, 20, 26, 50)
    assert loaded.summary.per_event_type == {"click": 1, "cart": 1, "purchase": 1}


def test_csv_milliseconds_and_mapping(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "log.csv",
        "visitor,product,timestamp,kind\n"
        f"a,x,{T0 * 1000},pv\n"  # row 0: view
        f"b,y,{T0 * 1000 + 5000},buy\n"  # row 1: purchase, 5 s later
        f"a,y,{T0 * 1000 + 9000},cart\n",  # row 2: cart
    )
    cfg = load_config(
        None,
        [
            f'data.events="{path}"',
            'data.columns.user_id="visitor"',
            'data.columns.item_id="product"',
            'data.columns.ts="timestamp"',
            'data.columns.event="kind"',
        ],
    )
    loaded = load_events(cfg.data)
    ev = loaded.events
    assert ev[C.TS].to_list() == [
        datetime(2023, 11, 14, 22, 13, 20),
        datetime(2023, 11, 14, 22, 13, 25),
        datetime(2023, 11, 14, 22, 13, 29),
    ]
    assert ev[C.EVENT].to_list() == [0, 3, 2]
    assert ev.schema[C.USER] == pl.Int32 and ev.schema[C.ITEM] == pl.Int32


def test_parquet_folder_and_glob(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    (folder / "day=1").mkdir(parents=True)
    (folder / "day=2").mkdir()
    base = datetime(2024, 1, 1)
    for i, sub in enumerate(["day=1", "day=2"]):
        pl.DataFrame(
            {
                "user_id": [1, 2],
                "item_id": [10 + i, 20 + i],
                "ts": [base + timedelta(days=i), base + timedelta(days=i, hours=1)],
                "event": ["view", "purchase"],
            }
        ).write_parquet(folder / sub / "part.parquet")
    by_folder = load_events(DataConfig(events=str(folder)))
    by_glob = load_events(DataConfig(events=str(folder / "*" / "*.parquet")))
    assert by_folder.events.height == 4
    assert by_folder.events.equals(by_glob.events)
    assert len(by_folder.summary.files) == 2


def test_seconds_detected_and_unit_forced(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", f"user_id,item_id,ts,event\n1,1,{T0},view\n")
    assert load_events(DataConfig(events=str(path))).events[C.TS][0] == datetime(
        2023, 11, 14, 22, 13, 20
    )
    ms = write_csv(tmp_path / "ms.csv", f"user_id,item_id,ts,event\n1,1,{T0 * 1000},view\n")
    assert load_events(DataConfig(events=str(ms), ts_unit="ms")).events[C.TS][0] == datetime(
        2023, 11, 14, 22, 13, 20
    )
    us = write_csv(tmp_path / "us.csv", f"user_id,item_id,ts,event\n1,1,{T0 * 10**6},view\n")
    for unit in ("us", "auto"):  # microseconds: given, or detected by magnitude
        ev = load_events(DataConfig(events=str(us), ts_unit=unit)).events
        assert ev[C.TS][0] == datetime(2023, 11, 14, 22, 13, 20)


def test_duplicates_keep_and_drop(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "d.csv",
        "user_id,item_id,ts,event\n"
        f"1,1,{T0},view\n"  # row 0
        f"1,1,{T0},view\n"  # row 1: exact duplicate of row 0
        f"1,2,{T0},view\n",  # row 2
    )
    kept = load_events(DataConfig(events=str(path)))
    dropped = load_events(DataConfig(events=str(path), duplicates="drop"))
    assert kept.events.height == 3 and kept.summary.duplicates == 1
    assert dropped.events.height == 2 and dropped.summary.duplicates_dropped == 1


def test_repeated_rows_are_the_rows_a_set_has_seen_before() -> None:
    """Against a brute-force pass over the rows as tuples (nulls equal, NaN equal to NaN, -0.0
    equal to 0.0, as Polars compares them), on a frame with many repeats, and equal to what
    ``unique(maintain_order=True)`` keeps."""
    import math
    import random

    rng = random.Random(7)
    floats = [0.0, -0.0, 1.5, math.nan, None]
    rows = [
        (rng.randrange(4), rng.choice(["a", "b", None]), rng.choice(floats), rng.randrange(3))
        for _ in range(3000)
    ]
    frame = pl.DataFrame(
        rows, schema={"u": pl.Int32, "s": pl.String, "v": pl.Float64, "e": pl.Int8}, orient="row"
    )

    def canonical(row: tuple) -> tuple:
        return tuple(
            ("nan" if isinstance(x, float) and math.isnan(x) else (x + 0.0 if x == 0 else x))
            for x in row
        )

    seen: set[tuple] = set()
    expected = []
    for i, row in enumerate(rows):
        key = canonical(row)
        if key in seen:
            expected.append(i)
        seen.add(key)
    got = repeated_rows(frame)
    assert 0 < len(expected) < len(rows)
    assert got.to_list() == expected
    kept = frame.with_row_index("_r").filter(~pl.col("_r").is_in(got.implode())).drop("_r")
    assert kept.equals(frame.unique(maintain_order=True))
    assert repeated_rows(frame.unique(maintain_order=True)).len() == 0


# --------------------------------------------------------------------------- validation errors


def _data_error(path: Path, **cfg: object) -> DataError:
    with pytest.raises(DataError) as info:
        load_events(DataConfig(events=str(path), **cfg))  # type: ignore[arg-type]
    assert info.value.exit_code == EXIT_DATA
    return info.value


@pytest.mark.parametrize(
    ("body", "column", "phrase"),
    [
        # missing column
        (f"user_id,ts,event\n1,{T0},view\n", "item_id", "missing required column"),
        # null ids
        (f"user_id,item_id,ts,event\n,1,{T0},view\n2,1,{T0},view\n", "user_id", "null ids"),
        # unparseable timestamps
        ("user_id,item_id,ts,event\n1,1,yesterday-ish,view\n", "ts", "unparseable"),
        # timestamps in the future (year 2099 in ms)
        ("user_id,item_id,ts,event\n1,1,4070908800000,view\n", "ts", "future"),
        # ambiguous unit
        ("user_id,item_id,ts,event\n1,1,12345,view\n", "ts", "ts_unit"),
        # unknown event type
        (f"user_id,item_id,ts,event\n1,1,{T0},wishlist\n", "event", "unknown event"),
    ],
)
def test_validation_errors_name_file_and_column(
    tmp_path: Path, body: str, column: str, phrase: str
) -> None:
    path = write_csv(tmp_path / "bad.csv", body)
    err = _data_error(path)
    message = str(err)
    assert str(path) in message
    assert f"column '{column}'" in message
    assert phrase in message
    assert "Fix:" in message


def test_unknown_event_lists_values_and_fix(tmp_path: Path) -> None:
    body = "user_id,item_id,ts,event\n" + "".join(
        f"1,1,{T0 + i},{name}\n" for i, name in enumerate(["view", "wish", "share", "wish"])
    )
    message = str(_data_error(write_csv(tmp_path / "e.csv", body)))
    assert "'wish'" in message and "'share'" in message and "data.event_map" in message


def test_empty_input(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "empty.csv", "user_id,item_id,ts,event\n")
    assert "no events rows" in str(_data_error(path))


def test_missing_input_is_exit_66(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError) as info:
        load_events(DataConfig(events=str(tmp_path / "nope.parquet")))
    assert info.value.exit_code == EXIT_NO_INPUT


def test_error_names_the_offending_file_among_many(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", f"user_id,item_id,ts,event\n1,1,{T0},view\n")
    write_csv(tmp_path / "b.csv", f"user_id,item_id,ts,event\n1,1,{T0},teleport\n")
    message = str(_data_error(tmp_path))
    assert "b.csv" in message and "a.csv" not in message


# --------------------------------------------------------------------------- vocab


def test_vocab_round_trip(tmp_path: Path) -> None:
    ids = pl.Series(["sku-9", "sku-1", "sku-5", "sku-1"])
    vocab = Vocab.fit(ids)
    assert len(vocab) == 3
    codes = vocab.encode(ids)
    assert codes.to_list() == [2, 0, 1, 0]  # sorted raw order
    vocab.save(tmp_path / "v.parquet")
    again = Vocab.load(tmp_path / "v.parquet")
    assert again.decode(codes).to_list() == ids.to_list()
    assert again.encode(pl.Series(["unseen"])).to_list() == [None]


def test_vocab_integer_ids_accept_text_lookups() -> None:
    vocab = Vocab.fit(pl.Series([30, 10, 20]))
    assert vocab.encode(pl.Series(["20", "x"])).to_list() == [1, None]


# --------------------------------------------------------------------------- folds


def _events(days: int = 30) -> pl.DataFrame:
    start = datetime(2024, 1, 1)
    ts = [start + timedelta(hours=6 * i) for i in range(days * 4)]
    return pl.DataFrame(
        {
            C.USER: [i % 5 for i in range(len(ts))],
            C.ITEM: [i % 7 for i in range(len(ts))],
            C.TS: ts,
            C.EVENT: [0] * len(ts),
        },
        schema={C.USER: pl.Int32, C.ITEM: pl.Int32, C.TS: pl.Datetime("ms"), C.EVENT: pl.Int8},
    )


def test_fold_boundaries() -> None:
    events = _events()
    end = data_end(events)
    assert end == datetime(2024, 1, 30, 19)  # the last event is at 18:00
    assert data_end(events.head(1)) == datetime(2024, 1, 1, 1)
    assert make_folds(end, horizon_days=7)["eval"].as_of == datetime(2024, 1, 23, 19)
    folds = make_folds(end, horizon_days=7, as_of="2024-01-24")
    assert folds["eval"].as_of == datetime(2024, 1, 24)
    assert folds["train"].as_of == datetime(2024, 1, 17)
    assert folds["train"].label_end == folds["eval"].as_of
    assert folds["inference"].as_of == end
    for fold in (folds["train"], folds["eval"]):
        hist = history(events, fold)
        labels = label_window(events, fold)
        assert hist[C.TS].max() < fold.as_of  # nothing at or after as_of in history
        assert labels[C.TS].min() >= fold.as_of
        assert labels[C.TS].max() < fold.label_end
        # history and labels partition the events before label_end
        assert hist.height + labels.height == events.filter(pl.col(C.TS) < fold.label_end).height
    # an event exactly at as_of belongs to the labels, not the history
    at = events.filter(pl.col(C.TS) == folds["eval"].as_of)
    assert at.height == 1
    assert history(events, folds["eval"]).join(at, on=C.TS, how="semi").is_empty()


def test_fold_with_explicit_as_of_and_rolling() -> None:
    folds = make_folds(datetime(2024, 3, 1), horizon_days=7, as_of="2024-02-10")
    assert folds["eval"].as_of == datetime(2024, 2, 10)
    rolling = rolling_folds(datetime(2024, 3, 1), 7, 3)
    assert [f.as_of for f in rolling] == [
        datetime(2024, 2, 9),
        datetime(2024, 2, 16),
        datetime(2024, 2, 23),
    ]


def test_empty_fold_is_a_data_error() -> None:
    events = _events(days=5)
    folds = make_folds(data_end(events), horizon_days=7)
    with pytest.raises(DataError, match="no history"):
        check_fold(events, folds["train"])
    late = make_folds(data_end(events), horizon_days=1, as_of="2024-03-01")
    with pytest.raises(DataError, match="empty label window"):
        check_fold(events, late["eval"])


# --------------------------------------------------------------------------- config


def test_config_defaults_overrides_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["folds.horizon_days=14", "candidates.sources.als.factors=8"])
    assert cfg.folds.horizon_days == 14
    assert cfg.candidates.sources["als"]["factors"] == 8
    path = tmp_path / "gbrank.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(path) == cfg


def test_config_unknown_key_suggests_nearest(tmp_path: Path) -> None:
    path = tmp_path / "gbrank.toml"
    path.write_text("[folds]\nhorizon_dayz = 3\n")
    with pytest.raises(ConfigError, match="did you mean 'horizon_days'"):
        load_config(path)
    with pytest.raises(ConfigError, match="did you mean 'folds'"):
        load_config(None, ["fold.horizon_days=3"])


def test_config_partial_event_map_keeps_defaults(tmp_path: Path) -> None:
    path = tmp_path / "gbrank.toml"
    path.write_text('[data.event_map]\nwish = "cart"\n')
    cfg = load_config(path)
    assert cfg.data.event_map["wish"] == "cart" and cfg.data.event_map["pv"] == "view"
    path.write_text('[data.event_map]\nwish = "basket"\n')
    with pytest.raises(ConfigError, match="basket"):
        load_config(path)


def test_config_sources_in_file_replace_defaults(tmp_path: Path) -> None:
    path = tmp_path / "gbrank.toml"
    path.write_text('[candidates.sources.pop]\nkind = "popularity"\nn = 10\n')
    assert list(load_config(path).candidates.sources) == ["pop"]
