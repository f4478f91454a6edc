"""Time folds: history strictly before ``as_of``, labels in ``[as_of, as_of + horizon)``.

The scheme (see docs/architecture.md):

- ``train`` fold: ``as_of = T - horizon``; the rankers learn from its labels.
- ``eval`` fold: ``as_of = T``; everything is refit on history before ``T`` and measured on
  the last horizon of the data.
- ``inference``: ``as_of`` = end of data, no labels.

``T`` is ``folds.as_of`` when set, else the end of the data minus one horizon, where the end of
the data is the first full hour after the last event.

Example:
    >>> folds = make_folds(datetime(2024, 3, 1), horizon_days=7)
    >>> folds["eval"].as_of, folds["train"].as_of
    (datetime.datetime(2024, 2, 23, 0, 0), datetime.datetime(2024, 2, 16, 0, 0))
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from gbrank import columns as C
from gbrank.errors import ConfigError, DataError, warn

FOLD_NAMES = ("train", "eval", "inference")


@dataclass(frozen=True)
class Fold:
    name: str
    as_of: datetime
    horizon: timedelta

    @property
    def label_end(self) -> datetime:
        return self.as_of + self.horizon

    @property
    def has_labels(self) -> bool:
        return self.name != "inference"

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "as_of": self.as_of.isoformat(),
            "label_end": self.label_end.isoformat(),
        }


def data_end(events: pl.DataFrame) -> datetime:
    """The end of the data: the first full hour after the last event.

    Hour rather than day alignment, so that a log whose last day is barely started (it ends at
    00:50, say) still gets a full last horizon in its eval window.
    """
    last = events[C.TS].max()
    if last is None:
        raise DataError("no events", column=C.TS)
    assert isinstance(last, datetime)
    return datetime(last.year, last.month, last.day, last.hour) + timedelta(hours=1)


def parse_as_of(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text).replace(tzinfo=None)
    except ValueError as exc:
        raise ConfigError(f"folds.as_of = '{text}' is not an ISO date such as 2024-02-23") from exc


def make_folds(end: datetime, horizon_days: int, as_of: str = "") -> dict[str, Fold]:
    """The train, eval and inference folds for data ending at ``end``."""
    horizon = timedelta(days=horizon_days)
    t = parse_as_of(as_of) if as_of else end - horizon
    return {
        "train": Fold("train", t - horizon, horizon),
        "eval": Fold("eval", t, horizon),
        "inference": Fold("inference", end, horizon),
    }


def rolling_folds(end: datetime, horizon_days: int, n_folds: int) -> list[Fold]:
    """``n_folds`` consecutive folds ending at ``end``, oldest first, for cross-validation."""
    horizon = timedelta(days=horizon_days)
    return [Fold(f"fold{i}", end - horizon * (n_folds - i), horizon) for i in range(n_folds)]


def history(events: pl.DataFrame, fold: Fold) -> pl.DataFrame:
    """Events strictly before the fold's ``as_of`` (``events`` itself, not a copy, when every
    event is: the inference fold's history is the whole log)."""
    last = events[C.TS].max()
    if last is None or last < fold.as_of:  # type: ignore[operator]
        return events
    return events.filter(pl.col(C.TS) < fold.as_of)


def label_window(events: pl.DataFrame, fold: Fold) -> pl.DataFrame:
    """Events in ``[as_of, as_of + horizon)``."""
    return events.filter((pl.col(C.TS) >= fold.as_of) & (pl.col(C.TS) < fold.label_end))


def check_learnable(events: pl.DataFrame) -> None:
    """A DataError when no event is deeper than a view: no target has a single positive."""
    if events.is_empty() or int(events[C.EVENT].max()) < C.EVENT_CODE["click"]:  # type: ignore[arg-type]
        raise DataError(
            "no click, cart or purchase events: nothing to learn",
            column=C.RAW_EVENT,
            values=events[C.EVENT].unique().head(5).to_list() if not events.is_empty() else None,
            fix='map your event names under [data.event_map], e.g. "add_to_basket" = "cart"',
        )


def check_fold(events: pl.DataFrame, fold: Fold, targets: tuple[str, ...] | list[str] = ()) -> None:
    """Raise a DataError when the fold's history or label window is empty, or when its label
    window holds no positive for any of ``targets``; warn when it holds none for some."""
    start, last = events[C.TS].min(), events[C.TS].max()
    span = f"the events span {start!s} .. {last!s}"
    if history(events, fold).is_empty():
        raise DataError(
            f"fold '{fold.name}' (as_of {fold.as_of}) has no history before as_of; {span}",
            column=C.TS,
            fix="use a shorter folds.horizon_days or a later folds.as_of",
        )
    if fold.has_labels and label_window(events, fold).is_empty():
        raise DataError(
            f"fold '{fold.name}' has an empty label window [{fold.as_of}, {fold.label_end}); "
            f"{span}",
            column=C.TS,
            fix="use an earlier folds.as_of or check the timestamps",
        )
    if not (fold.has_labels and targets):
        return
    window_events = label_window(events, fold)
    n_users = window_events[C.USER].n_unique()
    if n_users < 2:
        raise DataError(
            f"fold '{fold.name}' has {n_users} user with events in its label window "
            f"[{fold.as_of}, {fold.label_end}): a ranker needs at least 2 users to learn from",
            column=C.RAW_USER,
            fix="use more data (more users), or a longer folds.horizon_days",
        )
    deepest = window_events[C.EVENT].max()
    empty = [t for t in targets if deepest is None or deepest < C.EVENT_CODE[t]]  # type: ignore[operator]
    window = f"label window [{fold.as_of}, {fold.label_end})"
    if len(empty) == len(targets):
        raise DataError(
            f"fold '{fold.name}' has no {' or '.join(empty)} event in its {window}: nothing to "
            "learn or measure",
            column=C.RAW_EVENT,
            fix="use a longer folds.horizon_days or another folds.as_of, or map your event "
            "names under [data.event_map]",
        )
    if empty:
        warn(
            f"fold '{fold.name}' has no {' or '.join(empty)} event in its {window}: the metrics "
            f"of {', '.join(empty)} will be empty. Fix: drop {', '.join(repr(t) for t in empty)} "
            "from eval.targets, or use a longer folds.horizon_days"
        )
