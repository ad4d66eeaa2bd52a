"""The small typed records that pass between the stages of a search.

understanding -> strategies (:class:`StrategyResult` per arm, made of :class:`Hit`) -> fusion
(:class:`FusedHit` with :class:`Provenance`). Later stages (bandit, rerank, feedback) add their own
records here, so a reader finds every shape data takes in one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ArmStatus(StrEnum):
    """What happened to one arm (strategy) of a search."""

    OK = "ok"                           # ran; its hits (possibly none) are in the result
    NOT_APPLICABLE = "not_applicable"   # not run: the plan does not apply to this query or catalogue
    FAILED = "failed"                   # ran and failed (bad parameters, shard failure, node down...)
    TIMED_OUT = "timed_out"             # ran past its timeout; OpenSearch's partial hits are dropped


@dataclass(frozen=True, slots=True)
class Hit:
    """One hit of one strategy."""

    doc_id: str
    rank: int  # 1-based rank within the strategy's list
    score: float  # the strategy's raw score


@dataclass(frozen=True, slots=True)
class StrategyResult:
    """The candidate list one strategy returned for one query."""

    strategy: str
    hits: tuple[Hit, ...]
    budget: int  # how many candidates were asked for
    took_ms: float | None = None  # OpenSearch's took
    status: ArmStatus = ArmStatus.OK
    detail: str | None = None  # why the status is not OK, for people

    @property
    def ok(self) -> bool:
        return self.status is ArmStatus.OK

    @property
    def error(self) -> str | None:
        """The reason of a failed or timed-out arm; None when it ran or did not apply."""
        return self.detail if self.status in (ArmStatus.FAILED, ArmStatus.TIMED_OUT) else None

    @classmethod
    def failed(cls, strategy: str, budget: int, reason: str, took_ms: float | None = None) -> StrategyResult:
        return cls(strategy, (), budget, took_ms, ArmStatus.FAILED, reason)

    @classmethod
    def not_applicable(cls, strategy: str, budget: int, reason: str) -> StrategyResult:
        return cls(strategy, (), budget, None, ArmStatus.NOT_APPLICABLE, reason)


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a fused hit came from: one strategy, its rank and raw score there."""

    strategy: str
    rank: int
    score: float


@dataclass(frozen=True, slots=True)
class FusedHit:
    """One document of the fused list."""

    doc_id: str
    score: float  # fused score
    provenance: tuple[Provenance, ...]  # every strategy that found it, in strategy order of the input

    @property
    def strategies(self) -> tuple[str, ...]:
        """Names of the strategies that found the document, in input order."""
        return tuple(p.strategy for p in self.provenance)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One result of a search: a fused hit with what the rerank stage added.

    ``score`` orders the results: the model's score when the reranker scored this candidate, else
    the fused score. Candidates past the rerank window (or all of them, without a model) keep
    their fused order after the reranked ones.
    """

    doc_id: str
    score: float
    provenance: tuple[Provenance, ...]
    fused_score: float
    model_score: float | None = None
    features: dict[str, float] | None = None  # feature values, when the search asked to explain

    @property
    def strategies(self) -> tuple[str, ...]:
        return tuple(p.strategy for p in self.provenance)

    @classmethod
    def of(cls, hit: FusedHit) -> Candidate:
        return cls(hit.doc_id, hit.score, hit.provenance, hit.score)
