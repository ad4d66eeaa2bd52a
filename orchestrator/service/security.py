"""Who may call the service and how often: a bearer token and a token-bucket rate limit per client."""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` against the configured token.

    Both sides are hashed before :func:`hmac.compare_digest`, so the comparison takes the same time
    whatever the presented token's length and content (compare_digest alone leaks the length).
    """

    def __init__(self, token: str):
        if not token:
            raise ValueError("the bearer token must not be empty")
        self._expected = hashlib.sha256(token.encode()).digest()

    def allows(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        presented = hashlib.sha256(credentials.strip().encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(presented, self._expected)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per client: ``rate_per_s`` tokens a second, up to ``burst`` (default: one
    second's worth, at least 1). :meth:`acquire` takes a token and returns 0, or returns how many
    seconds until one is available (the request is then refused: HTTP 429 with ``Retry-After``).

    Memory is bounded: past ``max_clients`` the least recently seen client is forgotten (it comes
    back with a full bucket, which errs on the side of serving)."""

    def __init__(self, rate_per_s: float, burst: float | None = None, *, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        if not math.isfinite(rate_per_s) or rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be a positive number, got {rate_per_s!r}")
        self.rate = float(rate_per_s)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate)
        if not math.isfinite(self.burst) or self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                bucket = self._buckets[client] = _Bucket(self.burst, now)
                if len(self._buckets) > self.max_clients:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(client)
                bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
                bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate

    @staticmethod
    def retry_after(wait_s: float) -> str:
        """``Retry-After`` is whole seconds: round up, at least 1."""
        return str(max(1, math.ceil(wait_s)))
