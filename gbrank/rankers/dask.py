"""Rankers trained on a Dask cluster (``train.engine = "dask"``), from partitions that stay on
the workers: LightGBM through ``lightgbm.dask``, XGBoost through ``xgboost.dask``.

Each partition is a set of whole users (one query group each), built on a worker from the
features file on shared storage and kept there: a float32 feature matrix, the labels, the group
sizes and the users, in user order. :func:`check_partitions` refuses partitions whose group
sizes do not add up to their rows, or a user found in two partitions (a model would learn from
two halves of one query). :func:`fit` trains on them:

- LightGBM (the ranker, or the classifier for a binary head) for a fixed number of trees: early
  stopping is not used there, as it can hang a distributed fit (LightGBM issues #4493, #7009).
  The number of trees the local engine's early stopping would keep is then found from the
  validation users' partitions scored on the workers tree by tree (NDCG at the first
  ``eval_at``, as LightGBM computes it, or log loss), and the model is cut there.
- XGBoost with its own early stopping on the validation partitions, whose metric XGBoost sums
  across workers. The features are snapped to cut points taken from the rows of hashed users
  (:func:`gbrank.rankers.xgboost.quantile_cuts`: the rows each worker holds of them are
  gathered, about 200,000 in all), as the local backend does, so the trees are one machine's
  (XGBoost's own distributed sketch would bin them a little differently). The partitions are passed as they are (what ``DaskXGBRanker`` calls
  ``allow_group_split=True``: no repartitioning), which is safe because they hold whole users;
  query ids increase along the partitions, so each worker's rows are in query order.

Requires the ``dask`` extra (dask.distributed, dask.array, scikit-learn).
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from gbrank.errors import ConfigError, DataError
from gbrank.rankers.base import Ranker
from gbrank.rankers.lightgbm import LightGBMRanker
from gbrank.rankers.xgboost import (
    DEFAULT_MAX_BIN,
    XGBoostRanker,
    cut_fraction,
    cut_rows,
    quantile_cuts,
    snap,
)

#: (features float32 [rows x n], labels, group sizes, users): one partition, on a worker.
Partition = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _import(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # dask, scikit-learn or dask.dataframe missing
        raise ConfigError(
            f"train.engine is 'dask' but {module} cannot be imported ({exc}). Fix: "
            "pip install 'gbrank[dask]', or set train.engine = 'local'"
        ) from None


def _shape(part: Partition) -> tuple[int, int, int, int]:
    x, y, groups, _ = part
    return int(x.shape[0]), int(y.shape[0]), int(groups.sum()), int((y > 0).sum())


def _users(part: Partition) -> np.ndarray:
    return part[3]


def check_partitions(client: Any, parts: Sequence[Any], what: str) -> list[tuple[int, int]]:
    """The rows and positive rows of each partition (futures of :data:`Partition`); a
    DataError when one's group sizes do not add up to its rows, or when a user is in two
    partitions."""
    shapes = client.gather([client.submit(_shape, p, pure=False) for p in parts])
    for i, (rows, labels, grouped, _) in enumerate(shapes):
        if not rows == labels == grouped:
            raise DataError(
                f"{what}: partition {i} has {rows} rows, {labels} labels and groups of "
                f"{grouped} rows in all: its query groups do not match its rows",
                fix="build each partition from whole users, sorted by user",
            )
    users = client.gather([client.submit(_users, p, pure=False) for p in parts])
    owner: dict[int, int] = {}
    for i, codes in enumerate(users):
        for user in codes.tolist():
            if owner.setdefault(user, i) != i:
                raise DataError(
                    f"{what}: user {user} is in partitions {owner[user]} and {i}; a query "
                    "group split across partitions would be learnt as two",
                    fix="partition the rows by user (each user's rows in one partition)",
                )
    return [(s[0], s[3]) for s in shapes]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lightgbm.dask warns that it ignores ``n_jobs`` (it gives each worker its own threads)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        yield


def _part(part: Partition, i: int) -> np.ndarray:
    return part[i]


def _n_groups(part: Partition) -> int:
    return len(part[2])


def _digest(part: Partition) -> int:
    x, y, _, _ = part
    return int(hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()[:16], 16)


def fit(
    ranker: Ranker,
    client: Any,
    layout: Layout,
    features: Sequence[str],
    label: str,
    rounds: int,
    valid: Layout | None = None,
) -> Ranker:
    """Train ``ranker``'s model on the partitions of ``layout`` (checked by
    :meth:`Layout.of`) for at most ``rounds`` trees, keeping as many as the local engine's
    early stopping would on the partitions of ``valid`` (all of them when there are none, or
    ``early_stopping_rounds`` is 0); sets its booster, features, label, tree count and data
    fingerprint."""
    parts = layout.parts
    if isinstance(ranker, LightGBMRanker):
        _fit_lightgbm(ranker, client, layout, features, rounds)
        ranker.best_iteration_ = best_rounds(ranker, client, valid.parts if valid else [])
    elif isinstance(ranker, XGBoostRanker):
        _fit_xgboost(ranker, client, layout, features, label, rounds, valid)
    else:
        raise ConfigError(f"train.engine = 'dask' cannot train {ranker.backend} models")
    ranker.features_, ranker.label_ = list(features), label
    # The sidecar's fingerprint of the training data: rows, columns and the partitions' hashes.
    digest = sum(client.gather([client.submit(_digest, p, pure=False) for p in parts]))
    ranker.fingerprint_ = f"{sum(layout.rows)}x{len(features) + 1}:dask:{digest % (1 << 64):x}"
    ranker.monitor = None
    return ranker


class Layout:
    """Futures of partitions with their row, positive-row and group counts, gathered once
    when :meth:`of` checks them: what the Dask arrays over them are built from."""

    def __init__(
        self, parts: Sequence[Any], rows: list[int], positives: list[int], groups: list[int]
    ) -> None:
        self.parts, self.rows, self.positives, self.groups = list(parts), rows, positives, groups

    @classmethod
    def of(cls, client: Any, parts: Sequence[Any], what: str) -> Layout:
        """The layout of ``parts``, refused as :func:`check_partitions` says."""
        sizes = check_partitions(client, parts, what)
        groups = client.gather([client.submit(_n_groups, p, pure=False) for p in parts])
        return cls(parts, [r for r, _ in sizes], [n for _, n in sizes], [int(g) for g in groups])

    def nonempty(self) -> Layout:
        """The partitions that hold a row."""
        keep = [i for i, r in enumerate(self.rows) if r > 0]
        return Layout(
            [self.parts[i] for i in keep],
            [self.rows[i] for i in keep],
            [self.positives[i] for i in keep],
            [self.groups[i] for i in keep],
        )

    def blocks(
        self, fn: Any, shapes: Sequence[tuple[int, ...]], dtype: Any, values: Sequence[Any]
    ) -> Any:
        """A Dask array of one block per partition: ``fn(part, values[i])``, of shape
        ``shapes[i]``."""
        import dask
        import dask.array as da

        return da.concatenate(
            [
                da.from_delayed(dask.delayed(fn)(p, v), shape=s, dtype=dtype)
                for p, s, v in zip(self.parts, shapes, values, strict=True)
            ]
        )

    def features(self, n: int) -> Any:
        """The float32 feature matrix, one block of rows per partition."""
        return self.blocks(_part, [(r, n) for r in self.rows], np.float32, [0] * len(self.parts))

    def labels(self) -> Any:
        return self.blocks(_part, [(r,) for r in self.rows], np.float64, [1] * len(self.parts))

    def group_sizes(self) -> Any:
        return self.blocks(_part, [(g,) for g in self.groups], np.int64, [2] * len(self.parts))

    def query_ids(self) -> Any:
        """Query ids numbered along the partitions, one per row (each worker's rows are then
        in query order, however many partitions it holds)."""
        offsets = np.r_[0, np.cumsum(self.groups)[:-1]].tolist()
        return self.blocks(_xgb_qid, [(r,) for r in self.rows], np.int64, offsets)


def _fit_lightgbm(
    ranker: LightGBMRanker,
    client: Any,
    layout: Layout,
    features: Sequence[str],
    rounds: int,
) -> None:
    """``lightgbm.dask`` on the partitions, ``rounds`` trees (no early stopping)."""
    lgb_dask = _import("lightgbm.dask")
    x, y = layout.features(len(features)), layout.labels()
    params = ranker._lgb_params()
    for key in ("metric", "eval_at", "first_metric_only", "verbosity"):
        params.pop(key, None)
    params["verbose"] = -1
    # lightgbm.dask gives each worker its Dask threads (run.workers' share of the cores).
    params.pop("num_threads", None)
    if ranker.kind == "rank":
        model = lgb_dask.DaskLGBMRanker(client=client, n_estimators=rounds, **params)
        with client.as_current(), _quiet():  # lightgbm.dask waits on the default client
            model.fit(x, y, group=layout.group_sizes(), feature_name=list(features))
    else:
        model = lgb_dask.DaskLGBMClassifier(client=client, n_estimators=rounds, **params)
        with client.as_current(), _quiet():
            model.fit(x, y.astype(np.int64), feature_name=list(features))
    ranker.booster_ = model.booster_
    ranker.best_iteration_ = ranker.booster_.current_iteration()
    ranker.compiled_ = None


def _cut_sample(part: Partition, fraction: float, seed: int) -> np.ndarray:
    """On a worker: the rows of a partition that give the cut points."""
    x, _, sizes, users = part
    return x[np.repeat(cut_rows(users, fraction, seed), sizes)]


def _snapped(part: Partition, cuts: list[np.ndarray]) -> Partition:
    """On a worker: a partition with its features snapped to ``cuts``."""
    x, y, sizes, users = part
    return snap(x, cuts), y, sizes, users


def _xgb_cuts(ranker: XGBoostRanker, client: Any, layout: Layout) -> list[np.ndarray]:
    """The cut points of the features, from the rows the local backend takes them from."""
    fraction = cut_fraction(sum(layout.rows))
    samples = client.gather(
        [client.submit(_cut_sample, p, fraction, ranker.seed, pure=False) for p in layout.parts]
    )
    sample = np.concatenate(samples) if samples else np.empty((0, len(ranker.features_)))
    return quantile_cuts(sample.astype(np.float32), ranker.max_bin() or DEFAULT_MAX_BIN)


def _xgb_labels(part: Partition, gains: np.ndarray | None) -> np.ndarray:
    """A partition's labels as XGBoost learns them: the grade's gain (rank objectives, as the
    local backend), or the 0/1 label."""
    y = part[1]
    if gains is not None:
        return gains[y.astype(np.int64)]
    return y.astype(np.float32)


def _xgb_qid(part: Partition, offset: int) -> np.ndarray:
    """Query ids ``offset``, ``offset + 1``, ... for a partition's groups, one per row."""
    sizes = part[2]
    return np.repeat(np.arange(offset, offset + sizes.size, dtype=np.int64), sizes)


def _xgb_matrix(ranker: XGBoostRanker, client: Any, layout: Layout, ref: Any = None) -> Any:
    """A ``DaskQuantileDMatrix`` of the partitions: features, labels and (rank objectives)
    query ids numbered along the partitions."""
    dxgb = _import("xgboost.dask")
    gains = None
    if ranker.kind == "rank" and ranker.label_gain is not None:
        gains = np.asarray(ranker.label_gain, dtype=np.float32)
    shapes = [(r,) for r in layout.rows]
    y = layout.blocks(_xgb_labels, shapes, np.float32, [gains] * len(layout.parts))
    return dxgb.DaskQuantileDMatrix(
        client,
        layout.features(len(ranker.features_)),
        y,
        qid=layout.query_ids() if ranker.kind == "rank" else None,
        feature_names=list(ranker.features_),
        max_bin=ranker.max_bin(),
        ref=ref,
    )


def _fit_xgboost(
    ranker: XGBoostRanker,
    client: Any,
    layout: Layout,
    features: Sequence[str],
    label: str,
    rounds: int,
    valid: Layout | None,
) -> None:
    """``xgboost.dask.train`` on the partitions, early stopping on ``valid`` as the local
    backend does."""
    dxgb = _import("xgboost.dask")
    ranker.features_ = list(features)
    params = ranker._xgb_params()
    # Each worker trains on its Dask threads (run.workers' share of the cores).
    params.pop("nthread", None)
    cuts = _xgb_cuts(ranker, client, layout)
    # Partitions with snapped features, beside the raw ones (Dask runs each where its raw
    # one is; where a worker's rows are does not change the summed histograms).
    snapped = [client.submit(_snapped, p, cuts, pure=False) for p in layout.parts]
    layout = Layout(snapped, layout.rows, layout.positives, layout.groups)
    with client.as_current():  # xgboost.dask looks the client up as the default one
        dtrain = _xgb_matrix(ranker, client, layout)
        evals = []
        if valid is not None and valid.parts and ranker.early_stopping_rounds > 0:
            evals = [(_xgb_matrix(ranker, client, valid, ref=dtrain), "valid")]
        out = dxgb.train(
            client,
            params,
            dtrain,
            num_boost_round=rounds,
            evals=evals,
            verbose_eval=False,
            callbacks=[ranker.early_stopping()] if evals else None,
        )
    booster = out["booster"]
    booster.set_param({"nthread": ranker.num_threads})
    ranker.booster_ = booster
    n = booster.num_boosted_rounds()
    ranker.best_iteration_ = int(booster.best_iteration) + 1 if evals else n


def ndcg_at(
    scores: np.ndarray, labels: np.ndarray, sizes: np.ndarray, k: int, gains: np.ndarray
) -> np.ndarray:
    """NDCG@k of each query group as LightGBM computes it: gains ``gains[label]``, discount
    1/log2(1 + rank), rows in descending score (ties in row order), 1 for a group with no
    gain."""
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    qid = np.repeat(np.arange(sizes.size), sizes)
    order = np.lexsort((np.arange(scores.size), -scores, qid))
    ideal = np.lexsort((-labels, qid))
    pos = np.arange(scores.size) - np.repeat(starts, sizes)
    discount = np.where(pos < k, 1.0 / np.log2(pos + 2.0), 0.0)
    g = gains[labels.astype(np.int64)]
    dcg = np.bincount(qid, weights=g[order] * discount, minlength=sizes.size)
    idcg = np.bincount(qid, weights=g[ideal] * discount, minlength=sizes.size)
    return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 1.0)


def _curve(
    part: Partition, model: str, kind: str, k: int, gains: np.ndarray | None
) -> tuple[np.ndarray, int]:
    """On a worker: the validation metric of one partition after each tree, summed over its
    groups (NDCG) or rows (log loss), and the number of groups or rows."""
    import lightgbm as lgb

    booster = lgb.Booster(model_str=model)
    x, y, sizes, _ = part
    n = booster.current_iteration()
    total = np.zeros(x.shape[0])
    out = np.zeros(n)
    for t in range(n):
        total += booster.predict(x, start_iteration=t, num_iteration=1, raw_score=True)
        if kind == "rank":
            assert gains is not None
            out[t] = ndcg_at(total, y, sizes, k, gains).sum()
        else:
            p = np.clip(1.0 / (1.0 + np.exp(-total)), 1e-15, 1 - 1e-15)
            out[t] = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum()
    return out, int(sizes.size if kind == "rank" else x.shape[0])


def best_rounds(ranker: LightGBMRanker, client: Any, valid: Sequence[Any]) -> int:
    """The number of trees the local engine's early stopping would keep: the best validation
    score (mean NDCG over the groups, or minus the mean log loss) over the partitions
    ``valid``, where none better by more than ``min_delta`` follows within
    ``early_stopping_rounds`` trees; every tree when there is no validation partition or early
    stopping is off."""
    n = ranker.booster_.current_iteration()
    patience = ranker.early_stopping_rounds
    if not valid or patience <= 0:
        return n
    gains = None if ranker.label_gain is None else np.asarray(ranker.label_gain, dtype=np.float64)
    if ranker.kind == "rank" and gains is None:
        gains = np.asarray([2.0**i - 1 for i in range(32)])
    model = ranker.booster_.model_to_string(num_iteration=-1)
    k = int(ranker.eval_at[0]) if ranker.kind == "rank" else 0
    curves = client.gather(
        [client.submit(_curve, p, model, ranker.kind, k, gains, pure=False) for p in valid]
    )
    count = max(sum(n for _, n in curves), 1)
    score = np.sum([curve for curve, _ in curves], axis=0) / count
    if ranker.kind != "rank":
        score = -score  # log loss: lower is better
    return stopping_round(score, patience, ranker.min_delta)


def stopping_round(score: np.ndarray, patience: int, min_delta: float = 0.0) -> int:
    """Early stopping on a validation curve (higher is better), as LightGBM's callback: the
    1-based round of the best score seen when ``patience`` rounds pass without one better by
    more than ``min_delta`` (or when the curve ends).

    Example:
        >>> stopping_round(np.array([0.1, 0.3, 0.2, 0.3, 0.25, 0.9]), patience=3)
        2
        >>> stopping_round(np.array([0.1, 0.3, 0.31, 0.32, 0.33, 0.34]), 2, min_delta=0.05)
        2
    """
    best, best_at = -np.inf, 0
    for t, value in enumerate(score):
        if value > best + min_delta:
            best, best_at = value, t
        elif t - best_at >= patience:
            break
    return best_at + 1
