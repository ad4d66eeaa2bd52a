"""The gateway's Python API: one validated configuration, typed requests and responses.

    from orchestrator.api import Orchestrator, SearchRequest

    with Orchestrator.from_config(index="synthetic_music") as orch:
        response = orch.search(SearchRequest(query="tayler swift love", device="mobile"))
        orch.feedback(response.search_id, [{"event_id": "e1", "type": "play", "doc_id": response.results[0].doc_id}])

Everything is composed here from the stages' own packages (pipeline, bandit, feedback, ltr); the
HTTP service (``orchestrator.service``) is a thin layer over this class. Errors a caller can act on
are :class:`ApiError` subclasses carrying the HTTP status they map to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000  # a gateway's default; the pipeline itself takes up to 10,000
MAX_SIZE = 100
# Spooled feedback whose search is unknown at delivery may belong to a search still in another
# process's log buffer: it is retried for this long, then dropped (counted and logged).
SPOOL_UNKNOWN_SEARCH_GRACE_S = 60.0
SPOOL_MAX_DEFERRALS = 3  # deliveries OpenSearch answered but refused, before the events are dropped


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------

class ApiError(Exception):
    """An error the caller can act on; ``status`` is the HTTP status it maps to."""

    status = 500

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class Unavailable(ApiError):
    """OpenSearch (or every arm) is unreachable: retry after ``retry_after_s``."""

    status = 503

    def __init__(self, message: str, retry_after_s: int = 5, **details: Any):
        super().__init__(message, **details)
        self.retry_after_s = retry_after_s


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------

class OrchestratorSettings(BaseSettings):
    """Everything the orchestrator and its service need, validated once (environment ``LTRR_*``,
    e.g. ``LTRR_INDEX=cranfield``; the cluster itself is ``OPENSEARCH_URL`` and friends, read by
    :mod:`orchestrator.config`)."""

    model_config = SettingsConfigDict(env_prefix="LTRR_", frozen=True, extra="forbid")

    index: str = Field("synthetic_music", min_length=1, max_length=200, description="catalogue alias")
    policy: str = Field("joint", description="bandit policy spec (joint, linucb, thompson, epsilon, random, static:a+b, all)")
    budget_total: int = Field(100, ge=1, le=10_000, description="candidates per search over all arms")
    budget_levels: tuple[int, ...] = Field((20, 50, 100), description="budgets an arm may get")
    max_arms: int = Field(2, ge=1, le=20)
    rerank: bool = Field(True, description="rerank with the catalogue's active LTR model when there is one")
    rerank_window: int = Field(200, ge=1, le=10_000)
    timeout_ms: int = Field(1000, ge=50, le=60_000, description="deadline of the arms' round trip")
    encoder: bool = Field(True, description="embed queries for k-NN (needs the model files)")
    max_query_chars: int = Field(MAX_QUERY_CHARS, ge=1, le=10_000)
    search_log: bool = Field(True, description="log searches for feedback and learning")
    search_log_sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    search_log_max_pending: int = Field(10_000, ge=1, le=10_000_000)
    reward_window_s: float = Field(1800.0, gt=0, le=365 * 86_400)
    learn_interval_s: float = Field(30.0, gt=0, description="how often the service runs a learning step")
    sync_interval_s: float = Field(5.0, gt=0, description="how often the policy merges with the shared state")
    spool_dir: str | None = Field(None, description="feedback spool directory, one per process (default: "
                                                    "$LTRR_HOME/spool/<index>)")
    spool_max_events: int = Field(100_000, ge=1, le=100_000_000)
    auth_token: SecretStr | None = Field(None, description="bearer token the HTTP service requires (none: open)")
    rate_limit_per_s: float | None = Field(None, gt=0, description="requests per second per client (none: no limit)")
    log_queries: bool = Field(False, description="write query text into the service's logs")
    seed: int | None = Field(None, ge=0, description="the policy's seed (none: random per process)")

    @field_validator("budget_levels")
    @classmethod
    def _levels(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or list(v) != sorted(set(v)) or v[0] < 1:
            raise ValueError("budget_levels must be strictly ascending positive integers")
        return v


def budget_config(settings: OrchestratorSettings, plans: Mapping[str, Any]) -> Any:
    """The bandit's BudgetConfig: the settings' total, levels and arm count, each plan's cost."""
    from .bandit.base import BudgetConfig

    return BudgetConfig(total=settings.budget_total, levels=settings.budget_levels, max_arms=settings.max_arms,
                        costs={name: plan.cost for name, plan in plans.items()})


# ------------------------------------------------------------------------------------------------
# Requests and responses
# ------------------------------------------------------------------------------------------------

class SearchRequest(BaseModel):
    """One search. Without ``strategies``/``budgets`` the policy chooses the arms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str = Field(..., min_length=1, max_length=10_000)
    size: int = Field(10, ge=1, le=MAX_SIZE)
    filters: dict[str, Any] | None = Field(None, description="{field: value | [values] | {gte, lte}} on declared fields")
    device: str | None = Field(None, max_length=64)
    locale: str | None = Field(None, max_length=64)
    segment: str | None = Field(None, max_length=64)
    explain: bool = False
    strategies: list[str] | None = Field(None, max_length=32, description="run these arms (bypasses the policy)")
    budgets: dict[str, int] | None = Field(None, description="arm -> candidates (bypasses the policy)")


class ProvenanceOut(BaseModel):
    arm: str
    rank: int
    score: float


class ResultOut(BaseModel):
    doc_id: str
    score: float
    fused_score: float
    model_score: float | None = None
    provenance: list[ProvenanceOut]
    features: dict[str, float] | None = None  # explain: the feature values the model saw
    why: str | None = None  # explain: which arms found it and how it was ordered


class DecisionOut(BaseModel):
    policy: str
    arms: list[str]
    budgets: dict[str, int]
    inclusion: dict[str, float]
    propensity: float
    explored: bool
    snapshot: str


class ArmOut(BaseModel):
    arm: str
    status: str
    budget: int
    hits: int
    took_ms: float | None = None
    detail: str | None = None


class SearchResponseOut(BaseModel):
    search_id: str
    results: list[ResultOut]
    decision: DecisionOut | None = None
    model: str | None = None  # the LTR model that ordered the results (None: fused order)
    arms: list[ArmOut]
    degraded: list[str] = Field(default_factory=list, description="what did not work: failed arms, the rerank")
    timings_ms: dict[str, float]


class FeedbackEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(..., min_length=1, max_length=128)
    type: Literal["click", "add_to_cart", "play", "favourite"]
    doc_id: str = Field(..., min_length=1, max_length=512)
    position: int | None = Field(None, ge=1, le=10_000)
    time: datetime | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    search_id: str = Field(..., min_length=1, max_length=128)
    events: list[FeedbackEventIn] = Field(..., min_length=1, max_length=100)


class FeedbackOut(BaseModel):
    search_id: str
    accepted: int
    duplicates: int
    spooled: int = 0  # held on disk because OpenSearch was unreachable; delivered later


# ------------------------------------------------------------------------------------------------
# The orchestrator
# ------------------------------------------------------------------------------------------------

class Orchestrator:
    """Search, feedback and learning over one catalogue. Thread-safe: searches may run
    concurrently; the policy is guarded by a lock (its decisions are microseconds)."""

    def __init__(self, settings: OrchestratorSettings, pipeline: Any, *, policy: Any = None, search_log: Any = None,
                 feedback_store: Any = None, memory: Any = None, shared: Any = None, shared_key: str = "",
                 spool: Any = None):
        self.settings = settings
        self.pipeline = pipeline
        self.policy = policy
        self.search_log = search_log
        self.feedback_store = feedback_store
        self.memory = memory
        self.shared = shared
        self.shared_key = shared_key
        self.spool = spool
        self.lock = threading.RLock()
        self._closed = False
        self._learning: Any = None

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, settings: OrchestratorSettings | None = None, *, client: Any = None, **overrides: Any) -> Orchestrator:
        """Build from ``settings`` (default: the environment) with ``overrides`` applied, e.g.
        ``Orchestrator.from_config(index="cranfield", policy="linucb")``."""
        from .bandit.context import CONTEXT_DIM
        from .bandit.policies import make_policy
        from .bandit.state import SharedStatistics, policy_key
        from .client import make_client
        from .feedback.events import FeedbackStore
        from .feedback.q2e import Q2EMemory
        from .feedback.searchlog import SearchLog
        from .pipeline import SearchPipeline
        from .strategies import load_plans

        if settings is None:
            settings = OrchestratorSettings(**overrides)
        elif overrides:
            settings = settings.model_copy(update=overrides)
        client = client or make_client(retries=False)
        plans = load_plans()
        encoder = None
        if settings.encoder:
            try:
                from .embeddings import SentenceEncoder

                encoder = SentenceEncoder()
            except Exception as e:  # no model files: k-NN does not apply, everything else works
                log.warning("no query encoder (%s): the knn arm will not apply", e)
        pipeline = SearchPipeline(client, settings.index, plans, encoder=encoder, timeout_ms=settings.timeout_ms,
                                  rerank_window=settings.rerank_window)
        budget = budget_config(settings, plans)
        import secrets

        policy = make_policy(settings.policy, list(plans), budget, CONTEXT_DIM,
                             seed=settings.seed if settings.seed is not None else secrets.randbits(31))
        shared = SharedStatistics(client)
        key = policy_key(settings.index, policy.name)
        search_log = SearchLog(client, sample_rate=settings.search_log_sample_rate,
                               max_pending=settings.search_log_max_pending) if settings.search_log else None
        memory = Q2EMemory(client, settings.index)
        feedback_store = FeedbackStore(client, search_log) if search_log is not None else None
        spool = None
        if feedback_store is not None:  # opened on first use: a process that never spools never locks it
            from .config import ltrr_home
            from .feedback.spool import Spool

            spool = Spool(settings.spool_dir or ltrr_home() / "spool" / settings.index,
                          max_events=settings.spool_max_events)
        orch = cls(settings, pipeline, policy=policy, search_log=search_log, feedback_store=feedback_store,
                   memory=memory, shared=shared, shared_key=key, spool=spool)
        # The pipeline's choices go through the lock (microseconds); the round trips run concurrently.
        pipeline.policy, pipeline.search_log, pipeline.memory = _locked(policy, orch.lock), search_log, memory
        orch.refresh_model()
        try:  # what other processes learned; an unreachable cluster starts at the prior
            shared.load(key, policy)
        except Exception as e:
            log.warning("shared statistics not loaded (%s); starting from the prior", e)
        return orch

    def refresh_model(self) -> str | None:
        """Rerank with the catalogue's active model (None: fused order); errors leave the fused order."""
        if not self.settings.rerank:
            self.pipeline.reranker = None
            return None
        try:
            from .ltr.model import ModelRegistry

            return self.pipeline.with_active_model(ModelRegistry(self.pipeline.client))
        except Exception as e:
            log.warning("no active LTR model (%s): results keep the fused order", e)
            self.pipeline.reranker = None
            return None

    # ---- search ------------------------------------------------------------------------------
    def search(self, request: SearchRequest | Mapping[str, Any]) -> SearchResponseOut:
        from .bandit.context import ContextError, RequestContext
        from .pipeline import QueryError

        if self._closed:
            raise Unavailable("the orchestrator is closed", retry_after_s=1)
        req = request if isinstance(request, SearchRequest) else _validated(SearchRequest, request)
        if len(req.query) > self.settings.max_query_chars:
            raise BadRequest(f"query is {len(req.query)} characters; the limit is {self.settings.max_query_chars}")
        try:
            context = RequestContext(device=req.device, locale=req.locale, segment=req.segment)
        except ContextError as e:
            raise BadRequest(str(e)) from None
        budgets = dict(req.budgets) if req.budgets else None
        t0 = time.perf_counter()
        try:
            resp = self.pipeline.search(req.query, strategies=req.strategies, budgets=budgets, size=req.size,
                                        filters=req.filters, explain=req.explain, request=context)
        except QueryError as e:
            raise BadRequest(str(e)) from None
        except (ConnectionError, TimeoutError) as e:
            raise Unavailable(f"OpenSearch is unreachable: {e}") from None
        except Exception as e:
            if _is_unreachable(e):
                raise Unavailable(f"OpenSearch is unreachable: {type(e).__name__}") from None
            raise
        if resp.all_failed:
            reasons = "; ".join(f"{a}: {r}" for a, r in resp.errors.items())
            raise Unavailable(f"every arm failed ({reasons})", arms=resp.errors)
        return _response(resp, req.explain, (time.perf_counter() - t0) * 1000)

    # ---- feedback ----------------------------------------------------------------------------
    def feedback(self, search_id: str, events: Sequence[FeedbackEventIn | Mapping[str, Any]]) -> FeedbackOut:
        from .feedback.events import FeedbackStoreError, UnknownSearchError
        from .feedback.records import FeedbackError

        if self.feedback_store is None:
            raise BadRequest("this orchestrator keeps no search log (search_log=false): feedback cannot be joined")
        req = _validated(FeedbackRequest, {"search_id": search_id,
                                           "events": [e.model_dump() if isinstance(e, BaseModel) else e for e in events]})
        payload = [e.model_dump(exclude_none=True) for e in req.events]
        try:
            receipt = self.feedback_store.record(req.search_id, payload)
        except UnknownSearchError as e:
            raise NotFound(str(e), reason=getattr(e, "reason", "unknown")) from None
        except FeedbackError as e:
            raise BadRequest(str(e)) from None
        except Exception as e:  # OpenSearch failed: unreachable -> spool; a real 4xx -> the caller's error
            from .feedback.spool import SpoolError, SpoolFull, is_client_error

            if not isinstance(e, FeedbackStoreError) and not _is_unreachable(e):
                raise
            if is_client_error(e):
                raise BadRequest(f"OpenSearch refused the feedback: {e}") from None
            if self.spool is None:
                raise Unavailable(f"feedback not stored: {e}") from None
            try:
                spooled = self.spool.put(req.search_id, payload)
            except SpoolFull as full:
                raise Unavailable(str(full), retry_after_s=30) from None
            except SpoolError as failed:
                raise Unavailable(f"feedback neither stored ({e}) nor spooled ({failed})") from None
            return FeedbackOut(search_id=req.search_id, accepted=0, duplicates=0, spooled=spooled)
        return FeedbackOut(search_id=req.search_id, accepted=receipt.accepted_count, duplicates=receipt.duplicate_count)

    # ---- learning ----------------------------------------------------------------------------
    def learn(self, now: datetime | None = None) -> Any:
        """One learning step (see :mod:`orchestrator.learning`): finalize searches whose reward
        window closed, update the policy and the Q2E memory, merge with the shared state."""
        from .feedback.rewards import RewardJoiner
        from .learning import LearningLoop

        if self.search_log is None or self.feedback_store is None:
            raise BadRequest("this orchestrator keeps no search log: nothing to learn from")
        self.drain_spool()  # spooled feedback first, so it counts before its searches are finalized
        if self._learning is None:
            joiner = RewardJoiner(self.search_log, self.feedback_store, window_s=self.settings.reward_window_s)
            self._learning = LearningLoop(joiner, _locked(self.policy, self.lock), self.memory, None, "",
                                          catalogue=self.settings.index)
        report = self._learning.step(now)
        self.sync()
        return report

    def drain_spool(self, max_lines: int | None = None) -> int:
        """Deliver feedback spooled while OpenSearch was unreachable (oldest first, validated now);
        returns the events delivered (stored, or found stored before). Stops quietly at the first
        delivery OpenSearch cannot take; events it refuses (unknown search, a document not shown)
        are dropped, counted and logged. Safe to call often: an empty spool costs a directory listing."""
        from .feedback.spool import SpoolError

        if self.spool is None or self.feedback_store is None:
            return 0
        try:
            report = self.spool.drain(self._deliver_spooled, max_lines=max_lines)
        except SpoolError as e:  # e.g. another process owns that directory (and delivers it)
            log.warning("feedback spool not drained: %s", e)
            return 0
        if report.stopped:
            log.info("feedback spool: %d events delivered, %d wait (%s)", report.delivered, report.remaining,
                     report.stopped)
        return report.delivered

    def _deliver_spooled(self, entry: Any) -> None:
        from .feedback.events import UnknownSearchError
        from .feedback.records import FeedbackError
        from .feedback.spool import DeferDelivery, RefusedDelivery, is_unreachable

        assert self.feedback_store is not None
        try:
            self.feedback_store.record(entry.search_id, entry.events)
        except UnknownSearchError as e:
            # Maybe its record is still in another process's log buffer: wait a little, not forever.
            waited = (datetime.now(UTC) - entry.deferred_since).total_seconds() if entry.deferred_since else 0.0
            if e.reason == "unknown" and waited < SPOOL_UNKNOWN_SEARCH_GRACE_S:
                raise DeferDelivery(str(e)) from None
            raise RefusedDelivery(str(e)) from None
        except FeedbackError as e:
            raise RefusedDelivery(str(e)) from None
        except Exception as e:
            if is_unreachable(e):
                raise  # stops the drain: the line stays for the next one
            # OpenSearch answered but refused some events (or something else broke): a few more
            # tries at later drains, then dropped, so one bad line never blocks the spool.
            if entry.attempts < SPOOL_MAX_DEFERRALS:
                raise DeferDelivery(f"{type(e).__name__}: {e}") from None
            raise RefusedDelivery(f"not stored after {entry.attempts + 1} tries: {type(e).__name__}: {e}") from None

    def sync(self) -> None:
        """Merge the policy's new statistics with the shared state (other workers' too)."""
        if self.shared is not None and self.policy is not None and self.shared_key:
            self.shared.sync(self.shared_key, self.policy, lock=self.lock)

    # ---- health ------------------------------------------------------------------------------
    def ready(self) -> dict[str, Any]:
        """What /readyz reports: OpenSearch reachable, the catalogue and its plans' scripts there,
        the model active (informational: without one results keep the fused order)."""
        from .strategies import missing_scripts

        checks: dict[str, Any] = {}
        client = self.pipeline.client
        try:
            checks["opensearch"] = bool(client.ping())
        except Exception:
            checks["opensearch"] = False
        if checks["opensearch"]:
            try:
                checks["catalogue"] = bool(client.indices.exists(index=self.settings.index))
                checks["plans_synced"] = not missing_scripts(client, list(self.pipeline.plans.values()))
            except Exception:
                checks["catalogue"] = checks["plans_synced"] = False
        checks["model"] = self.pipeline.reranker.model if self.pipeline.reranker is not None else None
        checks["ready"] = bool(checks.get("opensearch") and checks.get("catalogue") and checks.get("plans_synced"))
        return checks

    # ---- shutdown ----------------------------------------------------------------------------
    def close(self) -> None:
        """Flush the search log and push the policy's unsent statistics (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.search_log is not None:
            self.search_log.close()
        try:
            self.sync()
        except Exception as e:
            log.warning("policy statistics not merged at shutdown: %s", e)
        if self.spool is not None:  # what it holds stays on disk for the next start
            self.spool.close()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _locked(policy: Any, lock: Any) -> Any:
    from .bandit.base import Policy

    class Locked(Policy):
        """A policy whose every call runs under the orchestrator's lock: concurrent searches
        select while the learning step updates and the sync loads merged statistics (policies
        are not thread-safe; each call takes microseconds)."""

        name = policy.name

        @property
        def arms(self) -> tuple[str, ...]:
            return policy.arms

        def select(self, context: Any) -> Any:
            with lock:
                return policy.select(context)

        def update(self, *args: Any, **kwargs: Any) -> None:
            with lock:
                policy.update(*args, **kwargs)

        def expectations(self, context: Any) -> dict[str, float]:
            with lock:
                return policy.expectations(context)

        def add_arm(self, arm: str) -> None:
            with lock:
                policy.add_arm(arm)

    return Locked()


def _validated(model: type[BaseModel], data: Any) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadRequest(f"{where}: {first.get('msg')}" if where else str(first.get("msg")), errors=e.errors()) from None


def _is_unreachable(e: Exception) -> bool:
    from opensearchpy.exceptions import ConnectionError as OSConnectionError
    from opensearchpy.exceptions import ConnectionTimeout

    return isinstance(e, (OSConnectionError, ConnectionTimeout))


def _why(hit: Any, model: str | None) -> str:
    found = ", ".join(f"{p.strategy} #{p.rank}" for p in hit.provenance)
    order = f"model score {hit.model_score:.3f}" if hit.model_score is not None else f"fused score {hit.fused_score:.4f}"
    return f"found by {found}; ordered by {order}" + (f" ({model})" if hit.model_score is not None and model else "")


def _response(resp: Any, explain: bool, wall_ms: float) -> SearchResponseOut:
    from .datatypes import ArmStatus

    d = resp.decision
    decision = None if d is None else DecisionOut(policy=d.policy, arms=list(d.arms), budgets=dict(d.budgets),
                                                  inclusion=dict(d.inclusion), propensity=d.propensity,
                                                  explored=d.explored, snapshot=d.snapshot)
    degraded = [f"arm {a}: {r}" for a, r in resp.errors.items()]
    if resp.rerank is not None and resp.rerank.error:
        degraded.append(f"rerank: {resp.rerank.error}")
    t = resp.timings
    timings = {"total": t.total_ms, "understand": t.understand_ms, "decide": t.decide_ms, "embed": t.embed_ms,
               "arms_wall": t.execute_wall_ms, "opensearch_took": t.opensearch_took_ms, "fusion": t.fusion_ms,
               "rerank_wall": t.rerank_wall_ms, "rerank_took": t.rerank_took_ms, "orchestrator": t.orchestrator_ms,
               "wall": wall_ms}
    return SearchResponseOut(
        search_id=resp.search_id,
        results=[ResultOut(doc_id=h.doc_id, score=h.score, fused_score=h.fused_score, model_score=h.model_score,
                           provenance=[ProvenanceOut(arm=p.strategy, rank=p.rank, score=p.score) for p in h.provenance],
                           features=h.features if explain else None, why=_why(h, resp.model) if explain else None)
                 for h in resp.hits],
        decision=decision, model=resp.model,
        arms=[ArmOut(arm=r.strategy, status=r.status.value, budget=r.budget, hits=len(r.hits), took_ms=r.took_ms,
                     detail=r.detail) for r in resp.strategy_results if r.status is not ArmStatus.NOT_APPLICABLE
              or explain],
        degraded=degraded, timings_ms=timings)
