"""The rows a ranker learns from: a seeded sample with a budget, not every candidate.

Users with at least one labelled candidate are chosen by a stable hash of their code, up to
``users``; every labelled row of a chosen user is kept, and ``negatives`` of its unlabelled
rows: a share ``hard_share`` of them the user's best-ranked candidates (hard negatives: what the
sources liked most and the user did not touch), the rest at random (a hashed key per pair;
random ones also fill a hard quota that the ranked candidates cannot). A fold with fewer than
``min_rows`` rows keeps every negative: there is no time to save, and little data to lose.
Everything is a whole-frame Polars or numpy operation; nothing loops over users.

Example:
    >>> frame = pl.DataFrame({"user": [0, 0, 0, 1, 1], "item": [1, 2, 3, 1, 4],
    ...                       "grade": [2, 0, 0, 0, 0], "als_rank": [3, 1, 2, 1, 2]},
    ...                      schema_overrides={"user": pl.Int32, "item": pl.Int32})
    >>> sample_keys(frame, SampleSpec(negatives=1, hard_share=1.0)).rows()
    [(0, 1), (0, 2)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from gbrank import columns as C
from gbrank.errors import DataError

NO_RANK = 1 << 30  # a row no source ranked: never a hard negative


def stable_unit(codes: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A deterministic pseudo-random number in [0, 1) per code (a splitmix64 finalizer),
    identical across library versions, unlike Polars' ``hash``."""
    with np.errstate(over="ignore"):
        x = codes.astype(np.uint64) + np.uint64((seed * 1_000_003 + salt) % 2**63)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


def pair_unit(users: np.ndarray, items: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """:func:`stable_unit` of the (user, item) pair."""
    pair = users.astype(np.uint64) << np.uint64(32)
    pair |= items.astype(np.uint64)
    return stable_unit(pair, seed, salt)


#: Salts of :func:`stable_unit` for choosing users: the training sample, the eval fold's users.
TRAIN_USERS_SALT, EVAL_USERS_SALT = 3, 4


def hashed_subset(codes: np.ndarray, n: int, seed: int, salt: int) -> np.ndarray:
    """At most ``n`` of the distinct sorted ``codes`` (every one when ``n`` is 0 or they are
    fewer): those with the smallest :func:`stable_unit`, returned sorted. Taking more never
    drops one already taken, so budgets nest."""
    if not n or codes.size <= n:
        return codes
    order = np.argsort(stable_unit(codes, seed, salt), kind="stable")
    return np.sort(codes[order[:n]])


@dataclass(frozen=True)
class SampleSpec:
    """The training budget (``[train.sample]`` in the config)."""

    users: int = 0  # at most this many users with a labelled candidate (0: every one)
    negatives: int = 0  # unlabelled rows kept per user (0: every one)
    hard_share: float = 0.0  # of them, the share taken by best candidate rank
    min_rows: int = 0  # below this many rows (of the chosen users) every negative is kept
    seed: int = 0


def sample_keys(
    frame: pl.DataFrame, spec: SampleSpec, rank_columns: Sequence[str] | None = None
) -> pl.DataFrame:
    """The (user, item) keys of the training sample of ``frame``, sorted by user and item.

    ``frame`` holds ``user``, ``item``, ``grade`` (0: unlabelled) and the sources' rank
    columns (``<source>_rank``; all of them when ``rank_columns`` is None).
    """
    ranks = (
        [c for c in frame.columns if c.endswith("_rank")]
        if rank_columns is None
        else list(rank_columns)
    )
    best = (
        pl.min_horizontal(*[pl.col(c) for c in ranks]).fill_null(NO_RANK)
        if ranks
        else pl.lit(NO_RANK)
    )
    keys = frame.select(C.USER, C.ITEM, C.GRADE, best.cast(pl.Int64).alias("_best"))
    labelled = keys.filter(pl.col(C.GRADE) > 0)[C.USER].unique().sort().to_numpy()
    labelled = hashed_subset(labelled, spec.users, spec.seed, TRAIN_USERS_SALT)
    chosen = pl.DataFrame({C.USER: pl.Series(labelled, dtype=pl.Int32)})
    rows = keys.join(chosen, on=C.USER, how="semi")
    if spec.negatives and rows.height >= spec.min_rows:
        n_hard = int(round(spec.negatives * spec.hard_share))
        rows = rows.with_columns(
            pl.Series(
                "_rand", pair_unit(rows[C.USER].to_numpy(), rows[C.ITEM].to_numpy(), spec.seed, 1)
            )
        )
        negative = pl.col(C.GRADE) == 0
        # Best rank first, ties by item code: one Int64 key (ranks < 2**30, codes < 2**31).
        hard_key = pl.col("_best") * (1 << 31) + pl.col(C.ITEM).cast(pl.Int64)
        hard_order = hard_key.rank("ordinal").over(C.USER, negative)
        is_hard = negative & (hard_order <= n_hard) & (pl.col("_best") < NO_RANK)
        rows = rows.with_columns(is_hard.alias("_hard"))
        # Random negatives fill the rest of the budget (all of it where no source ranked any).
        n_random = spec.negatives - pl.col("_hard").sum().over(C.USER)
        rand_order = pl.col("_rand").rank("ordinal").over(C.USER, negative, "_hard")
        keep = ~negative | pl.col("_hard") | (rand_order <= n_random)
        rows = rows.filter(keep)
    return rows.select(C.USER, C.ITEM).sort(C.USER, C.ITEM)


def validation_mask(users: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Rows of held-out users (a hash of the user code below ``fraction``).

    Small data can leave the hash split empty; then the user with the smallest hash is held
    out, so early stopping always has a validation set when there are at least five users.
    """
    unit = stable_unit(users, seed, 2)
    mask = unit < fraction
    if not mask.any() and np.unique(users).size >= 5:
        mask = users == users[np.argmin(unit)]
    return mask


# --------------------------------------------------------------------------- heads


@dataclass(frozen=True)
class Head:
    """One model trained by ``gbrank train``: its kind ("rank" or "binary"), the label column
    it learns from, the target it is scored against, and which of the training sample's rows
    it learns from."""

    name: str
    kind: str
    label: str
    target: str
    rows: str = "all"  # "all", "clicked" (rows with a click), "positive_users" (users with one)

    def label_gain(self, graded: Sequence[float]) -> list[float] | None:
        """The gains of its labels: ``graded`` for the graded ranker, 0 and 1 for a per-target
        ranker's 0/1 labels, none for a binary head."""
        if self.kind == "binary":
            return None
        return list(graded) if self.label == C.GRADE else [0.0, 1.0]


def _heads() -> dict[str, Head]:
    out = {
        "ranker": Head("ranker", "rank", C.GRADE, "purchase"),
        "ctr": Head("ctr", "binary", C.label_col("click"), "click"),
        "cvr": Head("cvr", "binary", C.label_col("purchase"), "purchase", rows="clicked"),
    }
    for target in C.TARGETS:  # per-target rankers, Kaggle style
        name = f"ranker_{target}"
        out[name] = Head(name, "rank", C.label_col(target), target, rows="positive_users")
    return out


#: Every head ``train.heads`` may name.
HEADS = _heads()
CVR_ROWS = ("clicked", "all")


def head_spec(name: str, cvr_rows: str = "clicked") -> Head:
    """The head ``name``; the CVR head learns from clicked rows (``p(purchase | click)``) or
    from every row (``p(purchase)``) by ``cvr_rows``."""
    head = HEADS[name]
    if name == "cvr":
        head = Head(head.name, head.kind, head.label, head.target, rows=cvr_rows)
    return head


def _rows_expr(head: Head) -> pl.Expr:
    if head.rows == "clicked":
        return pl.col(C.label_col("click")) == 1
    if head.rows == "positive_users":
        return (pl.col(head.label) == 1).any().over(C.USER)
    raise ValueError(f"head {head.name}: unknown rows {head.rows!r}")


def head_mask(frame: pl.DataFrame, head: Head) -> np.ndarray:
    """Which rows of ``frame`` ``head`` learns from (and is scored on), as a boolean array."""
    if head.rows == "all":
        return np.ones(frame.height, dtype=bool)
    return frame.select(_rows_expr(head).alias("_m")).to_series().to_numpy()


def head_rows(frame: pl.DataFrame, head: Head) -> pl.DataFrame:
    """The rows of a training sample ``head`` learns from (the sample is drawn once, on the
    graded labels, and every head keeps its order: sorted by user)."""
    return frame if head.rows == "all" else frame.filter(_rows_expr(head))


def learnable_rows(frame: pl.DataFrame, head: Head, fold: str) -> pl.DataFrame:
    """:func:`head_rows` of a fold's training sample; a DataError when they hold no positive
    for the head (or, for a binary head, nothing but positives)."""
    part = head_rows(frame, head)
    check_head_rows(int((part[head.label] > 0).sum()), part.height, head, fold)
    return part


def check_head_rows(positive: int, rows: int, head: Head, fold: str) -> None:
    """A DataError when ``head``'s ``rows`` training rows of ``fold`` hold ``positive``
    positives and nothing can be learnt from them."""
    if positive == 0 or (head.kind == "binary" and positive == rows):
        raise DataError(
            f"head '{head.name}' has {positive} positive rows out of {rows} in the "
            f"{fold} fold's training sample: nothing to learn",
            column=head.label,
            fix=f"remove '{head.name}' from train.heads, or use more data",
        )
