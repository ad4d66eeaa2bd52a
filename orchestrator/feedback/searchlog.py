"""The search log: one document per search in the UBI queries index, written off the search path.

:meth:`SearchLog.log` only puts the record in a bounded in-memory buffer (a dict insert under a
lock: a few microseconds) and returns; a background thread bulk-writes the buffer every
``flush_interval_s`` seconds or as soon as ``batch_size`` records wait. The search never waits for
OpenSearch and never fails because of the log:

* a full buffer (``max_pending`` records waiting) drops the new record and counts it;
* a node that is down makes the writer retry a batch ``retries`` times with backoff, then count the
  batch as failed; meanwhile new records fill the buffer and are dropped once it is full;
* sampling is decided by a hash of the search id (``sample_rate``), so a sampled-out search is
  absent everywhere, in every process, and feedback for it can say why.

:meth:`SearchLog.close` (also run at interpreter exit) writes what is still buffered.

Document layout (UBI queries schema, see ``index_templates/ubi_queries.yaml``)::

    query_id = query_response_id = _id = search_id      application = "ltrr"
    timestamp (UTC, microseconds)   user_query = the query as received   query = the normalised query
    query_response_hit_ids = the final ranking shown, best first
    query_attributes: catalogue, key, model, policy, context_version, eligible, arms (indexed),
                      ltrr = {context, request, decision, arm_hits, arm_status, ltr_params} (not indexed),
                      finalized_at, outcome (set once by the reward joiner)
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import math
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import orjson
from opensearchpy.exceptions import NotFoundError

from .records import SearchRecord

APPLICATION = "ltrr"
QUERIES_TEMPLATE = "ubi_queries"
_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class SearchLogError(RuntimeError):
    """The search log could not be read or updated, or a stored document is not an ltrr search."""


class SearchLogConfigError(ValueError):
    """A search log setting is invalid; the message says which and why."""


# ------------------------------------------------------------------------------------------------
# Time and index helpers shared with the events store


def format_time(when: datetime) -> str:
    """``when`` in UTC as ``2024-05-01T10:00:00.123456Z`` (what ``strict_date_time`` parses;
    naive datetimes are taken as UTC). Microseconds survive the round trip through ``_source``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime:
    """The inverse of :func:`format_time` (any ISO 8601 time; a naive one is taken as UTC)."""
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def ensure_ubi_index(client: Any, name: str, template: str) -> None:
    """Create ``name`` (as ``name-v1`` behind the alias ``name``) from ``template`` unless an index
    or alias of that name exists (e.g. one the UBI plugin made). Two processes may race: the loser
    finds the winner's index."""
    from ..catalog import CatalogError, ensure_index

    if client.indices.exists(index=name):
        return
    try:
        ensure_index(client, name, template)
    except CatalogError:
        if not client.indices.exists(index=name):
            raise


def sampled(search_id: str, sample_rate: float) -> bool:
    """Whether ``search_id`` is logged at ``sample_rate``: a hash of the id against the rate, so
    the answer is the same in every process and on every call."""
    if sample_rate >= 1.0:
        return True
    if sample_rate <= 0.0:
        return False
    digest = hashlib.blake2b(search_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < sample_rate * 2.0**64


# ------------------------------------------------------------------------------------------------
# Records <-> documents


def record_to_document(record: SearchRecord) -> dict[str, Any]:
    """The UBI queries document of ``record`` (see the module docstring)."""
    decision = record.decision
    ran = [arm for arm in record.arm_hits if record.arm_status.get(arm, "ok") == "ok"]
    return {
        "query_id": record.search_id,
        "query_response_id": record.search_id,
        "application": APPLICATION,
        "timestamp": format_time(record.time),
        "user_query": record.query,
        "query": record.normalized,
        "query_response_hit_ids": list(record.ranking),
        "query_attributes": {
            "catalogue": record.catalogue,
            "key": record.key,
            "model": record.model,
            "policy": decision.get("policy") if decision else None,
            "context_version": record.context_version,
            "eligible": list(record.eligible),
            "arms": ran,
            "ltrr": {
                "context": [float(v) for v in record.context],
                "request": dict(record.request),
                "decision": dict(decision) if decision is not None else None,
                "arm_hits": {arm: list(ids) for arm, ids in record.arm_hits.items()},
                "arm_status": {arm: str(status) for arm, status in record.arm_status.items()},
                "ltr_params": dict(record.ltr_params) if record.ltr_params is not None else None,
            },
        },
    }


def record_from_document(source: Mapping[str, Any]) -> SearchRecord:
    """The :class:`SearchRecord` a document of :func:`record_to_document` holds."""
    attributes = source.get("query_attributes") or {}
    blob = attributes.get("ltrr")
    if source.get("application") != APPLICATION or not isinstance(blob, Mapping):
        raise SearchLogError(f"query {source.get('query_id')!r} was not logged by ltrr "
                             f"(application {source.get('application')!r})")
    try:
        return SearchRecord(
            search_id=str(source["query_id"]),
            time=parse_time(source["timestamp"]),
            catalogue=str(attributes.get("catalogue") or ""),
            query=str(source.get("user_query") or ""),
            normalized=str(source.get("query") or ""),
            key=str(attributes.get("key") or ""),
            context=tuple(float(v) for v in blob.get("context") or ()),
            context_version=str(attributes.get("context_version") or ""),
            request=dict(blob.get("request") or {}),
            eligible=tuple(attributes.get("eligible") or ()),
            decision=blob.get("decision"),
            arm_hits={arm: tuple(ids) for arm, ids in (blob.get("arm_hits") or {}).items()},
            arm_status=dict(blob.get("arm_status") or {}),
            ranking=tuple(source.get("query_response_hit_ids") or ()),
            model=attributes.get("model"),
            ltr_params=blob.get("ltr_params"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SearchLogError(f"query {source.get('query_id')!r} in the search log is malformed: {e}") from None


# ------------------------------------------------------------------------------------------------
# The log


@dataclass(frozen=True, slots=True)
class SearchLogConfig:
    """How the search log buffers and writes.

    ``sample_rate``: share of searches logged (0..1, by search id hash). ``max_pending``: records
    that may wait in memory before new ones are dropped. ``batch_size``: records per bulk request
    (a full batch wakes the writer early). ``flush_interval_s``: the longest a record waits.
    ``retries``: extra attempts of a failed bulk request (backoff 0.25 s, doubling).
    """

    queries_index: str = "ubi_queries"
    sample_rate: float = 1.0
    max_pending: int = 10_000
    batch_size: int = 500
    flush_interval_s: float = 1.0
    retries: int = 2

    def __post_init__(self) -> None:
        from ..catalog import CatalogError, check_alias

        try:
            check_alias(self.queries_index)
        except CatalogError as e:
            raise SearchLogConfigError(f"queries_index: {e}") from None
        rate = self.sample_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise SearchLogConfigError(f"sample_rate must be a number in [0, 1], got {rate!r}")
        for name, low, high in (("max_pending", 1, 10_000_000), ("batch_size", 1, 10_000), ("retries", 0, 10)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise SearchLogConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        interval = self.flush_interval_s
        if (isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval)
                or not 0.0 < interval <= 3600.0):
            raise SearchLogConfigError(f"flush_interval_s must be in (0, 3600] seconds, got {interval!r}")


@dataclass(frozen=True, slots=True)
class SearchLogStats:
    """Counts since the log was opened. ``logged``: accepted into the buffer; ``sampled_out``:
    skipped by sampling; ``dropped``: refused (buffer full, or the log closed); ``written``: stored
    in OpenSearch; ``failed``: given up after retries (node down, rejected document);
    ``pending``: waiting or being written now."""

    logged: int
    sampled_out: int
    dropped: int
    written: int
    failed: int
    pending: int
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A logged search with its state: still buffered in this process (``pending``), or stored
    (with the ``seq_no``/``primary_term`` that conditional updates need) and maybe finalized."""

    record: SearchRecord
    pending: bool
    finalized_at: datetime | None = None
    seq_no: int | None = None
    primary_term: int | None = None
    outcome: Mapping[str, Any] | None = None  # what the reward joiner stored (engaged, rewards...)


def _close_if_alive(ref: weakref.ref) -> None:
    log = ref()
    if log is not None:
        log.close()


class SearchLog:
    """Every search's context, decision, per-arm hits and final ranking, under its ``search_id``.

    ``log`` enqueues without blocking; a daemon thread writes (``_id`` = search id). ``get`` sees
    buffered records at once; ``read`` sees stored ones (after :meth:`flush` and :meth:`refresh`).
    """

    def __init__(self, client: Any, *, queries_index: str = "ubi_queries", sample_rate: float = 1.0,
                 max_pending: int = 10_000, batch_size: int = 500, flush_interval_s: float = 1.0,
                 retries: int = 2):
        self.config = SearchLogConfig(queries_index, sample_rate, max_pending, batch_size, flush_interval_s, retries)
        self.client = client
        self.index = queries_index
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)  # notified after every batch
        self._wake = threading.Event()
        self._pending: dict[str, SearchRecord] = {}  # insertion order = log order
        self._inflight: dict[str, SearchRecord] = {}  # taken by the writer, not yet acknowledged
        self._closing = False
        self._index_ready = False
        self._logged = self._sampled_out = self._dropped = self._written = self._failed = 0
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"ltrr-searchlog-{queries_index}", daemon=True)
        self._thread.start()
        # A weak reference, so registering for exit does not keep an abandoned log alive.
        self._atexit = functools.partial(_close_if_alive, weakref.ref(self))
        atexit.register(self._atexit)

    # -- the hot path --------------------------------------------------------------------------

    def log(self, record: SearchRecord) -> bool:
        """Buffer ``record`` for writing; True when buffered. Never blocks on I/O and never raises
        for a full buffer or a down node: the record is then dropped and counted."""
        if not isinstance(record, SearchRecord):
            raise TypeError(f"log() takes a SearchRecord, got {type(record).__name__}")
        if not sampled(record.search_id, self.config.sample_rate):
            with self._lock:
                self._sampled_out += 1
            return False
        with self._lock:
            if self._closing or len(self._pending) >= self.config.max_pending:
                self._dropped += 1
                return False
            self._pending[record.search_id] = record
            self._logged += 1
            full = len(self._pending) >= self.config.batch_size
        if full:
            self._wake.set()
        return True

    def is_sampled(self, search_id: str) -> bool:
        """Whether this log keeps ``search_id`` at its sample rate."""
        return sampled(search_id, self.config.sample_rate)

    # -- reading -------------------------------------------------------------------------------

    def get(self, search_id: str) -> SearchRecord | None:
        """The record of ``search_id``: from this process's buffer, else from the index (a
        real-time get: no refresh needed); None when it was never logged or not yet written by
        another process."""
        entry = self.get_entry(search_id)
        return entry.record if entry is not None else None

    def get_entry(self, search_id: str) -> LogEntry | None:
        """Like :meth:`get`, with the state the feedback path and the reward joiner need."""
        with self._lock:
            record = self._pending.get(search_id) or self._inflight.get(search_id)
        if record is not None:
            return LogEntry(record, pending=True)
        try:
            doc = self.client.get(index=self.index, id=search_id)
        except NotFoundError:  # no such document, or no index yet
            return None
        except Exception as e:  # node down, timeout: not the same as "never logged"
            raise SearchLogError(f"reading search {search_id!r} from {self.index} failed: {type(e).__name__}: {e}") from e
        return self._entry(doc)

    def _entry(self, hit: Mapping[str, Any]) -> LogEntry:
        source = hit["_source"]
        attributes = source.get("query_attributes") or {}
        finalized = attributes.get("finalized_at")
        return LogEntry(record_from_document(source), pending=False,
                        finalized_at=parse_time(finalized) if finalized else None,
                        seq_no=hit.get("_seq_no"), primary_term=hit.get("_primary_term"),
                        outcome=attributes.get("outcome"))

    def read(self, catalogue: str | None = None, since: datetime | None = None, until: datetime | None = None,
             *, page_size: int = 500) -> Iterator[SearchRecord]:
        """Stored records in time order (ties by search id), ``since`` <= time < ``until``, of one
        catalogue or all; paged with search_after. Buffered records are not included: call
        :meth:`flush` and :meth:`refresh` first to see them."""
        for entry in self._scan(catalogue=catalogue, since=since, until=until, page_size=page_size):
            yield entry.record

    def finalized(self, catalogue: str | None = None, since: datetime | None = None, until: datetime | None = None,
                  *, page_size: int = 500) -> Iterator[LogEntry]:
        """Stored searches the reward joiner finalized, with their ``outcome``, in time order:
        what off-policy evaluation reads."""
        yield from self._scan(catalogue=catalogue, since=since, until=until, page_size=page_size, finalized=True)

    def unfinalized(self, before: datetime, *, catalogue: str | None = None,
                    page_size: int = 500) -> Iterator[LogEntry]:
        """Stored searches older than ``before`` that the reward joiner has not finalized, in time
        order, with their ``seq_no``/``primary_term``."""
        yield from self._scan(catalogue=catalogue, until=before, page_size=page_size, unfinalized=True)

    def _scan(self, *, catalogue: str | None = None, since: datetime | None = None, until: datetime | None = None,
              page_size: int = 500, unfinalized: bool = False, finalized: bool = False) -> Iterator[LogEntry]:
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 10_000:
            raise ValueError(f"page_size must be an integer in [1, 10000], got {page_size!r}")
        filters: list[dict[str, Any]] = [{"term": {"application": APPLICATION}}]
        if catalogue is not None:
            filters.append({"term": {"query_attributes.catalogue": catalogue}})
        window: dict[str, str] = {}
        if since is not None:
            window["gte"] = format_time(since)
        if until is not None:
            window["lt"] = format_time(until)
        if window:
            filters.append({"range": {"timestamp": window}})
        query: dict[str, Any] = {"bool": {"filter": filters}}
        if unfinalized:
            query["bool"]["must_not"] = [{"exists": {"field": "query_attributes.finalized_at"}}]
        if finalized:
            filters.append({"exists": {"field": "query_attributes.finalized_at"}})
        body: dict[str, Any] = {"size": page_size, "query": query, "track_total_hits": False,
                                "seq_no_primary_term": True,
                                "sort": [{"timestamp": "asc"}, {"query_id": "asc"}]}
        while True:
            try:
                hits = self.client.search(index=self.index, body=body)["hits"]["hits"]
            except NotFoundError:  # nothing was ever written
                return
            for hit in hits:
                yield self._entry(hit)
            if len(hits) < page_size:
                return
            body["search_after"] = hits[-1]["sort"]

    def mark_finalized(self, marks: Sequence[tuple[LogEntry, Mapping[str, Any]]],
                       finalized_at: datetime) -> list[bool | None]:
        """Set ``finalized_at`` and ``outcome`` on each stored entry, conditionally on its
        ``seq_no``/``primary_term``. Per entry: True where this call won, False where the document
        changed since it was read (another process finalized it first), None where the update
        failed otherwise (e.g. 429: it stays unfinalized for a later call). Raises
        :class:`SearchLogError` when the request as a whole fails."""
        if not marks:
            return []
        lines: list[bytes] = []
        stamp = format_time(finalized_at)
        for entry, outcome in marks:
            if entry.pending or entry.seq_no is None or entry.primary_term is None:
                raise SearchLogError(f"search {entry.record.search_id} is not stored yet; it cannot be finalized")
            lines.append(orjson.dumps({"update": {"_index": self.index, "_id": entry.record.search_id,
                                                  "if_seq_no": entry.seq_no, "if_primary_term": entry.primary_term}}))
            lines.append(orjson.dumps({"doc": {"query_attributes": {"finalized_at": stamp, "outcome": dict(outcome)}}},
                                      option=_ORJSON_OPTIONS))
        try:
            response = self.client.bulk(body=b"\n".join(lines).decode() + "\n")
        except Exception as e:
            raise SearchLogError(f"finalizing {len(marks)} searches failed: {type(e).__name__}: {e}") from e
        won: list[bool | None] = []
        for item in response["items"]:
            status = int(item["update"].get("status", 500))
            if 200 <= status < 300:
                won.append(True)
            elif status in (404, 409):  # changed or gone since it was read: not ours to finalize
                won.append(False)
            else:
                won.append(None)
        return won

    def refresh(self) -> None:
        """Make everything written so far visible to :meth:`read` (a search, not a get)."""
        try:
            self.client.indices.refresh(index=self.index)
        except NotFoundError:
            pass

    # -- writing -------------------------------------------------------------------------------

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything logged so far is written or given up; False on timeout."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._drained:
            while self._pending or self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._drained.wait(min(remaining, 0.5))
        return True

    def close(self, timeout_s: float = 10.0) -> bool:
        """Stop accepting records, write the buffer and stop the writer (idempotent). False when
        the writer did not finish within ``timeout_s`` (what it still held is counted failed)."""
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join(timeout_s)
        atexit.unregister(self._atexit)
        finished = not self._thread.is_alive()
        if not finished:
            with self._lock:
                self._failed += len(self._pending)
                self._pending.clear()
                self._last_error = f"close() timed out after {timeout_s} s"
                self._drained.notify_all()
        return finished

    def __enter__(self) -> SearchLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> SearchLogStats:
        with self._lock:
            return SearchLogStats(self._logged, self._sampled_out, self._dropped, self._written, self._failed,
                                  len(self._pending) + len(self._inflight), self._last_error)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.config.flush_interval_s)
            self._wake.clear()
            while True:
                with self._lock:
                    ids = list(islice(self._pending, self.config.batch_size))
                    batch = {sid: self._pending.pop(sid) for sid in ids}
                    self._inflight.update(batch)
                if not batch:
                    break
                try:
                    self._write(batch)
                except Exception as e:  # never let the writer die: count and carry on
                    with self._lock:
                        self._failed += len(batch)
                        self._last_error = f"{type(e).__name__}: {e}"
                with self._lock:
                    for sid in batch:
                        self._inflight.pop(sid, None)
                    self._drained.notify_all()
            with self._lock:
                if self._closing and not self._pending:
                    self._drained.notify_all()
                    return

    def _write(self, batch: Mapping[str, SearchRecord]) -> None:
        """Bulk-write ``batch``, retrying transient failures; count what was written and failed."""
        lines: dict[str, bytes] = {}
        for sid, record in batch.items():
            try:  # a record that cannot be serialised fails alone
                source = orjson.dumps(record_to_document(record), option=_ORJSON_OPTIONS)
            except (TypeError, ValueError) as e:
                with self._lock:
                    self._failed += 1
                    self._last_error = f"search {sid} could not be serialised: {e}"
                continue
            lines[sid] = orjson.dumps({"index": {"_index": self.index, "_id": sid}}) + b"\n" + source
        attempt = 0
        while lines:
            error: str | None = None
            try:
                if not self._index_ready:
                    ensure_ubi_index(self.client, self.index, QUERIES_TEMPLATE)
                    self._index_ready = True
                response = self.client.bulk(body=b"\n".join(lines.values()).decode() + "\n")
                retry: dict[str, bytes] = {}
                written = 0
                for sid, item in zip(list(lines), response["items"]):
                    result = item["index"]
                    status = int(result.get("status", 500))
                    if 200 <= status < 300:
                        written += 1
                    elif status in _RETRY_STATUSES:
                        retry[sid] = lines[sid]
                        error = f"search {sid}: {result.get('error')}"
                    else:
                        with self._lock:
                            self._failed += 1
                            self._last_error = f"search {sid} was rejected: {result.get('error')}"
                with self._lock:
                    self._written += written
                lines = retry
            except Exception as e:  # node down, timeout, 5xx: retry the whole batch
                error = f"{type(e).__name__}: {e}"
            if not lines:
                return
            attempt += 1
            if attempt > self.config.retries:
                with self._lock:
                    self._failed += len(lines)
                    self._last_error = error
                return
            time.sleep(0.25 * 2 ** (attempt - 1))

