"""Runs a stage's per-shard function over its shards, and writes what the shards return.

The sharded stages (features, eval, recommend) are written as a pure function of one shard
(candidate rows of some users in; a frame out: features, top-K lists, recommendations) plus the
shards to run it on. :meth:`LocalExecutor.run` calls the function for each shard and, for a
stage with an output file, appends each result to it through :class:`TableWriter`: row groups
of one Parquet file, or lines of one CSV, under a temporary name that is renamed only when the
last shard is written. The per-shard functions never touch run artifacts, so this loop is the
one place where a stage's shards meet its files, and the place a distributed executor (Dask,
one task per shard) plugs in.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "squares.parquet"
    >>> shards = [pl.DataFrame({"x": [1, 2]}), pl.DataFrame({"x": [3]})]
    >>> LocalExecutor().run("demo", lambda s: s.with_columns(y=pl.col("x") ** 2), shards, out)
    3
    >>> pl.read_parquet(out)["y"].to_list()
    [1, 4, 9]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import polars as pl

from gbrank.atomic import atomic_path, check_table_suffix

T = TypeVar("T")
R = TypeVar("R")


class LocalExecutor:
    """Shards one after the other in this process: memory holds one shard at a time."""

    name = "local"

    def map(self, stage: str, fn: Callable[[T], R], shards: Iterable[T]) -> Iterator[R]:
        """``fn(shard)`` for each shard, in order (lazily: the next shard starts when the
        caller asks for it)."""
        for shard in shards:
            yield fn(shard)

    def run(
        self,
        stage: str,
        fn: Callable[[T], pl.DataFrame],
        shards: Iterable[T],
        out: Path,
        *,
        empty: Callable[[], pl.DataFrame] | None = None,
        **options: Any,
    ) -> int:
        """Write ``fn(shard)`` for every shard to ``out`` (.parquet or .csv); returns the rows
        written. ``empty`` makes the frame (schema) to write when no shard returns a row."""
        with TableWriter(out, **options) as writer:
            writer.write_all(self.map(stage, fn, shards), empty=empty)
        return writer.rows


class TableWriter:
    """Appends frames to one Parquet or CSV file under a temporary name; the file appears
    under ``path`` only when the block ends without an error. Every frame must have the
    first frame's columns; values are cast to the first frame's types."""

    def __init__(self, path: Path, *, use_dictionary: bool = True) -> None:
        check_table_suffix(path)
        self.path = path
        self.csv = path.suffix.lower() == ".csv"
        self.use_dictionary = use_dictionary
        self.rows = 0
        self.frames = 0
        self._atomic = atomic_path(path)
        self._tmp: Path | None = None
        self._parquet: Any = None
        self._text: Any = None

    def __enter__(self) -> TableWriter:
        self._tmp = self._atomic.__enter__()
        return self

    def write(self, frame: pl.DataFrame) -> None:
        assert self._tmp is not None, "use TableWriter in a with block"
        if self.csv:
            if self._text is None:
                self._text = open(self._tmp, "w", newline="")  # noqa: SIM115 - closed in __exit__
            frame.write_csv(self._text, include_header=self.frames == 0)
        else:
            import pyarrow.parquet as pq

            table = frame.to_arrow()
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(
                    self._tmp, table.schema, use_dictionary=self.use_dictionary
                )
            self._parquet.write_table(table.cast(self._parquet.schema))
        self.rows += frame.height
        self.frames += 1

    def write_all(
        self, frames: Iterable[pl.DataFrame], *, empty: Callable[[], pl.DataFrame] | None = None
    ) -> None:
        """Write every frame; when there was none, the frame ``empty`` makes (the schema)."""
        for frame in frames:
            self.write(frame)
        if self.frames == 0 and empty is not None:
            self.write(empty())

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            if self._parquet is not None:
                self._parquet.close()
            if self._text is not None:
                self._text.close()
        except BaseException as error:
            if exc is None:
                return self._atomic.__exit__(type(error), error, error.__traceback__)
            raise
        return self._atomic.__exit__(kind, exc, tb)
