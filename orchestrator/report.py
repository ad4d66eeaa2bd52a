"""``ltrr report RESULTS``: a result document as a self-contained HTML page and as Markdown.

Reads what ``ltrr demo`` (``results.json``), ``ltrr simulate --out`` and ``ltrr evaluate --out``
write. Tables come from :mod:`orchestrator.reporting` (the same ones the terminal shows); plots
are PNGs drawn with matplotlib (Agg), written beside the report for the Markdown and embedded in
the HTML as base64 data URIs, so ``report.html`` is one file that opens anywhere:

* cumulative reward and cumulative regret per policy (simulation);
* the learner's arm choice share over time, per intent (simulation);
* nDCG@10 per system with 95% intervals (bootstrap over queries);
* latency per stage of real searches (demo).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .reporting import ReportTable, bootstrap_mean_interval, fmt, fmt_interval, intent_table, policy_table

REPORT_HTML = "report.html"
REPORT_MARKDOWN = "report.md"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th:first-child,td:first-child{text-align:left}
th{background:#f4f4f4}.note{color:#555;font-size:.85em;margin-top:-.5em}img{max-width:100%;border:1px solid #eee}
.pass{color:#067d17;font-weight:600}.fail{color:#b00020;font-weight:600}code{background:#f4f4f4;padding:0 .2em}
"""


class ReportError(ValueError):
    """The file is not a result document this command knows; the message says what it expected."""


@dataclass(frozen=True)
class Figure:
    name: str  # file stem
    title: str
    png: bytes


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    images: dict[str, Path] = field(default_factory=dict)


def result_kind(doc: Any) -> str:
    """``demo``, ``simulation`` or ``evaluation``; a :class:`ReportError` for anything else."""
    if not isinstance(doc, Mapping):
        raise ReportError("a result document is a JSON object")
    if doc.get("kind") == "ltrr-demo":
        return "demo"
    if isinstance(doc.get("policies"), Mapping) and isinstance(doc.get("meta"), Mapping) and "goals" in doc:
        return "simulation"
    if isinstance(doc.get("systems"), list) and "per_query" in doc:
        return "evaluation"
    raise ReportError("not a result of `ltrr demo` (results.json), `ltrr simulate --out` or `ltrr evaluate --out`")


def load_result(path: str | Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not JSON: {e}") from None
    result_kind(doc)
    return doc


# ------------------------------------------------------------------------------------------------
# Plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.tight_layout(rect=rect)
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()


def _is_baseline(spec: str) -> bool:
    return spec.startswith("static:") or spec in ("all", "random")


def cumulative_figures(sim: Mapping[str, Any]) -> list[Figure]:
    """Cumulative reward and cumulative regret (true context) per policy."""
    plt = _pyplot()
    out = []
    title = str(sim.get("meta", {}).get("dataset", ""))
    for name, key, label in (("reward", "cumulative_reward", "cumulative clicks"),
                             ("regret", "cumulative_regret", "cumulative pseudo-regret (expected clicks)")):
        fig, ax = plt.subplots(figsize=(9, 5))
        for spec, entry in sim.get("policies", {}).items():
            series = entry.get("series", {})
            base = _is_baseline(spec)
            ax.plot(series.get("searches", []), series.get(key, []), label=spec, linestyle="--" if base else "-",
                    linewidth=1.0 if base else 2.2)
        ax.set_xlabel("searches")
        ax.set_ylabel(label)
        ax.set_title(f"{title}: {label} per policy")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        out.append(Figure(name, f"{label} per policy", _png(fig)))
    return out


def arm_share_figure(by_intent: Mapping[str, Any], policy: str) -> Figure | None:
    """One panel per intent: the share of its searches in which the policy ran each arm, per
    window of the stream."""
    groups = by_intent.get("groups", {})
    if not groups:
        return None
    plt = _pyplot()
    names = list(groups)
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        series = groups[name].get("series", {})
        x = series.get("window_end", [])
        for arm, shares in series.get("arm_share", {}).items():
            ax.plot(x, [float("nan") if v is None else v for v in shares], label=arm, linewidth=1.6)
        ax.set_title(f"{name} ({groups[name].get('searches', 0)} searches)", fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("searches", fontsize=8)
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].set_ylabel("share of searches running the arm")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8)
    fig.suptitle(f"{policy}: arm choice share over time, per {str(by_intent.get('grouped_by', 'intent')).replace('_', ' ')}")
    png = _png(fig, rect=(0, 0.06, 1, 1))  # room for the legend below the panels
    return Figure("arm_share", f"{policy}: arm choice share over time", png)


def interval_figure(rows: Sequence[Mapping[str, Any]], title: str) -> Figure | None:
    """Horizontal bars: each system's mean with its interval (``mean``, ``low``, ``high``, ``name``;
    an optional ``second`` marker, e.g. before the rerank)."""
    rows = [r for r in rows if r.get("mean") is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    y = list(range(len(rows)))[::-1]
    means = [r["mean"] for r in rows]
    # max(0, .): a bootstrap of equal values can put the bound a rounding error past the mean
    lows = [max(r["mean"] - r["low"], 0.0) if r.get("low") is not None else 0.0 for r in rows]
    highs = [max(r["high"] - r["mean"], 0.0) if r.get("high") is not None else 0.0 for r in rows]
    ax.barh(y, means, xerr=[lows, highs], color="#4c78a8", alpha=0.85, capsize=3, label=rows[0].get("label", "mean"))
    seconds = [(yy, r["second"]) for yy, r in zip(y, rows) if r.get("second") is not None]
    if seconds:
        ax.scatter([v for _, v in seconds], [yy for yy, _ in seconds], color="#e45756", zorder=3, marker="D", s=22,
                   label=rows[0].get("second_label", "other"))
    ax.set_yticks(y)
    ax.set_yticklabels([r["name"] for r in rows], fontsize=8)
    ax.set_xlabel("nDCG@10 (95% interval)")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    return Figure("ndcg", title, _png(fig))


def latency_figure(latency: Mapping[str, Any]) -> Figure | None:
    samples = {k: v for k, v in (latency.get("samples") or {}).items() if v}
    if not samples:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = list(samples)[::-1]  # the first stage on top
    ax.boxplot([samples[n] for n in names], vert=False, showfliers=False)
    ax.set_yticks(range(1, len(names) + 1))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("ms per search (box: quartiles, whiskers: 1.5 IQR)")
    ax.set_title(f"latency per stage, {latency.get('searches', 0)} real searches")
    ax.grid(True, axis="x", alpha=0.3)
    return Figure("latency", "latency per stage", _png(fig))


# ------------------------------------------------------------------------------------------------
# Sections per kind of result


@dataclass
class _Report:
    title: str
    summary: list[str]
    tables: list[ReportTable] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def simulation_rows(sim: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per policy numbers of a simulation document, in the demo's row shape (no intervals)."""
    rows = []
    for spec, entry in sim.get("policies", {}).items():
        f = entry["final"]
        rows.append({"policy": spec, "reward_per_search": f.get("reward_per_search"),
                     "reward_vs_best_static": f.get("reward_vs_best_static"), "candidate_recall": f.get("candidate_recall"),
                     "ndcg10_reranked": f.get("ndcg10_reranked"), "ndcg10_fused": f.get("ndcg10_fused", f.get("ndcg10")),
                     "requested_per_search": f.get("requested_per_search"), "requested_vs_all": f.get("requested_vs_all"),
                     "time_ms_per_search": f.get("time_ms_per_search"), "time_vs_all": f.get("time_vs_all")})
    return rows


def _learner(sim: Mapping[str, Any]) -> str | None:
    return next((spec for spec in sim.get("policies", {}) if not _is_baseline(spec)), None)


def _simulation_figures(sim: Mapping[str, Any], learner: str | None) -> list[Figure]:
    figures = cumulative_figures(sim)
    if learner is not None:
        by_intent = sim["policies"][learner].get("by_intent")
        figure = arm_share_figure(by_intent, learner) if by_intent else None
        if figure is not None:
            figures.append(figure)
    return figures


def _demo_report(doc: Mapping[str, Any]) -> _Report:
    from .demo import demo_tables

    meta = doc["meta"]
    sim = doc["simulation"]
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in meta.get("steps", {}).items())
    reused = meta.get("reused", {})
    summary = [
        f"Dataset **{meta['dataset']}** ({meta['documents']} documents, {meta['queries']} judged queries) loaded as "
        f"`{meta['alias']}` -> `{meta['index']}`; {meta['searches']} simulated searches per policy; users see the "
        f"{meta['display']} top 10.",
        f"Run started {meta['started_at']}, took {meta['elapsed_seconds']:.0f}s on {meta.get('cpus')} CPUs ({steps}).",
        "Reused from earlier runs: " + ", ".join(f"{k}: {v}" for k, v in reused.items()) + "." if reused else "",
    ]
    report = _Report(f"ltrr demo: learning to rank and retrieve on {meta['dataset']}", [s for s in summary if s],
                     demo_tables(doc), notes=list(doc.get("notes", [])))
    report.figures = _simulation_figures(sim, meta.get("learner"))
    rows = []
    for p in doc["policies"]:
        interval = p.get("ndcg10_reranked_interval") or p.get("ndcg10_fused_interval") or [None, None]
        mean = p.get("ndcg10_reranked") if p.get("ndcg10_reranked") is not None else p.get("ndcg10_fused")
        rows.append({"name": p["policy"], "mean": mean, "low": interval[0], "high": interval[1],
                     "second": p.get("ndcg10_fused") if p.get("ndcg10_reranked") is not None else None,
                     "label": "reranked" if p.get("ndcg10_reranked") is not None else "fused",
                     "second_label": "fused (before the rerank)"})
    figure = interval_figure(rows, "nDCG@10 per policy (after the rerank)")
    if figure is not None:
        report.figures.append(figure)
    figure = latency_figure(doc.get("latency") or {})
    if figure is not None:
        report.figures.append(figure)
    return report


def _simulation_report(sim: Mapping[str, Any]) -> _Report:
    meta = sim.get("meta", {})
    learner = _learner(sim)
    stream = meta.get("stream", {})
    report = _Report(f"ltrr simulate: {meta.get('dataset', '')}",
                     [f"{stream.get('searches', '?')} simulated searches, click model {meta.get('click_model')}, "
                      f"best static arm {sim.get('best_static')}; users see the {meta.get('display', 'fused')} top "
                      f"{meta.get('display_size', 10)}."])
    report.tables.append(policy_table(simulation_rows(sim), "per policy"))
    if learner is not None and sim["policies"][learner].get("by_intent"):
        intents = dict(sim["policies"][learner]["by_intent"])
        intents["policy"] = learner
        report.tables.append(intent_table(intents, meta.get("arms", [])))
    report.figures = _simulation_figures(sim, learner)
    return report


def _evaluation_report(doc: Mapping[str, Any]) -> _Report:
    meta = doc.get("meta", {})
    per_query = doc.get("per_query", {})
    rows, bars = [], []
    for s in doc["systems"]:
        name = str(s["system"])
        values = [q.get("nDCG@10", 0.0) for q in per_query.get(name, {}).values()]
        interval = None
        if values and not s.get("failed"):
            _mean, low, high = bootstrap_mean_interval(values, resamples=1000)
            interval = [low, high]
            bars.append({"name": name, "mean": s["nDCG@10"], "low": low, "high": high, "label": "mean"})
        if s.get("failed"):
            rows.append((name, f"failed on {s['failed']} of {s['queries']} queries", "", "", "", str(s["failed"])))
            continue
        rows.append((name, fmt_interval(s.get("nDCG@10"), interval), fmt(s.get("R@100")), fmt(s.get("RR@10")),
                     fmt(s.get("candidate_recall")), str(s.get("failed", 0))))
    title = f"{meta.get('dataset', '')}: {meta.get('queries', '?')} queries"
    table = ReportTable(title, ("system", "nDCG@10 [95%]", "R@100", "RR@10", "cand. R", "failed"), tuple(rows),
                        "intervals: bootstrap over queries")
    summary = [f"Split {meta.get('split')}, index `{meta.get('index')}`, best single arm {meta.get('best_arm')}."]
    learning = meta.get("learning")
    if learning:
        line = (f"Learned on {learning.get('train_queries')} training queries, measured on "
                f"{learning.get('test_queries')} test queries (seed {learning.get('seed')}).")
        warm = learning.get("warmup")
        if warm:
            line += (f" Bandit warm-up: {warm['searches']} simulated searches of the training queries, users shown "
                     f"the {warm['display']} lists.")
        if learning.get("reranker"):
            line += (f" Reranker trained on {learning['reranker']['queries']} training queries "
                     "(a temporary model, deleted after the run).")
        summary.append(line)
    report = _Report(f"ltrr evaluate: {meta.get('dataset', '')}", summary, [table])
    for note in meta.get("notes", []):
        report.notes.append(str(note))
    figure = interval_figure(bars, "nDCG@10 per system")
    if figure is not None:
        report.figures.append(figure)
    return report


def build_report(doc: Mapping[str, Any]) -> _Report:
    kind = result_kind(doc)
    if kind == "demo":
        return _demo_report(doc)
    if kind == "simulation":
        return _simulation_report(doc)
    return _evaluation_report(doc)


# ------------------------------------------------------------------------------------------------
# Writers


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** as HTML (the summary lines use nothing else)."""
    import re

    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def _verdicts(table_html: str) -> str:
    return table_html.replace("<td>PASS</td>", "<td class=\"pass\">PASS</td>").replace(
        "<td>FAIL</td>", "<td class=\"fail\">FAIL</td>")


def write_report(doc: Mapping[str, Any], out_dir: str | Path) -> ReportFiles:
    """Write ``report.html`` (self-contained), ``report.md`` and the plots (``report-*.png``) into
    ``out_dir``; returns their paths."""
    report = build_report(doc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = {}
    for figure in report.figures:
        path = out / f"report-{figure.name}.png"
        path.write_bytes(figure.png)
        images[figure.name] = path
    generated = f"generated by ltrr report, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    md = [f"# {report.title}", "", *(f"{line}  " for line in report.summary), ""]
    for table in report.tables:
        md += [table.to_markdown(), ""]
    for figure in report.figures:
        md += [f"![{figure.title}]({images[figure.name].name})", ""]
    if report.notes:
        md += ["## Notes", "", *(f"- {note}" for note in report.notes), ""]
    md.append(f"<sub>{generated}</sub>")
    markdown_path = out / REPORT_MARKDOWN
    markdown_path.write_text("\n".join(md) + "\n")
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(report.title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(report.title)}</h1>"]
    parts += [f"<p>{_inline(line)}</p>" for line in report.summary]
    parts.append("<h2>Results</h2>")
    parts += [_verdicts(table.to_html()) for table in report.tables]
    if report.figures:
        parts.append("<h2>Plots</h2>")
    for figure in report.figures:
        data = base64.b64encode(figure.png).decode("ascii")
        parts.append(f"<figure><img alt=\"{html.escape(figure.title)}\" src=\"data:image/png;base64,{data}\">"
                     f"<figcaption>{html.escape(figure.title)}</figcaption></figure>")
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_inline(n)}</li>" for n in report.notes) + "</ul>")
    parts.append(f"<p class=\"note\">{html.escape(generated)}</p></body></html>")
    html_path = out / REPORT_HTML
    html_path.write_text("\n".join(parts) + "\n")
    return ReportFiles(html_path, markdown_path, images)
