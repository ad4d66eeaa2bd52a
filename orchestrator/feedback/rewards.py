"""The reward joiner: logged searches + their engagement events -> per-arm rewards, once per search.

Window semantics (``window_s`` = W, per signal near the p95-p99 of the observed event delay):

* A search logged at time t is *due* once the cutoff has passed t + W. The cutoff is ``now``, or,
  when the caller knows the event stream's watermark (the time up to which every event has
  arrived), ``min(now, watermark)``: an outage of the event stream then delays finalization
  instead of manufacturing zero rewards.
* The first :meth:`RewardJoiner.finalize` call that finds a due search finalizes it. Events with
  event time <= t + W are applied; events already stored but timed after t + W are *late* (counted,
  not applied). Events that arrive after finalization are flagged late by the
  :class:`~.events.FeedbackStore` and never applied: learning and off-policy evaluation see one
  fixed outcome per search.
* Engaged items are {doc id: largest grade among its applied events} (``EVENT_GRADES``, so a
  repeated click counts once). Each arm that ran (status ok) gets the largest grade among the
  engaged items in its candidates, and the within-arm ranks where it found them
  (:meth:`SearchRecord.arm_rewards`). No engagement within the window: every arm that ran gets 0.
* Once: finalization sets ``finalized_at`` and the outcome on the search's document with
  ``if_seq_no``/``if_primary_term`` of the version read, so when two processes finalize at once
  exactly one wins each search; a later call (in any process) no longer finds it.

Clocks: search times come from the serving processes and ``now`` from the joiner's; event times
from the clients (an event without a time gets the time it was received). A search still in some
process's log buffer is finalized once it is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .events import FeedbackStore
from .records import FeedbackEvent, SearchRecord
from .searchlog import LogEntry, SearchLog


class JoinerConfigError(ValueError):
    """A reward joiner setting is invalid; the message says which and why."""


@dataclass(frozen=True, slots=True)
class JoinerConfig:
    """``window_s``: seconds after a search during which its engagement counts (> 0).
    ``page_size``: searches read, joined and marked per round trip."""

    window_s: float = 1800.0
    page_size: int = 500

    def __post_init__(self) -> None:
        w = self.window_s
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 < w <= 365 * 86400:
            raise JoinerConfigError(f"window_s must be a number of seconds in (0, 1 year], got {w!r}")
        p = self.page_size
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 10_000:
            raise JoinerConfigError(f"page_size must be an integer in [1, 10000], got {p!r}")


@dataclass(frozen=True)
class FinalizedSearch:
    """One search's final outcome. ``rewards``: arm -> reward in [0, 1] for every arm that ran;
    ``engaged_ranks``: arm -> within-arm ranks (1-based) of the engaged items it found;
    ``engaged``: doc id -> largest grade; ``events``: the events applied; ``late_events``: ids of
    stored events timed after ``deadline`` (not applied)."""

    record: SearchRecord
    engaged: dict[str, float]
    rewards: dict[str, float]
    engaged_ranks: dict[str, list[int]]
    events: tuple[FeedbackEvent, ...]
    late_events: tuple[str, ...]
    deadline: datetime
    finalized_at: datetime

    @property
    def search_id(self) -> str:
        return self.record.search_id

    @property
    def any_engagement(self) -> bool:
        """Whether anything shown was engaged with within the window."""
        return bool(self.engaged)

    def outcome(self) -> dict[str, Any]:
        """What is stored on the search's document (``query_attributes.outcome``)."""
        return {"engaged": dict(self.engaged), "rewards": dict(self.rewards),
                "engaged_ranks": {a: list(r) for a, r in self.engaged_ranks.items()},
                "applied_events": [e.event_id for e in self.events], "late_events": list(self.late_events),
                "deadline": self.deadline.isoformat()}


@dataclass(frozen=True, slots=True)
class JoinerStats:
    """Counts since the joiner was made: searches finalized (of them with engagement), searches
    another process finalized first, searches whose marking failed (left for a later call), and
    late events (timed after the window) found at finalization."""

    finalized: int
    engaged: int
    lost_to_other_process: int
    failed: int
    late_events: int


def join(record: SearchRecord, events: list[FeedbackEvent], window_s: float, finalized_at: datetime) -> FinalizedSearch:
    """The outcome of ``record`` given its stored ``events`` (see the module docstring)."""
    when = record.time if record.time.tzinfo is not None else record.time.replace(tzinfo=UTC)
    deadline = when + timedelta(seconds=window_s)
    applied = tuple(e for e in events if e.time <= deadline)
    late = tuple(e.event_id for e in events if e.time > deadline)
    engaged: dict[str, float] = {}
    for event in applied:
        engaged[event.doc_id] = max(engaged.get(event.doc_id, 0.0), event.grade)
    rewards, ranks = record.arm_rewards(engaged)
    return FinalizedSearch(record, engaged, rewards, ranks, applied, late, deadline, finalized_at)


class RewardJoiner:
    """Finalizes due searches of a :class:`SearchLog` with the events of a :class:`FeedbackStore`."""

    def __init__(self, search_log: SearchLog, feedback: FeedbackStore, *, window_s: float = 1800.0,
                 page_size: int = 500):
        self.config = JoinerConfig(window_s, page_size)
        self.search_log = search_log
        self.feedback = feedback
        self._finalized = self._engaged = self._lost = self._failed = self._late = 0

    @property
    def window_s(self) -> float:
        return float(self.config.window_s)

    @property
    def stats(self) -> JoinerStats:
        return JoinerStats(self._finalized, self._engaged, self._lost, self._failed, self._late)

    def finalize(self, now: datetime | None = None, *, watermark: datetime | None = None,
                 catalogue: str | None = None, max_searches: int | None = None) -> list[FinalizedSearch]:
        """Finalize every stored search due at ``now`` (default: the current time; see the module
        docstring for ``watermark``) that no process finalized before, at most ``max_searches``
        (oldest first); returns the ones this call finalized."""
        now = _utc(now) if now is not None else datetime.now(UTC)
        cutoff = min(now, _utc(watermark)) if watermark is not None else now
        if max_searches is not None and (isinstance(max_searches, bool) or not isinstance(max_searches, int)
                                         or max_searches < 1):
            raise ValueError(f"max_searches must be a positive integer, got {max_searches!r}")
        before = cutoff - timedelta(seconds=self.window_s)
        self.search_log.refresh()
        self.feedback.refresh()
        done: list[FinalizedSearch] = []
        page: list[LogEntry] = []
        seen = 0
        for entry in self._due(before, catalogue):
            page.append(entry)
            seen += 1
            if len(page) >= self.config.page_size:
                done += self._finalize_page(page, now)
                page = []
            if max_searches is not None and seen >= max_searches:
                break
        done += self._finalize_page(page, now)
        return done

    def _due(self, before: datetime, catalogue: str | None) -> Iterator[LogEntry]:
        return self.search_log.unfinalized(before, catalogue=catalogue, page_size=self.config.page_size)

    def _finalize_page(self, page: list[LogEntry], now: datetime) -> list[FinalizedSearch]:
        if not page:
            return []
        events = self.feedback.events_for([e.record.search_id for e in page], refresh=False)
        joined = [join(e.record, events.get(e.record.search_id, []), self.window_s, now) for e in page]
        won = self.search_log.mark_finalized([(e, j.outcome()) for e, j in zip(page, joined)], now)
        out = [j for j, ok in zip(joined, won) if ok]
        self._finalized += len(out)
        self._engaged += sum(1 for j in out if j.any_engagement)
        self._late += sum(len(j.late_events) for j in out)
        self._lost += sum(1 for ok in won if ok is False)
        self._failed += sum(1 for ok in won if ok is None)
        return out


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def rewards_summary(finalized: list[FinalizedSearch]) -> Mapping[str, Any]:
    """Mean reward per arm and the engagement rate of a batch (for logs and reports)."""
    per_arm: dict[str, list[float]] = {}
    for f in finalized:
        for arm, r in f.rewards.items():
            per_arm.setdefault(arm, []).append(r)
    return {"searches": len(finalized), "engaged": sum(1 for f in finalized if f.any_engagement),
            "late_events": sum(len(f.late_events) for f in finalized),
            "mean_reward": {arm: sum(v) / len(v) for arm, v in per_arm.items()}}
