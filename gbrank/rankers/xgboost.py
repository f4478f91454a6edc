"""XGBoost backend: ``rank:ndcg`` or ``rank:pairwise`` on graded labels, or
``binary:logistic`` (CTR, CVR heads), through ``xgboost.train`` on a ``QuantileDMatrix``.

Graded labels carry the configured gains exactly as LightGBM's ``label_gain`` does: XGBoost
learns from the gain of each row's grade with ``ndcg_exp_gain`` off (its gain is then the
label itself, instead of ``2**label - 1``). Queries are passed as ``qid`` from
:func:`gbrank.rankers.base.query_groups`. Models are saved in XGBoost's binary JSON format
(``<stem>.ubj``) beside the JSON sidecar.

Features are binned by gbrank, not by XGBoost's quantile sketch: :func:`quantile_cuts` takes
each feature's cut points from a sample of the training rows chosen by a stable hash of the
user (about :data:`CUT_SAMPLE_ROWS` rows, whole users), and :func:`snap` moves every value to
the lowest cut at or below it before XGBoost sees it. Each feature then has at most
``max_bin`` distinct values, which XGBoost bins exactly, so the trees' thresholds are the cuts
themselves and the model scores raw features as it scores snapped ones. The cuts depend only
on the rows, not on how they are spread over processes: ``xgboost.dask`` on any number of
workers (whose merged sketches would bin a little differently) learns the trees of one
machine (:mod:`gbrank.rankers.dask`).

Example:
    >>> ranker = XGBoostRanker("rank:ndcg", label_gain=[0, 1, 2, 6, 16])  # doctest: +SKIP
    >>> ranker.fit(train, features, label="grade", valid=valid)         # doctest: +SKIP
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
import xgboost as xgb

from gbrank import columns as C
from gbrank.errors import ConfigError, DamagedArtifactError
from gbrank.rankers.base import Ranker, feature_matrix, query_groups
from gbrank.rankers.sampling import stable_unit

#: Parameters gbrank sets itself.
_OWN_PARAMS = ("objective", "seed", "nthread", "eval_metric", "ndcg_exp_gain", "verbosity")
#: Parameters of the rank objectives, left out of a binary head's.
_RANK_ONLY = ("lambdarank_num_pair_per_sample", "lambdarank_pair_method", "lambdarank_unbiased")


def check_params(params: Mapping[str, Any], where: str = "train.xgboost_params") -> None:
    """A ConfigError for a parameter XGBoost does not use or a value it rejects, found by a
    one-round fit on a tiny frame before any real training."""
    rng = np.random.default_rng(0)
    data = xgb.DMatrix(rng.random((40, 2)), label=rng.integers(0, 3, 40), qid=np.repeat([0, 1], 20))
    probe = {"objective": "rank:ndcg", "nthread": 1, "verbosity": 1, **params}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            xgb.train(probe, data, num_boost_round=1)
        except xgb.core.XGBoostError as exc:
            reason = str(exc).strip().splitlines()[0]
            reason = re.sub(r"^\[[\d:]+\] \S+: ", "", reason)
            raise ConfigError(f"{where}: XGBoost rejects the parameters: {reason}") from None
    for warning in caught:
        unused = re.search(r"Parameters: \{(.*?)\} are not used", str(warning.message), re.S)
        if unused:
            names = unused.group(1).replace('"', "").strip()
            raise ConfigError(f"{where}: unknown XGBoost parameter(s) {names}")


#: About this many training rows (whole users) give the features' cut points, as LightGBM's
#: ``bin_construct_sample_cnt``; :data:`CUT_USERS_SALT` salts the users' hash.
CUT_SAMPLE_ROWS, CUT_USERS_SALT = 200_000, 5
#: XGBoost's default ``max_bin``.
DEFAULT_MAX_BIN = 256


def cut_fraction(rows: int) -> float:
    """The share of users whose rows give the cut points, for ``rows`` training rows."""
    return min(1.0, CUT_SAMPLE_ROWS / max(rows, 1))


def cut_rows(users: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A mask of the rows (``users``: each row's user code) that give the cut points: those of
    users whose stable hash is below ``fraction``, so a user's rows are all in or all out
    whatever process holds them."""
    return stable_unit(users, seed, CUT_USERS_SALT) < fraction


def quantile_cuts(sample: np.ndarray, max_bin: int) -> list[np.ndarray]:
    """Per column of ``sample`` (float32 rows; NaN is missing): its sorted cut points, at most
    ``max_bin - 1`` distinct float32 values above the column's smallest, taken at evenly
    spaced ranks of its sorted values and ending with its largest (every distinct value
    but the smallest when there are fewer than ``max_bin``).

    Example:
        >>> quantile_cuts(np.array([[1], [2], [2], [3], [np.nan]], np.float32), 256)[0]
        array([2., 3.], dtype=float32)
        >>> quantile_cuts(np.arange(10, dtype=np.float32)[:, None], 4)[0]
        array([3., 6., 9.], dtype=float32)
    """
    if max_bin < 2:
        raise ConfigError(f"max_bin must be at least 2, got {max_bin}")
    cuts = []
    for j in range(sample.shape[1]):
        values = np.sort(sample[:, j])
        values = values[: values.size - int(np.isnan(values).sum())]
        if values.size == 0:
            cuts.append(np.empty(0, np.float32))
            continue
        distinct = np.unique(values)
        if distinct.size > max_bin:
            ranks = np.arange(1, max_bin) * values.size // (max_bin - 1)
            distinct = np.unique(values[np.minimum(ranks, values.size - 1)])
        cuts.append(distinct[distinct > values[0]].astype(np.float32))
    return cuts


def snap(x: np.ndarray, cuts: list[np.ndarray]) -> np.ndarray:
    """``x`` (float32 rows) with each value moved to the largest cut of its column at or
    below it, and values below the first cut to the float32 just beneath it (NaN stays NaN):
    a copy with at most ``len(cuts[j]) + 1`` distinct values in column j. A tree split at a
    cut sends a raw value and its snapped value the same way.

    Example:
        >>> x = np.array([[2.5], [2.7], [9.0], [np.nan], [3.0]], np.float32)
        >>> snap(x, [np.array([2, 3], np.float32)])[:, 0]
        array([ 2.,  2.,  3., nan,  3.], dtype=float32)
    """
    out = np.empty_like(x, order="F")
    for j, column_cuts in enumerate(cuts):
        column = x[:, j]
        below = np.nextafter(column_cuts[0], np.float32(-np.inf)) if column_cuts.size else 0
        table = np.r_[np.float32(below), column_cuts].astype(np.float32)
        snapped = table[np.searchsorted(column_cuts, column, side="right")]
        out[:, j] = np.where(np.isnan(column), np.float32(np.nan), snapped)
    return out


def _number(value: float | list[float]) -> float:
    return float(value[0] if isinstance(value, list) else value)


class _Monitor(xgb.callback.TrainingCallback):
    """Hands the validation metric of each round to ``monitor`` (an exception stops training)."""

    def __init__(self, monitor: Any) -> None:
        super().__init__()
        self.monitor = monitor

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        # The first metric of the first validation set: the one early stopping watches.
        for metrics in evals_log.values():
            values = next(iter(metrics.values()), None)
            if values:
                self.monitor(epoch + 1, float(values[-1]))
            break
        return False


class XGBoostRanker(Ranker):
    """An XGBoost model over candidate rows (``tree_method="hist"``). Early stopping is on
    NDCG at the first ``eval_at`` (rank objectives) or log loss (binary)."""

    backend = "xgboost"
    objectives = {"rank:ndcg": "rank", "rank:pairwise": "rank", "binary:logistic": "binary"}
    model_suffix = ".ubj"

    @classmethod
    def check_params(cls, params: Mapping[str, Any], where: str) -> None:
        check_params(params, where)

    def _xgb_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "objective": self.objective,
            "seed": self.seed,
            "nthread": self.num_threads,
            "tree_method": "hist",
            "verbosity": 0,
        }
        if self.kind == "rank":
            params["eval_metric"] = f"ndcg@{self.eval_at[0]}"
            params["ndcg_exp_gain"] = False  # the gain is the label: the configured gain
        else:
            params["eval_metric"] = "logloss"
        own = _OWN_PARAMS if self.kind == "rank" else (*_OWN_PARAMS, *_RANK_ONLY)
        params.update({k: v for k, v in self.params.items() if k not in own})
        return params

    def early_stopping(self) -> xgb.callback.EarlyStopping:
        """The early stopping callback: ``early_stopping_rounds`` of patience, a round better
        only when it beats the best by more than ``min_delta``; every tree is kept (the best
        count is ``best_iteration + 1``)."""
        return xgb.callback.EarlyStopping(
            rounds=self.early_stopping_rounds,
            maximize=self.kind == "rank",
            min_delta=self.min_delta,
            save_best=False,
        )

    def _labels(self, frame: pl.DataFrame) -> np.ndarray:
        grades = frame[self.label_].to_numpy()
        if self.kind == "rank" and self.label_gain is not None:
            return np.asarray(self.label_gain, dtype=np.float32)[grades.astype(np.int64)]
        return grades.astype(np.float32)

    def _matrix(self, frame: pl.DataFrame, ref: Any = None) -> xgb.QuantileDMatrix:
        """The frame's QuantileDMatrix: the training matrix, its features snapped to
        :meth:`cuts`, or given ``ref`` a validation matrix binned by ``ref``'s."""
        qid = query_groups(frame).qid if self.kind == "rank" else None
        x = feature_matrix(frame, self.features_)
        if ref is None:
            x = snap(x, self.cuts(frame))
        return xgb.QuantileDMatrix(
            x,
            label=self._labels(frame),
            qid=qid,
            feature_names=list(self.features_),
            nthread=self.num_threads,
            max_bin=self.max_bin(),
            ref=ref,
        )

    def max_bin(self) -> int | None:
        """``max_bin`` of the parameters: a QuantileDMatrix bins its features before the booster
        sees them, so it must be given the booster's (XGBoost refuses a mismatch)."""
        value = self.params.get("max_bin")
        return None if value is None else int(value)

    def cuts(self, frame: pl.DataFrame) -> list[np.ndarray]:
        """The cut points of the features, from the rows of ``frame`` :func:`cut_rows` picks."""
        rows = cut_rows(frame[C.USER].to_numpy(), cut_fraction(frame.height), self.seed)
        sample = feature_matrix(frame.filter(pl.Series(rows)), self.features_)
        return quantile_cuts(sample, self.max_bin() or DEFAULT_MAX_BIN)

    def _train(self, train: pl.DataFrame, valid: pl.DataFrame | None) -> None:
        dtrain = self._matrix(train)
        evals = []
        callbacks: list[xgb.callback.TrainingCallback] = []
        if valid is not None:
            evals = [(self._matrix(valid, ref=dtrain), "valid")]
            callbacks.append(self.early_stopping())
            if self.monitor is not None:
                callbacks.append(_Monitor(self.monitor))
        self.booster_ = xgb.train(
            self._xgb_params(),
            dtrain,
            num_boost_round=self.num_boost_round,
            evals=evals,
            verbose_eval=False,
            callbacks=callbacks or None,
        )
        rounds = self.booster_.num_boosted_rounds()
        if evals:
            rounds = int(self.booster_.best_iteration) + 1
        self.best_iteration_ = rounds

    def _predict(self, frame: pl.DataFrame) -> np.ndarray:
        scores = self.booster_.inplace_predict(
            feature_matrix(frame, self.features_), iteration_range=(0, self.best_iteration_)
        )
        return np.asarray(scores, dtype=np.float64)

    def feature_importance(self) -> pl.DataFrame:
        self._check_fitted()
        booster = self.booster_[: self.best_iteration_]
        gain = booster.get_score(importance_type="total_gain")
        return pl.DataFrame(
            {"feature": self.features_, "gain": [_number(gain.get(f, 0.0)) for f in self.features_]}
        ).sort("gain", descending=True)

    def sidecar(self) -> dict[str, Any]:
        return {
            **super().sidecar(),
            "xgboost_version": xgb.__version__,
            "backend_params": self._xgb_params(),
        }

    def _model_bytes(self) -> bytes:
        return bytes(self.booster_.save_raw("ubj"))

    def _load_model(self, data: bytes) -> None:
        booster = xgb.Booster()
        booster.load_model(bytearray(data))
        if list(booster.feature_names or []) != self.features_:
            raise DamagedArtifactError(
                "the XGBoost model and its sidecar disagree on the feature names: "
                "rerun `gbrank train`"
            )
        booster.set_param({"nthread": self.num_threads})
        self.booster_ = booster
