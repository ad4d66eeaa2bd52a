"""A search, end to end: understanding -> strategy calls -> one _msearch/template -> fusion.

This is the path a gateway request takes (the bandit and the LTR rerank plug in here as they
land). Each stage's time is measured so the orchestrator's own overhead can be told apart from
OpenSearch's time and from the encoder's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opensearchpy import OpenSearch

from .bandit.base import Decision, Policy
from .bandit.context import Context, RequestContext
from .datatypes import ArmStatus, Candidate, StrategyResult
from .feedback.records import SearchRecord
from .filters import FilterError, FilterFields, build_filter_clauses
from .fusion import Fusion, make_fusion
from .ltr.features import request_params
from .ltr.rerank import Reranker, RerankOutcome
from .strategies import QueryPlan, StrategyCall, StrategyExecutor, load_plans
from .understanding import (
    MAX_QUERY_CHARS,
    DictionaryCache,
    FacetDictionary,
    QueryUnderstander,
    QueryUnderstanding,
    normalize_query,
)

DEFAULT_BUDGET = 50


class QueryError(ValueError):
    """The request cannot be searched as given (a client error, like HTTP 400)."""


@dataclass(frozen=True)
class Timings:
    understand_ms: float
    embed_ms: float
    execute_wall_ms: float
    opensearch_took_ms: float
    fusion_ms: float
    total_ms: float
    rerank_wall_ms: float = 0.0
    rerank_took_ms: float = 0.0
    decide_ms: float = 0.0  # context + the policy's choice (0 when the caller fixed the arms)

    @property
    def orchestrator_ms(self) -> float:
        """Our own time: everything except OpenSearch's ``took`` (both requests) and the encoder."""
        return self.total_ms - self.opensearch_took_ms - self.rerank_took_ms - self.embed_ms


@dataclass(frozen=True)
class SearchResponse:
    search_id: str
    query: str
    understanding: QueryUnderstanding
    hits: tuple[Candidate, ...]
    strategy_results: tuple[StrategyResult, ...]
    timings: Timings
    round_trips: int
    rerank: RerankOutcome | None = None  # None: no model configured
    decision: Decision | None = None  # the policy's choice; None when the caller fixed the arms
    context: Context | None = None  # what the policy saw (None without a policy)

    @property
    def model(self) -> str | None:
        """The LTR model that ordered the results; None when the fused order stands."""
        return self.rerank.model if self.rerank is not None and self.rerank.applied else None

    @property
    def errors(self) -> dict[str, str]:
        """Arms that failed or timed out, with the reason (arms that did not apply are not errors)."""
        return {r.strategy: r.error for r in self.strategy_results if r.error}

    @property
    def all_failed(self) -> bool:
        """Every arm that was run failed: the (empty) answer is an outage, not "no match"."""
        ran = [r for r in self.strategy_results if r.status is not ArmStatus.NOT_APPLICABLE]
        return bool(ran) and all(r.error for r in ran)

    @property
    def candidates(self) -> set[str]:
        return {h.doc_id for r in self.strategy_results for h in r.hits}


@dataclass(frozen=True)
class CatalogueInfo:
    """What the loader recorded about a catalogue index (its mapping's ``_meta.ltrr``)."""

    facets: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    fields_present: Mapping[str, int] | None = None  # field -> documents holding it; None: not recorded

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> CatalogueInfo:
        present = meta.get("fields_present")
        return cls(tuple(meta.get("facets", ())), tuple(meta.get("numeric", ())),
                   dict(present) if isinstance(present, Mapping) else None)


@dataclass
class SearchPipeline:
    """Runs searches against one catalogue alias: understanding -> applicable arms -> one
    _msearch/template -> fusion. ``fusion`` is a :class:`~orchestrator.fusion.Fusion` or a method
    name with ``fusion_options``."""

    client: OpenSearch
    index: str
    plans: Mapping[str, QueryPlan] = field(default_factory=load_plans)
    encoder: Any = None  # SentenceEncoder, or None: plans that need a query vector do not apply
    fusion: Fusion | str = "rrf"
    fusion_options: Mapping[str, Any] = field(default_factory=dict)
    timeout_ms: int = 1000
    dictionary_cache: DictionaryCache | None = None
    reranker: Reranker | None = None  # the LTR stage; None: the fused order is the answer
    rerank_window: int = 200  # how many of the fused union the model scores (the rest follow)
    policy: Policy | None = None  # chooses arms and budgets when a search does not fix them
    search_log: Any = None  # a feedback.searchlog.SearchLog; None: searches are not logged
    memory: Any = None  # a feedback.q2e.Q2EMemory: tells the policy whether the query has memory

    def __post_init__(self) -> None:
        if not 1 <= self.rerank_window <= 10_000:
            raise ValueError("rerank_window must be between 1 and 10000")
        self.executor = StrategyExecutor(self.client, self.plans)
        self.fuser = self.fusion if isinstance(self.fusion, Fusion) else make_fusion(self.fusion, **self.fusion_options)
        self._catalogue: CatalogueInfo | None = None
        self._filter_fields: FilterFields | None = None
        if self.dictionary_cache is None:
            self.dictionary_cache = DictionaryCache(self.client)
        self.query_counts = QueryCounts()

    def reload_plans(self, plans: Mapping[str, QueryPlan] | None = None) -> list[str]:
        """Swap in the plans of the plans directory (or ``plans``) without a restart: a new YAML file
        becomes a new arm, which the policy starts learning at its prior. Returns the new plan ids.
        Their scripts must be stored first (``sync_plans``); searches in flight finish on the old set."""
        new = dict(plans) if plans is not None else load_plans()
        added = [name for name in new if name not in self.plans]
        self.executor = StrategyExecutor(self.client, new, margin_ms=self.executor.margin_ms)
        self.plans = new
        if self.policy is not None:
            for name in added:
                self.policy.add_arm(name)
        return added

    # ---- catalogue metadata --------------------------------------------------------------
    def catalogue(self) -> CatalogueInfo:
        """The catalogue's recorded facts (read once from the index mapping's _meta)."""
        if self._catalogue is None:
            mapping = self.client.indices.get_mapping(index=self.index)
            meta = next(iter(mapping.values()))["mappings"].get("_meta", {}).get("ltrr", {})
            self._catalogue = CatalogueInfo.from_meta(meta)
            self._filter_fields = FilterFields.from_meta(meta)
        return self._catalogue

    def facet_fields(self) -> tuple[str, ...]:
        """The facet fields the loaded dataset declared (kept in the index mapping's _meta)."""
        return self.catalogue().facets

    def filter_fields(self) -> FilterFields:
        """The fields request filters may name: the catalogue's facet and numeric fields (from the
        mapping's _meta.ltrr) and entity_type."""
        self.catalogue()
        assert self._filter_fields is not None
        return self._filter_fields

    def dictionary(self) -> FacetDictionary | None:
        fields = self.facet_fields()
        if not fields:
            return None
        assert self.dictionary_cache is not None
        return self.dictionary_cache.get(self.index, fields)

    def understander(self) -> QueryUnderstander:
        return QueryUnderstander(self.dictionary())

    # ---- query vectors: one path for searching and evaluating ---------------------------
    def encode_queries(self, texts: Sequence[str]) -> Any:
        """Query vectors as :meth:`search` computes them (of the normalised text), in one batch;
        None without an encoder."""
        if self.encoder is None or not texts:
            return None
        return self.encoder.encode([normalize_query(t) for t in texts])

    def _needs_vector(self, plan_ids: Sequence[str]) -> bool:
        return any(p.type == "vector" for plan_id in plan_ids if (plan := self.plans.get(plan_id)) for p in plan.params)

    # ---- the search ----------------------------------------------------------------------
    def calls_for(self, u: QueryUnderstanding, vector: Sequence[float] | None, budgets: Mapping[str, int],
                  filters: Sequence[Mapping[str, Any]] = ()) -> tuple[list[StrategyCall], list[StrategyResult]]:
        """Parameters for each chosen strategy that applies to this query and catalogue, and a
        NOT_APPLICABLE result for each one that does not (with the reason)."""
        filters = [dict(f) for f in filters]
        slot_clauses = [{"term": {s.field: {"value": s.value, "boost": 1.0 + s.confidence}}} for s in u.slots]
        # Every plan, shipped or added by a YAML file alone, takes the inputs it declares; a
        # vector parameter gets the query's vector whatever its name.
        inputs = {"query": u.normalized, "remaining": u.remaining_text, "key": u.key if u.normalized else "",
                  "filters": filters, "slot_clauses": slot_clauses}
        present = self.catalogue().fields_present
        calls: list[StrategyCall] = []
        skipped: list[StrategyResult] = []
        for plan_id, budget in budgets.items():
            plan = self.plans.get(plan_id)
            if plan is None:  # the executor reports it as a failed arm
                calls.append(StrategyCall(plan_id, int(budget), {}, self.timeout_ms))
                continue
            values = {p.name: vector if p.type == "vector" else inputs[p.name]
                      for p in plan.params if p.type == "vector" or p.name in inputs}
            reason = plan.why_not_applicable(values, query_tokens=len(u.tokens), catalogue_fields=present)
            target = None
            if reason is None and plan.target == "memory":
                # A memory plan searches <alias>-q2e. That index holds no catalogue fields, so a
                # filtered search cannot use it; and without entries for the key it has nothing.
                from opensearchpy.exceptions import TransportError

                from .feedback.q2e import Q2EMemory

                memory = self.memory if self.memory is not None else Q2EMemory(self.client, self.index)
                target = memory.index
                key = next((str(values[p.name]) for p in plan.params if p.type == "key" and values.get(p.name)), None)
                try:  # a healthy node answers in ~1 ms (then cached); a slow one must not cost a deadline
                    reason = ("the search has filters, which the Q2E memory cannot evaluate" if filters
                              else memory.why_unavailable(key, timeout_s=min(self.timeout_ms, 100) / 1000))
                except TransportError:  # the check could not be made: run the arm, which reports its own error
                    reason = None
            if reason is not None:
                skipped.append(StrategyResult.not_applicable(plan_id, int(budget), reason))
            else:
                calls.append(StrategyCall(plan_id, int(budget), values, self.timeout_ms, target))
        return calls, skipped

    def eligible_arms(self, u: QueryUnderstanding, filters: Sequence[Mapping[str, Any]] = ()) -> tuple[list[str], dict[str, str]]:
        """The plans that apply to this query and catalogue (before any is chosen), and why each
        other one does not. A plan that needs the query vector applies when there is an encoder."""
        placeholder = [0.0] if self.encoder is not None else None
        calls, skipped = self.calls_for(u, placeholder, {name: 1 for name in self.plans}, filters)
        return [c.plan for c in calls], {r.strategy: r.detail or "" for r in skipped}

    def decide(self, u: QueryUnderstanding, request: RequestContext | None = None,
               filters: Sequence[Mapping[str, Any]] = ()) -> tuple[Context, Decision]:
        """Ask the policy which eligible arms run with what budgets (the policy must be set)."""
        assert self.policy is not None
        eligible, why_not = self.eligible_arms(u, filters)
        has_memory = False
        if self.memory is not None:
            try:
                # A short timeout of its own: a stalled node must cost a search its deadline, not the client's.
                has_memory = bool(self.memory.has_key(u.key, timeout_s=min(self.timeout_ms, 100) / 1000))
            except Exception:  # the memory's health never costs the search
                has_memory = False
        context = Context.build(u, eligible, request=request, q2e_key_exists=has_memory,
                                earlier_searches=self.query_counts.seen(u.key), not_applicable=why_not)
        return context, self.policy.select(context)

    def search(self, query: str, *, strategies: Sequence[str] | None = None,
               budgets: Mapping[str, int] | None = None, size: int = 10,
               filters: Mapping[str, Any] | None = None, understander: QueryUnderstander | None = None,
               vector: Sequence[float] | None = None, explain: bool = False,
               request: RequestContext | None = None) -> SearchResponse:
        """``filters`` is ``{field: value | [values] | {"gte": x, "lte": y}}`` on the catalogue's
        declared fields (see orchestrator.filters); never query DSL. ``vector`` is the query's
        vector when already computed (see :meth:`encode_queries`). Without ``strategies`` or
        ``budgets`` the policy (when set) chooses the arms and budgets from the query and
        ``request`` context; else every plan runs."""
        if not isinstance(query, str):
            raise QueryError("query must be a string")
        if len(query) > MAX_QUERY_CHARS:
            raise QueryError(f"query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1000:
            raise QueryError("size must be between 1 and 1000")
        try:  # request filters -> term/terms/range clauses, from a whitelist of fields
            clauses = build_filter_clauses(filters, self.filter_fields()) if filters else []
        except FilterError as e:
            raise QueryError(str(e)) from None
        t0 = time.perf_counter()
        u = (understander or self.understander()).understand(query)
        if not u.normalized:
            raise QueryError("the query is empty")
        t1 = time.perf_counter()
        context = decision = None
        decide_ms = 0.0
        if budgets is None and not strategies and self.policy is not None:
            td = time.perf_counter()
            context, decision = self.decide(u, request, clauses)
            decide_ms = (time.perf_counter() - td) * 1000
            budgets = {arm: n for arm, n in decision.budgets.items() if n > 0}
            if not budgets:  # no arm applies: every plan reports why
                budgets = {s: DEFAULT_BUDGET for s in self.plans}
        if budgets is None:
            chosen = list(strategies) if strategies else list(self.plans)
            budgets = {s: DEFAULT_BUDGET for s in chosen}
        unknown = [s for s in budgets if s not in self.plans]
        if unknown:
            raise QueryError(f"unknown strategies {unknown}; known: {sorted(self.plans)}")
        bad = {s: b for s, b in budgets.items() if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 1000}
        if bad:
            raise QueryError(f"budgets must be integers between 1 and 1000, got {bad}")
        embed_ms = 0.0
        # The reranker's features include the query vector (dense_cosine) whichever arms ran: a model
        # trained with it must not see 0 whenever the policy skips knn.
        if vector is None and self.encoder is not None and (self.reranker is not None or self._needs_vector(list(budgets))):
            te = time.perf_counter()
            vector = self.encoder.encode_one(u.normalized)
            embed_ms = (time.perf_counter() - te) * 1000
        t2 = time.perf_counter()
        calls, skipped = self.calls_for(u, vector, budgets, clauses)
        report = self.executor.run(self.index, calls)
        order = {name: i for i, name in enumerate(budgets)}
        results = tuple(sorted((*report.results, *skipped), key=lambda r: order.get(r.strategy, len(order))))
        t3 = time.perf_counter()
        # With a reranker the whole union is fused: the model, not the fused cut, decides the top.
        fused = self.fuser.fuse(results, limit=None if self.reranker is not None else size)
        t4 = time.perf_counter()
        outcome = None
        hits = [Candidate.of(h) for h in fused]
        if self.reranker is not None and hits:
            window = fused[: self.rerank_window]
            outcome = self.reranker.rerank(request_params(u, vector, results, fused),
                                           [h.doc_id for h in window], explain=explain)
            hits = _apply_rerank(hits, outcome)
        t5 = time.perf_counter()
        timings = Timings(
            understand_ms=(t1 - t0) * 1000, embed_ms=embed_ms, execute_wall_ms=(t3 - t2) * 1000,
            opensearch_took_ms=report.took_ms, fusion_ms=(t4 - t3) * 1000, total_ms=(t5 - t0) * 1000,
            rerank_wall_ms=(t5 - t4) * 1000, rerank_took_ms=outcome.took_ms if outcome else 0.0, decide_ms=decide_ms)
        trips = report.round_trips + (1 if outcome is not None else 0)
        response = SearchResponse(uuid.uuid4().hex, query, u, tuple(hits[:size]), results, timings, trips, outcome,
                                  decision, context)
        self.query_counts.add(u.key)
        if self.search_log is not None:
            self.search_log.log(search_record(self.index, response, request))
        return response

    def with_active_model(self, registry: Any, catalogue: str | None = None, **options: Any) -> str | None:
        """Rerank with the model the registry marks active for ``catalogue`` (default: this
        pipeline's index); returns its name, or None (and no reranking) when there is none."""
        name, card = registry.active(catalogue or self.index)
        self.reranker = Reranker(self.client, self.index, name, (card or {}).get("feature_set"), **options) if name else None
        return name

    def fetch_sources(self, ids: Sequence[str], fields: Sequence[str] = ("title", "entity_type")) -> dict[str, dict]:
        """Display fields for hits (a separate, cheap mget: strategies return ids only)."""
        if not ids:
            return {}
        resp = self.client.mget(index=self.index, body={"ids": list(ids)}, params={"_source_includes": ",".join(fields)})
        return {d["_id"]: d.get("_source", {}) for d in resp["docs"] if d.get("found")}


class QueryCounts:
    """How often each query key was searched by this process (the context's frequency bucket).

    Bounded: past ``capacity`` keys the counts are halved and keys that fall to zero are dropped,
    so heavy hitters stay and the long tail ages out.
    """

    def __init__(self, capacity: int = 200_000):
        self.capacity = capacity
        self._counts: dict[str, int] = {}

    def seen(self, key: str) -> int:
        return self._counts.get(key, 0)

    def add(self, key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1
        if len(self._counts) > self.capacity:
            self._counts = {k: c // 2 for k, c in self._counts.items() if c // 2 > 0}


def search_record(catalogue: str, response: SearchResponse, request: RequestContext | None) -> SearchRecord:
    """The search log's record of one answered search."""
    context = response.context
    return SearchRecord(
        search_id=response.search_id, time=datetime.now(UTC), catalogue=catalogue, query=response.query,
        normalized=response.understanding.normalized, key=response.understanding.key,
        context=context.features.tolist() if context is not None else [],
        context_version=context.version if context is not None else "",
        request=(request or RequestContext()).to_dict(),
        eligible=list(context.eligible) if context is not None else
        [r.strategy for r in response.strategy_results if r.status is not ArmStatus.NOT_APPLICABLE],
        decision=response.decision.to_dict() if response.decision is not None else None,
        arm_hits={r.strategy: [h.doc_id for h in r.hits] for r in response.strategy_results
                  if r.status is not ArmStatus.NOT_APPLICABLE},
        arm_status={r.strategy: r.status.value for r in response.strategy_results},
        ranking=[h.doc_id for h in response.hits], model=response.model)


def _apply_rerank(hits: list[Candidate], outcome: RerankOutcome) -> list[Candidate]:
    """The window in the model's order (ties: fused order), then the rest of the union in fused
    order; unchanged when the reranker did not apply."""
    if not outcome.applied:
        return hits
    features = outcome.features or {}
    scored = [(i, h) for i, h in enumerate(hits) if h.doc_id in outcome.scores]
    scored.sort(key=lambda item: (-outcome.scores[item[1].doc_id], item[0]))
    reranked = [Candidate(h.doc_id, outcome.scores[h.doc_id], h.provenance, h.fused_score,
                          outcome.scores[h.doc_id], features.get(h.doc_id)) for _, h in scored]
    return reranked + [h for h in hits if h.doc_id not in outcome.scores]
