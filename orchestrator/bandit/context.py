"""The bandit's context: a documented, versioned feature vector per search.

Schema ``ctx-v1`` (every value in [0, 1]; ``CONTEXT_FEATURES`` names them in order):

* the query's own features, :data:`orchestrator.understanding.FEATURE_NAMES` (bias first);
* what the request carries (:class:`RequestContext`): device one-hot (desktop, mobile, tv,
  other), the hour of day as (1 + sin, 1 + cos) / 2, and locale and segment each hashed into
  :data:`HASH_BUCKETS` one-hot buckets (unknown or absent: all zero);
* what the system knows about the query: whether its Q2E key has memory entries, and its
  frequency bucket one-hot (never seen, 1-2, 3-9, 10+ earlier searches).

A change of any definition is a new schema version: logged contexts name theirs, so offline
evaluation never mixes vectors of different meaning.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from ..understanding import FEATURE_NAMES, QueryUnderstanding

CONTEXT_VERSION = "ctx-v1"
DEVICES = ("desktop", "mobile", "tv")  # anything else is "other"
HASH_BUCKETS = 4
FREQUENCY_BUCKETS = ((0, 0), (1, 2), (3, 9), (10, None))  # earlier searches of the same key
MAX_TAG_CHARS = 64

CONTEXT_FEATURES: tuple[str, ...] = (
    *FEATURE_NAMES,
    *(f"device_{d}" for d in (*DEVICES, "other")),
    "hour_sin", "hour_cos",
    *(f"locale_{i}" for i in range(HASH_BUCKETS)),
    *(f"segment_{i}" for i in range(HASH_BUCKETS)),
    "q2e_key_exists",
    *(f"frequency_{lo}_{hi if hi is not None else 'up'}" for lo, hi in FREQUENCY_BUCKETS),
)
CONTEXT_DIM = len(CONTEXT_FEATURES)


class ContextError(ValueError):
    """A request context value is malformed (a client error, like HTTP 400)."""


def _tag(name: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ContextError(f"{name} must be a string")
    if len(value) > MAX_TAG_CHARS:
        raise ContextError(f"{name} is {len(value)} characters; the limit is {MAX_TAG_CHARS}")
    return value.strip().lower() or None


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a search request says about its user and situation (all optional)."""

    device: str | None = None  # desktop | mobile | tv; anything else counts as "other"
    locale: str | None = None  # e.g. "en-GB"
    segment: str | None = None  # a user segment the gateway knows, e.g. "new", "premium"
    time: datetime | None = None  # when the search happened (UTC if naive); None: now

    def __post_init__(self) -> None:
        for name in ("device", "locale", "segment"):
            object.__setattr__(self, name, _tag(name, getattr(self, name)))
        if self.time is not None and not isinstance(self.time, datetime):
            raise ContextError("time must be a datetime")

    def to_dict(self) -> dict[str, str | None]:
        return {"device": self.device, "locale": self.locale, "segment": self.segment,
                "time": self.time.isoformat() if self.time else None}


def _bucket(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=4).digest(), "big") % HASH_BUCKETS


def frequency_bucket(earlier_searches: int) -> int:
    """Index into :data:`FREQUENCY_BUCKETS` for a query seen ``earlier_searches`` times before."""
    for i, (lo, hi) in enumerate(FREQUENCY_BUCKETS):
        if earlier_searches >= lo and (hi is None or earlier_searches <= hi):
            return i
    return 0


@dataclass(frozen=True)
class Context:
    """One search's context as the policy sees it: the feature vector and the arms it may run."""

    features: np.ndarray  # float64, shape (CONTEXT_DIM,) for ctx-v1
    eligible: tuple[str, ...]  # arms that apply to this query, in plan order
    version: str = CONTEXT_VERSION
    not_applicable: dict[str, str] = field(default_factory=dict)  # arm -> why it was left out

    @classmethod
    def build(cls, understanding: QueryUnderstanding, eligible: Sequence[str], *,
              request: RequestContext | None = None, q2e_key_exists: bool = False,
              earlier_searches: int = 0, not_applicable: dict[str, str] | None = None) -> Context:
        return cls(context_vector(understanding, request, q2e_key_exists=q2e_key_exists,
                                  earlier_searches=earlier_searches),
                   tuple(eligible), CONTEXT_VERSION, dict(not_applicable or {}))


def context_vector(understanding: QueryUnderstanding, request: RequestContext | None = None, *,
                   q2e_key_exists: bool = False, earlier_searches: int = 0) -> np.ndarray:
    """The ``ctx-v1`` vector (see the module docstring)."""
    request = request or RequestContext()
    x = np.zeros(CONTEXT_DIM, dtype=np.float64)
    q = understanding.features()
    x[: len(q)] = q
    i = len(q)
    device = request.device
    x[i + (DEVICES.index(device) if device in DEVICES else len(DEVICES))] = 1.0  # absent: "other"
    i += len(DEVICES) + 1
    when = request.time or datetime.now(UTC)
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    angle = 2 * math.pi * (when.hour + when.minute / 60) / 24
    x[i], x[i + 1] = (1 + math.sin(angle)) / 2, (1 + math.cos(angle)) / 2
    i += 2
    for tag in (request.locale, request.segment):
        if tag:
            x[i + _bucket(tag)] = 1.0
        i += HASH_BUCKETS
    x[i] = 1.0 if q2e_key_exists else 0.0
    i += 1
    x[i + frequency_bucket(max(0, int(earlier_searches)))] = 1.0
    return x
