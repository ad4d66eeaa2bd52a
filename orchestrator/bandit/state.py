"""Shared bandit statistics in OpenSearch: several orchestrator processes pool what they learn.

Every process's policy accumulates a *delta* (:class:`~orchestrator.bandit.stats.PolicyStatistics`,
additive: per arm Σxxᵀ (d × d), Σr·x (d), rank counts (len(levels) + 1), pulls, Σr). Merging a
delta into the global statistics of a policy key is optimistic concurrency on one document:

1. GET the document: the statistics S, its ``_seq_no`` and ``_primary_term``;
2. S' = S + delta (elementwise: exact up to the floating-point summation order);
3. index S' with ``if_seq_no``/``if_primary_term``: the write succeeds only if nobody wrote since 1;
4. on 409 somebody did: back to 1 after a jittered backoff (at most ``max_attempts`` tries, then
   :class:`SharedStateError`). A missing document is created with ``op_type=create``; of two
   creators the loser gets 409 and merges into the winner's document like any other writer.

So no update is lost, whatever the interleaving. A push is also idempotent: its id is kept in the
document (the last :data:`PUSH_RING`), so a push whose write went through but whose answer was
lost (a timeout, a client retry) finds its id on the next read and is not merged twice.

The document (``index_templates/bandit_state.yaml``, served through the alias
``ltrr-bandit-state``): ``policy`` = the key (e.g. ``"synthetic_music:linucb"``), ``snapshot`` =
merges applied so far (decisions name ``<key>@<snapshot>``), ``updated``, ``feature_schema`` =
the context schema version the vectors follow (a new schema never merges into old sums), and
``arms`` (not indexed) = ``{"statistics": PolicyStatistics.to_dict(), "pushes": [recent push ids]}``.

:meth:`SharedStatistics.sync` runs the policy side: ``delta = policy.take_delta()``, push it, and
``policy.load_statistics(merged)``; a delta whose push failed is kept (with its push id) and sent
first at the next sync, so a failure delays learning but loses none. :class:`BackgroundSync`
calls it every few seconds on a thread and once more on close.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConflictError, ConnectionTimeout, NotFoundError, TransportError
from opensearchpy.exceptions import ConnectionError as OSConnectionError

from .context import CONTEXT_VERSION
from .stats import PolicyStatistics

DEFAULT_INDEX = "ltrr-bandit-state"
TEMPLATE = "bandit_state"
PUSH_RING = 64  # push ids kept per document: a lost answer is recognised while fewer pushes followed
MAX_KEY_CHARS = 256
_TRANSIENT = {429, 502, 503, 504}


class SharedStateError(RuntimeError):
    """Shared statistics could not be read or merged; the message says which key and why."""


class SyncablePolicy(Protocol):
    """What :meth:`SharedStatistics.sync` needs of a policy (``orchestrator.bandit.policies``)."""

    def take_delta(self) -> PolicyStatistics:
        """The updates since the last call, and start a new delta."""
        ...

    def load_statistics(self, stats: PolicyStatistics, snapshot: str | None = None) -> None:
        """Act on the merged ``stats`` plus the updates made since the last ``take_delta``."""
        ...


@dataclass(frozen=True)
class StoredStatistics:
    """One policy key's document as read."""

    key: str
    statistics: PolicyStatistics
    snapshot: int  # merges applied so far
    seq_no: int
    primary_term: int
    feature_schema: str
    pushes: tuple[str, ...]
    updated: str

    @property
    def snapshot_id(self) -> str:
        """What decisions made on these statistics log as their snapshot."""
        return f"{self.key}@{self.snapshot}"


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise SharedStateError(f"a policy key is a printable string of 1..{MAX_KEY_CHARS} characters, got {str(key)[:40]!r}")
    return key


def policy_key(catalogue: str, policy: str) -> str:
    """The key of one policy's statistics on one catalogue."""
    return check_key(f"{catalogue}:{policy}")


class SharedStatistics:
    """Policy statistics in an OpenSearch index, merged with optimistic concurrency.

    ``max_attempts``: reads+writes tried per push before giving up (conflicts and transient
    errors: 429/5xx, no answer); the wait before try k is uniform in
    [0, min(max_backoff_s, backoff_s·2^k)] ("full jitter", so racing processes spread out).
    ``conflicts`` counts the 409s met, ``pushes`` the pushes that merged.
    """

    def __init__(self, client: OpenSearch, *, index: str = DEFAULT_INDEX, context_version: str = CONTEXT_VERSION,
                 max_attempts: int = 64, backoff_s: float = 0.002, max_backoff_s: float = 0.25,
                 seed: int | None = None):
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts <= 10_000:
            raise SharedStateError(f"max_attempts must be an integer in [1, 10000], got {max_attempts!r}")
        if not 0 <= backoff_s <= max_backoff_s <= 60:
            raise SharedStateError(f"need 0 <= backoff_s <= max_backoff_s <= 60, got {backoff_s}, {max_backoff_s}")
        if not isinstance(context_version, str) or not context_version:
            raise SharedStateError("context_version must be a non-empty string")
        self.client = client
        self.index = index
        self.context_version = context_version
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.conflicts = 0
        self.pushes = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._unsent: dict[str, list[tuple[str, PolicyStatistics]]] = {}
        self._ready = False

    # ---- the index -----------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the index (as ``<index>-v1`` behind the alias ``index``, from the bandit_state
        template) when neither an alias nor an index of that name exists."""
        if not (self.client.indices.exists_alias(name=self.index) or self.client.indices.exists(index=self.index)):
            from ..catalog import CatalogError, ensure_index

            try:
                ensure_index(self.client, self.index, TEMPLATE)
            except (CatalogError, TransportError) as e:
                # Another process may have created it meanwhile; anything else is an error.
                if not self.client.indices.exists_alias(name=self.index):
                    raise SharedStateError(f"creating {self.index} failed: {e}") from e
        self._ready = True

    # ---- reads ---------------------------------------------------------------------------------
    def read(self, key: str) -> StoredStatistics | None:
        """The key's document, or None when nothing was pushed for it yet."""
        check_key(key)
        try:
            resp = self.client.get(index=self.index, id=key)
        except NotFoundError:
            return None  # no document, or no index yet
        return self._parse(key, resp)

    def pull(self, key: str) -> PolicyStatistics | None:
        """The merged statistics of ``key`` (None when nothing was pushed yet)."""
        stored = self.read(key)
        return stored.statistics if stored is not None else None

    def delete(self, key: str) -> bool:
        """Forget a key's statistics (e.g. a retired policy); True when there were some."""
        check_key(key)
        try:
            self.client.delete(index=self.index, id=key)
        except NotFoundError:
            return False
        return True

    def _parse(self, key: str, resp: Mapping[str, Any]) -> StoredStatistics:
        src = resp.get("_source") or {}
        payload = src.get("arms") or {}
        try:
            stats = PolicyStatistics.from_dict(payload["statistics"])
        except (KeyError, TypeError, ValueError) as e:
            raise SharedStateError(f"the stored statistics of {key!r} in {self.index} cannot be read ({e!r})") from None
        return StoredStatistics(key, stats, int(src.get("snapshot", 0)), int(resp["_seq_no"]), int(resp["_primary_term"]),
                                str(src.get("feature_schema", "")), tuple(payload.get("pushes", ())),
                                str(src.get("updated", "")))

    # ---- merging -------------------------------------------------------------------------------
    def push(self, key: str, delta: PolicyStatistics) -> PolicyStatistics:
        """Merge ``delta`` into ``key``'s statistics and return the merged statistics."""
        check_key(key)
        if not isinstance(delta, PolicyStatistics):
            raise SharedStateError(f"push takes PolicyStatistics, got {type(delta).__name__}")
        if not delta.arms:  # nothing to add: the current statistics
            stored = self.read(key)
            return stored.statistics if stored is not None else delta.copy()
        return self._push(key, delta, uuid.uuid4().hex).statistics

    def _push(self, key: str, delta: PolicyStatistics, push_id: str) -> StoredStatistics:
        """Merge a non-empty ``delta`` under ``push_id`` (the same id on every try of one delta)."""
        if not self._ready:
            self.ensure()
        last_error = ""
        for attempt in range(self.max_attempts):
            if attempt:
                self._sleep(attempt)
            try:
                stored = self.read(key)
            except TransportError as e:
                if _transient(e):
                    last_error = f"read failed: {_describe(e)}"
                    continue
                raise SharedStateError(f"reading {key!r} from {self.index} failed: {_describe(e)}") from e
            if stored is not None and push_id in stored.pushes:
                return stored  # an earlier try was written; its answer was lost
            merged = self._merged(key, stored, delta)
            snapshot = (stored.snapshot if stored else 0) + 1
            pushes = [*(stored.pushes if stored else ())][-(PUSH_RING - 1):] + [push_id]
            updated = datetime.now(UTC).isoformat()
            doc = {"policy": key, "snapshot": snapshot, "updated": updated, "feature_schema": self.context_version,
                   "arms": {"statistics": merged.to_dict(), "pushes": pushes}}
            params: dict[str, Any] = ({"op_type": "create"} if stored is None
                                      else {"if_seq_no": stored.seq_no, "if_primary_term": stored.primary_term})
            try:
                resp = self.client.index(index=self.index, id=key, body=doc, params=params)
            except ConflictError:
                with self._lock:
                    self.conflicts += 1
                last_error = "conflict: another process wrote first"
                continue
            except TransportError as e:
                if _transient(e):  # the write may or may not have happened: the re-read tells
                    last_error = f"write failed: {_describe(e)}"
                    continue
                raise SharedStateError(f"writing {key!r} to {self.index} failed: {_describe(e)}") from e
            with self._lock:
                self.pushes += 1
            return StoredStatistics(key, merged, snapshot, int(resp["_seq_no"]), int(resp["_primary_term"]),
                                    self.context_version, tuple(pushes), updated)
        raise SharedStateError(f"gave up merging into {key!r} in {self.index} after {self.max_attempts} attempts "
                               f"(last: {last_error}); the delta was not merged")

    def _merged(self, key: str, stored: StoredStatistics | None, delta: PolicyStatistics) -> PolicyStatistics:
        if stored is None:
            return delta.copy()
        if stored.feature_schema and stored.feature_schema != self.context_version:
            raise SharedStateError(f"{key!r} holds statistics of context schema {stored.feature_schema!r}, this "
                                   f"process learns {self.context_version!r}: use a new key for the new schema")
        merged = stored.statistics.copy()
        try:
            merged.merge(delta)
        except ValueError as e:
            raise SharedStateError(f"{key!r}: {e}") from None
        return merged

    def _sleep(self, attempt: int) -> None:
        cap = min(self.max_backoff_s, self.backoff_s * 2 ** min(attempt, 16))
        time.sleep(self._rng.uniform(0, cap))

    # ---- the policy side -----------------------------------------------------------------------
    def sync(self, key: str, policy: SyncablePolicy, *, lock: Any = None) -> StoredStatistics | None:
        """Push the policy's delta and make it act on the merged statistics; returns what was
        loaded (None when nothing was ever pushed for ``key``).

        ``lock``: held around the policy calls (not around the network), when the policy is
        also used by other threads. A delta whose push fails stays queued under its push id
        and goes first at the next sync; the error is raised."""
        check_key(key)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one sync per key at a time: the queue is sent in order
            with lock if lock is not None else nullcontext():
                delta = policy.take_delta()
            queue = self._unsent.setdefault(key, [])
            if delta.arms:
                queue.append((uuid.uuid4().hex, delta))
            stored: StoredStatistics | None = None
            while queue:
                push_id, pending = queue[0]
                stored = self._push(key, pending, push_id)
                queue.pop(0)
            if stored is None:  # nothing learned here since the last sync: what the others learned
                return self.load(key, policy, lock=lock)
            with lock if lock is not None else nullcontext():
                policy.load_statistics(stored.statistics, snapshot=stored.snapshot_id)
            return stored

    def load(self, key: str, policy: SyncablePolicy, *, lock: Any = None) -> StoredStatistics | None:
        """Make ``policy`` act on what is stored for ``key`` (nothing stored: it stays as it is);
        returns what was loaded. How a starting process picks up what the others learned."""
        stored = self.read(key)
        if stored is not None:
            with lock if lock is not None else nullcontext():
                policy.load_statistics(stored.statistics, snapshot=stored.snapshot_id)
        return stored

    def unsent(self, key: str) -> int:
        """Deltas of ``key`` waiting for a successful push."""
        return len(self._unsent.get(key, ()))


class BackgroundSync:
    """Runs :meth:`SharedStatistics.sync` for one policy every ``interval_s`` seconds on a daemon
    thread, and once more on :meth:`close` (so a clean shutdown flushes everything learned).

    Errors do not stop the thread: they are counted (``failures``) and kept (``last_error``);
    the unsent delta goes with the next sync.
    """

    def __init__(self, shared: SharedStatistics, key: str, policy: SyncablePolicy, *, interval_s: float = 5.0,
                 lock: Any = None):
        if not 0.01 <= interval_s <= 3600:
            raise SharedStateError(f"interval_s must be in [0.01, 3600], got {interval_s}")
        self.shared = shared
        self.key = check_key(key)
        self.policy = policy
        self.interval_s = interval_s
        self.lock = lock
        self.syncs = 0
        self.failures = 0
        self.last_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BackgroundSync:
        if self._thread is not None:
            raise SharedStateError("this BackgroundSync was already started")
        self._thread = threading.Thread(target=self._run, name=f"ltrr-sync-{self.key}", daemon=True)
        self._thread.start()
        return self

    def sync_now(self) -> StoredStatistics | None:
        try:
            stored = self.shared.sync(self.key, self.policy, lock=self.lock)
        except (SharedStateError, TransportError, ValueError) as e:
            self.failures += 1
            self.last_error = e
            raise
        self.syncs += 1
        return stored

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync_now()
            except (SharedStateError, TransportError, ValueError):
                pass  # counted and kept by sync_now; the next round retries

    def close(self, timeout_s: float = 30.0) -> StoredStatistics | None:
        """Stop the thread and flush: the final sync's errors are raised."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.sync_now()

    def __enter__(self) -> BackgroundSync:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _transient(e: TransportError) -> bool:
    return isinstance(e, (OSConnectionError, ConnectionTimeout)) or e.status_code in _TRANSIENT


def _describe(e: TransportError) -> str:
    return f"{e.status_code} {e.error}" if isinstance(e.status_code, int) else str(e)[:200]
