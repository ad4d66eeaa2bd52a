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
from typing import Any

from opensearchpy import OpenSearch

from .fusion import FusedHit, StrategyResult, fuse
from .strategies import QueryPlan, StrategyCall, StrategyExecutor, load_plans
from .understanding import DictionaryCache, FacetDictionary, QueryUnderstander, QueryUnderstanding

DEFAULT_BUDGET = 50
MAX_QUERY_CHARS = 10_000


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

    @property
    def orchestrator_ms(self) -> float:
        """Our own time: everything except OpenSearch's ``took`` and the sentence encoder."""
        return self.total_ms - self.opensearch_took_ms - self.embed_ms


@dataclass(frozen=True)
class SearchResponse:
    search_id: str
    query: str
    understanding: QueryUnderstanding
    hits: tuple[FusedHit, ...]
    strategy_results: tuple[StrategyResult, ...]
    timings: Timings
    round_trips: int

    @property
    def errors(self) -> dict[str, str]:
        return {r.strategy: r.error for r in self.strategy_results if r.error}

    @property
    def candidates(self) -> set[str]:
        return {h.doc_id for r in self.strategy_results for h in r.hits}


@dataclass
class SearchPipeline:
    """Runs searches against one catalogue alias."""

    client: OpenSearch
    index: str
    plans: Mapping[str, QueryPlan] = field(default_factory=load_plans)
    encoder: Any = None  # SentenceEncoder, or None to skip the knn strategy
    fusion: str = "rrf"
    fusion_options: Mapping[str, Any] = field(default_factory=dict)
    timeout_ms: int = 1000
    dictionary_cache: DictionaryCache | None = None

    def __post_init__(self) -> None:
        self.executor = StrategyExecutor(self.client, self.plans)
        self._facets: tuple[str, ...] | None = None
        if self.dictionary_cache is None:
            self.dictionary_cache = DictionaryCache(self.client)

    # ---- catalogue metadata --------------------------------------------------------------
    def facet_fields(self) -> tuple[str, ...]:
        """The facet fields the loaded dataset declared (kept in the index mapping's _meta)."""
        if self._facets is None:
            mapping = self.client.indices.get_mapping(index=self.index)
            meta = next(iter(mapping.values()))["mappings"].get("_meta", {}).get("ltrr", {})
            self._facets = tuple(meta.get("facets", ()))
        return self._facets

    def dictionary(self) -> FacetDictionary | None:
        fields = self.facet_fields()
        if not fields:
            return None
        return self.dictionary_cache.get(self.index, fields)

    def understander(self) -> QueryUnderstander:
        return QueryUnderstander(self.dictionary())

    # ---- the search ----------------------------------------------------------------------
    def calls_for(self, u: QueryUnderstanding, vector: Sequence[float] | None, budgets: Mapping[str, int],
                  filters: Sequence[Mapping[str, Any]] = ()) -> list[StrategyCall]:
        """Parameters for each chosen strategy, from the query's understanding."""
        filters = [dict(f) for f in filters]
        slot_clauses = [{"term": {s.field: {"value": s.value, "boost": 1.0 + s.confidence}}} for s in u.slots]
        # Every plan, shipped or added by a YAML file alone, takes the inputs it declares.
        inputs = {"query": u.normalized, "remaining": u.remaining_text, "key": u.key if u.normalized else "",
                  "vector": vector, "filters": filters, "slot_clauses": slot_clauses}
        calls = []
        for plan_id, budget in budgets.items():
            plan = self.plans.get(plan_id)
            declared = {p.name for p in plan.params} if plan is not None else set()
            values = {k: v for k, v in inputs.items() if k in declared}
            calls.append(StrategyCall(plan_id, int(budget), values, self.timeout_ms))
        return calls

    def search(self, query: str, *, strategies: Sequence[str] | None = None,
               budgets: Mapping[str, int] | None = None, size: int = 10,
               filters: Sequence[Mapping[str, Any]] = (), understander: QueryUnderstander | None = None,
               vector: Sequence[float] | None = None) -> SearchResponse:
        if not isinstance(query, str):
            raise QueryError("query must be a string")
        if len(query) > MAX_QUERY_CHARS:
            raise QueryError(f"query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
        if not 1 <= size <= 1000:
            raise QueryError("size must be between 1 and 1000")
        t0 = time.perf_counter()
        u = (understander or self.understander()).understand(query)
        if not u.normalized:
            raise QueryError("the query is empty")
        t1 = time.perf_counter()
        if budgets is None:
            chosen = list(strategies) if strategies else list(self.plans)
            budgets = {s: DEFAULT_BUDGET for s in chosen}
        unknown = [s for s in budgets if s not in self.plans]
        if unknown:
            raise QueryError(f"unknown strategies {unknown}; known: {sorted(self.plans)}")
        embed_ms = 0.0
        if vector is None and "knn" in budgets and self.encoder is not None:
            te = time.perf_counter()
            vector = self.encoder.encode_one(u.normalized)
            embed_ms = (time.perf_counter() - te) * 1000
        t2 = time.perf_counter()
        report = self.executor.run(self.index, self.calls_for(u, vector, budgets, filters))
        t3 = time.perf_counter()
        fused = fuse(report.results, self.fusion, limit=size, **dict(self.fusion_options))
        t4 = time.perf_counter()
        timings = Timings(
            understand_ms=(t1 - t0) * 1000, embed_ms=embed_ms, execute_wall_ms=(t3 - t2) * 1000,
            opensearch_took_ms=report.took_ms, fusion_ms=(t4 - t3) * 1000, total_ms=(t4 - t0) * 1000)
        return SearchResponse(uuid.uuid4().hex, query, u, tuple(fused), report.results, timings, report.round_trips)

    def fetch_sources(self, ids: Sequence[str], fields: Sequence[str] = ("title", "entity_type")) -> dict[str, dict]:
        """Display fields for hits (a separate, cheap mget: strategies return ids only)."""
        if not ids:
            return {}
        resp = self.client.mget(index=self.index, body={"ids": list(ids)}, params={"_source_includes": ",".join(fields)})
        return {d["_id"]: d.get("_source", {}) for d in resp["docs"] if d.get("found")}
