"""Evaluation results as tables people compare: every system, its distance to the best arm, and
how each ltrr arm stands against its textbook anchor (measured in the same run)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from .baselines import BM25_REF, DENSE_REF, RRF_REF
from .evaluate import Evaluation


def best_system(evaluation: Evaluation, names: Sequence[str], measure: str = "nDCG@10") -> str | None:
    """The system among ``names`` with the highest mean ``measure`` that never failed."""
    candidates = [s for s in evaluation.summaries() if s["system"] in names and not s["failed"]]
    return max(candidates, key=lambda s: s[measure], default={"system": None})["system"]


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def evaluation_table(evaluation: Evaluation, title: str, references: Sequence[str | None] = (),
                     query_ids: Sequence[str] | None = None) -> Table:
    """One row per system; failed systems show why instead of numbers (never zeros). For each of
    ``references`` (e.g. the best arm, the union) a column gives each system's nDCG@10 difference
    to it with the paired t-test's p-value."""
    refs = [r for r in references if r] if query_ids is None else []
    comparisons = {ref: evaluation.compare(ref) for ref in refs}
    table = Table(title=title, title_justify="left")
    for column in ("system", "nDCG@10", *(f"Δ vs {ref} (p)" for ref in refs), "R@100", "RR@10",
                   "cand. R", "n/a", "failed"):
        table.add_column(escape(column), no_wrap=column != "system")
    for s in evaluation.summaries(query_ids):
        name = str(s["system"])
        if s["failed"]:
            reason = escape(str(s["first_failure"])[:80])
            table.add_row(escape(name), f"[red]failed on {s['failed']} of {s['queries']} queries: {reason}[/]",
                          *([""] * len(refs)), "", "", "", str(s["not_applicable"]), f"[red]{s['failed']}[/]")
            continue
        deltas = [comparisons[ref].get(name) for ref in refs]
        shown = ["" if d is None else f"{d[0]:+.4f} ({d[1]:.3f})" for d in deltas]
        table.add_row(escape(name), _fmt(s["nDCG@10"]), *shown, _fmt(s["R@100"]), _fmt(s["RR@10"]),
                      _fmt(s["candidate_recall"]), str(s["not_applicable"]), str(s["failed"]))
    return table


def rerank_ratios(evaluation: Evaluation, reranked: str, union: str, best_arm: str | None
                  ) -> list[tuple[str, str, str, float]]:
    """``(reranked, reference, "nDCG@10", ratio)`` against the union and the best single arm."""
    summaries = {s["system"]: s for s in evaluation.summaries()}
    out = []
    for reference in (union, best_arm):
        a, b = summaries.get(reranked), summaries.get(reference) if reference else None
        if a and b and not a["failed"] and not b["failed"] and b["nDCG@10"]:
            out.append((reranked, str(reference), "nDCG@10", a["nDCG@10"] / b["nDCG@10"]))
    return out


def anchor_ratios(evaluation: Evaluation, union: str, arm_anchors: dict[str, str] | None = None
                  ) -> list[tuple[str, str, str, float]]:
    """``(system, anchor, measure, ratio)`` for each ltrr system that has an anchor in the table:
    the lexical arm against reference BM25, the dense arm against exact cosine, the union against
    the reference RRF (nDCG@10 and candidate recall)."""
    pairs = dict(arm_anchors or {"bm25_popularity": BM25_REF, "knn": DENSE_REF})
    summaries = {s["system"]: s for s in evaluation.summaries()}
    out = []
    checks = [(arm, anchor, "nDCG@10") for arm, anchor in pairs.items()]
    checks += [(union, RRF_REF, "nDCG@10"), (union, RRF_REF, "candidate_recall")]
    for system, anchor, measure in checks:
        a, b = summaries.get(system), summaries.get(anchor)
        if not a or not b or a["failed"] or b["failed"] or a.get(measure) is None or not b.get(measure):
            continue
        out.append((system, anchor, measure, a[measure] / b[measure]))
    return out


# ------------------------------------------------------------------------------------------------
# Tables shared by the terminal (rich), the Markdown and the HTML report


@dataclass(frozen=True)
class ReportTable:
    """A table as plain strings, rendered the same way in the terminal, in Markdown and in HTML."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"{self.title}: a row has {len(row)} cells for {len(self.columns)} columns")

    def to_rich(self) -> Table:
        table = Table(title=escape(self.title), title_justify="left", caption=escape(self.note) or None,
                      caption_justify="left")
        for i, column in enumerate(self.columns):
            # Numbers never wrap (a wrapped interval is unreadable); long text columns may.
            table.add_column(escape(column), no_wrap=i == 0 or self._numeric(i),
                             justify="left" if i == 0 or not self._numeric(i) else "right")
        for row in self.rows:
            table.add_row(*(escape(cell) for cell in row))
        return table

    def _numeric(self, column: int) -> bool:
        return all(len(row[column]) <= 24 for row in self.rows)

    def to_markdown(self) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        lines = [f"**{cell(self.title)}**", "", "| " + " | ".join(cell(c) for c in self.columns) + " |",
                 "| " + " | ".join("---" for _ in self.columns) + " |"]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        if self.note:
            lines += ["", cell(self.note)]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        import html

        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        note = f"<p class=\"note\">{html.escape(self.note)}</p>" if self.note else ""
        return (f"<table><caption>{html.escape(self.title)}</caption><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>{note}")


def fmt(value: Any, digits: int = 3, suffix: str = "") -> str:
    """A number for a table: ``digits`` decimals and ``suffix``; "—" when unknown."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value}{suffix}"
    return f"{float(value):.{digits}f}{suffix}"


def fmt_interval(mean: Any, interval: Sequence[float] | None, digits: int = 3) -> str:
    """``0.712 [0.690, 0.733]``; the mean alone without an interval."""
    if not interval or mean is None:
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} [{fmt(interval[0], digits)}, {fmt(interval[1], digits)}]"


def bootstrap_mean_interval(values: Sequence[float] | np.ndarray, clusters: Sequence[Any] | np.ndarray | None = None, *,
                            resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its percentile bootstrap interval. With
    ``clusters`` (e.g. the query of each search) whole clusters are resampled, since the searches
    of one query are not independent."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    labels = np.arange(x.size) if clusters is None else np.unique(np.asarray(clusters, dtype=object),
                                                                   return_inverse=True)[1]
    sums = np.bincount(labels, weights=x)
    counts = np.bincount(labels).astype(np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def goal_table(goals: Sequence[Mapping[str, Any]], title: str = "goals (measured in this run)") -> ReportTable:
    """The goals with their measured ratio, threshold and pass/fail."""
    rows = []
    for g in goals:
        measured = g.get("measured")
        verdict = "not measured" if measured is None else ("PASS" if g.get("passed") else "FAIL")
        rows.append((str(g["goal"]), fmt(measured, 3, "x"), f"{g['comparison']} {g['threshold']:.2f}x", verdict,
                     str(g.get("detail", ""))))
    return ReportTable(title, ("goal", "measured", "threshold", "result", "how"), tuple(rows))


def policy_table(policies: Sequence[Mapping[str, Any]], title: str, note: str = "") -> ReportTable:
    """One row per policy of a demo result: reward and its ratio to the best static arm, candidate
    recall, nDCG@10 after the rerank (95% interval) and of the fused list, OpenSearch cost vs all arms."""
    rows = []
    for p in policies:
        rows.append((str(p["policy"]), fmt(p.get("reward_per_search")), fmt(p.get("reward_vs_best_static"), 3, "x"),
                     fmt(p.get("candidate_recall")),
                     fmt_interval(p.get("ndcg10_reranked"), p.get("ndcg10_reranked_interval")),
                     fmt(p.get("ndcg10_fused")), fmt(p.get("requested_per_search"), 0),
                     fmt(p.get("requested_vs_all"), 3, "x"), fmt(p.get("time_ms_per_search"), 1),
                     fmt(p.get("time_vs_all"), 3, "x")))
    return ReportTable(title, ("policy", "clicks/search", "vs best static", "cand. recall",
                               "nDCG@10 reranked [95%]", "nDCG@10 fused", "docs", "docs vs all", "OS ms",
                               "OS ms vs all"), tuple(rows), note)


def intent_table(intents: Mapping[str, Any], arms: Sequence[str]) -> ReportTable:
    """Per intent, the share of searches in which the learner ran each arm in the last part of the
    run, its most chosen arm sets and its reward there."""
    groups = intents.get("groups", {})
    rows = []
    for name, g in groups.items():
        shares = g.get("arm_share_last", {})
        top = ", ".join(f"{action} {share:.0%}" for action, share in list(g.get("action_share_last", {}).items())[:3])
        rows.append((f"{name} ({g.get('searches_last', 0)})", *(f"{shares.get(a, 0.0):.0%}" for a in arms), top,
                     fmt(g.get("reward_per_search_last"))))
    last = intents.get("last_fraction", 0.25)
    by = str(intents.get("grouped_by", "intent")).replace("_", " ")
    title = (f"what {intents.get('policy', 'the bandit')} learned: arms run per {by}, last {last:.0%} of the searches "
             "(searches)")
    return ReportTable(title, (by, *arms, "top arm sets", "clicks/search"), tuple(rows))
