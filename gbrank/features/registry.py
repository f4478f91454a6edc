"""The registry of feature families: their order, their columns, and config checks.

Example:
    >>> [f.name for f in FAMILIES][:3]
    ['user', 'item', 'user_item']
    >>> rows = describe(FeatureSpec(sources=("als",)))
    >>> ("user", "u_n_view_7d") in {(r.family, r.name) for r in rows}
    True
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gbrank.errors import ConfigError
from gbrank.features.base import Family, FeatureSpec
from gbrank.features.families import affinity, cross, item, similarity, source, user, user_item

#: Every family, in the order its columns appear in the feature frame.
FAMILIES: tuple[Family, ...] = (
    user.FAMILY,
    item.FAMILY,
    user_item.FAMILY,
    affinity.CATEGORY_FAMILY,
    affinity.BRAND_FAMILY,
    cross.FAMILY,
    source.FAMILY,
    similarity.FAMILY,
)
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}
#: Families built when the config does not choose.
DEFAULT_FAMILIES: tuple[str, ...] = tuple(f.name for f in FAMILIES if f.default)


def default_family_names() -> list[str]:
    return list(DEFAULT_FAMILIES)


def _nearest(name: str, valid: Iterable[str]) -> str:
    valid = list(valid)
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid names: {', '.join(valid)}"


def resolve(names: Sequence[str]) -> list[Family]:
    """The families named, in registry order; an unknown name raises ``ConfigError``."""
    for name in names:
        if name not in BY_NAME:
            raise ConfigError(
                f"features.families: unknown family '{name}'{_nearest(name, BY_NAME)}"
            )
    wanted = set(names)
    return [f for f in FAMILIES if f.name in wanted]


def check_config(features: Any) -> None:
    """Checks of the ``[features]`` table (called when the config is built)."""
    resolve(features.families)
    for key in ("windows_days", "item_windows_days"):
        values = getattr(features, key)
        if any(w < 1 for w in values):
            raise ConfigError(f"features.{key}: every window must be at least 1 day, got {values}")
    if not features.windows_days:
        raise ConfigError("features.windows_days: give at least one window")
    for key in ("recent_items", "short_term_events", "als_factors", "als_iterations"):
        if getattr(features, key) < 1:
            raise ConfigError(f"features.{key} must be at least 1")
    for key in ("shard_rows", "batch_rows"):
        if getattr(features, key) < 1:
            raise ConfigError(f"features.{key} must be at least 1")
    if features.shards < 0:
        raise ConfigError("features.shards must be 0 (automatic) or positive")
    for key in ("session_gap_minutes", "covisit_hours"):
        if getattr(features, key) <= 0:
            raise ConfigError(f"features.{key} must be positive")
    if features.prior_strength < 0:
        raise ConfigError("features.prior_strength must be at least 0")


@dataclass(frozen=True)
class FeatureInfo:
    family: str
    name: str
    description: str
    requires: tuple[str, ...]


def describe(spec: FeatureSpec, families: Sequence[Family] = FAMILIES) -> list[FeatureInfo]:
    """Every column each family declares for ``spec``, in frame order."""
    return [
        FeatureInfo(f.name, c.name, c.description, (*f.requires, *c.requires))
        for f in families
        for c in f.columns(spec)
    ]


def format_listing(spec: FeatureSpec, enabled: Sequence[str] = DEFAULT_FAMILIES) -> str:
    """The text of ``gbrank features --list``: family, feature, description."""
    rows = describe(spec)
    width = max(len(r.name) for r in rows) + 2
    fam_width = max(len(f.name) for f in FAMILIES) + 2
    lines = [f"{'family'.ljust(fam_width)}{'feature'.ljust(width)}description", ""]
    for r in rows:
        note = "" if r.family in enabled else " [off]"
        if r.requires:
            note += f" [needs items.{', items.'.join(r.requires)}]"
        lines.append(f"{r.family.ljust(fam_width)}{r.name.ljust(width)}{r.description}{note}")
    on = [f for f in FAMILIES if f.name in enabled]
    lines += ["", f"{len(rows)} features in {len(FAMILIES)} families ({len(on)} on)"]
    return "\n".join(lines)
