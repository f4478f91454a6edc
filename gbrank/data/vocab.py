"""Vocabularies: raw ids (strings or integers) <-> dense int32 codes, saved as Parquet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from gbrank.atomic import atomic_write_parquet

RAW = "raw"
CODE = "code"


@dataclass(frozen=True)
class Vocab:
    """A mapping from raw ids to dense codes ``0..len-1``.

    Codes follow the sorted order of the raw ids, so the same set of ids always gets the same
    codes.

    Example:
        >>> v = Vocab.fit(pl.Series(["b", "a", "b"]))
        >>> v.encode(pl.Series(["a", "b", "z"])).to_list()
        [0, 1, None]
    """

    table: pl.DataFrame  # columns raw, code (Int32)

    @classmethod
    def fit(cls, ids: pl.Series) -> Vocab:
        raw = ids.drop_nulls().unique().sort()
        table = pl.DataFrame(
            {RAW: raw, CODE: pl.int_range(0, len(raw), dtype=pl.Int32, eager=True)}
        )
        return cls(table)

    def __len__(self) -> int:
        return self.table.height

    @property
    def dtype(self) -> pl.DataType:
        return self.table.schema[RAW]

    def _cast_like(self, ids: pl.Series) -> pl.Series:
        if ids.dtype == self.dtype:
            return ids
        try:
            return ids.cast(self.dtype, strict=True)
        except pl.exceptions.InvalidOperationError:
            # e.g. string ids given for an integer vocabulary: non-numeric ones are unknown.
            return ids.cast(self.dtype, strict=False)

    def encode(self, ids: pl.Series) -> pl.Series:
        """Codes of ``ids``; null for ids the vocabulary has not seen."""
        frame = pl.DataFrame({RAW: self._cast_like(ids)})
        return frame.join(self.table, on=RAW, how="left", maintain_order="left")[CODE]

    def decode(self, codes: pl.Series) -> pl.Series:
        frame = pl.DataFrame({CODE: codes.cast(pl.Int32)})
        return frame.join(self.table, on=CODE, how="left", maintain_order="left")[RAW]

    def save(self, path: str | Path) -> None:
        atomic_write_parquet(self.table, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        table = pl.read_parquet(path)
        if table.columns != [RAW, CODE]:
            raise ValueError(f"{path} is not a gbrank vocabulary (columns {table.columns})")
        return cls(table)
