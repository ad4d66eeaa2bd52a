"""Engagement feedback: events stored in the UBI events index, idempotent by event id.

``FeedbackStore.record(search_id, events)`` checks every event against the logged search (the
document must be in the ranking shown; a given position must be where the ranking showed it) and
writes each one with ``_id`` = ``event_id`` and ``op_type=create``: delivery is at-least-once, so a
re-delivered event is a no-op, reported as a duplicate. An event id that another search already
used is an error (not a silent duplicate).

Events are stored in UBI's shape (``index_templates/ubi_events.yaml``): ``action_name`` = type,
``query_id`` = search id, ``timestamp`` = event time, ``event_attributes.object.object_id`` =
document id, ``event_attributes.position.ordinal`` = 1-based position. An event for a search whose
reward was already finalized is stored with ``event_attributes.late = true`` and counted late: the
reward joiner does not apply it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from opensearchpy.exceptions import NotFoundError

from .records import EVENT_GRADES, FeedbackError, FeedbackEvent, _check_id
from .searchlog import APPLICATION, SearchLog, SearchLogError, ensure_ubi_index, format_time, parse_time

EVENTS_TEMPLATE = "ubi_events"
MAX_EVENTS_PER_CALL = 1000
EVENT_FIELDS = frozenset({"event_id", "type", "doc_id", "position", "time"})
_SEARCH_IDS_PER_QUERY = 500


class UnknownSearchError(FeedbackError):
    """Feedback names a search the log does not hold (like HTTP 404). ``reason`` is ``"unknown"``
    (never logged, not yet written by another process, or its record was dropped) or
    ``"sampled_out"`` (the log's sample rate skipped it: its feedback is not needed)."""

    def __init__(self, message: str, search_id: str, reason: str = "unknown"):
        super().__init__(message)
        self.search_id = search_id
        self.reason = reason


class FeedbackStoreError(RuntimeError):
    """OpenSearch could not store or read events (a server-side failure, like HTTP 503)."""


@dataclass(frozen=True, slots=True)
class FeedbackReceipt:
    """What :meth:`FeedbackStore.record` did with one call's events: ``accepted`` (stored now),
    ``duplicates`` (stored before, or repeated within the call: not stored again) and ``late``
    (accepted, but the search's reward was already finalized, so it will not be applied)."""

    search_id: str
    accepted: tuple[str, ...]
    duplicates: tuple[str, ...]
    late: tuple[str, ...] = ()

    @property
    def accepted_count(self) -> int:
        return len(self.accepted)

    @property
    def duplicate_count(self) -> int:
        return len(self.duplicates)

    @property
    def late_count(self) -> int:
        return len(self.late)

    def to_dict(self) -> dict[str, Any]:
        return {"search_id": self.search_id, "accepted": list(self.accepted), "duplicates": list(self.duplicates),
                "late": list(self.late)}


@dataclass(frozen=True, slots=True)
class FeedbackStats:
    """Counts since the store was opened: events accepted, duplicates, late (of accepted)."""

    accepted: int
    duplicates: int
    late: int


def _parse_time(where: str, value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            return parse_time(value)
        except ValueError:
            raise FeedbackError(f"{where}.time: {value!r} is not an ISO 8601 time") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # epoch milliseconds, as UBI clients send
        if not math.isfinite(value) or not 0 <= value <= 253_402_300_799_000:
            raise FeedbackError(f"{where}.time: {value!r} is not a time in epoch milliseconds")
        return datetime.fromtimestamp(value / 1000.0, tz=UTC)
    raise FeedbackError(f"{where}.time must be an ISO 8601 string, epoch milliseconds or a datetime, "
                        f"got {type(value).__name__}")


def parse_event(search_id: str, value: object, index: int = 0) -> FeedbackEvent:
    """One event of a feedback call: a :class:`FeedbackEvent` of ``search_id``, or a mapping
    ``{event_id, type, doc_id, position?, time?}`` (JSON from HTTP). Errors name the event's
    index and the field, e.g. ``events[2].position: ...``."""
    where = f"events[{index}]"
    if isinstance(value, FeedbackEvent):
        if value.search_id != search_id:
            raise FeedbackError(f"{where}.search_id: the event belongs to search {value.search_id!r}, "
                                f"not {search_id!r}")
        return value
    if not isinstance(value, Mapping):
        raise FeedbackError(f"{where} must be an object with event_id, type and doc_id, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in EVENT_FIELDS)
    if unknown:
        raise FeedbackError(f"{where}: unknown fields {unknown}; allowed: {sorted(EVENT_FIELDS)}")
    for name in ("event_id", "type", "doc_id"):
        if name not in value:
            raise FeedbackError(f"{where}.{name} is missing")
        _check_id(f"{where}.{name}", value[name])
    if value["type"] not in EVENT_GRADES:
        raise FeedbackError(f"{where}.type: unknown event type {value['type']!r}; known: {sorted(EVENT_GRADES)}")
    position = value.get("position")
    if position is not None and (isinstance(position, bool) or not isinstance(position, int)
                                 or not 1 <= position <= 10_000):
        raise FeedbackError(f"{where}.position must be an integer in [1, 10000] (1 = first shown), got {position!r}")
    when = _parse_time(where, value["time"]) if value.get("time") is not None else datetime.now(UTC)
    try:
        return FeedbackEvent(value["event_id"], search_id, value["type"], value["doc_id"], position, when)
    except FeedbackError as e:
        raise FeedbackError(f"{where}: {e}") from None


def event_to_document(event: FeedbackEvent, *, late: bool = False) -> dict[str, Any]:
    """The UBI events document of ``event``."""
    attributes: dict[str, Any] = {"object": {"object_id": event.doc_id, "object_id_field": "doc_id"}}
    if event.position is not None:
        attributes["position"] = {"ordinal": event.position}
    if late:
        attributes["late"] = True
    return {"event_id": event.event_id, "application": APPLICATION, "action_name": event.type,
            "query_id": event.search_id, "timestamp": format_time(event.time), "event_attributes": attributes}


def event_from_document(doc_id: str, source: Mapping[str, Any]) -> FeedbackEvent:
    attributes = source.get("event_attributes") or {}
    return FeedbackEvent(str(source.get("event_id") or doc_id), str(source["query_id"]), str(source["action_name"]),
                         str((attributes.get("object") or {}).get("object_id")),
                         (attributes.get("position") or {}).get("ordinal"), parse_time(source["timestamp"]))


class FeedbackStore:
    """Engagement events of logged searches, in the UBI events index."""

    def __init__(self, client: Any, search_log: SearchLog, *, events_index: str = "ubi_events"):
        from ..catalog import CatalogError, check_alias

        try:
            check_alias(events_index)
        except CatalogError as e:
            raise ValueError(f"events_index: {e}") from None
        self.client = client
        self.search_log = search_log
        self.index = events_index
        self._index_ready = False
        self._counts_lock = threading.Lock()  # record() may run on several request threads
        self._accepted = self._duplicates = self._late = 0

    @property
    def stats(self) -> FeedbackStats:
        return FeedbackStats(self._accepted, self._duplicates, self._late)

    def record(self, search_id: str, events: Sequence[FeedbackEvent | Mapping[str, Any]]) -> FeedbackReceipt:
        """Store ``events`` of ``search_id``. Raises :class:`UnknownSearchError` for a search the
        log does not hold, :class:`FeedbackError` naming the event and field for a malformed one
        (nothing is stored then), :class:`FeedbackStoreError` when OpenSearch fails (retry the
        call: what was stored comes back as duplicates)."""
        _check_id("search_id", search_id)
        if isinstance(events, (str, bytes, Mapping)) or not isinstance(events, Iterable):
            raise FeedbackError("events must be a list of events")
        events = list(events)
        if not events:
            raise FeedbackError("events is empty")
        if len(events) > MAX_EVENTS_PER_CALL:
            raise FeedbackError(f"{len(events)} events in one call; the limit is {MAX_EVENTS_PER_CALL}")
        parsed = [parse_event(search_id, e, i) for i, e in enumerate(events)]
        try:
            entry = self.search_log.get_entry(search_id)
        except SearchLogError as e:
            raise FeedbackStoreError(str(e)) from e
        if entry is None:
            if not self.search_log.is_sampled(search_id):
                raise UnknownSearchError(f"search {search_id!r} was not logged: the search log samples "
                                         f"{self.search_log.config.sample_rate:.0%} of searches", search_id,
                                         "sampled_out")
            raise UnknownSearchError(f"unknown search {search_id!r}: not in the search log (never logged, not "
                                     f"yet written, or its log record was dropped)", search_id)
        ranking = list(entry.record.ranking)
        shown_at = {doc: k for k, doc in reversed(list(enumerate(ranking, 1)))}
        for i, event in enumerate(parsed):
            if event.doc_id not in shown_at:
                raise FeedbackError(f"events[{i}].doc_id: {event.doc_id!r} is not in the ranking search "
                                    f"{search_id!r} showed")
            if event.position is not None and (event.position > len(ranking) or ranking[event.position - 1] != event.doc_id):
                raise FeedbackError(f"events[{i}].position: search {search_id!r} showed {event.doc_id!r} at position "
                                    f"{shown_at[event.doc_id]}, not {event.position}")
        late = entry.finalized_at is not None
        unique: dict[str, FeedbackEvent] = {}
        repeated: list[str] = []
        for event in parsed:
            if event.event_id in unique:
                repeated.append(event.event_id)
            else:
                unique[event.event_id] = event
        accepted, conflicts = self._create(list(unique.values()), late)
        duplicates = self._check_duplicates(search_id, conflicts, parsed)
        with self._counts_lock:
            self._accepted += len(accepted)
            self._duplicates += len(duplicates) + len(repeated)
            if late:
                self._late += len(accepted)
        return FeedbackReceipt(search_id, tuple(accepted), tuple(duplicates + repeated),
                               tuple(accepted) if late else ())

    def _ensure(self) -> None:
        if not self._index_ready:
            ensure_ubi_index(self.client, self.index, EVENTS_TEMPLATE)
            self._index_ready = True

    def _create(self, events: list[FeedbackEvent], late: bool) -> tuple[list[str], list[str]]:
        """Bulk-create ``events``: (ids stored now, ids that already existed)."""
        lines: list[bytes] = []
        for event in events:
            lines.append(orjson.dumps({"create": {"_index": self.index, "_id": event.event_id}}))
            lines.append(orjson.dumps(event_to_document(event, late=late)))
        try:
            self._ensure()
            response = self.client.bulk(body=b"\n".join(lines).decode() + "\n")
        except Exception as e:
            raise FeedbackStoreError(f"storing {len(events)} events failed: {type(e).__name__}: {e}") from e
        accepted: list[str] = []
        conflicts: list[str] = []
        failed: list[str] = []
        for event, item in zip(events, response["items"]):
            result = item["create"]
            status = int(result.get("status", 500))
            if 200 <= status < 300:
                accepted.append(event.event_id)
            elif status == 409:
                conflicts.append(event.event_id)
            else:
                failed.append(f"{event.event_id}: {result.get('error')}")
        if failed:
            raise FeedbackStoreError(f"{len(failed)} events were not stored ({len(accepted)} were): {failed[:3]}")
        return accepted, conflicts

    def _check_duplicates(self, search_id: str, conflicts: list[str], parsed: list[FeedbackEvent]) -> list[str]:
        """The conflicting ids that are re-deliveries of this search's events; an id another
        search already used is an error."""
        if not conflicts:
            return []
        docs = self.client.mget(index=self.index, body={"ids": conflicts}, params={"_source_includes": "query_id"})
        for doc in docs["docs"]:
            owner = (doc.get("_source") or {}).get("query_id")
            if doc.get("found") and owner != search_id:
                index = next(i for i, e in enumerate(parsed) if e.event_id == doc["_id"])
                raise FeedbackError(f"events[{index}].event_id: {doc['_id']!r} is already used by an event of another "
                                    f"search ({owner!r}); event ids must be unique")
        return conflicts

    def refresh(self) -> None:
        """Make every stored event visible to :meth:`events_for`."""
        try:
            self.client.indices.refresh(index=self.index)
        except NotFoundError:
            pass

    def events_for(self, search_ids: Iterable[str], *, refresh: bool = True) -> dict[str, list[FeedbackEvent]]:
        """Every stored ltrr event of each of ``search_ids`` (time order; searches without events
        are absent). ``refresh`` first makes just-stored events visible."""
        ids = list(dict.fromkeys(search_ids))
        out: dict[str, list[FeedbackEvent]] = {}
        if not ids:
            return out
        if refresh:
            self.refresh()
        for start in range(0, len(ids), _SEARCH_IDS_PER_QUERY):
            chunk = ids[start:start + _SEARCH_IDS_PER_QUERY]
            body: dict[str, Any] = {
                "size": 1000, "track_total_hits": False,
                "query": {"bool": {"filter": [{"terms": {"query_id": chunk}},
                                              {"terms": {"action_name": sorted(EVENT_GRADES)}}]}},
                "sort": [{"timestamp": "asc"}, {"event_id": "asc"}]}
            while True:
                try:
                    hits = self.client.search(index=self.index, body=body)["hits"]["hits"]
                except NotFoundError:  # no event was ever stored
                    return out
                for hit in hits:
                    event = event_from_document(hit["_id"], hit["_source"])
                    out.setdefault(event.search_id, []).append(event)
                if len(hits) < body["size"]:
                    break
                body["search_after"] = hits[-1]["sort"]
        return out
