"""BPR: matrix factorisation for pairwise ranking (implicit's CPU BayesianPersonalizedRanking)."""

from __future__ import annotations

from collections.abc import Sequence

from implicit.cpu.bpr import BayesianPersonalizedRanking

from gbrank.candidates._scoring import FactorModelSource
from gbrank.candidates.base import EVENT_WEIGHTS, require_positive


class BPRSource(FactorModelSource):
    """Top items by the dot product of BPR user and item factors (item bias included).

    BPR learns, by stochastic gradient descent, to score each user's items above items drawn
    at random from all interactions (so popular items are the usual negatives). It treats the
    users x items matrix as binary: an item the user interacted with is a positive whatever
    the event type. ``event_weights`` therefore has no effect beyond the shared contract (every
    weight is positive); it is accepted so that one config can pass it to every source.

    Scoring is shared with ALS (``factor_candidates``): one matrix product and one vectorised
    top-k per batch of users. Users without history get no rows; items without history are
    never proposed.

    Determinism: implicit runs hogwild SGD, where threads update shared factors without locks
    and each thread draws from its own random stream, so the result depends on the thread
    count and, with more than one thread, on timing. ``num_threads=1`` (the default) gives the
    same factors for the same ``seed`` on every run; more threads fit faster but not
    reproducibly.

    Parameters:
        factors: number of latent factors (implicit adds one for the item bias).
        learning_rate: SGD step size.
        regularization: L2 penalty on the factors.
        iterations: passes over the interactions (one sampled triple per interaction each).
        seed: seed of the initial factors and of the samplers.
        filter_seen: drop the items the user interacted with in the history.
        num_threads: SGD threads; 1 is reproducible, 0 uses every core.
        event_weights: accepted for uniformity; BPR only sees which pairs interacted.

    >>> from datetime import datetime
    >>> import polars as pl
    >>> history = pl.DataFrame(
    ...     {"user": [0, 0, 1], "item": [0, 1, 0], "event": [0, 0, 0],
    ...      "ts": [datetime(2024, 1, 30)] * 3},
    ...     schema_overrides={"user": pl.Int32, "item": pl.Int32, "event": pl.Int8},
    ... )
    >>> source = BPRSource(factors=4).fit(history, n_users=2, n_items=2, as_of=datetime(2024, 2, 1))
    >>> source.generate([1], k=5)["item"].to_list()
    [1]
    """

    kind = "bpr"

    def __init__(
        self,
        *,
        name: str = "bpr",
        factors: int = 64,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        iterations: int = 100,
        seed: int = 0,
        filter_seen: bool = True,
        num_threads: int = 1,
        event_weights: Sequence[float] = EVENT_WEIGHTS,
    ) -> None:
        self.name = name
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.seed = seed
        self.filter_seen = filter_seen
        self.num_threads = num_threads
        self.event_weights = event_weights

    def check_params(self) -> None:
        super().check_params()
        require_positive(self.factors, "factors", integer=True)
        require_positive(self.learning_rate, "learning_rate")
        require_positive(self.regularization, "regularization", zero=True)
        require_positive(self.iterations, "iterations", integer=True)
        require_positive(self.seed, "seed", integer=True, zero=True)
        require_positive(self.num_threads, "num_threads", integer=True, zero=True)

    def _make_model(self, shape: tuple[int, int]) -> BayesianPersonalizedRanking:
        return BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            num_threads=self.num_threads,
            random_state=self.seed,
        )
