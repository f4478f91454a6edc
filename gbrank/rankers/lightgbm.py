"""LightGBM backend: lambdarank on graded labels, or a binary head (CTR, CVR).

The protocol, the input guards and the model files are :mod:`gbrank.rankers.base`'s. Models
are saved in LightGBM's own text format (``<stem>.txt``) beside the JSON sidecar. Trained
models can be compiled to native code with lleaves for scoring (``compile``).

Example:
    >>> ranker = LightGBMRanker(label_gain=[0, 1, 2, 6, 16])       # doctest: +SKIP
    >>> ranker.fit(train, features, label="grade", valid=valid)  # doctest: +SKIP
    >>> scores = ranker.predict(test)                            # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from gbrank.errors import ConfigError, DamagedArtifactError
from gbrank.rankers.base import Ranker, feature_matrix, query_groups


@contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Silence what LightGBM's C++ code prints on stdout/stderr (its [Fatal] lines)."""
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def known_params() -> dict[str, str]:
    """Every LightGBM parameter name and alias, mapped to its main name."""
    aliases = lgb.basic._ConfigAliases._get_all_param_aliases()
    out = {name: name for name in aliases}
    for name, names in aliases.items():
        out.update(dict.fromkeys(names, name))
    return out


def check_params(params: Mapping[str, Any], where: str = "train.params") -> None:
    """A ConfigError for an unknown LightGBM parameter (with the nearest name) or a value
    LightGBM rejects, found by a one-round fit on a tiny frame before any real training."""
    names = known_params()
    for key in params:
        if key not in names:
            match = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
            hint = f"; did you mean '{match[0]}'?" if match else ""
            raise ConfigError(f"{where}: unknown LightGBM parameter '{key}'{hint}")
    rng = np.random.default_rng(0)
    data = lgb.Dataset(
        rng.random((40, 2)), label=rng.integers(0, 3, 40), group=[20, 20], free_raw_data=True
    )
    probe = {"objective": "lambdarank", "verbosity": -1, "num_threads": 1, **params}
    try:
        with _quiet_native_output():
            lgb.train(probe, data, num_boost_round=1)
    except lgb.basic.LightGBMError as exc:
        reason = re.sub(r"\s+at \S+, line \d+\s*\.?\s*$", "", str(exc).strip())
        raise ConfigError(f"{where}: LightGBM rejects the parameters: {reason}") from None


#: Rows taken from the frame at a time for a compiled model: float64 in row order, as lleaves
#: reads them (100 MB at 100 features), made by Polars in one pass. Polars writes blocks of
#: 2**17 rows 1.9x faster than the float32 matrix of 2**18 rows then widened by NumPy call by
#: call (0.70 s against 1.33 s for 1.6M rows x 98 features). Rows per call of the compiled
#: model: 2**14 rows scored 1.3x faster than 2**18 (measured at 100 features, 116 trees).
COMPILED_BLOCK_ROWS = 1 << 17
COMPILED_CALL_ROWS = 1 << 14


def _compile_cached(model: Any, text: str, cache_dir: Path) -> None:
    """``model.compile`` through the object cache of :meth:`LightGBMRanker.compile`."""
    import hashlib
    import json
    import platform
    import secrets
    from importlib import metadata

    import llvmlite
    import llvmlite.binding as llvm

    from gbrank.atomic import atomic_write_json, file_sha256, fsync_path

    version = metadata.version("lleaves")
    salt = f"{version}|{llvmlite.__version__}|{platform.machine()}|"
    salt += f"{llvm.get_host_cpu_name()}|{llvm.get_host_cpu_features().flatten()}"
    key = hashlib.sha256(f"{salt}\n{text}".encode()).hexdigest()
    obj, meta = cache_dir / f"{key}.o", cache_dir / f"{key}.json"
    try:
        known = json.loads(meta.read_text()).get("sha256")
        if obj.exists() and known == file_sha256(obj):
            model.compile(cache=str(obj))
            return
    except (OSError, ValueError, AttributeError):
        pass
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{key}.{secrets.token_hex(4)}.tmp"  # lleaves writes it: must not exist
    try:
        model.compile(cache=str(tmp))
        fsync_path(tmp)
        os.replace(tmp, obj)
        atomic_write_json({"sha256": file_sha256(obj), "lleaves": version}, meta)
    except OSError:
        pass  # a read-only or full cache costs the next compile, nothing else
    finally:
        tmp.unlink(missing_ok=True)


#: Parameters gbrank sets itself: a sidecar's copy of them is not a user parameter.
_OWN_PARAMS = (
    "objective",
    "seed",
    "deterministic",
    "force_row_wise",
    "num_threads",
    "verbosity",
    "metric",
    "eval_at",
    "label_gain",
    "first_metric_only",
)


def _monitor_callback(monitor: Any) -> Any:
    """A LightGBM callback handing the first validation metric of each round to ``monitor``."""

    def callback(env: Any) -> None:
        if env.evaluation_result_list:
            monitor(env.iteration + 1, float(env.evaluation_result_list[0][2]))

    callback.order = 40  # type: ignore[attr-defined]  # after early stopping's bookkeeping (30)
    return callback


class LightGBMRanker(Ranker):
    """A LightGBM model over candidate rows: ``lambdarank`` (integer grades, gains from
    ``label_gain``; early stopping on NDCG at the first ``eval_at``) or ``binary`` (0/1 labels;
    early stopping on log loss). Scores can be compiled to native code (``compile``)."""

    backend = "lightgbm"
    objectives = {"lambdarank": "rank", "binary": "binary"}
    model_suffix = ".txt"
    compiler = "lleaves"

    @classmethod
    def check_params(cls, params: Mapping[str, Any], where: str) -> None:
        check_params(params, where)

    def _lgb_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "objective": self.objective,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.num_threads,
            "verbosity": -1,
            "first_metric_only": True,  # early stopping on the exact target metric
        }
        if self.kind == "rank":
            params["metric"] = "ndcg"
            params["eval_at"] = self.eval_at
            if self.label_gain is not None:
                params["label_gain"] = self.label_gain
        else:
            params["metric"] = "binary_logloss"
        params.update({k: v for k, v in self.params.items() if k not in _OWN_PARAMS})
        return params

    def _dataset(self, frame: pl.DataFrame, reference: Any = None) -> lgb.Dataset:
        group = query_groups(frame).sizes if self.kind == "rank" else None
        return lgb.Dataset(
            feature_matrix(frame, self.features_),
            label=frame[self.label_].to_numpy(),
            group=group,
            feature_name=list(self.features_),
            reference=reference,
            free_raw_data=True,
        )

    def _train(self, train: pl.DataFrame, valid: pl.DataFrame | None) -> None:
        dtrain = self._dataset(train)
        callbacks: list[Any] = []
        valid_sets = []
        if valid is not None:
            valid_sets = [self._dataset(valid, reference=dtrain)]
            callbacks.append(
                lgb.early_stopping(
                    self.early_stopping_rounds,
                    first_metric_only=True,
                    verbose=False,
                    min_delta=self.min_delta,
                )
            )
        if self.monitor is not None:
            callbacks.append(_monitor_callback(self.monitor))
        self.booster_ = lgb.train(
            self._lgb_params(),
            dtrain,
            num_boost_round=self.num_boost_round,
            valid_sets=valid_sets,
            callbacks=callbacks,
        )
        best = self.booster_.best_iteration
        self.best_iteration_ = int(best) if best and best > 0 else self.booster_.current_iteration()
        self.compiled_ = None

    def compile(self, cache_dir: Path | None = None) -> None:
        """Compile the model's trees (up to ``best_iteration_``) to native code with lleaves;
        ``predict`` then uses the compiled model. Its scores equal LightGBM's up to the order of
        the float64 sum over trees (differences near 1e-15); on 2 cores it scores about 5x
        faster, after a compilation of about 5 s per 100 trees.

        With ``cache_dir``, the compiled object is kept there under a key over the model text,
        the lleaves and llvmlite versions and the CPU, with its sha256 beside it: the next
        compile of the same model loads it (checked against that hash first: a damaged object
        is compiled again, never loaded) instead of spending the seconds again.

        Raises ImportError when lleaves cannot be imported.
        """
        import tempfile

        import lleaves

        self._check_fitted()
        text = self.booster_.model_to_string(num_iteration=self.best_iteration_)
        with tempfile.TemporaryDirectory(prefix="gbrank-compile-") as tmp:
            path = Path(tmp) / "model.txt"
            path.write_text(text)
            model = lleaves.Model(model_file=str(path))
            if cache_dir is None:
                model.compile()
            else:
                _compile_cached(model, text, Path(cache_dir))
        self.compiled_ = model

    def _predict(self, frame: pl.DataFrame) -> np.ndarray:
        compiled = getattr(self, "compiled_", None)
        if compiled is None:
            scores = self.booster_.predict(
                feature_matrix(frame, self.features_), num_iteration=self.best_iteration_
            )
            return np.asarray(scores, dtype=np.float64)
        out = np.empty(frame.height, dtype=np.float64)
        for start in range(0, frame.height, COMPILED_BLOCK_ROWS):
            block = feature_matrix(
                frame.slice(start, COMPILED_BLOCK_ROWS), self.features_, widened=True
            )
            for offset in range(0, block.shape[0], COMPILED_CALL_ROWS):
                rows = block[offset : offset + COMPILED_CALL_ROWS]  # C-contiguous: no copy
                at = start + offset
                out[at : at + rows.shape[0]] = compiled.predict(rows, n_jobs=self.num_threads)
        return out

    def feature_importance(self) -> pl.DataFrame:
        self._check_fitted()
        gain = self.booster_.feature_importance("gain", iteration=self.best_iteration_)
        return pl.DataFrame({"feature": self.features_, "gain": gain}).sort("gain", descending=True)

    def sidecar(self) -> dict[str, Any]:
        return {
            **super().sidecar(),
            "lightgbm_version": lgb.__version__,
            "backend_params": self._lgb_params(),
        }

    def _model_bytes(self) -> bytes:
        return self.booster_.model_to_string(num_iteration=-1).encode()

    def _load_model(self, data: bytes) -> None:
        self.booster_ = lgb.Booster(model_str=data.decode())
        self.compiled_ = None
        if self.booster_.feature_name() != self.features_:
            raise DamagedArtifactError(
                "the LightGBM model and its sidecar disagree on the feature names: "
                "rerun `gbrank train`"
            )
