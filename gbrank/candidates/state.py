"""Save a fitted candidate source to one ``.npz`` file and load it back, without pickle.

A source's fitted state is its attributes whose names end in ``_`` (``user_items_``,
``item_factors_``, ``ranking_``...). Each is stored by type: NumPy arrays as they are, SciPy
CSR matrices as their three arrays and shape, Polars frames as Arrow IPC bytes, and numbers,
strings and datetimes in a JSON header. The header also holds the source's kind, name and parameters, so
loading needs nothing but the file. Library objects (``model_``, the fitted ``implicit``
model) are left out: the sources keep what they score with in plain arrays.

Files are read with ``allow_pickle=False``; a state that holds any other type is refused when
saving, with the attribute named.

>>> from datetime import datetime
>>> import polars as pl
>>> from gbrank.candidates import build_source
>>> history = pl.DataFrame(
...     {"user": [0, 0, 1], "item": [0, 1, 1], "event": [1, 3, 1],
...      "ts": [datetime(2024, 1, 30), datetime(2024, 1, 31), datetime(2024, 1, 31)]},
...     schema_overrides={"user": pl.Int32, "item": pl.Int32, "event": pl.Int8},
... )
>>> source = build_source("pop", "popularity", {}).fit(
...     history, n_users=2, n_items=2, as_of=datetime(2024, 2, 1))
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "pop.npz"
>>> save_source(source, path)
>>> load_source(path).generate([1], 2).equals(source.generate([1], 2))
True
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from gbrank.atomic import atomic_path
from gbrank.candidates.base import CandidateSource
from gbrank.errors import DamagedArtifactError

FORMAT = 1
_HEADER = "__header__"
#: Fitted attributes that are library objects, rebuilt from plain arrays instead of stored.
_SKIP = frozenset({"model_"})


def _fitted(source: CandidateSource) -> dict[str, Any]:
    return {k: v for k, v in vars(source).items() if k.endswith("_") and k not in _SKIP}


def _json_value(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_json_value(v) for v in value)
    return False


def save_source(source: CandidateSource, path: Path) -> None:
    """Write the fitted ``source`` to ``path`` (an ``.npz`` file), atomically."""
    if not hasattr(source, "n_items_"):
        raise ValueError(f"source '{source.name}' is not fitted: nothing to save")
    params = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in source.get_params().items()
        if k != "name"
    }
    header: dict[str, Any] = {
        "format": FORMAT,
        "kind": source.kind,
        "name": source.name,
        "params": params,
        "values": {},
        "datetimes": {},
        "arrays": [],
        "sparse": {},
        "frames": [],
    }
    arrays: dict[str, np.ndarray] = {}
    for attr, value in _fitted(source).items():
        if isinstance(value, np.ndarray):
            header["arrays"].append(attr)
            arrays[f"a/{attr}"] = value
        elif isinstance(value, (sp.csr_matrix, sp.csr_array)):
            header["sparse"][attr] = [int(n) for n in value.shape]
            arrays[f"s/{attr}/data"] = value.data
            arrays[f"s/{attr}/indices"] = value.indices
            arrays[f"s/{attr}/indptr"] = value.indptr
        elif isinstance(value, pl.DataFrame):
            header["frames"].append(attr)
            arrays[f"f/{attr}"] = _frame_bytes(value)
        elif isinstance(value, datetime):
            header["datetimes"][attr] = value.isoformat()
        elif _json_value(value):
            header["values"][attr] = value
        else:
            raise TypeError(
                f"cannot save {type(source).__name__}.{attr} ({type(value).__name__}): keep "
                "fitted state in arrays, sparse matrices, frames or plain values"
            )
    arrays[_HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)


def _frame_bytes(frame: pl.DataFrame) -> np.ndarray:
    buffer = io.BytesIO()
    # One record batch whatever the chunks a parallel operation left: the same state is the
    # same bytes.
    frame.rechunk().write_ipc(buffer, compression="uncompressed")
    return np.frombuffer(buffer.getbuffer(), dtype=np.uint8)


def load_source(path: Path) -> CandidateSource:
    """The fitted source saved at ``path``; a file that cannot be read raises
    :class:`DamagedArtifactError`."""
    from gbrank.candidates import build_source

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        header = json.loads(arrays.pop(_HEADER).tobytes())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise DamagedArtifactError(
            f"cannot read the fitted source {path}: {exc}; rerun `gbrank generate`"
        ) from exc
    if header.get("format") != FORMAT:
        raise DamagedArtifactError(
            f"{path} was saved in format {header.get('format')}, not {FORMAT}; "
            "rerun `gbrank generate`"
        )
    source = build_source(header["name"], header["kind"], header["params"])
    for attr in header["arrays"]:
        setattr(source, attr, arrays[f"a/{attr}"])
    for attr, shape in header["sparse"].items():
        parts = tuple(arrays[f"s/{attr}/{p}"] for p in ("data", "indices", "indptr"))
        setattr(source, attr, sp.csr_matrix(parts, shape=tuple(shape)))
    for attr in header["frames"]:
        setattr(source, attr, pl.read_ipc(io.BytesIO(arrays[f"f/{attr}"].tobytes())))
    for attr, text in header["datetimes"].items():
        setattr(source, attr, datetime.fromisoformat(text))
    for attr, value in header["values"].items():
        setattr(source, attr, value)
    return source
