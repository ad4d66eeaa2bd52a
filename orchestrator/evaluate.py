"""Offline evaluation of retrieval strategies on a BEIR-layout dataset's qrels.

Metrics follow trec_eval / BEIR conventions (linear gain), so numbers compare with published ones:

- nDCG@k = DCG@k / IDCG@k with DCG@k = Σ_{i=1..k} rel_i / log2(i + 1), rel_i the graded qrel
  (0 when unjudged) and IDCG@k the DCG of the ideal ordering of the query's judged documents;
- Recall@k = |relevant ∩ top-k| / |relevant|, relevant = qrel grade > 0;
- MRR = 1 / rank of the first relevant document (0 when none is retrieved), no cutoff beyond the list.
Queries without any relevant judgement are skipped (as trec_eval does).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_DISCOUNT = 1.0 / np.log2(np.arange(2, 1002))


def ndcg_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    gains = np.fromiter((max(qrels.get(d, 0), 0) for d in ranked[:k]), dtype=np.float64, count=min(k, len(ranked)))
    ideal = np.sort(np.fromiter((g for g in qrels.values() if g > 0), dtype=np.float64))[::-1][:k]
    if ideal.size == 0:
        return 0.0
    dcg = float(gains @ _DISCOUNT[: gains.size])
    idcg = float(ideal @ _DISCOUNT[: ideal.size])
    return dcg / idcg


def recall_at_k(ranked: Iterable[str], qrels: Mapping[str, int], k: int | None = 100) -> float:
    relevant = {d for d, g in qrels.items() if g > 0}
    if not relevant:
        return 0.0
    top = list(ranked)[:k] if k is not None else list(ranked)
    return len(relevant.intersection(top)) / len(relevant)


def reciprocal_rank(ranked: Sequence[str], qrels: Mapping[str, int]) -> float:
    for i, d in enumerate(ranked, start=1):
        if qrels.get(d, 0) > 0:
            return 1.0 / i
    return 0.0


@dataclass
class MetricSums:
    """Running means of the metrics for one system (a strategy alone, or the fused union)."""

    name: str
    queries: int = 0
    ndcg10: float = 0.0
    recall100: float = 0.0
    mrr: float = 0.0
    pool_recall: float = 0.0       # recall of every candidate retrieved (the union's ceiling)
    has_pool: bool = False
    errors: int = 0
    empty: int = 0
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, qid: str, ranked: Sequence[str], qrels: Mapping[str, int], *,
            pool: Iterable[str] | None = None, error: bool = False) -> None:
        row = {"ndcg@10": ndcg_at_k(ranked, qrels, 10), "recall@100": recall_at_k(ranked, qrels, 100),
               "mrr": reciprocal_rank(ranked, qrels)}
        if pool is not None:
            self.has_pool = True
            row["pool_recall"] = recall_at_k(pool, qrels, None)
            self.pool_recall += row["pool_recall"]
        self.queries += 1
        self.ndcg10 += row["ndcg@10"]
        self.recall100 += row["recall@100"]
        self.mrr += row["mrr"]
        self.errors += int(error)
        self.empty += int(not ranked)
        self.per_query[qid] = row

    def summary(self) -> dict[str, float | int | str | None]:
        q = max(self.queries, 1)
        return {"system": self.name, "queries": self.queries, "ndcg@10": self.ndcg10 / q,
                "recall@100": self.recall100 / q, "mrr": self.mrr / q,
                "candidate_recall": self.pool_recall / q if self.has_pool else None,
                "errors": self.errors, "empty": self.empty}


UNION = "union (rrf)"


@dataclass
class Evaluation:
    """Metrics of each strategy alone and of the fused union, overall and per query group."""

    systems: dict[str, MetricSums]                                    # strategy (and UNION) -> sums
    by_group: dict[str, dict[str, MetricSums]] = field(default_factory=dict)

    def summaries(self) -> list[dict]:
        return [m.summary() for m in self.systems.values()]


def evaluate_pipeline(pipe: Any, queries: Sequence[Any], qrels: Mapping[str, Mapping[str, int]], *,
                      budget: int = 100, vectors: Any = None, group_by: str | None = None,
                      on_query: Callable[[], None] = lambda: None) -> Evaluation:
    """Run every judged query through every strategy of ``pipe`` (a SearchPipeline) with ``budget``
    candidates each; score each strategy's own list and the fused union (its top ``budget`` and,
    as candidate recall, everything any strategy retrieved). ``vectors[i]`` is query i's embedding
    when given; ``group_by`` names a query field (e.g. intent) to break the metrics down by."""
    from .pipeline import QueryError
    from .strategies import NOT_APPLICABLE

    names = [*pipe.plans, UNION]
    evaluation = Evaluation({name: MetricSums(name) for name in names})
    understander = pipe.understander()
    budgets = {name: budget for name in pipe.plans}
    for i, q in enumerate(queries):
        if q.id not in qrels:
            continue
        judged = qrels[q.id]
        group = str(q.fields.get(group_by, "all")) if group_by else None
        targets = [evaluation.systems]
        if group is not None:
            targets.append(evaluation.by_group.setdefault(group, {name: MetricSums(name) for name in names}))
        try:
            resp = pipe.search(q.text, budgets=budgets, size=budget, understander=understander,
                               vector=vectors[i] if vectors is not None else None)
        except QueryError:
            for sums in targets:
                for m in sums.values():
                    m.add(q.id, [], judged, error=True)
            on_query()
            continue
        for sums in targets:
            for r in resp.strategy_results:
                sums[r.strategy].add(q.id, [h.doc_id for h in r.hits], judged,
                                     error=bool(r.error and r.error != NOT_APPLICABLE))
            sums[UNION].add(q.id, [h.doc_id for h in resp.hits], judged, pool=resp.candidates)
        on_query()
    return evaluation


def to_json(summaries: Sequence[dict], meta: Mapping) -> str:
    return json.dumps({"meta": dict(meta), "systems": list(summaries)}, indent=2, default=float)
