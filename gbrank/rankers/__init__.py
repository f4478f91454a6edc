"""Rankers: gradient-boosted models over candidate features."""
