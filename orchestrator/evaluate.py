"""Offline evaluation: any set of *systems* on a BEIR-layout dataset's qrels, by the book.

A system is anything that ranks documents for a query (:class:`System`): one arm of a pipeline,
the fused union, a textbook baseline, and later a bandit policy or a reranker. One loop
(:func:`evaluate`) runs them all on the same queries, so their numbers compare.

Measures are trec_eval's, computed by ``ir-measures`` over pytrec_eval:

* ``nDCG@10`` — graded gains (the qrels' integer grades), log2 discount (``ndcg_cut_10``);
* ``R@100`` — binary recall at 100, relevant = grade >= 1 (``recall_100``);
* ``RR@10`` — reciprocal rank of the first relevant document in the top 10 (``recip_rank`` on
  the run cut to 10).

Rankings are passed with rank-derived scores, so pytrec_eval keeps each system's order. Means are
over the queries with at least one positive judgment (as trec_eval does); a judged query a system
returns nothing for counts 0. *Candidate recall* is the share of relevant documents anywhere in
the candidates a system gathered before cutting to its ranking (the union's pool: the ceiling any
reranker of it can reach).

Significance: a two-sided paired t-test on per-query nDCG@10 between each system and a reference
system (:func:`paired_t_test`), as is customary in IR evaluation (Smucker et al., CIKM 2007).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .datasets import QueryRow
from .datatypes import ArmStatus

MEASURE_NAMES = ("nDCG@10", "R@100", "RR@10")
"""The measures every evaluation reports, by their ir-measures names."""


@dataclass(frozen=True)
class Ranking:
    """What a system returned for one query."""

    doc_ids: tuple[str, ...]  # best first
    candidates: frozenset[str] | None = None  # everything gathered before the cut (None: not a pool)
    status: ArmStatus = ArmStatus.OK
    detail: str | None = None  # why the status is not OK


class System(Protocol):
    """Ranks documents for queries. ``prepare`` sees every query first (for batch work)."""

    def prepare(self, queries: Sequence[QueryRow]) -> None: ...

    def rank(self, query: QueryRow) -> Ranking: ...


# ------------------------------------------------------------------------------------------------
# Systems


class PipelineSearches:
    """Runs each query once through a :class:`~orchestrator.pipeline.SearchPipeline` with every
    arm of ``budgets`` (one _msearch/template), and serves each arm and the fused union from that
    one response as separate systems (:meth:`arm`, :meth:`union`)."""

    def __init__(self, pipeline: Any, budgets: Mapping[str, int], *, depth: int = 100,
                 vectors: Mapping[str, Any] | None = None):
        self.pipeline = pipeline
        self.budgets = dict(budgets)
        self.depth = depth
        self._understander = None
        self._vectors: dict[str, Any] = dict(vectors or {})  # query id -> vector, when already encoded
        self._responses: dict[str, Any] = {}
        self._prepared: set[str] = set()

    def prepare(self, queries: Sequence[QueryRow]) -> None:
        todo = [q for q in queries if q.id not in self._prepared]
        if not todo:
            return
        self._understander = self._understander or self.pipeline.understander()
        missing = [q for q in todo if q.id not in self._vectors]
        vectors = self.pipeline.encode_queries([q.text for q in missing])
        for i, q in enumerate(missing):
            self._vectors[q.id] = vectors[i] if vectors is not None else None
        self._prepared.update(q.id for q in todo)

    def vector(self, query_id: str) -> Any:
        return self._vectors.get(query_id)

    def response(self, query: QueryRow) -> Any:
        """The pipeline's response to ``query`` (a QueryError is returned, not raised)."""
        from .pipeline import QueryError

        if query.id not in self._responses:
            try:
                self._responses[query.id] = self.pipeline.search(
                    query.text, budgets=self.budgets, size=self.depth, understander=self._understander,
                    vector=self._vectors.get(query.id))
            except QueryError as e:
                self._responses[query.id] = e
        return self._responses[query.id]

    def arm(self, name: str) -> System:
        return _ResponseView(self, name)

    def union(self) -> System:
        return _ResponseView(self, None)


@dataclass
class _ResponseView:
    """One system read off the shared responses: the arm ``arm``, or the fused union (None)."""

    searches: PipelineSearches
    arm: str | None

    def prepare(self, queries: Sequence[QueryRow]) -> None:
        self.searches.prepare(queries)

    def rank(self, query: QueryRow) -> Ranking:
        resp = self.searches.response(query)
        if isinstance(resp, Exception):
            return Ranking((), None, ArmStatus.FAILED, str(resp))
        if self.arm is not None:
            result = next(r for r in resp.strategy_results if r.strategy == self.arm)
            return Ranking(tuple(h.doc_id for h in result.hits), None, result.status, result.detail)
        if resp.all_failed:
            return Ranking((), frozenset(), ArmStatus.FAILED, "; ".join(f"{k}: {v}" for k, v in resp.errors.items()))
        return Ranking(tuple(h.doc_id for h in resp.hits), frozenset(resp.candidates))


class CrossValidatedRerank:
    """The fused union reranked out of sample: queries are split into ``k`` folds, and each
    fold's queries are reranked *by the LTR plugin* with a model trained on the other folds'
    logged features and labels (uploaded under a temporary name; :meth:`close` deletes them)."""

    def __init__(self, searches: PipelineSearches, feature_set: Any, qrels: Mapping[str, Mapping[str, int]],
                 k: int = 5, *, seed: int = 7, on_fold: Callable[[int, int], None] = lambda i, k: None):
        self.searches, self.feature_set, self.qrels, self.k, self.seed = searches, feature_set, qrels, k, seed
        self.on_fold = on_fold
        self.model_of: dict[str, str] = {}
        self.params: dict[str, dict[str, Any]] = {}
        self.models: list[str] = []

    def prepare(self, queries: Sequence[QueryRow]) -> None:
        from .ltr.feature_log import log_features
        from .ltr.features import request_params
        from .ltr.model import to_plugin_definition, upload_model
        from .ltr.training import QrelsLabels, TrainingSet, folds, train

        self.searches.prepare(queries)
        requests = []
        for q in queries:
            resp = self.searches.response(q)
            if isinstance(resp, Exception) or not resp.hits or resp.all_failed:
                continue
            params = request_params(resp.understanding, self.searches.vector(q.id), resp.strategy_results, resp.hits)
            self.params[q.id] = params
            requests.append((q.id, params, [h.doc_id for h in resp.hits]))
        pipeline = self.searches.pipeline
        logged = log_features(pipeline.client, pipeline.index, self.feature_set, requests)
        data = TrainingSet.labelled(self.feature_set, logged, QrelsLabels(self.qrels), self.params)
        tag = uuid.uuid4().hex[:8]
        for i, test in enumerate(folds(data.query_ids, self.k, self.seed)):
            held_out = set(test)
            booster = train(data.subset([q for q in data.query_ids if q not in held_out]))
            definition, _shift = to_plugin_definition(booster)
            name = f"ltrr-cv-{tag}-{i + 1}"
            upload_model(pipeline.client, self.feature_set, name, definition)
            self.models.append(name)
            self.model_of.update(dict.fromkeys(test, name))
            self.on_fold(i + 1, self.k)

    def rank(self, query: QueryRow) -> Ranking:
        from .ltr.rerank import Reranker

        resp = self.searches.response(query)
        if isinstance(resp, Exception):
            return Ranking((), None, ArmStatus.FAILED, str(resp))
        ids = tuple(h.doc_id for h in resp.hits)
        model = self.model_of.get(query.id)
        if model is None:  # nothing retrieved: nothing to rerank
            return Ranking(ids, frozenset(resp.candidates))
        pipeline = self.searches.pipeline
        outcome = Reranker(pipeline.client, pipeline.index, model, timeout_ms=5000).rerank(self.params[query.id], ids)
        if not outcome.applied:
            return Ranking((), None, ArmStatus.FAILED, outcome.error or "the model scored nothing")
        order = sorted(range(len(ids)), key=lambda i: (-outcome.scores.get(ids[i], float("-inf")), i))
        return Ranking(tuple(ids[i] for i in order), frozenset(resp.candidates))

    def close(self) -> None:
        from .ltr.model import delete_model

        for name in self.models:
            delete_model(self.searches.pipeline.client, name)
        self.models.clear()


@dataclass
class RunSystem:
    """A precomputed run ``{query_id: [doc_id, ...]}`` (e.g. a baseline) as a system; its
    candidate pool, when given, is ``pools[query_id]``."""

    run: Mapping[str, Sequence[str]]
    pools: Mapping[str, Iterable[str]] | None = None

    def prepare(self, queries: Sequence[QueryRow]) -> None:
        pass

    def rank(self, query: QueryRow) -> Ranking:
        pool = frozenset(self.pools.get(query.id, ())) if self.pools is not None else None
        return Ranking(tuple(self.run.get(query.id, ())), pool)


# ------------------------------------------------------------------------------------------------
# Results


@dataclass
class SystemResult:
    """One system's per-query measures and rankings over the evaluated queries."""

    name: str
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)  # qid -> measure -> value
    rankings: dict[str, Ranking] = field(default_factory=dict)

    @property
    def failures(self) -> dict[str, str]:
        """Queries on which the system failed (qid -> reason)."""
        return {qid: r.detail or "failed" for qid, r in self.rankings.items()
                if r.status in (ArmStatus.FAILED, ArmStatus.TIMED_OUT)}

    def values(self, measure: str, query_ids: Sequence[str]) -> np.ndarray:
        return np.array([self.per_query[q][measure] for q in query_ids], dtype=np.float64)

    def summary(self, query_ids: Sequence[str] | None = None) -> dict[str, Any]:
        qids = list(self.per_query) if query_ids is None else [q for q in query_ids if q in self.per_query]
        n = len(qids)
        out: dict[str, Any] = {"system": self.name, "queries": n}
        for measure in (*MEASURE_NAMES, "candidate_recall"):
            vals = [self.per_query[q].get(measure) for q in qids]
            known = [v for v in vals if v is not None]
            out[measure] = (math.fsum(known) / n) if n and len(known) == n else None
        out["empty"] = sum(not self.rankings[q].doc_ids for q in qids)
        out["not_applicable"] = sum(self.rankings[q].status is ArmStatus.NOT_APPLICABLE for q in qids)
        failures = {q: r for q, r in self.failures.items() if q in set(qids)}
        out["failed"] = len(failures)
        out["first_failure"] = next(iter(failures.values()), None)
        return out


@dataclass
class Evaluation:
    """Every system's results on the same queries, plus the queries left out and why."""

    systems: dict[str, SystemResult]
    query_ids: list[str]  # evaluated (judged, with at least one positive judgment), in order
    skipped: dict[str, str] = field(default_factory=dict)  # query id -> why it was not evaluated
    groups: dict[str, list[str]] = field(default_factory=dict)  # group value -> query ids

    def summaries(self, query_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        return [s.summary(query_ids if query_ids is not None else self.query_ids) for s in self.systems.values()]

    def compare(self, reference: str, measure: str = "nDCG@10") -> dict[str, tuple[float, float]]:
        """``{system: (mean difference to reference, two-sided paired t-test p-value)}``."""
        ref = self.systems[reference]
        out = {}
        for name, result in self.systems.items():
            if name == reference or result.failures or ref.failures:
                continue
            a, b = result.values(measure, self.query_ids), ref.values(measure, self.query_ids)
            out[name] = (float(np.mean(a - b)) if len(a) else 0.0, paired_t_test(a, b))
        return out

    def to_json(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "meta": dict(meta),
            "measures": list(MEASURE_NAMES),
            "systems": self.summaries(),
            "by_group": {g: self.summaries(ids) for g, ids in self.groups.items()},
            "skipped_queries": self.skipped,
            "per_query": {name: s.per_query for name, s in self.systems.items()},
        }

    def write_runs(self, directory: str | Path) -> list[Path]:
        """One TREC run file per system (``qid Q0 docid rank score tag``), for trec_eval & co."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, result in self.systems.items():
            tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            path = directory / f"{tag}.run"
            with path.open("w") as f:
                for qid in self.query_ids:
                    docs = result.rankings[qid].doc_ids
                    for rank, doc_id in enumerate(docs, start=1):
                        f.write(f"{qid} Q0 {doc_id} {rank} {len(docs) - rank + 1} {tag}\n")
            written.append(path)
        return written


def paired_t_test(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test of ``a`` against ``b`` (same queries, same order);
    1.0 when the differences are all equal (no variance: nothing to test)."""
    from scipy import stats

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.size < 2 or np.allclose(diff, diff[0]):
        return 1.0
    return float(stats.ttest_rel(a, b).pvalue)


# ------------------------------------------------------------------------------------------------
# The loop


def judged_queries(queries: Iterable[QueryRow], qrels: Mapping[str, Mapping[str, int]]
                   ) -> tuple[list[QueryRow], dict[str, str]]:
    """The queries to evaluate (text, and at least one positive judgment) and why the others of
    the qrels are left out."""
    keep: list[QueryRow] = []
    skipped: dict[str, str] = {}
    seen: set[str] = set()
    for q in queries:
        if q.id not in qrels or q.id in seen:
            continue
        seen.add(q.id)
        if not any(g > 0 for g in qrels[q.id].values()):
            skipped[q.id] = "no positive judgment (trec_eval leaves it out too)"
        elif not q.text.strip():
            skipped[q.id] = "empty query text"
        else:
            keep.append(q)
    for qid in qrels:
        if qid not in seen:
            skipped[qid] = "judged in the qrels but not in queries.jsonl (or rejected there)"
    return keep, skipped


def evaluate(systems: Mapping[str, System], queries: Sequence[QueryRow],
             qrels: Mapping[str, Mapping[str, int]], *, group_by: str | None = None,
             skipped: Mapping[str, str] | None = None, on_query: Callable[[], None] = lambda: None) -> Evaluation:
    """Run every system on every query, then measure. ``queries`` should come from
    :func:`judged_queries`; ``group_by`` names a query field (e.g. ``intent``) to break results
    down by."""
    import ir_measures

    measures = [ir_measures.parse_measure(name) for name in MEASURE_NAMES]
    results = {name: SystemResult(name) for name in systems}
    for system in systems.values():
        system.prepare(queries)
    groups: dict[str, list[str]] = {}
    for q in queries:
        for name, system in systems.items():
            results[name].rankings[q.id] = system.rank(q)
        if group_by:
            groups.setdefault(str(q.fields.get(group_by, "")), []).append(q.id)
        on_query()
    query_ids = [q.id for q in queries]
    judged = {qid: {d: int(g) for d, g in qrels[qid].items()} for qid in query_ids}
    for result in results.values():
        run = {qid: {d: float(len(r.doc_ids) - i) for i, d in enumerate(r.doc_ids)}
               for qid, r in result.rankings.items() if r.doc_ids}
        per_query: dict[str, dict[str, float]] = {qid: dict.fromkeys(MEASURE_NAMES, 0.0) for qid in query_ids}
        for metric in ir_measures.iter_calc(measures, judged, run):
            if metric.query_id in per_query:
                per_query[metric.query_id][str(metric.measure)] = float(metric.value)
        for qid in query_ids:
            pool = result.rankings[qid].candidates
            if pool is not None:
                relevant = {d for d, g in judged[qid].items() if g > 0}
                per_query[qid]["candidate_recall"] = len(relevant & pool) / len(relevant)
        result.per_query = per_query
    return Evaluation(results, query_ids, dict(skipped or {}), groups)


def pipeline_systems(pipeline: Any, budgets: Mapping[str, int], *, depth: int = 100,
                     rerank_folds: int | None = None, feature_set: Any = None,
                     qrels: Mapping[str, Mapping[str, int]] | None = None,
                     vectors: Mapping[str, Any] | None = None) -> dict[str, System]:
    """Each arm of ``budgets`` alone and their fused union (labelled by its fusion), all served
    from one search per query; with ``rerank_folds`` also the union reranked out of sample
    (:class:`CrossValidatedRerank`, needs ``feature_set`` and ``qrels``)."""
    searches = PipelineSearches(pipeline, budgets, depth=depth, vectors=vectors)
    systems: dict[str, System] = {name: searches.arm(name) for name in budgets}
    systems[pipeline.fuser.label] = searches.union()
    if rerank_folds:
        if feature_set is None or qrels is None:
            raise ValueError("reranking out of sample needs a feature set and the qrels")
        label = f"{pipeline.fuser.label} + rerank (cv:{rerank_folds})"
        systems[label] = CrossValidatedRerank(searches, feature_set, qrels, rerank_folds)
    return systems


def evaluate_pipeline(pipeline: Any, dataset: Any, queries: Sequence[QueryRow],
                      qrels: Mapping[str, Mapping[str, int]], *, budgets: Mapping[str, int], depth: int = 100,
                      baselines: bool = True, embedding_cache: Any = None, group_by: str | None = None,
                      skipped: Mapping[str, str] | None = None, rerank_folds: int | None = None,
                      feature_set: Any = None, on_query: Callable[[], None] = lambda: None) -> Evaluation:
    """The standard table: every arm, the union, (``rerank_folds``) the union reranked out of
    sample, and (``baselines``) the textbook anchors of :mod:`orchestrator.baselines` computed on
    the same documents and queries."""
    # The query vectors, once: the knn arm and the dense anchor must see the same ones.
    vectors = pipeline.encode_queries([q.text for q in queries])
    by_query = {q.id: vectors[i] for i, q in enumerate(queries)} if vectors is not None else None
    systems = pipeline_systems(pipeline, budgets, depth=depth, rerank_folds=rerank_folds,
                               feature_set=feature_set, qrels=qrels, vectors=by_query)
    if baselines:
        from .baselines import reference_systems

        systems.update(reference_systems(dataset, queries, vectors, depth=depth, encoder=pipeline.encoder,
                                         embedding_cache=embedding_cache))
    try:
        return evaluate(systems, queries, qrels, group_by=group_by, skipped=skipped, on_query=on_query)
    finally:
        for system in systems.values():
            close = getattr(system, "close", None)
            if close is not None:
                close()
