"""What every ranker backend shares: the protocol, query groups, the input guards and the
model files.

A ranker learns from candidate rows sorted by user (a user's rows are one query) and scores
rows by feature name. Two kinds exist: ``rank`` objectives (LightGBM lambdarank, XGBoost
``rank:ndcg`` / ``rank:pairwise``) learn from integer grades with ``label_gain`` as the gain of
each grade, ``binary`` ones (CTR and CVR heads) from 0/1 labels and predict probabilities.

A model is two files: the backend's own model format (``<stem>.txt`` for LightGBM,
``<stem>.ubj`` for XGBoost) and a JSON sidecar (``<stem>.json``) naming the backend, the
objective, the features in order, the parameters and the model file's SHA-256. Loading checks
that hash before the backend parses a byte, so a truncated or damaged model file is an error
naming the file (exit 65), never a crash of the process inside native code.

Example:
    >>> frame = pl.DataFrame({"user": [3, 3, 7, 9, 9, 9]}, schema={"user": pl.Int32})
    >>> groups = query_groups(frame)
    >>> groups.sizes.tolist(), groups.qid.tolist()
    ([2, 1, 3], [0, 0, 1, 2, 2, 2])
"""

from __future__ import annotations

import hashlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl

from gbrank import columns as C
from gbrank.atomic import atomic_write_bytes, atomic_write_json, file_sha256
from gbrank.errors import DamagedArtifactError, DataError, MissingInputError, NotFittedError, warn

KINDS = ("rank", "binary")

#: LightGBM aborts the process on a query of more than 10,000 rows; XGBoost slows down
#: quadratically in the query size. Larger queries are capped (or refused) before training.
MAX_GROUP_ROWS = 10_000
GROUP_OVERFLOW = ("cap", "error")


@dataclass(frozen=True)
class Groups:
    """Query groups of a frame sorted by user: ``sizes`` (LightGBM's ``group``) and ``qid``
    (XGBoost's, one per row: 0, 1, 2, ... in user order)."""

    sizes: np.ndarray
    qid: np.ndarray


def query_groups(frame: pl.DataFrame) -> Groups:
    """The query groups of ``frame``: its users, whose rows must be contiguous and sorted
    (the only place groups are made; a ValueError otherwise)."""
    users = frame[C.USER].to_numpy()
    if users.size and np.any(users[1:] < users[:-1]):
        raise ValueError("the frame must be sorted by user before ranking (sort by 'user')")
    if users.size:
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
        sizes = np.diff(starts).astype(np.int64)
    else:
        sizes = np.zeros(0, dtype=np.int64)
    qid = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    return Groups(sizes, qid)


def compiler_available() -> bool:
    """Whether lleaves (which compiles LightGBM trees to native code) can be imported (here, not
    beside the LightGBM ranker: asking must not import LightGBM)."""
    try:
        import lleaves  # noqa: F401
    except Exception:  # an incompatible llvmlite fails on import too
        return False
    return True


def feature_matrix(
    frame: pl.DataFrame, features: Sequence[str], *, widened: bool = False
) -> np.ndarray:
    """The float32 matrix of ``features``, selected by name (a column order of the frame never
    matters); a ValueError naming the missing ones. ``widened``: the same float32 values
    widened exactly to float64, in row order (C-contiguous), as compiled trees read them."""
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise ValueError(f"feature columns missing from the frame: {missing}")
    if widened:
        columns = (pl.col(f).cast(pl.Float32).cast(pl.Float64) for f in features)
        return frame.select(columns).to_numpy(order="c")
    return frame.select(pl.col(f).cast(pl.Float32) for f in features).to_numpy()


def check_labels(frame: pl.DataFrame, label: str, kind: str, n_grades: int | None) -> None:
    """A DataError unless ``label`` holds integers, none null or NaN, within ``0..n_grades-1``
    (``rank``) or in {0, 1} (``binary``). LightGBM accepts NaN labels silently."""
    if label not in frame.columns:
        raise DataError(f"the training rows have no label column '{label}'", column=label)
    values = frame[label]
    bad: pl.Series
    if values.dtype.is_float():
        bad = values.filter(values.is_nan() | values.is_null() | (values != values.round(0)))
    elif values.dtype.is_integer():
        bad = values.filter(values.is_null())
    else:
        raise DataError(
            f"label '{label}' is {values.dtype}, not integer",
            column=label,
            values=values.head(5).to_list(),
            fix="labels are grades (0, 1, 2, ...) or 0/1 targets",
        )
    if bad.len():
        raise DataError(
            f"label '{label}' has {bad.len()} values that are null, NaN or not integer",
            column=label,
            values=bad.head(5).to_list(),
            fix="drop or repair those rows before training",
        )
    top = 1 if kind == "binary" else (n_grades - 1 if n_grades else None)
    out = (
        values.filter((values < 0) | (values > top))
        if top is not None
        else values.filter(values < 0)
    )
    if out.len():
        allowed = "0 or 1" if kind == "binary" else f"0..{top} (one gain per grade)"
        raise DataError(
            f"label '{label}' has {out.len()} values outside {allowed}",
            column=label,
            values=out.unique().sort().head(5).to_list(),
            fix="a grade needs a label_gain entry (events.gains); binary heads take 0/1",
        )


def cap_groups(
    frame: pl.DataFrame, max_rows: int = MAX_GROUP_ROWS, overflow: str = "cap"
) -> pl.DataFrame:
    """``frame`` (sorted by user) with at most ``max_rows`` rows per user. Over it, ``"cap"``
    keeps each such user's best ``max_rows`` candidates by best source rank (ties by item) and
    warns; ``"error"`` raises a DataError naming the users."""
    groups = query_groups(frame)
    if not groups.sizes.size or groups.sizes.max() <= max_rows:
        return frame
    users = frame[C.USER].unique(maintain_order=True).to_numpy()[groups.sizes > max_rows]
    if overflow == "error":
        raise DataError(
            f"{users.size} users have more than {max_rows} candidate rows (LightGBM aborts on "
            "such a query)",
            column=C.USER,
            values=users[:5].tolist(),
            fix='set candidates.max_per_user, or train.group_overflow = "cap"',
        )
    warn(
        f"{users.size} users have more than {max_rows} candidate rows; each keeps its best "
        f"{max_rows} by source rank for training (e.g. user codes {users[:5].tolist()}). "
        "Fix: candidates.max_per_user"
    )
    ranks = [c for c in frame.columns if c.endswith("_rank")]
    best = pl.min_horizontal(*[pl.col(c) for c in ranks]) if ranks else pl.lit(0)
    order = pl.struct(best.fill_null(1 << 30).alias("_b"), pl.col(C.ITEM)).rank("ordinal")
    return (
        frame.with_columns(order.over(C.USER).alias("_order"))
        .filter(pl.col("_order") <= max_rows)
        .drop("_order")
    )


#: ``monitor(round, value)``: what :meth:`Ranker.fit` reports after each boosting round.
Monitor = Callable[[int, float], None]


class Ranker(ABC):
    """A gradient-boosted model over candidate rows, one backend (``backend``) and objective.

    ``fit`` trains on a frame sorted by user (early stopping on ``valid`` when given), after
    the input guards; ``predict`` scores any frame with the fitted features (selected by name);
    ``save`` writes the model and its sidecar, ``load`` reads them back after the hash check.
    """

    backend: ClassVar[str]
    objectives: ClassVar[dict[str, str]]  # objective -> kind ("rank" or "binary")
    model_suffix: ClassVar[str]
    compiler: ClassVar[str | None] = None  # what ``compile`` uses, None: no compiler
    monitor: Monitor | None = None  # set by ``fit`` while it trains

    features_: list[str]
    label_: str
    best_iteration_: int
    fingerprint_: str

    def __init__(
        self,
        objective: str | None = None,
        params: dict[str, Any] | None = None,
        num_boost_round: int = 400,
        early_stopping_rounds: int = 40,
        min_delta: float = 0.0,
        label_gain: Sequence[float] | None = None,
        seed: int = 0,
        eval_at: Sequence[int] = (10, 20),
        num_threads: int = 2,
    ) -> None:
        objective = objective or next(iter(self.objectives))
        if objective not in self.objectives:
            raise ValueError(
                f"{self.backend} objective must be one of {list(self.objectives)}, "
                f"got {objective!r}"
            )
        self.objective = objective
        self.params = dict(params or {})
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.min_delta = float(min_delta)
        self.label_gain = list(label_gain) if label_gain is not None else None
        self.seed = seed
        self.eval_at = list(eval_at)
        self.num_threads = num_threads

    @property
    def kind(self) -> str:
        return self.objectives[self.objective]

    # ------------------------------------------------------------------ to implement

    @abstractmethod
    def _train(self, train: pl.DataFrame, valid: pl.DataFrame | None) -> None:
        """Fit the backend's model on the checked frames; set ``best_iteration_``."""

    @abstractmethod
    def _predict(self, frame: pl.DataFrame) -> np.ndarray:
        """Scores (float64) of a non-empty frame."""

    @abstractmethod
    def _model_bytes(self) -> bytes:
        """The model in the backend's own format."""

    @abstractmethod
    def _load_model(self, data: bytes) -> None:
        """Set the backend's model from ``_model_bytes`` output."""

    @abstractmethod
    def feature_importance(self) -> pl.DataFrame:
        """``feature, gain``: total gain of each feature's splits, largest first."""

    def compile(self, cache_dir: Path | None = None) -> None:
        """Compile the model for faster scoring (``cache_dir``: keep and reuse the compiled
        code there); backends without a compiler raise ImportError (callers then score with
        the backend itself)."""
        raise ImportError(f"no compiler for {self.backend} models")

    def compile_in_background(self, cache_dir: Path | None = None, *, fallback: bool) -> None:
        """Start ``compile`` on a thread of its own and return: the caller loads and builds
        what it needs meanwhile (LLVM's work releases the GIL), and the next ``predict`` (or
        ``wait_compiled``) waits for it. A failure is raised there, or, with ``fallback``,
        warned about, the backend then scoring itself."""
        self._compilation = _Compilation(self, cache_dir, fallback)

    def wait_compiled(self) -> None:
        """Wait for a compile started by ``compile_in_background`` (nothing when none is)."""
        compilation = getattr(self, "_compilation", None)
        if compilation is not None:
            compilation.wait()

    @property
    def predictor(self) -> str:
        """What scores: the compiler's name once compiled, else the backend's."""
        compiled = getattr(self, "compiled_", None) is not None
        return self.compiler if compiled and self.compiler is not None else self.backend

    @classmethod
    @abstractmethod
    def check_params(cls, params: dict[str, Any], where: str) -> None:
        """A ConfigError for a parameter the backend does not know or a value it rejects."""

    # ------------------------------------------------------------------ shared

    def fit(
        self,
        train: pl.DataFrame,
        features: Sequence[str],
        label: str,
        valid: pl.DataFrame | None = None,
        monitor: Monitor | None = None,
    ) -> Self:
        """Train on ``train`` (sorted by user); early-stop on ``valid`` when given.

        ``monitor(round, value)`` is called after every boosting round with the validation
        metric (NDCG at the first ``eval_at``, or log loss), through the backend's own callback;
        an exception it raises (a pruned tuning trial) ends the training and propagates."""
        if train.is_empty():
            raise ValueError("no training rows: the train fold produced no labelled candidates")
        self.features_ = list(features)
        self.label_ = label
        n_grades = len(self.label_gain) if self.label_gain is not None else None
        for frame in (train, valid):
            if frame is not None and not frame.is_empty():
                query_groups(frame)  # sorted and contiguous, or a ValueError
                check_labels(frame, label, self.kind, n_grades)
        if valid is not None and (valid.is_empty() or self.early_stopping_rounds <= 0):
            valid = None
        self.monitor = monitor if valid is not None else None
        try:
            self._train(train, valid)
        finally:
            self.monitor = None
        self.fingerprint_ = data_fingerprint(train, [*self.features_, label])
        return self

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """Scores for every row, features selected by name."""
        self._check_fitted()
        self.wait_compiled()
        if frame.is_empty():
            return np.zeros(0, dtype=np.float64)
        return self._predict(frame)

    def _check_fitted(self) -> None:
        if not hasattr(self, "best_iteration_"):
            raise NotFittedError("this ranker is not fitted: call fit (or load) first")

    def sidecar(self) -> dict[str, Any]:
        from gbrank import __version__

        self._check_fitted()
        return {
            "backend": self.backend,
            "gbrank_version": __version__,
            "objective": self.objective,
            "kind": self.kind,
            "label": self.label_,
            "feature_names": self.features_,
            "params": self.params,
            "num_boost_round": self.num_boost_round,
            "early_stopping_rounds": self.early_stopping_rounds,
            "min_delta": self.min_delta,
            "best_iteration": self.best_iteration_,
            "label_gain": self.label_gain,
            "seed": self.seed,
            "eval_at": self.eval_at,
            "data_fingerprint": self.fingerprint_,
        }

    def save(self, stem: str | Path) -> tuple[Path, Path]:
        """Write ``<stem><model_suffix>`` (the backend's format) and ``<stem>.json``."""
        stem = Path(stem)
        model_path = stem.with_suffix(self.model_suffix)
        sidecar_path = stem.with_suffix(".json")
        atomic_write_bytes(self._model_bytes(), model_path)
        meta = {**self.sidecar(), "model_file": model_path.name}
        atomic_write_json({**meta, "model_sha256": file_sha256(model_path)}, sidecar_path)
        return model_path, sidecar_path

    @classmethod
    def from_sidecar(cls, meta: dict[str, Any], data: bytes) -> Self:
        ranker = cls(
            objective=meta["objective"],
            params=meta["params"],
            num_boost_round=meta["num_boost_round"],
            early_stopping_rounds=meta["early_stopping_rounds"],
            min_delta=meta.get("min_delta", 0.0),
            label_gain=meta["label_gain"],
            seed=meta["seed"],
            eval_at=meta.get("eval_at", (10, 20)),
        )
        ranker.features_ = list(meta["feature_names"])
        ranker.label_ = meta["label"]
        ranker.best_iteration_ = int(meta["best_iteration"])
        ranker.fingerprint_ = meta["data_fingerprint"]
        ranker._load_model(data)
        return ranker

    @classmethod
    def load(cls, stem: str | Path) -> Self:
        meta, data = read_model(stem)
        if meta["backend"] != cls.backend:
            raise DamagedArtifactError(
                f"{Path(stem).with_suffix('.json')} holds a {meta['backend']} model, not "
                f"{cls.backend}: load it with gbrank.rankers.load_ranker"
            )
        return cls.from_sidecar(meta, data)


class _Compilation:
    """A ranker's ``compile`` running on a thread; ``wait`` joins it. A failure is raised by
    every ``wait`` (nothing scores with a predictor that was not asked for), or, with
    ``fallback``, warned about once, whichever thread waits first."""

    def __init__(self, ranker: Ranker, cache_dir: Path | None, fallback: bool) -> None:
        self.ranker, self.fallback = ranker, fallback
        self.error: Exception | None = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(
            target=self._run, args=(cache_dir,), name="gbrank-compile", daemon=True
        )
        self.thread.start()

    def _run(self, cache_dir: Path | None) -> None:
        try:
            self.ranker.compile(cache_dir=cache_dir)
        except Exception as exc:  # handed to the thread that waits
            self.error = exc

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None and not self.fallback:
            raise self.error
        with self.lock:
            error, self.error = self.error, None
        if error is None:
            return
        warn(
            f"compiling the ranker with {self.ranker.compiler} failed ({error}); "
            f"{self.ranker.backend} scores instead"
        )


def data_fingerprint(frame: pl.DataFrame, columns: Sequence[str]) -> str:
    """Rows, columns and a content hash of the training data (for the sidecar)."""
    digest = int(frame.select(columns).hash_rows(seed=0).sum() or 0)
    return f"{frame.height}x{len(columns)}:{digest:x}"


def read_model(stem: str | Path) -> tuple[dict[str, Any], bytes]:
    """The sidecar of the model at ``stem`` and the model file's bytes, after checking them
    against the sidecar's hash: MissingInputError (exit 66) for a missing file,
    DamagedArtifactError (exit 65) for a damaged one."""
    sidecar_path = Path(stem).with_suffix(".json")
    if not sidecar_path.exists():
        raise MissingInputError(
            f"model sidecar {sidecar_path} does not exist: run `gbrank train` first"
        )
    try:
        meta = json.loads(sidecar_path.read_text())
        str(meta["backend"])  # a sidecar names its backend
        expected = str(meta["model_sha256"])
        name = str(meta.get("model_file") or sidecar_path.with_suffix(".txt").name)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DamagedArtifactError(
            f"artifact {sidecar_path} is damaged (not a model sidecar): rerun `gbrank train`"
        ) from None
    model_path = sidecar_path.with_name(name)
    if not model_path.exists():
        raise MissingInputError(f"model file {model_path} does not exist: run `gbrank train` first")
    data = model_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        raise DamagedArtifactError(
            f"artifact {model_path} is damaged (its SHA-256 differs from the one in "
            f"{sidecar_path.name}): rerun `gbrank train`"
        )
    return meta, data
