"""The feedback spool: events OpenSearch could not take, held on disk until it can.

When the node is unreachable a feedback call cannot be stored (and, when the search's record is
not in this process's search log buffer, not even validated). Instead of failing the call, the
orchestrator appends the events to the spool and answers ``spooled``; a later :meth:`Spool.drain`
(the learning step, the service's background loop) delivers them through the normal feedback
path, which validates them then.

Guarantees:

* **Durable before acknowledged.** :meth:`Spool.put` writes one JSON line and ``fsync``s the
  segment file (and the directory when it created the file) before it returns.
* **Bounded.** At most ``max_events`` events wait; a put beyond that raises :class:`SpoolFull`
  (the API answers 503 with Retry-After): nothing is dropped silently.
* **At least once.** :meth:`Spool.drain` replays lines in order and removes a segment file only
  after every line of it was delivered or refused, so a crash mid-drain re-delivers some lines;
  delivery is idempotent by event id, so a re-delivered event is a duplicate, never a second event.
* **Crash-tolerant.** A line cut short by a crash (no newline, not JSON) is skipped and counted
  (``torn``); the spool never appends to a segment it did not create in this process, so a torn
  tail cannot swallow the next line. A failed write is truncated away before the error is raised.
* **One process per directory.** An advisory lock (``spool.lock``, ``flock``) is taken on first
  use (or :meth:`Spool.acquire`) and held until :meth:`Spool.close`; a second process, or a second
  spool object, on the same directory gets :class:`SpoolInUse` naming the holder's pid. Within a
  process, puts and drains are thread-safe.

Layout: ``<dir>/spool.lock`` and segments ``<dir>/<20-digit sequence>.jsonl``, one line per put::

    {"v": 1, "search_id": "...", "received": "2024-05-01T10:00:00.000000Z", "events": [...],
     "attempts": 0, "deferred_since": null}

Events without a ``time`` get the time they were received, so a late delivery does not move them
out of their search's reward window.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from .searchlog import format_time, parse_time

log = logging.getLogger(__name__)

SPOOL_FORMAT = 1
LOCK_FILE = "spool.lock"
_SEGMENT = re.compile(r"^(\d{20})\.jsonl$")


class SpoolError(RuntimeError):
    """The spool could not take or read events (a disk error, a closed spool)."""


class SpoolFull(SpoolError):
    """The spool holds ``max_events`` events already: retry once OpenSearch is back."""


class SpoolInUse(SpoolError):
    """Another process (or another spool object) holds this spool directory."""


class RefusedDelivery(Exception):
    """Raised by a drain's ``deliver``: the events can never be stored (unknown search, a document
    that was not shown...). The line is dropped, counted and logged; the drain goes on."""


class DeferDelivery(Exception):
    """Raised by a drain's ``deliver``: not now, but maybe later (e.g. the search's record is not
    written yet). The line goes back to the end of the spool with ``attempts`` + 1."""


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """``directory``: where the segments live (created on first use). ``max_events``: events that
    may wait. ``segment_lines``: lines per segment file before a new one is started (a drain
    removes whole segments, so smaller segments re-deliver less after a crash mid-drain)."""

    directory: Path
    max_events: int = 100_000
    segment_lines: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.directory, Path):
            raise SpoolError(f"directory must be a Path, got {type(self.directory).__name__}")
        for name, low, high in (("max_events", 1, 100_000_000), ("segment_lines", 1, 1_000_000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise SpoolError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True, slots=True)
class SpooledFeedback:
    """One spooled feedback call, as a drain hands it to ``deliver``."""

    search_id: str
    events: list[dict[str, Any]]
    received: datetime
    attempts: int = 0  # deliveries deferred so far
    deferred_since: datetime | None = None  # when the first deferral happened


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What one :meth:`Spool.drain` did, in events (``torn``: unreadable lines). ``stopped``: why
    it stopped before the end (a delivery failed: OpenSearch unreachable); None when it finished."""

    delivered: int = 0
    refused: int = 0
    deferred: int = 0
    torn: int = 0
    remaining: int = 0
    stopped: str | None = None


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """Counts since the spool was made. ``pending``: events waiting now (known once the spool is
    open); ``full``: puts refused because the spool was full."""

    pending: int
    segments: int
    spooled: int
    delivered: int
    refused: int
    deferred: int
    torn: int
    full: int
    open: bool
    last_error: str | None = None


def _normalise_events(events: Sequence[Mapping[str, Any]], received: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise SpoolError(f"events[{i}] must be an object, got {type(event).__name__}")
        item = dict(event)
        when = item.get("time")
        if when is None:
            item["time"] = received
        elif isinstance(when, datetime):
            item["time"] = format_time(when)
        out.append(item)
    return out


class Spool:
    """A bounded, fsync'd, append-only queue of feedback calls in ``directory`` (see the module
    docstring). Nothing touches the disk until the first :meth:`put`, :meth:`drain` with
    something to drain, or :meth:`acquire`."""

    def __init__(self, directory: str | os.PathLike[str], *, max_events: int = 100_000, segment_lines: int = 1000):
        self.config = SpoolConfig(Path(directory).expanduser().absolute(), max_events, segment_lines)
        self.directory = self.config.directory
        self._lock = threading.Lock()  # the counters and the active segment
        self._drain_lock = threading.Lock()  # one drain at a time
        self._lock_fd: int | None = None
        self._active_fd: int | None = None
        self._active_lines = 0
        self._active_size = 0
        self._next_seq = 1
        self._offsets: dict[str, int] = {}  # segment -> bytes already delivered (this process)
        self._pending = 0
        self._closed = False
        self._spooled = self._delivered = self._refused = self._deferred = self._torn = self._full = 0
        self._last_error: str | None = None

    # ---- opening -------------------------------------------------------------------------------
    def acquire(self) -> Spool:
        """Take the directory's lock now (a service calls this at start to fail fast when another
        process holds it). Raises :class:`SpoolInUse`."""
        with self._lock:
            self._open()
        return self

    def _open(self) -> None:
        """Lock the directory and count what earlier runs left (caller holds ``_lock``)."""
        if self._closed:
            raise SpoolError(f"the spool {self.directory} is closed")
        if self._lock_fd is not None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise SpoolError(f"cannot open the spool directory {self.directory}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise SpoolInUse(f"the feedback spool {self.directory} is in use by another process (pid {holder}); "
                                 f"every service process needs its own spool_dir") from None
            raise SpoolError(f"cannot lock the spool directory {self.directory}: {e}") from e
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        pending = 0
        last = 0
        for name in self._segment_names():
            last = max(last, int(name[:20]))
            pending += sum(len(entry.events) for entry, _ in self._lines(name) if entry is not None)
        self._pending = pending
        self._next_seq = last + 1

    def _segment_names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.directory) if _SEGMENT.match(n))
        except FileNotFoundError:
            return []

    # ---- writing -------------------------------------------------------------------------------
    def put(self, search_id: str, events: Sequence[Mapping[str, Any]]) -> int:
        """Append one feedback call durably; returns the number of events spooled. Raises
        :class:`SpoolFull` when they do not fit, :class:`SpoolInUse` when another process holds
        the directory, :class:`SpoolError` when the disk refuses the write."""
        if not isinstance(search_id, str) or not search_id:
            raise SpoolError("search_id must be a non-empty string")
        if isinstance(events, (str, bytes, Mapping)) or not events:
            raise SpoolError("events must be a non-empty list")
        received = format_time(datetime.now(UTC))
        entry = SpooledFeedback(search_id, _normalise_events(events, received), parse_time(received))
        with self._lock:
            self._open()
            if self._pending + len(entry.events) > self.config.max_events:
                self._full += 1
                raise SpoolFull(f"the feedback spool holds {self._pending} events (limit {self.config.max_events}); "
                                f"OpenSearch has been unreachable for a while: retry later")
            self._append(entry)
            self._spooled += len(entry.events)
        return len(entry.events)

    def _append(self, entry: SpooledFeedback) -> None:
        """Write and fsync one line (caller holds ``_lock``; the bound is the caller's business)."""
        try:
            line = orjson.dumps({"v": SPOOL_FORMAT, "search_id": entry.search_id, "received": format_time(entry.received),
                                 "events": entry.events, "attempts": entry.attempts,
                                 "deferred_since": format_time(entry.deferred_since) if entry.deferred_since else None},
                                option=orjson.OPT_NON_STR_KEYS) + b"\n"
        except TypeError as e:
            raise SpoolError(f"the events of search {entry.search_id!r} cannot be written as JSON: {e}") from None
        if self._active_fd is None:
            self._start_segment()
        assert self._active_fd is not None
        try:
            view = memoryview(line)
            while view:
                written = os.write(self._active_fd, view)
                view = view[written:]
            os.fsync(self._active_fd)
        except OSError as e:
            # Cut a partial line away, so the next line is not glued to it.
            try:
                os.ftruncate(self._active_fd, self._active_size)
            except OSError:
                pass
            self._last_error = f"write failed: {e}"
            raise SpoolError(f"writing to the feedback spool {self.directory} failed: {e}") from e
        self._active_size += len(line)
        self._active_lines += 1
        self._pending += len(entry.events)
        if self._active_lines >= self.config.segment_lines:
            self._seal()

    def _start_segment(self) -> None:
        name = f"{self._next_seq:020d}.jsonl"
        try:
            fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            self._fsync_directory()  # the new file's name is durable too
        except OSError as e:
            raise SpoolError(f"cannot create a spool segment in {self.directory}: {e}") from e
        self._next_seq += 1
        self._active_fd, self._active_lines, self._active_size = fd, 0, 0

    def _seal(self) -> None:
        """Stop appending to the active segment; the next put starts a new one."""
        if self._active_fd is not None:
            os.close(self._active_fd)
        self._active_fd, self._active_lines, self._active_size = None, 0, 0

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- reading -------------------------------------------------------------------------------
    def _lines(self, name: str, start: int = 0) -> Iterator[tuple[SpooledFeedback | None, int]]:
        """Each line of segment ``name`` from byte ``start``: the parsed call (None when the line
        is unreadable: cut short by a crash, or not JSON) and the byte offset after it."""
        offset = start
        with open(self.directory / name, "rb") as f:
            f.seek(start)
            for raw in f:
                offset += len(raw)
                yield (_parse_line(raw) if raw.endswith(b"\n") else None), offset

    # ---- draining ------------------------------------------------------------------------------
    def drain(self, deliver: Callable[[SpooledFeedback], Any], *, max_lines: int | None = None) -> DrainReport:
        """Hand every spooled call, oldest first, to ``deliver``. ``deliver`` returns normally when
        the events are stored (or were before: duplicates), raises :class:`RefusedDelivery` when
        they never can be (dropped, counted, logged), :class:`DeferDelivery` to try again at a
        later drain, and anything else when OpenSearch cannot take them now: the drain then stops
        and keeps the line. Calls spooled while draining wait for the next drain."""
        if max_lines is not None and (isinstance(max_lines, bool) or not isinstance(max_lines, int) or max_lines < 1):
            raise SpoolError(f"max_lines must be a positive integer, got {max_lines!r}")
        delivered = refused = deferred = 0
        with self._drain_lock:
            with self._lock:
                if self._lock_fd is None and not self._segment_names():
                    return DrainReport()  # nothing was ever spooled here: no lock needed
                self._open()
                self._seal()
                segments = self._segment_names()
            torn_before = self._torn
            lines = 0
            for name in segments:
                for entry, end in self._lines(name, self._offsets.get(name, 0)):
                    if max_lines is not None and lines >= max_lines:
                        return self._report(delivered, refused, deferred, torn_before, None)
                    if entry is None:
                        with self._lock:
                            self._torn += 1
                        log.warning("feedback spool %s: skipped an unreadable line in %s ending at byte %d (a write "
                                    "cut short by a crash?)", self.directory, name, end)
                        self._offsets[name] = end
                        continue
                    lines += 1
                    n = len(entry.events)
                    try:
                        deliver(entry)
                        outcome = "delivered"
                    except RefusedDelivery as e:
                        outcome = "refused"
                        log.warning("feedback spool: %d events of search %s refused at delivery, dropped: %s",
                                    n, entry.search_id, e)
                    except DeferDelivery as e:
                        outcome = "deferred"
                        with self._lock:  # back to the end of the spool; this copy goes with its segment
                            self._append(SpooledFeedback(entry.search_id, entry.events, entry.received,
                                                         entry.attempts + 1, entry.deferred_since or datetime.now(UTC)))
                        log.info("feedback spool: delivery of search %s deferred (%s)", entry.search_id, e)
                    except Exception as e:  # OpenSearch cannot take it now: keep the line, stop
                        with self._lock:
                            self._last_error = f"{type(e).__name__}: {e}"
                        return self._report(delivered, refused, deferred, torn_before, f"{type(e).__name__}: {e}")
                    self._offsets[name] = end
                    with self._lock:
                        self._pending -= n
                        if outcome == "delivered":
                            delivered += n
                            self._delivered += n
                        elif outcome == "refused":
                            refused += n
                            self._refused += n
                        else:
                            deferred += n
                            self._deferred += n
                self._remove(name)
            return self._report(delivered, refused, deferred, torn_before, None)

    def _remove(self, name: str) -> None:
        try:
            os.unlink(self.directory / name)
            self._fsync_directory()
        except FileNotFoundError:
            pass
        self._offsets.pop(name, None)

    def _report(self, delivered: int, refused: int, deferred: int, torn_before: int, stopped: str | None) -> DrainReport:
        with self._lock:
            return DrainReport(delivered, refused, deferred, self._torn - torn_before, self._pending, stopped)

    # ---- state ---------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Events waiting (0 until the spool is opened by a put, a drain or :meth:`acquire`)."""
        with self._lock:
            return self._pending

    @property
    def stats(self) -> SpoolStats:
        with self._lock:
            return SpoolStats(self._pending, len(self._segment_names()) if self._lock_fd is not None else 0,
                              self._spooled, self._delivered, self._refused, self._deferred, self._torn, self._full,
                              self._lock_fd is not None, self._last_error)

    def close(self) -> None:
        """Release the directory (idempotent). What is spooled stays for the next process."""
        with self._lock:
            self._closed = True
            self._seal()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor releases the flock
                self._lock_fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_line(raw: bytes) -> SpooledFeedback | None:
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("v") != SPOOL_FORMAT:
            return None
        search_id, events = data["search_id"], data["events"]
        if not isinstance(search_id, str) or not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            return None
        deferred = data.get("deferred_since")
        return SpooledFeedback(search_id, events, parse_time(data["received"]), int(data.get("attempts") or 0),
                               parse_time(deferred) if deferred else None)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------
# Which store failures are worth spooling


def opensearch_status(error: BaseException) -> int | str | None:
    """The first OpenSearch answer in ``error``'s cause chain: an HTTP status, ``"unreachable"``
    (no answer: connection refused or reset, timeout), or None (no OpenSearch error in the chain)."""
    from opensearchpy.exceptions import ConnectionError as OSConnectionError
    from opensearchpy.exceptions import ConnectionTimeout, TransportError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OSConnectionError, ConnectionTimeout, ConnectionError, TimeoutError)):
            return "unreachable"
        if isinstance(current, TransportError):
            return current.status_code if isinstance(current.status_code, int) else "unreachable"
        current = current.__cause__
    return None


def is_client_error(error: BaseException) -> bool:
    """Whether OpenSearch refused the request itself with a 4xx (other than 408/429): retrying
    or spooling will not help; the caller hears about it."""
    status = opensearch_status(error)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)


def is_unreachable(error: BaseException) -> bool:
    """Whether OpenSearch did not answer, or answered 408/429/5xx: a later try may succeed."""
    status = opensearch_status(error)
    return status == "unreachable" or (isinstance(status, int) and (status in (408, 429) or status >= 500))
