"""Candidate sources: classical recommenders that propose items per user for the rankers.

>>> source = build_source("als_small", "als", {"factors": 32})
>>> source
ALSSource(name='als_small', factors=32, iterations=15, regularization=0.01, alpha=10.0, \
filter_seen=True, seed=0, warm_iterations=3, num_threads=0, event_weights=(1.0, 2.0, 4.0, 8.0))
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from gbrank.candidates.als import ALSSource
from gbrank.candidates.base import (
    CANDIDATE_SCHEMA,
    EVENT_WEIGHTS,
    CandidateSource,
    union_candidates,
)
from gbrank.candidates.bpr import BPRSource
from gbrank.candidates.covisit import CoVisitationSource
from gbrank.candidates.history import HistorySource
from gbrank.candidates.itemknn import ItemKNNSource
from gbrank.candidates.popularity import PopularitySource
from gbrank.candidates.repurchase import RepurchaseSource
from gbrank.candidates.segment_popularity import SegmentPopularitySource
from gbrank.errors import ConfigError

__all__ = [
    "CANDIDATE_SCHEMA",
    "EVENT_WEIGHTS",
    "SOURCE_KINDS",
    "ALSSource",
    "BPRSource",
    "CandidateSource",
    "CoVisitationSource",
    "HistorySource",
    "ItemKNNSource",
    "PopularitySource",
    "RepurchaseSource",
    "SegmentPopularitySource",
    "build_source",
    "union_candidates",
]

SOURCE_KINDS: dict[str, type[CandidateSource]] = {
    "popularity": PopularitySource,
    "history": HistorySource,
    "als": ALSSource,
    "itemknn": ItemKNNSource,
    "bpr": BPRSource,
    "covisit": CoVisitationSource,
    "segment_popularity": SegmentPopularitySource,
    "repurchase": RepurchaseSource,
}


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; valid: {', '.join(choices)}"


def build_source(name: str, kind: str, params: Mapping[str, Any]) -> CandidateSource:
    """Build the source configured under ``candidates.sources.<name>``.

    Unknown kinds, unknown parameter keys and invalid values raise ``ConfigError`` naming the
    config path (and the nearest valid name for a typo).

    >>> build_source("als", "als", {"factor": 32})
    Traceback (most recent call last):
    ...
    gbrank.errors.ConfigError: candidates.sources.als: unknown key 'factor'; did you mean 'factors'?
    """
    where = f"candidates.sources.{name}"
    source_class = SOURCE_KINDS.get(kind)
    if source_class is None:
        raise ConfigError(f"{where}: unknown kind {kind!r}{_did_you_mean(kind, SOURCE_KINDS)}")
    # The name comes from the config table's key, so it is not a parameter here.
    valid = [p for p in inspect.signature(source_class).parameters if p != "name"]
    for key in params:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}{_did_you_mean(key, valid)}")
    # Each source's constructor takes its own keywords, checked against its signature above.
    source = cast(Callable[..., CandidateSource], source_class)(name=name, **params)
    try:
        source.check_params()
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    return source
