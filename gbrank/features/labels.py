"""Labels from the label window ``[as_of, as_of + horizon)``.

A target is a funnel stage: an item is a positive for ``cart`` when the user carted *or*
purchased it in the window (a deeper event implies the shallower ones). The graded relevance
used by lambdarank is ``1 + code`` of the deepest event type, 0 when the user did nothing with
the item; its gain per grade comes from ``events.gains``.

Example:
    >>> window = pl.DataFrame({"user": [0, 0], "item": [5, 5], "event": [1, 3]},
    ...                       schema={"user": pl.Int32, "item": pl.Int32, "event": pl.Int8})
    >>> build_labels(window).row(0)
    (0, 5, 4, 1, 1, 1)
"""

from __future__ import annotations

import polars as pl

from gbrank import columns as C


def build_labels(label_events: pl.DataFrame, targets: tuple[str, ...] = C.TARGETS) -> pl.DataFrame:
    """One row per (user, item) that had any event in the window: grade and binary labels."""
    deepest = label_events.group_by(C.USER, C.ITEM).agg(pl.col(C.EVENT).max().alias("_deepest"))
    return deepest.select(
        C.USER,
        C.ITEM,
        (pl.col("_deepest").cast(pl.Int8) + 1).alias(C.GRADE),
        *[
            (pl.col("_deepest") >= C.EVENT_CODE[t]).cast(pl.Int8).alias(C.label_col(t))
            for t in targets
        ],
    ).sort(C.USER, C.ITEM)


def relevant_items(labels: pl.DataFrame, target: str) -> pl.DataFrame:
    """The (user, item) pairs that are positives for ``target``: the ground truth for metrics."""
    return labels.filter(pl.col(C.label_col(target)) == 1).select(C.USER, C.ITEM)


def attach_labels(candidates: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """Left-join labels onto candidate rows, keeping their order; rows without an event in the
    window get zeros. Only the keys are joined: the (wide) feature columns are not copied."""
    keys = [C.USER, C.ITEM]
    label_cols = [c for c in labels.columns if c not in keys]
    joined = (
        candidates.select(keys)
        .join(labels, on=keys, how="left", maintain_order="left")
        .with_columns(pl.col(c).fill_null(0) for c in label_cols)
    )
    if joined.height != candidates.height:
        raise ValueError("labels must hold at most one row per (user, item)")
    return candidates.hstack(joined.drop(keys).get_columns())
