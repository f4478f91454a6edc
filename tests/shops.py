"""Small synthetic shops and configs over them, shared by the test modules that run stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from gbrank.config import Config, load_config
from gbrank.data.synth import SynthConfig, synthesize


def shop_events(
    factory: pytest.TempPathFactory, *, users: int, items: int, seed: int, days: int = 28
) -> Path:
    """The events file of a fresh synthetic shop in a temporary folder of its own."""
    root = factory.mktemp("shop")
    synthesize(SynthConfig(users=users, items=items, days=days, seed=seed), root / "shop")
    return root / "shop" / "events.parquet"


def shop_config(workspace: Path, events: Path, *overrides: str) -> Config:
    """The default config over ``events`` in ``workspace``, with ``key=value`` overrides."""
    return load_config(
        None, [f'data.events="{events}"', f'run.workspace="{workspace}"', *overrides]
    )
