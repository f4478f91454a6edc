"""Rankers: gradient-boosted models over candidate features, behind one protocol
(:class:`gbrank.rankers.base.Ranker`).

``train.backend`` picks the backend: ``lightgbm`` (default) or ``xgboost``. Each has a rank
objective for graded labels and a binary one for the CTR and CVR heads; a saved model is
loaded by the backend its sidecar names.

Example:
    >>> make_ranker("xgboost", "rank").objective
    'rank:ndcg'
    >>> make_ranker("lightgbm", "binary").objective
    'binary'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gbrank.rankers.base import Ranker, read_model

#: Each backend's default objective per kind.
DEFAULT_OBJECTIVES = {
    "lightgbm": {"rank": "lambdarank", "binary": "binary"},
    "xgboost": {"rank": "rank:ndcg", "binary": "binary:logistic"},
}
BACKENDS = tuple(DEFAULT_OBJECTIVES)


def backend_class(backend: str) -> type[Ranker]:
    """The ranker class of ``backend`` (imported on use: a backend costs nothing unused)."""
    if backend == "lightgbm":
        from gbrank.rankers.lightgbm import LightGBMRanker

        return LightGBMRanker
    if backend == "xgboost":
        from gbrank.rankers.xgboost import XGBoostRanker

        return XGBoostRanker
    raise ValueError(f"unknown ranker backend {backend!r}; one of {list(BACKENDS)}")


def make_ranker(backend: str, kind: str, objective: str | None = None, **kwargs: Any) -> Ranker:
    """An unfitted ranker of ``backend`` for ``kind`` ("rank" or "binary"); ``objective``
    overrides the backend's default for that kind (and must be of that kind)."""
    cls = backend_class(backend)
    objective = objective or DEFAULT_OBJECTIVES[backend][kind]
    if cls.objectives.get(objective) != kind:
        choices = [o for o, k in cls.objectives.items() if k == kind]
        raise ValueError(f"{backend} {kind} objective must be one of {choices}, got {objective!r}")
    return cls(objective=objective, **kwargs)


def load_ranker(stem: str | Path) -> Ranker:
    """The model saved at ``stem``, by the backend its sidecar names, after the hash check."""
    meta, data = read_model(stem)
    return backend_class(str(meta["backend"])).from_sidecar(meta, data)


__all__ = [
    "BACKENDS",
    "DEFAULT_OBJECTIVES",
    "Ranker",
    "backend_class",
    "load_ranker",
    "make_ranker",
]
