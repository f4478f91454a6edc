"""Blends: one score per candidate from several heads' scores.

Two kinds, both configured under ``[blend]``:

- ``ctr_cvr``: ``p(click) * p(purchase | click)``, the probability of a click followed by a
  purchase, from the CTR head and the CVR head (available when both are trained). With
  ``train.cvr_rows = "all"`` the CVR head predicts ``p(purchase)`` instead and the product is a
  heuristic that favours items both likely to be clicked and bought.
- weighted sums (``blend.weights``: ``name = {head = weight}``, for example OTTO's
  ``{ranker_click = 0.1, ranker_cart = 0.3, ranker_purchase = 0.6}``). Heads score on different
  scales (lambdarank margins, probabilities), so each head's scores are first standardised
  within each user's candidates (mean 0, standard deviation 1; a user whose scores are all equal
  gets 0): only the order within a user matters to the lists, and the weights then say how much
  each head's order counts.

Example:
    >>> users = np.array([0, 0, 0, 1, 1])
    >>> scores = {"a": np.array([1.0, 2.0, 3.0, 5.0, 5.0]), "b": np.array([3.0, 2.0, 1.0, 0.0, 1.0])}
    >>> blend_scores(scores, users, {"a": 0.75, "b": 0.25}).round(3).tolist()
    [-0.612, 0.0, 0.612, -0.25, 0.25]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

PRODUCT = "ctr_cvr"


def blend_names(heads: Sequence[str], weights: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The blends a run with these heads offers: ``ctr_cvr`` when both heads are trained, then
    the weighted ones."""
    out = [PRODUCT] if {"ctr", "cvr"} <= set(heads) else []
    return out + list(weights)


def standardised(scores: np.ndarray, users: np.ndarray) -> np.ndarray:
    """``scores`` standardised within each user's rows (population standard deviation)."""
    frame = pl.DataFrame({"u": users, "s": scores.astype(np.float64)})
    s, u = pl.col("s"), pl.col("u")
    spread = s.std(ddof=0).over(u)
    z = pl.when(spread > 0).then((s - s.mean().over(u)) / spread).otherwise(0.0)
    return frame.select(z).to_series().to_numpy()


def blend_scores(
    scores: Mapping[str, np.ndarray], users: np.ndarray, weights: Mapping[str, float] | None
) -> np.ndarray:
    """The blended score of each row: the product of the CTR and CVR heads when ``weights`` is
    None (``ctr_cvr``), else the weighted sum of the heads' per-user standardised scores."""
    if weights is None:
        return scores["ctr"] * scores["cvr"]
    out = np.zeros(users.size, dtype=np.float64)
    for head, weight in weights.items():
        out += float(weight) * standardised(scores[head], users)
    return out


def blend_weights(
    name: str, weights: Mapping[str, Mapping[str, float]]
) -> Mapping[str, float] | None:
    """The weights of blend ``name`` (None for ``ctr_cvr``)."""
    return None if name == PRODUCT else weights[name]


def heads_of(name: str, weights: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The heads whose scores model ``name`` (a head or a blend) needs."""
    if name == PRODUCT:
        return ["ctr", "cvr"]
    if name in weights:
        return list(weights[name])
    return [name]


def model_scores(
    name: str,
    scores: Mapping[str, np.ndarray],
    users: np.ndarray,
    weights: Mapping[str, Mapping[str, float]],
) -> np.ndarray:
    """The scores of model ``name``: a head's own (from ``scores``) or a blend's of them."""
    if name != PRODUCT and name not in weights:
        return scores[name]
    return blend_scores(scores, users, blend_weights(name, weights))
