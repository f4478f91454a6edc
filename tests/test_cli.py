"""The command line: help, documented commands, exit codes, config display."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from gbrank.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _commands() -> list[str]:
    """Every command path, e.g. 'generate', 'data synth'."""
    root = get_command(app)
    out = []
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        if subs:
            out += [f"{name} {sub}" for sub in subs]
        else:
            out.append(name)
    return sorted(out)


def test_expected_commands_exist() -> None:
    assert set(_commands()) == {
        "config show",
        "data import",
        "data synth",
        "data validate",
        "eval",
        "features",
        "generate",
        "quickstart",
        "recommend",
        "run",
        "runs list",
        "runs promote",
        "runs rollback",
        "runs show",
        "tune",
        "train",
    }


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help_and_is_documented(command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert len(result.output.strip()) > 50
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"gbrank {command}\b", readme), f"`gbrank {command}` is not in README.md"


def test_config_show_resolves_overrides() -> None:
    result = runner.invoke(app, ["config", "show", "--set", "folds.horizon_days=3"])
    assert result.exit_code == 0, result.output
    assert "horizon_days = 3" in result.output
    bad = runner.invoke(app, ["config", "show", "--set", "folds.horizon=3"])
    assert bad.exit_code == 2
    assert "did you mean 'horizon_days'" in bad.output


def test_missing_events_exit_66(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "validate", "--events", str(tmp_path / "none.csv")])
    assert result.exit_code == 66
    assert "does not exist" in result.output


def test_csv_without_item_id_exits_65(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,ts,event\n1,1700000000,view\n")
    result = runner.invoke(app, ["data", "validate", "--events", str(path)])
    assert result.exit_code == 65
    assert "column 'item_id'" in result.output and str(path) in result.output


def test_csv_with_null_user_ids_exits_65(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,ts,event\n,1,1700000000,view\n2,1,1700000001,view\n")
    result = runner.invoke(app, ["data", "validate", "--events", str(path)])
    assert result.exit_code == 65
    assert "column 'user_id'" in result.output and "null ids" in result.output


def test_stage_before_its_input_exits_66(tmp_path: Path) -> None:
    for stage in ("features", "train", "eval"):  # the first stage that has not run is named
        result = runner.invoke(app, [stage, "--workspace", str(tmp_path / "ws")])
        assert result.exit_code == 66, (stage, result.output)
        assert "run `gbrank generate` first" in result.output
    rec = runner.invoke(
        app, ["recommend", "--workspace", str(tmp_path / "ws"), "--out", str(tmp_path / "r.csv")]
    )
    assert rec.exit_code == 66 and "gbrank generate" in rec.output
    assert not (tmp_path / "r.csv").exists()
