"""What the search log and the feedback path store: one record per search, one per engagement event.

A :class:`SearchRecord` holds everything needed to learn from and to evaluate a search later:
the context vector (and its schema version), the policy's decision with its propensities, each
arm's candidate ids in rank order, and the final ranking shown. :class:`FeedbackEvent` is one
engagement with a document of that ranking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

EVENT_GRADES: Mapping[str, float] = {
    # How much one event says the user wanted the item (a reward in [0, 1]); an arm's reward is the
    # largest grade among the engaged items in its candidates, so repeated clicks count once.
    "click": 0.3,
    "add_to_cart": 0.7,
    "play": 1.0,
    "favourite": 1.0,
}
MAX_ID_CHARS = 128


class FeedbackError(ValueError):
    """An event or a search id is malformed or unknown (a client error, like HTTP 400/404)."""


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FeedbackError(f"{name} must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise FeedbackError(f"{name} is {len(value)} characters; the limit is {MAX_ID_CHARS}")
    return value


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """One engagement: ``type`` (a key of :data:`EVENT_GRADES`) with document ``doc_id`` shown at
    1-based ``position`` of search ``search_id``. ``event_id`` makes delivery idempotent."""

    event_id: str
    search_id: str
    type: str
    doc_id: str
    position: int | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        _check_id("event_id", self.event_id)
        _check_id("search_id", self.search_id)
        _check_id("doc_id", self.doc_id)
        if self.type not in EVENT_GRADES:
            raise FeedbackError(f"unknown event type {self.type!r}; known: {sorted(EVENT_GRADES)}")
        if self.position is not None and (isinstance(self.position, bool) or not isinstance(self.position, int)
                                          or not 1 <= self.position <= 10_000):
            raise FeedbackError(f"position must be an integer in [1, 10000], got {self.position!r}")
        if not isinstance(self.time, datetime):
            raise FeedbackError("time must be a datetime")

    @property
    def grade(self) -> float:
        return EVENT_GRADES[self.type]


@dataclass(frozen=True)
class SearchRecord:
    """One logged search."""

    search_id: str
    time: datetime
    catalogue: str  # the catalogue alias searched
    query: str  # as received
    normalized: str
    key: str  # the Q2E key
    context: Sequence[float]  # the policy's context vector
    context_version: str
    request: Mapping[str, Any]  # RequestContext.to_dict()
    eligible: Sequence[str]  # arms that applied
    decision: Mapping[str, Any] | None  # Decision.to_dict(); None for a fixed (non-learning) search
    arm_hits: Mapping[str, Sequence[str]]  # arm -> candidate doc ids in rank order
    arm_status: Mapping[str, str]  # arm -> ArmStatus value
    ranking: Sequence[str]  # the final ranking shown (doc ids, best first)
    model: str | None = None  # the LTR model that ordered the ranking
    # The sltr parameters the reranker was sent (ltr.features.request_params), so the features of
    # the displayed items can be logged again for click training; None when not kept.
    ltr_params: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in self.context):
            raise FeedbackError("context has non-finite values")

    def arm_rewards(self, engaged: Mapping[str, float]) -> tuple[dict[str, float], dict[str, list[int]]]:
        """Per arm that ran: the reward (the largest grade among ``engaged`` doc id -> grade found
        by the arm) and the within-arm ranks of the engaged items it found."""
        rewards: dict[str, float] = {}
        ranks: dict[str, list[int]] = {}
        for arm, ids in self.arm_hits.items():
            if self.arm_status.get(arm, "ok") != "ok":
                continue
            found = [(rank, engaged[d]) for rank, d in enumerate(ids, 1) if d in engaged]
            rewards[arm] = max((g for _, g in found), default=0.0)
            ranks[arm] = [rank for rank, _ in found]
        return rewards, ranks
