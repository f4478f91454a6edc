"""Offline evaluation metrics: top-K ranking quality, candidate recall, and pointwise scores.

Definitions and formulas are in ``docs/metrics.md``. Ranking metrics are computed with
whole-frame Polars operations (joins and group-bys), never with a Python loop over users,
so they scale to the full test population.

Conventions shared by every ranking function:

* relevance is binary; duplicate ``(user, item)`` rows in ``relevant`` are collapsed;
* the evaluated population is the set of users with at least one relevant item: users
  without recommendations score zero (they stay in the denominator), users with
  recommendations but no relevant item are excluded and counted separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from gbrank.columns import ITEM, RANK, USER

__all__ = [
    "RANKING_METRICS",
    "RankingReport",
    "auc",
    "bootstrap_intervals",
    "bootstrap_weights",
    "calibration_table",
    "candidate_recall",
    "coverage",
    "log_loss",
    "metrics_rows",
    "ranking_metrics",
]

RANKING_METRICS: tuple[str, ...] = ("recall", "precision", "ndcg", "map", "mrr", "hitrate")

# Internal column names; prefixed so they cannot collide with caller columns.
_K = "k"
_N_REL = "_n_rel"
_HITS = "_hits"
_DCG = "_dcg"
_AP_SUM = "_ap_sum"
_FIRST = "_first_hit_rank"
_HIT_NO = "_hit_no"
_M = "_m"
_IDCG = "_idcg"


@dataclass(frozen=True)
class RankingReport:
    """Result of :func:`ranking_metrics`.

    Attributes:
        table: long table with columns ``metric`` (str), ``k`` (int) and ``value`` (float),
            one row per requested (metric, K), in the order the metrics and Ks were asked for.
        n_users: users evaluated, i.e. users with at least one relevant item.
        n_excluded: users present in the recommendations but with no relevant item; they
            are left out of every average and only counted here.
        per_user: each evaluated user's value of every metric at every K.
    """

    table: pl.DataFrame
    n_users: int
    n_excluded: int
    #: ``k``, ``user`` and one column per metric: each evaluated user's value (the means in
    #: ``table`` are over these rows), for intervals and breakdowns.
    per_user: pl.DataFrame | None = None

    def value(self, metric: str, k: int) -> float:
        """The value of one metric at one K (``KeyError`` if it was not computed)."""
        hit = self.table.filter((pl.col("metric") == metric) & (pl.col("k") == k))
        if hit.height != 1:
            raise KeyError(f"{metric}@{k} is not in this report")
        return float(hit.item(0, "value"))


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------


def _require_columns(df: pl.DataFrame, name: str, columns: Sequence[str]) -> None:
    if not isinstance(df, pl.DataFrame):
        raise ValueError(f"{name} must be a polars DataFrame, got {type(df).__name__}")
    for col in columns:
        if col not in df.columns:
            raise ValueError(
                f"{name}: missing column '{col}' (has {', '.join(df.columns) or 'no columns'})"
            )


def _require_no_nulls(df: pl.DataFrame, name: str, columns: Sequence[str]) -> None:
    for col in columns:
        n_null = df.get_column(col).null_count()
        if n_null:
            raise ValueError(f"{name}: column '{col}' has {n_null} null value(s)")


def _validate_recs(recs: pl.DataFrame, name: str = "recs") -> None:
    """Check the recommendation contract: user, item, positive integer rank, no duplicates."""
    _require_columns(recs, name, (USER, ITEM, RANK))
    _require_no_nulls(recs, name, (USER, ITEM, RANK))
    rank_dtype = recs.schema[RANK]
    # An empty frame built from Python lists has dtype Null; it has no rank to check.
    if not rank_dtype.is_integer() and not (recs.height == 0 and rank_dtype == pl.Null):
        raise ValueError(f"{name}: column '{RANK}' must have an integer dtype, got {rank_dtype}")
    bad = recs.filter(pl.col(RANK) <= 0)
    if bad.height:
        row = bad.row(0, named=True)
        raise ValueError(
            f"{name}: column '{RANK}' must be positive (ranks are 1-based); "
            f"{bad.height} row(s) are not, e.g. {USER}={row[USER]!r}, {ITEM}={row[ITEM]!r}, "
            f"{RANK}={row[RANK]!r}"
        )
    if recs.height and not _has_duplicates(recs):
        return
    dup = recs.select(USER, ITEM).filter(pl.struct(USER, ITEM).is_duplicated())
    if dup.height:
        row = dup.row(0, named=True)
        raise ValueError(
            f"{name}: duplicate ({USER}, {ITEM}) pair in columns '{USER}', '{ITEM}', "
            f"e.g. {USER}={row[USER]!r}, {ITEM}={row[ITEM]!r}"
        )
    # Two items sharing a rank would put more than K items in the top K (precision > 1).
    dup_rank = recs.select(USER, RANK).filter(pl.struct(USER, RANK).is_duplicated())
    if dup_rank.height:
        row = dup_rank.row(0, named=True)
        raise ValueError(
            f"{name}: column '{RANK}' repeats a rank within a user, "
            f"e.g. {USER}={row[USER]!r}, {RANK}={row[RANK]!r}"
        )


def _has_duplicates(recs: pl.DataFrame) -> bool:
    """Whether some (user, item) or (user, rank) pair repeats; decided on packed 64-bit keys
    when the codes fit (several times faster than hashing structs), both in one pass. Only a
    True is worth locating the rows."""
    if not _packable(recs) or not recs.schema[RANK].is_integer():
        return True
    if recs.select(pl.col(RANK).min() < 0).item():
        return True
    user = pl.col(USER).cast(pl.UInt64) * (1 << 32)
    counts = recs.select(  # both counts in one pass, on both cores
        (user + pl.col(ITEM).cast(pl.UInt64)).n_unique().alias("items"),
        (user + pl.col(RANK).cast(pl.UInt64)).n_unique().alias("ranks"),
    ).row(0)
    return any(c != recs.height for c in counts)


def _packable(frame: pl.DataFrame) -> bool:
    """Integer user and item codes in [0, 2**32): one 64-bit key holds both."""
    if not all(frame.schema[c].is_integer() for c in (USER, ITEM)):
        return False
    if frame.height == 0:
        return True
    low, high = frame.select(
        pl.min_horizontal(pl.col(USER).min(), pl.col(ITEM).min()).alias("low"),
        pl.max_horizontal(pl.col(USER).max(), pl.col(ITEM).max()).alias("high"),
    ).row(0)
    return bool(low >= 0 and high < 2**32)


def _first_hit_reciprocal(users: np.ndarray, ranks: np.ndarray, n_users: int) -> np.ndarray:
    """1 / rank of each user's first hit (0 without one); ``users`` ascending, ranks ascending
    within a user."""
    out = np.zeros(n_users, dtype=np.float64)
    if users.size:
        first = np.flatnonzero(np.diff(users, prepend=users[0] - 1))
        out[users[first]] = 1.0 / ranks[first]
    return out


def _semi_join(recs: pl.DataFrame, rel: pl.DataFrame, keep: pl.Expr) -> pl.DataFrame:
    """The rows of ``recs`` that pass ``keep`` and whose (user, item) is in ``rel``: one pass
    testing a packed 64-bit key when the codes fit in 32 bits (3x faster than a two-key join)."""
    if not (_packable(recs) and _packable(rel)) or recs.height == 0 or rel.height == 0:
        return recs.filter(keep).join(rel, on=[USER, ITEM], how="semi")
    wanted = rel.select(_pair_key().alias("_key")).get_column("_key")
    return recs.filter(keep & _pair_key().is_in(wanted.implode()))


def _pair_key() -> pl.Expr:
    """(user, item) as one 64-bit key (codes in [0, 2**32), see :func:`_packable`)."""
    return pl.col(USER).cast(pl.UInt64) * (1 << 32) + pl.col(ITEM).cast(pl.UInt64)


def _validate_pairs(df: pl.DataFrame, name: str) -> None:
    _require_columns(df, name, (USER, ITEM))
    _require_no_nulls(df, name, (USER, ITEM))


def _align_keys(
    left: pl.DataFrame, right: pl.DataFrame, left_name: str, right_name: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Give the join keys of both frames the same dtype.

    Integer codes of different widths (Int32 codes vs Int64 from a hand-built frame) are
    widened to Int64; any other mismatch is a caller error rather than something to guess.
    """
    for col in (USER, ITEM):
        a, b = left.schema[col], right.schema[col]
        if a == b:
            continue
        # Null is the dtype of a column of an empty frame built from Python lists.
        if a == pl.Null:
            left = left.with_columns(pl.col(col).cast(b))
        elif b == pl.Null:
            right = right.with_columns(pl.col(col).cast(a))
        elif a.is_integer() and b.is_integer():
            left = left.with_columns(pl.col(col).cast(pl.Int64))
            right = right.with_columns(pl.col(col).cast(pl.Int64))
        else:
            raise ValueError(
                f"column '{col}' has dtype {a} in {left_name} but {b} in {right_name}; "
                "both frames must use the same user/item encoding"
            )
    return left, right


def _validate_ks(ks: Sequence[int]) -> list[int]:
    if isinstance(ks, int):
        ks = [ks]
    out: list[int] = []
    for k in ks:
        # bool is an int subclass; K=True is almost certainly a mistake.
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"ks must be positive integers, got {k!r}")
        if int(k) not in out:
            out.append(int(k))
    if not out:
        raise ValueError("ks must contain at least one K")
    return out


def _validate_metric_names(metrics: Sequence[str]) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    out: list[str] = []
    for m in metrics:
        if m not in RANKING_METRICS:
            raise ValueError(
                f"unknown ranking metric {m!r}; choose from {', '.join(RANKING_METRICS)}"
            )
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError("metrics must name at least one metric")
    return out


# --------------------------------------------------------------------------------------
# Ranking metrics
# --------------------------------------------------------------------------------------


def _idcg_frame(max_k: int) -> pl.DataFrame:
    """IDCG for m = 0..max_k ideal hits: sum_{i=1..m} 1/log2(i+1) (0 for m = 0)."""
    gains = 1.0 / np.log2(np.arange(2, max_k + 2, dtype=np.float64))
    idcg = np.concatenate([[0.0], np.cumsum(gains)])
    return pl.DataFrame({_M: np.arange(max_k + 1, dtype=np.int64), _IDCG: idcg})


def ranking_metrics(
    recs: pl.DataFrame,
    relevant: pl.DataFrame,
    ks: Sequence[int] = (10, 20),
    metrics: Sequence[str] = RANKING_METRICS,
) -> RankingReport:
    """Macro-averaged top-K ranking metrics.

    Args:
        recs: recommendations with columns ``user``, ``item`` and ``rank`` (integer, 1-based,
            normally 1..n per user). Ranks must be positive and unique within a user, and a
            ``(user, item)`` pair may appear only once. The top-K list of a user is the items
            with ``rank <= K``; ``rank`` is used as the position in every formula.
        relevant: ground truth with columns ``user`` and ``item`` (binary relevance;
            duplicate rows are collapsed). Other columns are ignored.
        ks: cutoffs K (positive integers; duplicates are dropped).
        metrics: names from :data:`RANKING_METRICS`.

    Returns:
        A :class:`RankingReport`. Every value is the mean over users with at least one
        relevant item; users with relevant items but no recommendations score 0. If no
        user has a relevant item, ``n_users`` is 0 and every value is NaN (the mean of
        nothing), so a sparse target does not abort a multi-target report.

    Raises:
        ValueError: a column is missing or null, a rank is not a positive integer, a
            ``(user, item)`` pair or a rank is repeated within a user, or ``ks``/``metrics``
            are invalid.
    """
    ks_list = _validate_ks(ks)
    metric_list = _validate_metric_names(metrics)
    _validate_recs(recs, "recs")
    _validate_pairs(relevant, "relevant")

    recs = recs.select(USER, ITEM, pl.col(RANK).cast(pl.Int64))
    rel = relevant.select(USER, ITEM)
    recs, rel = _align_keys(recs, rel, "recs", "relevant")
    if _packable(rel):  # one 64-bit key per pair: a faster unique than over two columns
        keys = rel.select(_pair_key().alias("_key")).unique()
        rel = keys.select(
            (pl.col("_key") // (1 << 32)).cast(rel.schema[USER]).alias(USER),
            (pl.col("_key") % (1 << 32)).cast(rel.schema[ITEM]).alias(ITEM),
        )
    else:
        rel = rel.unique()
    max_k = max(ks_list)

    # |R_u| for every evaluated user; this frame defines the population (the denominator).
    users = rel.group_by(USER).agg(pl.len().cast(pl.Int64).alias(_N_REL))
    n_users = users.height
    rec_users = recs.get_column(USER).unique()
    n_excluded = rec_users.len() - int(rec_users.is_in(users.get_column(USER).implode()).sum())

    # Every metric depends only on the ranks of the hits, |R_u| and K, so keep just the hits
    # in the deepest cutoff. The hit number (1st, 2nd, ... hit of the user in rank order)
    # is the numerator of precision at that hit's rank, which AP needs.
    hits = (
        _semi_join(recs, rel, pl.col(RANK) <= max_k)
        .select(
            USER,
            pl.col(RANK).cast(pl.Int64),
            pl.col(RANK).rank("ordinal").over(USER).cast(pl.Int64).alias(_HIT_NO),
        )
        .sort(USER, RANK)  # sums below run in this order: the same bits on every run
    )
    ks_frame = pl.DataFrame({_K: ks_list}, schema={_K: pl.Int64})

    # Per user and K, from the hits alone (numpy over the users in code order): hit count,
    # DCG, sum of precision at each hit, rank of the first hit. The hit number stays valid
    # under the rank <= K filter because the hits kept are a prefix in rank order. Users
    # without hits (or without any recommendation) keep zeros and stay in the means.
    users = users.sort(USER)
    located = hits.join(users.select(USER).with_row_index("_u"), on=USER, how="left")
    u = located.get_column("_u").to_numpy().astype(np.int64)
    hit_rank = located.get_column(RANK).to_numpy().astype(np.float64)
    hit_no = located.get_column(_HIT_NO).to_numpy().astype(np.float64)
    n_rel = users.get_column(_N_REL).to_numpy().astype(np.float64)
    gains = 1.0 / np.log2(hit_rank + 1.0)
    idcg_table = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, max_k + 2)))])
    columns: dict[str, list[np.ndarray]] = {m: [] for m in metric_list}
    for k in ks_list:
        inside = hit_rank <= k
        uk = u[inside]
        n_hits = np.bincount(uk, minlength=n_users).astype(np.float64)
        m = np.minimum(n_rel, k)
        for name in metric_list:
            if name == "recall":
                value = n_hits / n_rel
            elif name == "precision":
                value = n_hits / k
            elif name == "hitrate":
                value = (n_hits > 0).astype(np.float64)
            elif name == "ndcg":
                dcg = np.bincount(uk, weights=gains[inside], minlength=n_users)
                value = dcg / idcg_table[m.astype(np.int64)]
            elif name == "map":
                ap = np.bincount(uk, weights=hit_no[inside] / hit_rank[inside], minlength=n_users)
                value = ap / m
            else:  # mrr
                value = _first_hit_reciprocal(uk, hit_rank[inside], n_users)
            columns[name].append(value)
    per_user = pl.DataFrame(
        {
            _K: np.repeat(np.asarray(ks_list, dtype=np.int64), n_users),
            USER: pl.concat([users.get_column(USER)] * len(ks_list)) if ks_list else [],
            **{name: np.concatenate(parts) if parts else [] for name, parts in columns.items()},
        },
        schema_overrides={name: pl.Float64 for name in metric_list},
    ).sort(_K, USER)
    means = per_user.group_by(_K, maintain_order=True).agg([pl.col(m).mean() for m in metric_list])

    # Long table in the requested order; the join with ks_frame keeps every K even when
    # there is no evaluated user (values are then NaN, see the docstring).
    table = (
        ks_frame.with_row_index("_k_order")
        .join(means, on=_K, how="left")
        .unpivot(index=["_k_order", _K], on=metric_list, variable_name="metric", value_name="value")
        .with_columns(
            pl.col("metric")
            .replace_strict({m: i for i, m in enumerate(metric_list)}, return_dtype=pl.Int64)
            .alias("_m_order"),
            pl.col("value").cast(pl.Float64).fill_null(float("nan")),
        )
        .sort("_m_order", "_k_order")
        .select(pl.col("metric").cast(pl.String), pl.col(_K).cast(pl.Int64), "value")
    )
    return RankingReport(table=table, n_users=n_users, n_excluded=n_excluded, per_user=per_user)


def bootstrap_intervals(
    per_user: pl.DataFrame,
    *,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> pl.DataFrame:
    """Percentile bootstrap intervals of each metric's mean over users.

    Users are resampled with replacement (``n_boot`` resamples of the evaluated users, the
    same resamples for every metric and K, so intervals of one report are consistent) and the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means are returned
    as ``metric``, ``k``, ``ci_low``, ``ci_high``. Users are the unit: their lists are what
    varies from one sample of users to another. NaN when there is no user.
    """
    metrics = [c for c in per_user.columns if c not in (_K, USER)]
    rows = []
    users = per_user.filter(pl.col(_K) == per_user[_K].min())[USER] if per_user.height else None
    n = 0 if users is None else users.len()
    if weights is None and n:
        weights = bootstrap_weights(n, n_boot, seed)
    for (k,), group in per_user.group_by(_K, maintain_order=True):
        values = group.sort(USER).select(metrics).to_numpy()
        means = weights @ values / n  # (n_boot, metrics)
        low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2], axis=0)
        rows += [
            {"metric": m, "k": int(k), "ci_low": float(lo), "ci_high": float(hi)}
            for m, lo, hi in zip(metrics, low, high, strict=True)
        ]
    return pl.DataFrame(
        rows,
        schema={"metric": pl.String, "k": pl.Int64, "ci_low": pl.Float64, "ci_high": pl.Float64},
    )


def bootstrap_weights(n: int, n_boot: int = 200, seed: int = 0) -> np.ndarray:
    """``n_boot`` resamples of ``n`` users with replacement, as counts per user."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def metrics_rows(report: RankingReport, model: str, target: str) -> list[dict]:
    """Rows ``{"model", "target", "metric", "k", "value"}`` for a cross-model report table."""
    return [
        {"model": model, "target": target, "metric": r["metric"], "k": r["k"], "value": r["value"]}
        for r in report.table.iter_rows(named=True)
    ]


def candidate_recall(candidates: pl.DataFrame, relevant: pl.DataFrame) -> float:
    """Share of relevant ``(user, item)`` pairs that appear in ``candidates`` (micro average).

    This is the ceiling the ranker can reach: a relevant item that the candidate stage did
    not retrieve can never be ranked. Duplicates on either side are collapsed; extra
    columns (scores, sources, ranks) are ignored. Pairs of users without any candidate
    count as misses. Returns NaN when ``relevant`` is empty.
    """
    _validate_pairs(candidates, "candidates")
    _validate_pairs(relevant, "relevant")
    cand, rel = _align_keys(
        candidates.select(USER, ITEM), relevant.select(USER, ITEM), "candidates", "relevant"
    )
    rel = rel.unique()
    if rel.height == 0:
        return float("nan")
    found = rel.join(cand.unique(), on=[USER, ITEM], how="semi").height
    return found / rel.height


def candidate_report(
    union: pl.DataFrame, relevant: pl.DataFrame, sources: Sequence[str]
) -> pl.DataFrame:
    """What each source brings to the candidate set, for one target.

    ``union`` is the union of candidate lists (``user``, ``item``, ``{source}_rank`` per
    source, ``n_sources``); ``relevant`` the positive (user, item) pairs. One row per source
    plus a ``union`` row, with:

    - ``recall``: share of the relevant pairs the source proposed (the union's is the ceiling
      the ranker cannot pass);
    - ``unique_recall``: share of the relevant pairs that only this source proposed, i.e. the
      recall lost if the source were removed;
    - ``positive_rate``: share of the source's candidates that are relevant;
    - ``candidates``: number of (user, item) candidates the source proposed.

    All rates are NaN when ``relevant`` is empty (``positive_rate`` when a source proposed
    nothing).
    """
    rel = relevant.select(USER, ITEM).unique()
    n_rel = rel.height
    flagged = union.join(
        rel.with_columns(pl.lit(True).alias("_pos")), on=[USER, ITEM], how="left"
    ).with_columns(pl.col("_pos").fill_null(False))
    exprs = []
    for s in sources:
        proposed = pl.col(f"{s}_rank").is_not_null()
        exprs += [
            (proposed & pl.col("_pos")).sum().alias(f"{s}|hits"),
            (proposed & pl.col("_pos") & (pl.col("n_sources") == 1)).sum().alias(f"{s}|unique"),
            proposed.sum().alias(f"{s}|n"),
        ]
    exprs += [pl.col("_pos").sum().alias("union|hits"), pl.len().alias("union|n")]
    counts = flagged.select(exprs).row(0, named=True)
    nan = float("nan")
    rows = []
    for s in [*sources, "union"]:
        hits, n = int(counts[f"{s}|hits"]), int(counts[f"{s}|n"])
        unique = int(counts.get(f"{s}|unique", hits)) if s != "union" else hits
        rows.append(
            {
                "source": s,
                "recall": hits / n_rel if n_rel else nan,
                "unique_recall": unique / n_rel if n_rel else nan,
                "positive_rate": hits / n if n else nan,
                "candidates": n,
            }
        )
    return pl.DataFrame(rows)


def coverage(recs: pl.DataFrame, n_items: int, *, k: int | None = None) -> float:
    """Catalogue coverage: distinct recommended items divided by ``n_items``.

    Args:
        recs: frame with an ``item`` column (and ``rank`` when ``k`` is given).
        n_items: size of the catalogue, e.g. the item vocabulary size.
        k: if given, only items with ``rank <= k`` count (coverage@K).

    Raises:
        ValueError: ``n_items`` is not positive or smaller than the number of distinct
            recommended items (which would mean the catalogue size is wrong).
    """
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items <= 0:
        raise ValueError(f"n_items must be a positive integer, got {n_items!r}")
    _require_columns(recs, "recs", (ITEM,) if k is None else (ITEM, RANK))
    if k is not None:
        _validate_ks([k])
        recs = recs.filter(pl.col(RANK) <= k)
    n_distinct = recs.get_column(ITEM).drop_nulls().n_unique()
    if n_distinct > n_items:
        raise ValueError(
            f"recs: column '{ITEM}' has {n_distinct} distinct items, more than n_items={n_items}"
        )
    return n_distinct / int(n_items)


# --------------------------------------------------------------------------------------
# Pointwise metrics
# --------------------------------------------------------------------------------------


def _binary_labels(y_true: np.ndarray | Sequence[float], name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name} is empty")
    if y.dtype == bool:
        return y.astype(np.float64)
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{name} must be numeric or boolean, got dtype {y.dtype}")
    y = y.astype(np.float64)
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise ValueError(f"{name} must contain only 0 and 1, found {y[bad][0]!r}")
    return y


def _scores(y_score: np.ndarray | Sequence[float], n: int, name: str) -> np.ndarray:
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {s.shape}")
    if s.shape[0] != n:
        raise ValueError(f"{name} has {s.shape[0]} values but y_true has {n}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return s


def auc(y_true: np.ndarray | Sequence[float], y_score: np.ndarray | Sequence[float]) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic.

    AUC = (sum of the ranks of the positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with
    average ranks for tied scores, so a tied positive/negative pair counts one half.

    Raises:
        ValueError: shapes differ, values are not binary/finite, or only one class is present
            (AUC is undefined then).
    """
    y = _binary_labels(y_true)
    s = _scores(y_score, y.shape[0], "y_score")
    n_pos = float(y.sum())
    n_neg = float(y.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("y_true must contain both classes for AUC to be defined")
    from scipy.stats import rankdata  # imported here: scipy.stats takes 1-2 s to import

    ranks = rankdata(s, method="average")
    u = ranks[y == 1.0].sum() - n_pos * (n_pos + 1.0) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(
    y_true: np.ndarray | Sequence[float], y_prob: np.ndarray | Sequence[float], eps: float = 1e-15
) -> float:
    """Mean binary cross-entropy, with probabilities clipped to ``[eps, 1 - eps]``.

    Clipping keeps a single confident mistake from making the loss infinite.
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    y = _binary_labels(y_true)
    p = _scores(y_prob, y.shape[0], "y_prob")
    if (p < 0.0).any() or (p > 1.0).any():
        raise ValueError("y_prob must be probabilities in [0, 1]")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def calibration_table(
    y_true: np.ndarray | Sequence[float], y_prob: np.ndarray | Sequence[float], n_bins: int = 10
) -> pl.DataFrame:
    """Reliability table over ``n_bins`` equal-width probability bins.

    Bin ``b`` (0-based) holds predictions in ``[b / n_bins, (b + 1) / n_bins)``; the last bin
    also holds 1.0. Every bin is listed so tables of different models line up; an empty bin
    has ``count`` 0 and null ``mean_pred``/``frac_pos``.

    Returns:
        Columns ``bin`` (Int64), ``mean_pred`` (Float64, mean predicted probability),
        ``frac_pos`` (Float64, observed share of positives) and ``count`` (Int64); counts sum
        to the number of predictions.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins <= 0:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    y = _binary_labels(y_true)
    p = _scores(y_prob, y.shape[0], "y_prob")
    if (p < 0.0).any() or (p > 1.0).any():
        raise ValueError("y_prob must be probabilities in [0, 1]")
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    nonempty = count > 0
    # Divide only where the bin has data (no 0/0 warning); empty bins become null, not NaN.
    safe = np.where(nonempty, count, 1)
    mean_pred = np.where(nonempty, sum_p / safe, np.nan)
    frac_pos = np.where(nonempty, sum_y / safe, np.nan)
    return pl.DataFrame(
        {
            "bin": np.arange(n_bins, dtype=np.int64),
            "mean_pred": pl.Series(mean_pred, dtype=pl.Float64).fill_nan(None),
            "frac_pos": pl.Series(frac_pos, dtype=pl.Float64).fill_nan(None),
            "count": count.astype(np.int64),
        }
    )


# --------------------------------------------------------------------------- binary heads


def binary_rows(model: str, target: str, probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Metrics rows of a binary head scored on rows with labels: AUC and log loss (``k``
    null; AUC is NaN with a single class), then its calibration table (:func:`calibration_table`)
    as rows ``calibration_count``, ``calibration_mean_pred`` and ``calibration_frac_pos`` with
    ``k`` the 0-based bin (empty bins left out)."""
    y = (np.asarray(labels) > 0).astype(np.float64)
    p = np.asarray(probs, dtype=np.float64)
    both = 0 < y.sum() < y.size
    out = [
        {
            "model": model,
            "target": target,
            "metric": "auc",
            "k": None,
            "value": auc(y, p) if both else float("nan"),
        },
        {
            "model": model,
            "target": target,
            "metric": "logloss",
            "k": None,
            "value": log_loss(y, p) if y.size else float("nan"),
        },
    ]
    if not y.size:
        return out
    for row in calibration_table(y, p).filter(pl.col("count") > 0).iter_rows(named=True):
        for name in ("count", "mean_pred", "frac_pos"):
            out.append(
                {
                    "model": model,
                    "target": target,
                    "metric": f"calibration_{name}",
                    "k": int(row["bin"]),
                    "value": float(row[name]),
                }
            )
    return out
