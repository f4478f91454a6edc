"""Feature families and labels.

``builders`` assembles the families (``families/``, listed in ``registry``) onto candidate
rows shard by shard; ``labels`` makes the targets from the label window. See docs/features.md.
"""

from gbrank.features.base import Column, Family, FeatureContext, FeatureSpec
from gbrank.features.builders import FeatureBuilder, build_features, feature_columns
from gbrank.features.registry import FAMILIES

__all__ = [
    "FAMILIES",
    "Column",
    "Family",
    "FeatureBuilder",
    "FeatureContext",
    "FeatureSpec",
    "build_features",
    "feature_columns",
]
