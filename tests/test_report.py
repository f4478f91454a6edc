"""The eval report and what it draws (curves, breakdowns, intervals, the oracle), its rendering
in headless Chromium, time-series CV (``eval --folds``) and the submission formats."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from gbrank.cli import app
from gbrank.config import load_config
from gbrank.data.synth import SynthConfig, synthesize
from gbrank.report import PLOTS, plots_in
from gbrank.runner import run_pipeline

cli = CliRunner()


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("report")
    synthesize(SynthConfig(users=400, items=150, days=35, seed=2), root / "shop")
    config = root / "gbrank.toml"
    config.write_text(
        f'[data]\nevents = "{root / "shop" / "events.parquet"}"\n\n'
        f'[run]\nworkspace = "{root / "ws"}"\n\n'
        '[train]\nnum_boost_round = 20\nheads = ["ranker", "ctr", "cvr"]\n'
    )
    result = run_pipeline(load_config(config))
    return config, result.run


def _data(run: object) -> dict:
    return json.loads(run.file("report/data.json").read_text())  # type: ignore[attr-defined]


def _metrics(run: object) -> list[dict]:
    return json.loads(run.file("metrics.json").read_text())  # type: ignore[attr-defined]


def test_the_report_holds_every_plot_and_table(done: tuple[Path, object]) -> None:
    _, run = done
    page = run.file("report.html").read_text()  # type: ignore[attr-defined]
    assert plots_in(page) == list(PLOTS)
    assert "<script" not in page and "http" not in page.split("<svg", 1)[0]  # nothing fetched
    assert page.count("<svg") == len(PLOTS)
    assert "no CTR or CVR head" not in page  # the ctr and cvr heads are drawn
    md = run.file("report.md").read_text()  # type: ignore[attr-defined]
    for name in PLOTS:
        assert f"(report/{name}.svg)" in md and run.file(f"report/{name}.svg").exists()  # type: ignore[attr-defined]
    assert "| ranker |" in md and "oracle" in md and "warm, activity decile 01" in md


def test_recall_curves_end_at_the_generate_stage_recall(done: tuple[Path, object]) -> None:
    _, run = done
    data = _data(run)
    recall = json.loads(run.file("candidates/recall.json").read_text())  # type: ignore[attr-defined]
    expected = {(r["source"], r["target"]): r["recall"] for r in recall if r["fold"] == "eval"}
    checked = 0
    for curve in data["recall_curves"]:
        key = (curve["source"], curve["target"])
        if key in expected and curve["recall"]:
            assert curve["recall"][-1] == pytest.approx(expected[key], abs=1e-9), key
            assert all(
                a <= b + 1e-12 for a, b in zip(curve["recall"], curve["recall"][1:], strict=False)
            )
            checked += 1
    assert checked >= 3 * len(data["targets"])


def test_ndcg_curves_and_intervals_agree_with_the_metrics(done: tuple[Path, object]) -> None:
    _, run = done
    data = _data(run)
    rows = {(r["model"], r["target"], r["metric"], r["k"]): r for r in _metrics(run)}
    for curve in data["by_k"]:
        for k in data["ks"]:
            row = rows[(curve["model"], curve["target"], curve["metric"], k)]
            assert curve["values"][k - 1] == pytest.approx(row["value"], abs=1e-12)
    for (model, target, metric, k), row in rows.items():
        if metric in ("ndcg", "recall") and k is not None and not model.startswith("oracle"):
            assert row["ci_low"] <= row["value"] <= row["ci_high"], (model, target, metric, k)


def test_breakdowns_partition_the_users(done: tuple[Path, object]) -> None:
    _, run = done
    data = _data(run)
    rows = {(r["model"], r["target"], r["metric"], r["k"]): r["value"] for r in _metrics(run)}
    k = data["ks"][0]
    for target in data["targets"]:
        parts = [
            b
            for b in data["breakdowns"]
            if b["target"] == target and b["model"] == data["served"] and b["ndcg"] is not None
        ]
        users = sum(b["users"] for b in parts)
        assert users == data["users"][target]
        weighted = sum(b["ndcg"] * b["users"] for b in parts) / users
        assert weighted == pytest.approx(rows[(data["served"], target, "ndcg", k)], abs=1e-9)
        assert sum(b["segment"].startswith("warm, activity decile") for b in parts) >= 5


def test_the_oracle_is_scored_on_a_synthetic_shop(done: tuple[Path, object]) -> None:
    _, run = done
    rows = {(r["model"], r["target"], r["metric"], r["k"]): r["value"] for r in _metrics(run)}
    oracle = rows[("oracle", "purchase", "ndcg", 10)]
    assert 0 < oracle <= 1
    assert oracle > rows[("popularity", "purchase", "ndcg", 10)]


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def test_the_report_renders_in_headless_chromium(done: tuple[Path, object]) -> None:
    found = _chromium()
    webdriver = pytest.importorskip("selenium.webdriver")
    if found is None:
        pytest.skip("chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium.webdriver.chrome.service import Service

    _, run = done
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        driver.get(run.file("report.html").as_uri())  # type: ignore[attr-defined]
        assert driver.execute_script("return document.readyState") == "complete"
        sizes = driver.execute_script(
            "return [...document.querySelectorAll('figure[data-plot]')].map(f => "
            "[f.dataset.plot, f.querySelector('svg').getBoundingClientRect().width, "
            "f.querySelector('svg').getBoundingClientRect().height])"
        )
        assert [s[0] for s in sizes] == list(PLOTS)
        assert all(w > 100 and h > 50 for _, w, h in sizes), sizes
        problems = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert problems == []
        assert driver.execute_script("return document.querySelectorAll('table').length") >= 4
    finally:
        driver.quit()


def test_eval_folds_prints_mean_and_spread(done: tuple[Path, object]) -> None:
    config, run = done
    result = cli.invoke(app, ["eval", "-c", str(config), "--folds", "2"])
    assert result.exit_code == 0, result.output
    assert "mean ± std over 2 folds" in result.output
    ids = result.output.split("runs: ")[1].split()[0:2]
    ids = [i.strip(",") for i in ids]
    assert ids[1] == run.id  # type: ignore[attr-defined]
    values = []
    for run_id in ids:
        rows = json.loads((config.parent / "ws" / "runs" / run_id / "metrics.json").read_text())
        values.append(
            next(
                r["value"]
                for r in rows
                if (r["model"], r["target"], r["metric"], r["k"])
                == ("ranker", "purchase", "ndcg", 10)
            )
        )
    mean = sum(values) / 2
    std = abs(values[0] - values[1]) / 2**0.5
    line = next(
        ln
        for ln in result.output.split("target: purchase")[1].splitlines()
        if ln.startswith("ranker ")
    )
    assert f"{mean:.4f} ± {std:.4f}" in line


OTTO_SAMPLE = "session_type,labels\n12899779_clicks,129004 126836 118524\n12899779_carts,129004 126836 118524\n12899779_orders,129004 126836 118524\n"  # noqa: E501
HM_SAMPLE = "customer_id,prediction\n00000dbacae5abe5e23885899a1fa44253a17956c6d1c3d25f88aa139fdfc657,0706016001 0706016002 0372860001 0610776002\n"  # noqa: E501


def _row_pattern(sample: str) -> tuple[list[str], re.Pattern[str]]:
    rows = list(csv.reader(sample.splitlines()))
    first = rows[1]
    if first[0].endswith(("_clicks", "_carts", "_orders")):
        return rows[0], re.compile(r"^\d+_(clicks|carts|orders),\d+( \d+)*$")
    return rows[0], re.compile(r"^[0-9a-z]+,\d{10}( \d{10})*$")


@pytest.mark.parametrize(("fmt", "sample", "k"), [("otto", OTTO_SAMPLE, 20), ("hm", HM_SAMPLE, 12)])
def test_submission_files_follow_the_sample_submissions(
    done: tuple[Path, object], tmp_path: Path, fmt: str, sample: str, k: int
) -> None:
    config, _ = done
    header, pattern = _row_pattern(sample)
    assert all(pattern.match(line) for line in sample.splitlines()[1:])  # the fixture itself
    out = tmp_path / f"{fmt}.csv"
    result = cli.invoke(
        app, ["recommend", "-c", str(config), "--format", fmt, "--k", str(k), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0].split(",") == header
    assert lines[1:] and all(pattern.match(line) for line in lines[1:]), lines[1]
    table = pl.read_csv(out, schema_overrides={header[0]: pl.String, header[1]: pl.String})
    assert table[header[0]].is_unique().all()  # one row per session and type / customer
    assert table[header[1]].str.split(" ").list.len().max() <= k
    plain = tmp_path / "plain.parquet"
    assert (
        cli.invoke(
            app, ["recommend", "-c", str(config), "--k", str(k), "--out", str(plain)]
        ).exit_code
        == 0
    )
    users = pl.read_parquet(plain)["user_id"].n_unique()
    assert table.height == users * (3 if fmt == "otto" else 1)
    bad = cli.invoke(
        app, ["recommend", "-c", str(config), "--format", fmt, "--out", str(tmp_path / "x.parquet")]
    )
    assert bad.exit_code == 2 and "submission CSV" in bad.output
