"""Evaluation results as tables people compare: every system, its distance to the best arm, and
how each ltrr arm stands against its textbook anchor (measured in the same run)."""

from __future__ import annotations

from collections.abc import Sequence

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
