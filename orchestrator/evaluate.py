"""Offline evaluation: any set of *systems* on a BEIR-layout dataset's qrels, by the book.

A system is anything that ranks documents for a query (:class:`System`): one arm of a pipeline,
the fused union, a textbook baseline, a bandit policy choosing arms per query, and any of these
reranked by the LTR plugin. One loop (:func:`evaluate`) runs them all on the same queries, so
their numbers compare.

The full offline report (:class:`LearningSpec`, ``ltrr evaluate DATASET --full``) splits the judged
queries into training and test queries: a bandit is warmed up on simulated searches of the training
queries (:mod:`orchestrator.simulate`), a reranker is trained on their judgments, and every arm, the
union and the bandit are measured on the test queries with and without that rerank.

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
                     vectors: Mapping[str, Any] | None = None,
                     searches: PipelineSearches | None = None) -> dict[str, System]:
    """Each arm of ``budgets`` alone and their fused union (labelled by its fusion), all served
    from one search per query (``searches``, made here when not given); with ``rerank_folds`` also
    the union reranked out of sample (:class:`CrossValidatedRerank`, needs ``feature_set`` and ``qrels``)."""
    searches = searches or PipelineSearches(pipeline, budgets, depth=depth, vectors=vectors)
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
                      feature_set: Any = None, on_query: Callable[[], None] = lambda: None,
                      learning: LearningSpec | None = None, on_stage: Callable[[str], None] = lambda s: None,
                      learned_info: dict[str, Any] | None = None) -> Evaluation:
    """The standard table: every arm, the union, (``rerank_folds``) the union reranked out of
    sample, (``learning``) the bandit policies warmed up on the training queries and every
    pipeline system reranked by a model trained on them (:func:`learning_systems`; what was learned
    goes into ``learned_info``), and (``baselines``) the textbook anchors of
    :mod:`orchestrator.baselines` computed on the same documents and queries. ``queries`` are the
    ones measured: with ``learning``, the test queries."""
    # The query vectors, once: the knn arm and the dense anchor must see the same ones.
    vectors = pipeline.encode_queries([q.text for q in queries])
    by_query = {q.id: vectors[i] for i, q in enumerate(queries)} if vectors is not None else None
    searches = PipelineSearches(pipeline, budgets, depth=depth, vectors=by_query)
    systems = pipeline_systems(pipeline, budgets, depth=depth, rerank_folds=rerank_folds,
                               feature_set=feature_set, qrels=qrels, vectors=by_query, searches=searches)
    learned = None
    if learning is not None:
        learned = learning_systems(pipeline, dataset, searches, qrels, learning, budgets=budgets,
                                   feature_set=feature_set, on_stage=on_stage)
        systems.update(learned.systems)
        if learned_info is not None:
            learned_info.update(learned.info)
        on_stage(f"measuring {len(queries)} test queries")
    if baselines:
        from .baselines import reference_systems

        systems.update(reference_systems(dataset, queries, vectors, depth=depth, encoder=pipeline.encoder,
                                         embedding_cache=embedding_cache))
    try:
        return evaluate(systems, queries, qrels, group_by=group_by, skipped=skipped, on_query=on_query)
    finally:
        for system in [*systems.values(), learned]:  # learned: its temporary model
            close = getattr(system, "close", None)
            if close is not None:
                close()


# ------------------------------------------------------------------------------------------------
# Learning systems: a bandit warmed up on training queries, and the rerank by a model trained on them


def split_queries(queries: Sequence[QueryRow], train_fraction: float, seed: int = 0
                  ) -> tuple[list[QueryRow], list[QueryRow]]:
    """``(training, test)``: a seeded shuffle of ``queries`` cut at ``train_fraction`` (both sides
    keep at least one query), each side in the input order."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    if len(queries) < 2:
        raise ValueError(f"{len(queries)} queries cannot be split into training and test queries")
    order = np.random.default_rng(seed).permutation(len(queries))
    n_train = min(max(1, int(round(train_fraction * len(queries)))), len(queries) - 1)
    train_idx = set(order[:n_train].tolist())
    return ([q for i, q in enumerate(queries) if i in train_idx],
            [q for i, q in enumerate(queries) if i not in train_idx])


@dataclass(frozen=True)
class LearningSpec:
    """What :func:`learning_systems` learns from the ``train_queries``: each bandit policy of
    ``policies`` warmed up on ``warmup_searches`` simulated searches of them (cascade clicks; users
    see the reranked lists when ``rerank``), and (``rerank``) a reranker trained on their
    judgments. ``segment``: the request segment test searches carry (the simulation's tag of users
    who type the query as written)."""

    train_queries: tuple[QueryRow, ...]
    policies: tuple[str, ...] = ()
    rerank: bool = False
    warmup_searches: int = 2000
    seed: int = 0
    window: int = 200
    levels: tuple[int, ...] = (20, 50, 100)
    max_arms: int = 2
    total: int = 100
    segment: str = "general"

    def __post_init__(self) -> None:
        if not self.train_queries:
            raise ValueError("no training queries")
        if not self.policies and not self.rerank:
            raise ValueError("nothing to learn: give policies, rerank, or both")
        if isinstance(self.warmup_searches, bool) or not isinstance(self.warmup_searches, int) or not (
                1 <= self.warmup_searches <= 1_000_000):
            raise ValueError(f"warmup_searches must be an integer in [1, 1000000], got {self.warmup_searches!r}")


def _sliced(result: Any, budget: int) -> Any:
    """``result`` cut to its first ``budget`` hits (an arm's top n: its top N cut at n)."""
    import dataclasses

    if not result.ok or budget >= len(result.hits):
        return dataclasses.replace(result, budget=budget)
    return dataclasses.replace(result, hits=result.hits[:budget], budget=budget)


class SelectionSystem:
    """Retrieval by choosing arms and budgets per query (``choose(query, response)``), served from
    the shared searches: each chosen arm's hits cut to its budget, fused by the pipeline's fusion."""

    def __init__(self, searches: PipelineSearches, choose: Callable[[QueryRow, Any], Mapping[str, int]]):
        self.searches = searches
        self.choose = choose
        self._selections: dict[str, Any] = {}

    def prepare(self, queries: Sequence[QueryRow]) -> None:
        self.searches.prepare(queries)

    def selection(self, query: QueryRow) -> tuple[tuple[Any, ...], list[Any]] | Exception:
        """``(results of the chosen arms, fused list)``, or the query's error."""
        if query.id not in self._selections:
            resp = self.searches.response(query)
            if isinstance(resp, Exception):
                self._selections[query.id] = resp
            else:
                budgets = self.choose(query, resp)
                results = tuple(_sliced(r, int(budgets[r.strategy])) for r in resp.strategy_results
                                if budgets.get(r.strategy, 0) > 0)
                self._selections[query.id] = (results, self.searches.pipeline.fuser.fuse(results, limit=None))
        return self._selections[query.id]

    def rank(self, query: QueryRow) -> Ranking:
        chosen = self.selection(query)
        if isinstance(chosen, Exception):
            return Ranking((), None, ArmStatus.FAILED, str(chosen))
        results, fused = chosen
        ran = [r for r in results if r.status is not ArmStatus.NOT_APPLICABLE]
        if ran and all(r.error for r in ran):
            return Ranking((), frozenset(), ArmStatus.FAILED, "; ".join(f"{r.strategy}: {r.error}" for r in ran))
        if not ran:
            return Ranking((), frozenset(), ArmStatus.NOT_APPLICABLE, "no chosen arm applies to this query")
        return Ranking(tuple(h.doc_id for h in fused[: self.searches.depth]),
                       frozenset(h.doc_id for r in results for h in r.hits))


def fixed_choice(budgets: Mapping[str, int]) -> Callable[[QueryRow, Any], Mapping[str, int]]:
    """Always the same arms and budgets (those that do not apply to a query are left out by it)."""
    return lambda _query, _resp: dict(budgets)


def policy_choice(policy: Any, segment: str | None = None) -> Callable[[QueryRow, Any], Mapping[str, int]]:
    """The policy's decision for the query, from what serving would know: the query's understanding,
    the arms that apply (the pipeline's statuses), a request tagged ``segment``, no Q2E memory and
    no earlier searches of the query (test queries are never searched in the warm-up)."""
    from .bandit.context import Context, RequestContext

    def choose(_query: QueryRow, resp: Any) -> Mapping[str, int]:
        eligible = [r.strategy for r in resp.strategy_results if r.status is not ArmStatus.NOT_APPLICABLE]
        why_not = {r.strategy: r.detail or "" for r in resp.strategy_results if r.status is ArmStatus.NOT_APPLICABLE}
        context = Context.build(resp.understanding, eligible, request=RequestContext(segment=segment),
                                not_applicable=why_not)
        return {arm: int(n) for arm, n in policy.select(context).budgets.items() if n > 0}

    return choose


class PluginRerank:
    """A :class:`SelectionSystem`'s fused list with its top ``window`` reranked by ``model`` in the
    LTR plugin (one request per query), the rest in fused order, as serving does. The request
    carries the query vector only when an arm of ``vector_from`` ran (None: always), as
    ``SearchPipeline.search`` encodes the query only for arms that take it."""

    def __init__(self, system: SelectionSystem, model: str, *, window: int = 200,
                 vector_from: Sequence[str] | None = None):
        self.system, self.model, self.window = system, model, window
        self.vector_from = None if vector_from is None else frozenset(vector_from)

    def prepare(self, queries: Sequence[QueryRow]) -> None:
        self.system.prepare(queries)

    def rank(self, query: QueryRow) -> Ranking:
        from .ltr.features import request_params
        from .ltr.rerank import Reranker

        base = self.system.rank(query)
        chosen = self.system.selection(query)
        if isinstance(chosen, Exception) or not base.doc_ids or base.status is not ArmStatus.OK:
            return base
        results, fused = chosen
        searches = self.system.searches
        resp = searches.response(query)
        vector = searches.vector(query.id)
        if self.vector_from is not None and not any(r.ok and r.strategy in self.vector_from for r in results):
            vector = None
        params = request_params(resp.understanding, vector, results, fused)
        window = [h.doc_id for h in fused[: self.window]]
        pipeline = searches.pipeline
        outcome = Reranker(pipeline.client, pipeline.index, self.model, timeout_ms=5000).rerank(params, window)
        if not outcome.applied:
            return Ranking((), None, ArmStatus.FAILED, outcome.error or "the model scored nothing")
        order = sorted(range(len(window)), key=lambda i: (-outcome.scores.get(window[i], float("-inf")), i))
        ranked = [window[i] for i in order] + [h.doc_id for h in fused[self.window:]]
        return Ranking(tuple(ranked[: searches.depth]), base.candidates)


@dataclass
class LearnedSystems:
    """The systems :func:`learning_systems` built, what was learned, and the temporary model to delete."""

    systems: dict[str, System]
    info: dict[str, Any]
    client: Any = None
    models: list[str] = field(default_factory=list)

    def close(self) -> None:
        from .ltr.model import delete_model

        for name in self.models:
            delete_model(self.client, name)
        self.models.clear()


def learning_systems(pipeline: Any, dataset: Any, searches: PipelineSearches, qrels: Mapping[str, Mapping[str, int]],
                     spec: LearningSpec, *, budgets: Mapping[str, int], feature_set: Any = None,
                     on_stage: Callable[[str], None] = lambda s: None) -> LearnedSystems:
    """Learn on ``spec.train_queries`` and return the systems to measure on the test queries:
    each policy (``bandit <spec>``) and, with ``spec.rerank``, every arm, the union and each policy
    reranked by the model trained on the training queries (``<system> + rerank``)."""
    import time

    from .bandit.base import BudgetConfig
    from .bandit.policies import make_policy
    from .ltr.model import to_plugin_definition, upload_model
    from .ltr.training import train
    from .simulate.candidates import CandidateCache
    from .simulate.clicks import make_click_model
    from .simulate.command import sim_queries
    from .simulate.rerank import LocalReranker, log_union_features, training_set
    from .simulate.runner import SimulationConfig, build_policies, run_simulation
    from .simulate.stream import StreamConfig, build_stream, document_frequency

    if spec.rerank and feature_set is None:
        raise ValueError("the rerank needs the LTR feature set")
    t0 = time.monotonic()
    train_queries = list(spec.train_queries)
    sim_qs = sim_queries(train_queries, qrels)
    stream_config = StreamConfig(spec.warmup_searches, seed=spec.seed)
    doc_frequency = None
    if spec.policies and "vocabulary" in stream_config.mix_for(any(q.intent is not None for q in sim_qs)):
        from .datasets import CorpusRow

        doc_frequency = document_frequency(f"{r.title} {r.text}" for r in dataset.iter_corpus()
                                           if isinstance(r, CorpusRow))
    stream = build_stream(sim_qs, stream_config, doc_frequency) if spec.policies else None
    texts: list[str] = list(dict.fromkeys([*(stream.texts if stream else []), *(q.text for q in train_queries)]))
    levels = tuple(sorted(lv for lv in spec.levels if lv <= searches.depth)) or (searches.depth,)
    on_stage(f"searching {len(texts)} training query texts")
    cache = CandidateCache.from_pipeline(pipeline, texts, max(levels), levels=levels)
    arms = tuple(pipeline.plans)
    info: dict[str, Any] = {"train_queries": len(train_queries), "train_query_ids": [q.id for q in train_queries]}
    learned = LearnedSystems({}, info, pipeline.client)
    local = None
    model = None
    if spec.rerank:
        on_stage(f"logging features of {len(texts)} unions and training the reranker")
        features = log_union_features(pipeline, feature_set, cache, texts)
        data = training_set(feature_set, features, train_queries, qrels, spec.window)
        booster = train(data, params={"nthread": 1})
        definition, _shift = to_plugin_definition(booster)
        model = f"ltrr-eval-{uuid.uuid4().hex[:8]}"
        upload_model(pipeline.client, feature_set, model, definition)
        learned.models.append(model)
        # As served: the pipeline gives the reranker the query vector whichever arms ran.
        local = LocalReranker(feature_set, arms, features, {"train": booster}, window=spec.window)
        info["reranker"] = {"model": model, "feature_set": feature_set.name, "queries": len(data.queries),
                            "candidates": int(sum(len(q.doc_ids) for q in data.queries)), "deleted_after": True}
    policies: dict[str, Any] = {}
    if spec.policies and stream is not None:
        budget = BudgetConfig(total=spec.total, levels=levels, max_arms=spec.max_arms,
                              costs={name: plan.cost for name, plan in pipeline.plans.items()})
        policies = build_policies(list(spec.policies), arms, budget, spec.seed, make_policy)
        on_stage(f"warming up {', '.join(policies)} on {spec.warmup_searches} simulated searches")
        max_grade = max((g for q in sim_qs for g in q.grades.values()), default=1)
        result = run_simulation(stream, cache, make_click_model("cascade", "navigational"), policies,
                                SimulationConfig(budget=budget, display="reranked" if local else "fused"),
                                max_grade=max_grade, reranker=local)
        doc = result.to_json()
        info["warmup"] = {"searches": spec.warmup_searches, "seed": spec.seed, "display": doc["meta"]["display"],
                          "segment": spec.segment,
                          "policies": {p: {k: doc["policies"][p]["final"].get(k) for k in (
                              "reward_per_search", "candidate_recall", "requested_per_search", "arm_share")}
                              for p in policies}}
    union = pipeline.fuser.label
    selections: dict[str, SelectionSystem] = {}
    if spec.rerank:
        for arm, n in budgets.items():
            selections[arm] = SelectionSystem(searches, fixed_choice({arm: n}))
        selections[union] = SelectionSystem(searches, fixed_choice(budgets))
    for name, policy in policies.items():
        system = SelectionSystem(searches, policy_choice(policy, spec.segment))
        learned.systems[f"bandit {name}"] = system
        if spec.rerank:
            selections[f"bandit {name}"] = system
    if model is not None:
        for name, system in selections.items():
            learned.systems[f"{name} + rerank"] = PluginRerank(system, model, window=spec.window)
    info["seconds"] = round(time.monotonic() - t0, 2)
    return learned
