"""ALS: implicit-feedback matrix factorisation (implicit's CPU AlternatingLeastSquares)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares

from gbrank.candidates._scoring import FactorModelSource
from gbrank.candidates.base import EVENT_WEIGHTS, CandidateSource, require_positive


class ALSSource(FactorModelSource):
    """Top items by the dot product of ALS user and item factors.

    The model is fitted on the users x items confidence matrix ``alpha * sum(weight(event))``.
    Users without history get no rows, and items without history are never proposed (their
    factors carry no signal). Candidates are scored here, one matrix product and one vectorised
    top-k per batch of users, rather than by implicit's ``recommend``, whose seen-item filter
    loops over users in Python. BLAS is pinned to one thread while fitting and scoring, as
    implicit advises; its solver threads (``num_threads``) solve each user or item on its own,
    so the result for a given ``seed`` does not depend on the thread count.

    Parameters:
        factors: number of latent factors.
        iterations: ALS sweeps (users then items).
        regularization: L2 penalty on the factors.
        alpha: confidence scale applied to the summed event weights.
        filter_seen: drop the items the user interacted with in the history.
        seed: seed of the random factor initialisation.
        warm_iterations: sweeps of a fit started from the factors of a fit on an earlier
            history (``warm_start``; the pipeline passes each fold the previous fold's source,
            whose history is nested in its own); 0 always starts from random factors.
        num_threads: implicit's solver and top-k threads; 0 uses every core.
        event_weights: weight of each event type (view, click, cart, purchase).

    >>> from datetime import datetime
    >>> import polars as pl
    >>> history = pl.DataFrame(
    ...     {"user": [0, 0, 1], "item": [0, 1, 0], "event": [0, 0, 0],
    ...      "ts": [datetime(2024, 1, 30)] * 3},
    ...     schema_overrides={"user": pl.Int32, "item": pl.Int32, "event": pl.Int8},
    ... )
    >>> source = ALSSource(factors=4).fit(history, n_users=2, n_items=2, as_of=datetime(2024, 2, 1))
    >>> source.generate([1], k=5)["item"].to_list()
    [1]
    """

    kind = "als"

    def __init__(
        self,
        *,
        name: str = "als",
        factors: int = 64,
        iterations: int = 15,
        regularization: float = 0.01,
        alpha: float = 10.0,
        filter_seen: bool = True,
        seed: int = 0,
        warm_iterations: int = 3,
        num_threads: int = 0,
        event_weights: Sequence[float] = EVENT_WEIGHTS,
    ) -> None:
        self.name = name
        self.factors = factors
        self.iterations = iterations
        self.regularization = regularization
        self.alpha = alpha
        self.filter_seen = filter_seen
        self.seed = seed
        self.warm_iterations = warm_iterations
        self.num_threads = num_threads
        self.event_weights = event_weights

    def check_params(self) -> None:
        super().check_params()
        require_positive(self.factors, "factors", integer=True)
        require_positive(self.iterations, "iterations", integer=True)
        require_positive(self.regularization, "regularization", zero=True)
        require_positive(self.alpha, "alpha")
        require_positive(self.seed, "seed", integer=True, zero=True)
        require_positive(self.warm_iterations, "warm_iterations", integer=True, zero=True)
        require_positive(self.num_threads, "num_threads", integer=True, zero=True)

    @property
    def warm_startable(self) -> bool:
        return self.warm_iterations > 0

    def warm_start(self, previous: CandidateSource) -> bool:
        """Start the next fit from ``previous``'s factors, for ``warm_iterations`` sweeps,
        when it is a fitted ALS source with as many factors (otherwise from random factors).
        The vocabularies must match; a fit whose matrix has other dimensions starts cold."""
        self._start: tuple[np.ndarray, np.ndarray] | None = None
        if (
            self.warm_startable
            and isinstance(previous, ALSSource)
            and hasattr(previous, "user_factors_")
            and previous.factors == self.factors
        ):
            self._start = (previous.user_factors_, previous.item_factors_)
        return self._start is not None

    def _make_model(self, shape: tuple[int, int]) -> AlternatingLeastSquares:
        start = getattr(self, "_start", None)
        if start is not None and (start[0].shape[0], start[1].shape[0]) != shape:
            start = None
        warm = start is not None
        model = AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.warm_iterations if warm else self.iterations,
            random_state=self.seed,
            num_threads=self.num_threads,
        )
        if start is not None:  # implicit starts from factors already set; copies, as it
            # updates them in place
            model.user_factors = np.array(start[0], dtype=np.float32)
            model.item_factors = np.array(start[1], dtype=np.float32)
        self._start = None
        return model
