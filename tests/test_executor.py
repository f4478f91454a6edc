"""The shard loop and its writer: results in shard order, one file, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gbrank.atomic import file_sha256
from gbrank.errors import ConfigError
from gbrank.executor import LocalExecutor, TableWriter

SHARDS = [pl.DataFrame({"x": [1, 2]}), pl.DataFrame({"x": [3]}), pl.DataFrame({"x": [4, 5, 6]})]


def square(shard: pl.DataFrame) -> pl.DataFrame:
    return shard.with_columns((pl.col("x") ** 2).alias("y"))


def test_map_keeps_shard_order_and_is_lazy() -> None:
    seen: list[int] = []

    def record(shard: pl.DataFrame) -> int:
        seen.append(shard.height)
        return shard.height

    results = LocalExecutor().map("demo", record, SHARDS)
    assert seen == []  # nothing runs before the caller asks
    assert next(results) == 2 and seen == [2]
    assert list(results) == [1, 3] and seen == [2, 1, 3]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_run_writes_every_shard_to_one_file(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    rows = LocalExecutor().run("demo", square, SHARDS, out)
    assert rows == 6
    read = pl.read_parquet(out) if suffix == ".parquet" else pl.read_csv(out)
    assert_frame_equal(read, square(pl.concat(SHARDS)), check_dtypes=False)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_no_rows_writes_the_empty_frame(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    empty = pl.DataFrame(schema={"x": pl.Int64, "y": pl.Int64})
    rows = LocalExecutor().run("demo", square, [], out, empty=lambda: empty)
    assert rows == 0
    read = pl.read_parquet(out) if suffix == ".parquet" else pl.read_csv(out)
    assert read.columns == ["x", "y"] and read.height == 0


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_failing_shard_leaves_the_old_file_and_no_temporary(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    out.write_text("previous results\n")

    def fail_on_third(shard: pl.DataFrame) -> pl.DataFrame:
        if shard.height == 3:
            raise RuntimeError("shard failed")
        return square(shard)

    with pytest.raises(RuntimeError, match="shard failed"):
        LocalExecutor().run("demo", fail_on_third, SHARDS, out)
    assert out.read_text() == "previous results\n"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_later_shards_take_the_first_shards_types(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with TableWriter(out) as writer:
        writer.write(pl.DataFrame({"x": [1.5]}, schema={"x": pl.Float32}))
        writer.write(pl.DataFrame({"x": [2]}, schema={"x": pl.Int64}))
    assert pl.read_parquet(out).schema == pl.Schema({"x": pl.Float32})
    assert writer.rows == 2 and writer.frames == 2


def test_unknown_suffix_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown output format '.json'"):
        TableWriter(tmp_path / "out.json")


def test_a_frame_in_chunks_writes_the_bytes_of_the_frame_in_one(tmp_path: Path) -> None:
    """A shard's result read back from staging comes in record batches; where a dictionary
    column falls back to plain pages depends on the chunks, so the writer makes them one."""
    rng = np.random.default_rng(0)
    n = 800_000
    frame = pl.DataFrame(
        {
            "user": np.repeat(np.arange(n // 20), 20),
            "item": rng.integers(0, 2**31, n),
            "score": rng.random(n),
            "rank": np.tile(np.arange(1, 21, dtype=np.int32), n // 20),
        }
    )
    parts = pl.concat([frame.slice(i, 1 << 17) for i in range(0, n, 1 << 17)], rechunk=False)
    assert parts.n_chunks() > 1 and parts.equals(frame)
    one, chunked = tmp_path / "one.parquet", tmp_path / "chunked.parquet"
    for frames, out in (([frame], one), ([parts], chunked)):
        with TableWriter(out) as writer:
            writer.write_all(frames)
    assert file_sha256(one) == file_sha256(chunked)
