"""The learning loop: finished searches teach the policy and the Q2E memory.

Composition only (every stage lives in its own package):

    SearchLog + FeedbackStore --RewardJoiner.finalize--> FinalizedSearch
        -> policy.update(context, decision, per-arm rewards, engaged ranks)   (bandit/)
        -> Q2EMemory.record(impressions with engagement)                      (feedback/q2e.py)
        -> Q2EMemory.predict(cold-start entries for keys without memory)
        -> SharedStatistics.sync(policy)                                      (bandit/state.py)

Run :meth:`LearningLoop.step` periodically (``ltrr learn`` does one step). Each search is
finalized once across processes (the joiner marks it), so running the loop in several processes
never applies a search twice; the policy's statistics merge through the shared state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from .bandit.base import Decision, search_outcome
from .bandit.context import Context

# Cold start: a key without memory gets its final ranking's top items as predictions, p̂ falling
# with rank, well under a typical engaged rate so one real engagement outweighs them.
PREDICTED_TOP = 5
PREDICTED_FIRST = 0.05


def _predictions(arm_hits: Any, shown: set[str]) -> dict[str, float]:
    """Cold-start entries: each arm's top items that were not shown, p̂ = PREDICTED_FIRST / rank
    (the best rank any arm gave the item)."""
    best: dict[str, int] = {}
    for arm, ids in arm_hits.items():
        if arm == "q2e_memory":
            continue
        for rank, doc_id in enumerate(ids[:PREDICTED_TOP], start=1):
            if doc_id not in shown:
                best[doc_id] = min(rank, best.get(doc_id, rank))
    return {d: PREDICTED_FIRST / r for d, r in best.items()}


def uniform_examination(position: int) -> float:
    """θ_k = 1 at every position: no position model (see feedback.clickmodel for PBM estimates)."""
    return 1.0


@dataclass
class LearningReport:
    finalized: int = 0  # searches whose window closed in this step
    engaged: int = 0  # of which had engagement
    policy_updates: int = 0  # searches the policy learned from
    skipped_without_decision: int = 0  # searches whose arms the caller fixed (no propensity: never learned from)
    memory_updates: int = 0  # (key, item) impressions sent to the Q2E memory
    predicted_keys: int = 0  # new keys given predicted entries
    synced: bool = False  # the policy's statistics were merged with the shared state
    errors: list[str] = field(default_factory=list)


@dataclass
class LearningLoop:
    joiner: Any  # feedback.rewards.RewardJoiner
    policy: Any = None  # bandit.policies.LinearPolicy; None: only the memory learns
    memory: Any = None  # feedback.q2e.Q2EMemory; None: no Q2E memory
    shared: Any = None  # bandit.state.SharedStatistics; None: the policy stays in this process
    shared_key: str = ""  # bandit.state.policy_key(catalogue, policy name)
    examination: Callable[[int], float] = uniform_examination  # θ_k of the displayed position
    viewport: int = 10  # positions shown: impressions beyond it are not negatives
    catalogue: str | None = None  # learn only from this catalogue's searches (None: every catalogue's)

    def step(self, now: datetime | None = None, *, max_searches: int | None = None) -> LearningReport:
        report = LearningReport()
        finished = self.joiner.finalize(now, catalogue=self.catalogue, max_searches=max_searches)
        report.finalized = len(finished)
        updates: list[Any] = []
        cold_keys: dict[str, dict[str, float]] = {}
        for f in finished:
            record = f.record
            report.engaged += bool(f.engaged)
            if self.policy is not None:
                if record.decision is None or float(record.decision.get("propensity", 0.0)) <= 0.0:
                    report.skipped_without_decision += 1
                else:
                    context = Context(np.asarray(record.context, dtype=np.float64), tuple(record.eligible),
                                      record.context_version)
                    try:
                        self.policy.update(context, Decision.from_dict(record.decision), f.rewards, f.engaged_ranks,
                                           outcome=search_outcome(f.engaged))
                        report.policy_updates += 1
                    except ValueError as e:  # e.g. a context of another schema version
                        report.errors.append(f"{record.search_id}: {e}")
            if self.memory is not None and record.key:
                from .feedback.q2e import impression_updates

                shown = list(record.ranking[: self.viewport])
                updates.extend(impression_updates(record.key, shown, f.engaged, self.examination,
                                                  time=record.time))
                if not record.arm_hits.get("q2e_memory"):
                    cold_keys.setdefault(record.key, _predictions(record.arm_hits, set(shown)))
        if self.memory is not None:
            # Predictions first, for keys the memory does not know yet: the impressions written
            # next turn the shown items into actual entries, the predictions cover what was not shown.
            for key, predicted in cold_keys.items():
                if predicted and not self.memory.has_key(key):
                    self.memory.predict(key, predicted, source="arms-top")
                    report.predicted_keys += 1
            if updates:
                self.memory.record(updates)
                report.memory_updates = len(updates)
        if self.policy is not None and self.shared is not None and self.shared_key:
            self.shared.sync(self.shared_key, self.policy)
            report.synced = True
        return report
