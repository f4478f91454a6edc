"""Candidate budgets: how many items each source proposes, and a total cap per user.

A source's table in ``[candidates.sources.<name>]`` sets ``n``: a fixed list length, or
``"auto"``. An automatic budget is chosen on the train fold: the source proposes up to
``n_max`` items, the positive rate is measured per block of ``block`` ranks (the share of the
source's candidates at those ranks that the user interacted with in the label window, target
``candidates.budget_target``), and ``n`` ends before the first block whose rate falls below
``min_positive_rate`` (never below ``n_min``). The same ``n`` is then used for the eval fold and
for inference, so the budget is learnt from data the evaluation never sees.

``candidates.max_per_user`` caps the union: a user's candidates are ordered by their best rank
over the sources that proposed them (ties: more sources first, then item code) and the first
``max_per_user`` kept.

Example:
    >>> budget = parse_budget("als", {"kind": "als", "n": "auto", "n_max": 200})
    >>> budget.auto, budget.n_max
    (True, 200)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gbrank import columns as C
from gbrank.errors import ConfigError

if TYPE_CHECKING:  # imported where used: the config (and so the CLI) loads without polars
    import polars as pl

AUTO = "auto"
BUDGET_KEYS = ("n", "n_max", "n_min", "min_positive_rate", "block")


@dataclass(frozen=True)
class Budget:
    n: int  # the fixed length, or the chosen one once an automatic budget is resolved
    auto: bool = False
    n_max: int = 200
    n_min: int = 10
    min_positive_rate: float = 0.002
    block: int = 10

    @property
    def generate_n(self) -> int:
        """How many items to ask the source for before the budget is known."""
        return self.n_max if self.auto else self.n


def parse_budget(name: str, table: Mapping[str, Any]) -> Budget:
    where = f"candidates.sources.{name}"
    n = table.get("n", 50)
    n_max = table.get("n_max", 200)
    n_min = table.get("n_min", 10)
    rate = table.get("min_positive_rate", 0.002)
    block = table.get("block", 10)
    for key, value in (("n_max", n_max), ("n_min", n_min), ("block", block)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}.{key} must be a positive integer, got {value!r}")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
        raise ConfigError(f"{where}.min_positive_rate must be in [0, 1), got {rate!r}")
    if n == AUTO:
        if n_min > n_max:
            raise ConfigError(f"{where}: n_min ({n_min}) is larger than n_max ({n_max})")
        return Budget(
            n=n_max, auto=True, n_max=n_max, n_min=n_min, min_positive_rate=float(rate), block=block
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f'{where}.n must be a positive integer or "auto", got {n!r}')
    return Budget(n=n)


def positive_rate_by_block(
    candidates: pl.DataFrame, positives: pl.DataFrame, block: int
) -> pl.DataFrame:
    """Per block of ranks (1..block, block+1..2*block, ...): candidates, positives, rate."""
    import polars as pl

    flagged = candidates.join(
        positives.select(C.USER, C.ITEM).unique().with_columns(pl.lit(1).alias("_pos")),
        on=[C.USER, C.ITEM],
        how="left",
    )
    return (
        flagged.group_by(((pl.col(C.RANK) - 1) // block).alias("block"))
        .agg(pl.len().alias("candidates"), pl.col("_pos").sum().alias("positives"))
        .with_columns((pl.col("positives") / pl.col("candidates")).alias("rate"))
        .sort("block")
    )


def choose_n(candidates: pl.DataFrame, positives: pl.DataFrame, budget: Budget) -> int:
    """The automatic list length: ranks up to the first block under the positive-rate floor."""
    rates = positive_rate_by_block(candidates, positives, budget.block)
    n = budget.n_max
    for row in rates.iter_rows(named=True):
        if row["rate"] < budget.min_positive_rate:
            n = row["block"] * budget.block
            break
    else:
        if rates.height:  # the source ran out of items before n_max
            last_block = int(rates["block"].max())  # type: ignore[arg-type]
            n = min(budget.n_max, (last_block + 1) * budget.block)
    return max(budget.n_min, min(n, budget.n_max))


def truncate(candidates: pl.DataFrame, n: int) -> pl.DataFrame:
    import polars as pl

    return candidates.filter(pl.col(C.RANK) <= n)


def cap_per_user(union: pl.DataFrame, sources: Sequence[str], cap: int) -> pl.DataFrame:
    """Keep each user's ``cap`` best candidates (best rank over sources, then more sources)."""
    import polars as pl

    if cap <= 0:
        return union
    best = pl.min_horizontal([pl.col(C.rank_col(s)) for s in sources])
    return (
        union.with_columns(best.alias("_best"))
        .sort([C.USER, "_best", C.N_SOURCES, C.ITEM], descending=[False, False, True, False])
        .filter(pl.int_range(pl.len()).over(C.USER) < cap)
        .drop("_best")
        .sort(C.USER, C.ITEM)
    )
