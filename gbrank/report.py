"""The eval report: ``report.html`` (self-contained: inline SVG plots and CSS, no script, nothing
fetched when it is opened) and ``report.md`` (the same tables, the plots as ``report/*.svg``).

Drawn from what ``gbrank eval`` measured (``report/data.json``, see ``gbrank.evaluation``, and
the metrics rows): candidate recall@N curves per source, NDCG@K against K per model, the top 30
features by gain, calibration of the CTR and CVR heads, score distributions by label, the
metrics with their bootstrap intervals, and the breakdowns by user and item segment. The
plots are matplotlib SVG written with a fixed hash salt and no date, so two runs that measure
the same figures write the same bytes.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gbrank.atomic import atomic_write_text

PLOTS = ("recall_curves", "ndcg_at_k", "importance", "calibration", "scores")
TITLES = {
    "recall_curves": "Candidate recall@N per source",
    "ndcg_at_k": "NDCG@K against K",
    "importance": "Feature importance (gain, top 30)",
    "calibration": "Calibration of the CTR and CVR heads",
    "scores": "Score distributions by label",
    "tune_history": "Tuning: optimisation history",
    "tune_importance": "Tuning: parameter importances (PED-ANOVA)",
}
GRADE_NAMES = {"0": "no event", "1": "view", "2": "click", "3": "cart", "4": "purchase"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.hashsalt": "gbrank",  # fixed element ids: the same figure, the same bytes
            "svg.fonttype": "none",  # text stays text: smaller files, selectable
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
    return plt


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # inline: no XML prolog or doctype


def _note(plt: Any, text: str) -> str:
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return _svg(fig)


def _panels(plt: Any, n: int, width: float = 4.2, height: float = 3.0) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def plot_recall_curves(plt: Any, data: dict[str, Any]) -> str:
    targets = data["targets"]
    fig, axes = _panels(plt, len(targets))
    for ax, target in zip(axes, targets, strict=True):
        for curve in data["recall_curves"]:
            if curve["target"] == target and curve["recall"]:
                n = list(range(1, len(curve["recall"]) + 1))
                ax.plot(n, curve["recall"], label=curve["source"], linewidth=1.4)
        ax.set_title(f"target: {target}")
        ax.set_xlabel("N (candidates per user from the source)")
        ax.set_ylabel("recall@N")
    axes[-1].legend(fontsize=7, loc="lower right")
    return _svg(fig)


def plot_ndcg_at_k(plt: Any, data: dict[str, Any]) -> str:
    targets = data["targets"]
    fig, axes = _panels(plt, len(targets))
    models = [*data["models"], *data["sources"], "oracle"]
    for ax, target in zip(axes, targets, strict=True):
        for model in models:
            for curve in data["by_k"]:
                if (curve["model"], curve["target"], curve["metric"]) == (model, target, "ndcg"):
                    ks = list(range(1, len(curve["values"]) + 1))
                    bold = model == data["served"]
                    style = "--" if model == "oracle" else "-"
                    ax.plot(ks, curve["values"], style, label=model, linewidth=2.4 if bold else 1.2)
        ax.set_title(f"target: {target}")
        ax.set_xlabel("K")
        ax.set_ylabel("NDCG@K")
    axes[-1].legend(fontsize=7, loc="lower right")
    return _svg(fig)


def plot_importance(plt: Any, data: dict[str, Any]) -> str:
    importance = data["importance"]
    head = data["served"] if data["served"] in importance else next(iter(importance), None)
    if head is None:
        return _note(plt, "no feature importance was saved")
    rows = sorted(importance[head], key=lambda r: -r.get("gain", 0.0))[:30]
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(rows) + 0.8))
    names = [r["feature"] for r in rows][::-1]
    gains = [r.get("gain", 0.0) for r in rows][::-1]
    ax.barh(names, gains, color="#4c72b0")
    ax.set_xlabel(f"total gain ({head})")
    ax.tick_params(axis="y", labelsize=7)
    return _svg(fig)


def calibration_tables(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per binary head: its calibration bins (mean prediction, share of positives, count)."""
    bins: dict[str, dict[int, dict[str, float]]] = {}
    for r in rows:
        if str(r["metric"]).startswith("calibration_"):
            name = r["metric"].removeprefix("calibration_")
            bins.setdefault(r["model"], {}).setdefault(int(r["k"]), {})[name] = r["value"]
    return {m: [b[k] | {"bin": k} for k in sorted(b)] for m, b in bins.items()}


def plot_calibration(plt: Any, rows: list[dict[str, Any]]) -> str:
    tables = calibration_tables(rows)
    if not tables:
        return _note(
            plt,
            'no CTR or CVR head in this run: add "ctr" and "cvr" to train.heads to see '
            "their calibration",
        )
    fig, ax = plt.subplots(figsize=(4.4, 4.0))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    for model, table in tables.items():
        ax.plot(
            [b["mean_pred"] for b in table],
            [b["frac_pos"] for b in table],
            "o-",
            label=model,
            markersize=3,
        )
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed share of positives")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return _svg(fig)


def plot_scores(plt: Any, data: dict[str, Any]) -> str:
    hists = data["scores"]
    if not hists:
        return _note(plt, "no scores were sampled")
    fig, axes = _panels(plt, len(hists), width=4.0)
    for ax, hist in zip(axes, hists, strict=True):
        edges = hist["edges"]
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        for grade, counts in hist["counts"].items():
            total = sum(counts) or 1
            ax.plot(centers, [c / total for c in counts], label=GRADE_NAMES.get(grade, grade))
        ax.set_title(hist["head"])
        ax.set_xlabel("score")
        ax.set_ylabel("share of rows")
    axes[-1].legend(fontsize=7, title="deepest event", title_fontsize=7)
    return _svg(fig)


# --------------------------------------------------------------------------- tables


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.4f}"
    return str(value)


def metrics_table(rows: list[dict[str, Any]], target: str, data: dict[str, Any]) -> list[list[str]]:
    """Rows: model, then each metric@K with its interval."""
    names = ("recall", "ndcg", "map", "hitrate")
    lookup = {(r["model"], r["metric"], r["k"]): r for r in rows if r["target"] == target}
    models = [
        *data["models"],
        *data["sources"],
        *(["oracle"] if ("oracle", "ndcg", data["ks"][0]) in lookup else []),
    ]
    head = ["model", *[f"{m}@{k}" for k in data["ks"] for m in names]]
    table = [head]
    for model in models:
        cells = [model]
        for k in data["ks"]:
            for m in names:
                r = lookup.get((model, m, k))
                if r is None:
                    cells.append("")
                elif "ci_low" in r:
                    cells.append(f"{_fmt(r['value'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]")
                else:
                    cells.append(_fmt(r["value"]))
        table.append(cells)
    return table


def breakdown_table(data: dict[str, Any], target: str) -> list[list[str]]:
    rows = [b for b in data["breakdowns"] if b["target"] == target]
    table = [
        [
            "model",
            "segment",
            "users",
            f"ndcg@{rows[0]['k'] if rows else ''}",
            f"recall@{rows[0]['k'] if rows else ''}",
        ]
    ]
    for b in rows:
        table.append(
            [b["model"], b["segment"], str(b["users"]), _fmt(b["ndcg"]), _fmt(b["recall"])]
        )
    return table


def binary_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    found = {
        (r["model"], r["metric"]): r["value"] for r in rows if r["metric"] in ("auc", "logloss")
    }
    models = sorted({m for m, _ in found})
    table = [["head", "AUC", "log loss"]]
    for m in models:
        table.append([m, _fmt(found.get((m, "auc"))), _fmt(found.get((m, "logloss")))])
    return table


def _cell(text: str) -> str:
    """A value with its interval "v [lo, hi]" on two lines, the interval small."""
    if " [" in text:
        value, interval = text.split(" [", 1)
        return f"{html.escape(value)}<br><span class='ci'>[{html.escape(interval)}</span>"
    return html.escape(text)


def _html_table(table: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in table[1:]
    )
    return (
        f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
        "</table></div>"
    )


def _md_table(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)


def _add_table(h: list[str], md: list[str], level: int, title: str, table: list[list[str]]) -> None:
    """A heading and a table, to the HTML and the Markdown pages alike."""
    h.append(f"<h{level}>{html.escape(title)}</h{level}>{_html_table(table)}")
    md += [f"{'#' * level} {title}", "", _md_table(table), ""]


def _add_plot(h: list[str], md: list[str], level: int, name: str, svg: str, prefix: str) -> None:
    """A heading and plot ``name``: inline SVG in HTML, a link to ``prefix<name>.svg`` in
    Markdown."""
    h.append(f"<h{level}>{TITLES[name]}</h{level}><figure data-plot='{name}'>{svg}</figure>")
    md += [f"{'#' * level} {TITLES[name]}", "", f"![{TITLES[name]}]({prefix}{name}.svg)", ""]


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1280px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f4f4f4; }
figure { margin: 0.5em 0 1.5em; } figure svg { max-width: 100%; height: auto; }
.note { color: #666; } .ci { color: #777; font-size: 10px; } .wide { overflow-x: auto; }
"""


def render(data: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[str, str, dict[str, str]]:
    """``(html, markdown, {plot name: svg})``."""
    plt = _pyplot()
    svgs = {
        "recall_curves": plot_recall_curves(plt, data),
        "ndcg_at_k": plot_ndcg_at_k(plt, data),
        "importance": plot_importance(plt, data),
        "calibration": plot_calibration(plt, rows),
        "scores": plot_scores(plt, data),
    }
    title = f"gbrank eval report: run {data['run_id']}"
    intro = (
        f"Eval fold as of {data['as_of']}; served model: {data['served']}; best single source "
        f"(NDCG@{data['ks'][0]}, {data['targets'][-1]}): {data['best_source']}. Users evaluated "
        "per target: "
        + ", ".join(f"{t} {n:,}" for t, n in data["users"].items())
        + ". "
        + (
            f"Intervals: 95% percentile bootstrap over users ({data['bootstrap']} resamples)."
            if data["bootstrap"]
            else "No intervals (eval.bootstrap = 0)."
        )
    )
    h = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(intro)}</p>"
    ]
    md = [f"# {title}", "", intro, ""]
    h.append("<h2>Metrics</h2>")
    md += ["## Metrics", ""]
    for target in data["targets"]:
        _add_table(h, md, 3, f"target: {target}", metrics_table(rows, target, data))
    binary = binary_table(rows)
    if len(binary) > 1:
        _add_table(h, md, 3, "Binary heads", binary)
    for name in PLOTS:
        _add_plot(h, md, 2, name, svgs[name], "report/")
    h.append(
        "<h2>Breakdowns</h2><p class='note'>Users by history before as_of (cold: none; "
        "warm users by activity decile, 1 = least active); positives by whether the user "
        "had touched the item before (repeat) or not (new): the share found in the top "
        "K.</p>"
    )
    md += ["## Breakdowns", ""]
    for target in data["targets"]:
        _add_table(h, md, 3, f"target: {target}", breakdown_table(data, target))
    if data.get("tuning"):
        study = study_svgs(data["tuning"])
        section, markdown = study_section(data["tuning"], study, "report/")
        h.append(section)
        md += [markdown, ""]
        svgs.update(study)
    h.append("</body></html>")
    return "\n".join(h) + "\n", "\n".join(md) + "\n", svgs


STUDY_PLOTS = ("tune_history", "tune_importance")


def plot_tune_history(plt: Any, summary: dict[str, Any]) -> str:
    trials = [t for t in summary["trials"] if t["state"] in ("complete", "pruned")]
    if not trials:
        return _note(plt, "no finished trial")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    done = [t for t in trials if t["state"] == "complete"]
    ax.scatter(
        [t["number"] for t in done], [t["value"] for t in done], s=14, label="complete trial"
    )
    pruned = [t["number"] for t in trials if t["state"] == "pruned"]
    if pruned and done:
        low = min(t["value"] for t in done)
        ax.scatter(pruned, [low] * len(pruned), marker="x", color="#999", s=14, label="pruned")
    best, xs, ys = -float("inf"), [], []
    for t in sorted(done, key=lambda t: t["number"]):
        best = max(best, t["value"])
        xs.append(t["number"])
        ys.append(best)
    ax.step(xs, ys, where="post", color="#c44e52", label="best so far")
    if summary.get("baseline") is not None:
        ax.axhline(summary["baseline"], linestyle="--", color="#555", linewidth=1, label="trial 0")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(summary["metric"])
    ax.legend(fontsize=7, loc="lower right")
    return _svg(fig)


def plot_tune_importance(plt: Any, summary: dict[str, Any]) -> str:
    found = summary.get("importances") or {}
    if not found:
        return _note(plt, "importances need at least 4 complete trials with drawn parameters")
    names = list(found)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 0.8))
    ax.barh(names, [found[n] for n in names], color="#4c72b0")
    ax.set_xlabel("importance")
    return _svg(fig)


def study_tables(summary: dict[str, Any]) -> tuple[str, list[list[str]], list[list[str]]]:
    """An intro line, the best parameters, and the trials table of a study summary."""
    best = summary.get("best") or {}
    intro = (
        f"Study {summary['study']} ({summary['storage']}): {summary['finished']} finished "
        f"trials over {', '.join(summary['space'])}; maximised {summary['metric']} on the "
        f"{summary['split']}. Trial 0 is the config as it was: {_fmt(summary.get('baseline'))}; "
        f"best: trial {best.get('number', '-')}, {_fmt(best.get('value'))}."
    )
    gain = summary.get("gain")
    if gain:
        intro += (
            f" Gain of the best over trial 0 on the same {gain['users']:,} users: "
            f"{gain['gain']:+.4f} (paired standard error {gain['se']:.4f}); a gain within two "
            "standard errors may not hold on new data."
        )
    params = [["parameter", "best value"]]
    params += [
        [k, _fmt(v) if isinstance(v, float) else str(v)] for k, v in best.get("params", {}).items()
    ]
    trials = [["trial", "state", "value", "trees", "seconds"]]
    for t in summary["trials"]:
        trees = t.get("trees") or {}
        trials.append(
            [
                str(t["number"]) + (" (config)" if t.get("baseline") else ""),
                t["state"] + (f" at {t['pruned_at']}" if t.get("pruned_at") else ""),
                _fmt(t["value"]),
                ", ".join(str(v) for v in trees.values()) or "-",
                "-" if t.get("seconds") is None else f"{t['seconds']:.1f}",
            ]
        )
    return intro, params, trials


def study_section(summary: dict[str, Any], svgs: dict[str, str], prefix: str) -> tuple[str, str]:
    """The study's HTML and Markdown section (plots inline; Markdown links ``prefix``)."""
    intro, params, trials = study_tables(summary)
    h = [f"<h2>Tuning</h2><p>{html.escape(intro)}</p>"]
    md = ["## Tuning", "", intro, ""]
    if len(params) > 1:
        _add_table(h, md, 3, "Best parameters", params)
    for name in STUDY_PLOTS:
        _add_plot(h, md, 3, name, svgs[name], prefix)
    _add_table(h, md, 3, "Trials", trials)
    return "\n".join(h), "\n".join(md)


def study_svgs(summary: dict[str, Any]) -> dict[str, str]:
    plt = _pyplot()
    return {
        "tune_history": plot_tune_history(plt, summary),
        "tune_importance": plot_tune_importance(plt, summary),
    }


def render_study(summary: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    """The study on its own page (``gbrank tune`` writes it beside study.json)."""
    svgs = study_svgs(summary)
    section, markdown = study_section(summary, svgs, "report/")
    title = f"gbrank tuning report: study {summary['study']}"
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{section}"
        "</body></html>\n"
    )
    return page, f"# {title}\n\n{markdown}", svgs


def write_report(run: Any, data: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Write report/data.json, the plots, report.html and report.md into the run; returns
    their paths relative to the run folder."""
    page, markdown, svgs = render(data, rows)
    written = ["report/data.json", "report.html", "report.md"]
    atomic_write_text(
        json.dumps(data, sort_keys=True, default=str) + "\n", run.file("report/data.json")
    )
    for name, svg in svgs.items():
        atomic_write_text(svg, run.file(f"report/{name}.svg"))
        written.append(f"report/{name}.svg")
    atomic_write_text(page, run.file("report.html"))
    atomic_write_text(markdown, run.file("report.md"))
    return written


def plots_in(page: str) -> list[str]:
    """The plot names an HTML report holds (for checks)."""
    return [name for name in (*PLOTS, *STUDY_PLOTS) if f"data-plot='{name}'" in page]


__all__ = ["PLOTS", "STUDY_PLOTS", "Path", "plots_in", "render", "render_study", "write_report"]
