"""The logging and feedback path: the search log (bounded async buffer into the UBI queries index),
feedback events (UBI events, idempotent), the reward joiner and the PBM click model.

Integration tests run against the real node with unique index names, deleted afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from orchestrator.client import make_client
from orchestrator.config import ConnectionSettings
from orchestrator.feedback.clickmodel import (
    ClickCounts,
    ClickLabels,
    ClickModelError,
    PBMConfig,
    click_training_groups,
    estimate_pbm,
    feature_requests,
    train_weighted,
)
from orchestrator.feedback.events import FeedbackStore, UnknownSearchError, parse_event
from orchestrator.feedback.records import FeedbackError, FeedbackEvent, SearchRecord
from orchestrator.feedback.rewards import JoinerConfigError, RewardJoiner, join
from orchestrator.feedback.searchlog import (
    SearchLog,
    SearchLogConfig,
    SearchLogConfigError,
    SearchLogError,
    record_from_document,
    record_to_document,
    sampled,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def make_record(search_id: str | None = None, *, when: datetime = NOW, catalogue: str = "music",
                ranking=("d1", "d2", "d3", "d4", "d5"), arm_hits=None, arm_status=None, key: str = "q_abc",
                query: str = "Blue  Jazz") -> SearchRecord:
    hits = arm_hits if arm_hits is not None else {"bm25": ("d1", "d3", "d9"), "knn": ("d2", "d3", "d5")}
    return SearchRecord(
        search_id=search_id or uuid.uuid4().hex, time=when, catalogue=catalogue, query=query,
        normalized=" ".join(query.lower().split()), key=key,
        context=(1.0, 0.25, 1 / 3, 0.0), context_version="ctx-v1",
        request={"device": "mobile", "locale": "en-gb", "segment": None, "time": None},
        eligible=tuple(hits), decision={"budgets": {a: 20 for a in hits}, "inclusion": {a: 0.9 for a in hits},
                                        "propensity": 0.81, "policy": "lints", "snapshot": "s1", "seed": 7},
        arm_hits=hits, arm_status=arm_status if arm_status is not None else {a: "ok" for a in hits},
        ranking=ranking, model="music-abc-1", ltr_params={"keywords": query.lower(), "fused": {"d1": 0.5}})


def same_record(a: SearchRecord, b: SearchRecord) -> bool:
    """Equal up to the container types (tuples and lists, dict views) JSON makes of them."""
    return record_to_document(a) == record_to_document(b) and a.time == b.time


@pytest.fixture
def ubi(os_client):
    """Unique queries/events index names; every index behind them is deleted afterwards."""
    prefix = f"ltrr-test-ubi-{uuid.uuid4().hex[:8]}"
    names = {"queries": f"{prefix}-q", "events": f"{prefix}-e"}
    yield names
    for name in names.values():
        if os_client.indices.exists_alias(name=name):
            for index in list(os_client.indices.get_alias(name=name)):
                os_client.indices.delete(index=index)
        os_client.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture
def open_logs():
    logs: list[SearchLog] = []
    yield logs
    for log in logs:
        log.close(timeout_s=5)


class GatedClient:
    """The real client, except that bulk requests wait until ``gate`` is set: a writer stuck on a
    slow node, without a slow node."""

    def __init__(self, client):
        self._client = client
        self.gate = threading.Event()
        self.entered = threading.Event()  # a bulk request is waiting at the gate

    def __getattr__(self, name):
        return getattr(self._client, name)

    def bulk(self, *args, **kwargs):
        self.entered.set()
        self.gate.wait(30)
        return self._client.bulk(*args, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# Configuration, documents, sampling (no node)


@pytest.mark.parametrize("kwargs, field", [
    ({"sample_rate": 1.5}, "sample_rate"), ({"sample_rate": True}, "sample_rate"), ({"max_pending": 0}, "max_pending"),
    ({"batch_size": 0}, "batch_size"), ({"flush_interval_s": 0}, "flush_interval_s"),
    ({"flush_interval_s": float("nan")}, "flush_interval_s"), ({"queries_index": "Bad Name"}, "queries_index"),
])
def test_search_log_config_names_the_bad_setting(kwargs, field):
    with pytest.raises(SearchLogConfigError, match=field):
        SearchLogConfig(**kwargs)


def test_joiner_and_pbm_configs_are_validated():
    with pytest.raises(JoinerConfigError, match="window_s"):
        RewardJoiner(None, None, window_s=0)  # type: ignore[arg-type]
    with pytest.raises(ClickModelError, match="max_rank"):
        PBMConfig(max_rank=0)
    with pytest.raises(ClickModelError, match="tol"):
        PBMConfig(tol=-1.0)


def test_document_is_ubi_shaped_and_round_trips():
    record = make_record("s-1")
    doc = record_to_document(record)
    assert doc["query_id"] == doc["query_response_id"] == "s-1"
    assert doc["application"] == "ltrr" and doc["user_query"] == "Blue  Jazz" and doc["query"] == "blue jazz"
    assert doc["query_response_hit_ids"] == list(record.ranking)
    assert doc["timestamp"] == "2025-03-01T12:00:00.123456Z"
    attributes = doc["query_attributes"]
    assert attributes["catalogue"] == "music" and attributes["policy"] == "lints" and attributes["arms"] == ["bm25", "knn"]
    assert attributes["ltrr"]["context"] == [1.0, 0.25, 1 / 3, 0.0]  # exact floats, not rounded
    back = record_from_document(doc)
    assert same_record(back, record)


def test_sampling_is_a_deterministic_function_of_the_search_id():
    ids = [f"search-{i}" for i in range(4000)]
    first = [sampled(s, 0.25) for s in ids]
    assert first == [sampled(s, 0.25) for s in ids]
    assert 0.22 < sum(first) / len(ids) < 0.28  # binomial sd ~0.007
    # Raising the rate only adds searches: a search kept at 25% is kept at 50%.
    assert all(sampled(s, 0.5) for s, kept in zip(ids, first) if kept)
    assert all(sampled(s, 1.0) for s in ids) and not any(sampled(s, 0.0) for s in ids)


# ------------------------------------------------------------------------------------------------
# The search log on the node


def test_round_trip_read_filters_and_time_order(os_client, ubi, open_logs):
    log = SearchLog(os_client, queries_index=ubi["queries"], flush_interval_s=0.05)
    open_logs.append(log)
    records = [make_record(f"s-{i}", when=NOW + timedelta(minutes=i), catalogue="music" if i % 2 else "books")
               for i in (3, 0, 4, 1, 2)]  # logged out of time order
    assert all(log.log(r) for r in records)
    assert log.flush(10)
    stats = log.stats
    assert (stats.logged, stats.written, stats.failed, stats.pending) == (5, 5, 0, 0)
    for r in records:  # a real-time get: no refresh needed
        stored = log.get(r.search_id)
        assert stored is not None and same_record(stored, r)
    assert log.get("never-logged") is None
    log.refresh()
    everything = list(log.read(page_size=2))  # several pages through search_after
    assert [r.search_id for r in everything] == [f"s-{i}" for i in range(5)]
    assert [r.search_id for r in log.read(catalogue="music")] == ["s-1", "s-3"]
    assert [r.search_id for r in log.read(since=NOW + timedelta(minutes=1), until=NOW + timedelta(minutes=3))] == \
        ["s-1", "s-2"]
    raw = os_client.get(index=ubi["queries"], id="s-2")["_source"]
    assert raw["query_response_hit_ids"] == ["d1", "d2", "d3", "d4", "d5"]
    mapping = next(iter(os_client.indices.get_mapping(index=ubi["queries"]).values()))["mappings"]
    assert mapping["properties"]["query_attributes"]["properties"]["ltrr"]["enabled"] is False


def test_full_buffer_drops_and_counts_without_blocking(os_client, ubi, open_logs):
    client = GatedClient(os_client)
    log = SearchLog(client, queries_index=ubi["queries"], max_pending=5, batch_size=2, flush_interval_s=0.01)
    open_logs.append(log)
    first = make_record("first")
    assert log.log(first)
    assert client.entered.wait(10)  # the writer took it and waits at the gate: in flight, not pending
    records = [make_record(f"r-{i}") for i in range(30)]
    t0 = time.perf_counter()
    accepted = [log.log(r) for r in records]
    elapsed = time.perf_counter() - t0
    assert accepted == [True] * 5 + [False] * 25
    assert elapsed < 0.5, f"30 log() calls took {elapsed * 1000:.1f} ms while the writer was stuck"
    stats = log.stats
    assert (stats.logged, stats.dropped, stats.written) == (6, 25, 0)
    # get() sees records that are only buffered (pending) or in flight.
    assert log.get("first") is first and log.get("r-4") is records[4] and log.get("r-5") is None
    client.gate.set()
    assert log.flush(10)
    stats = log.stats
    assert (stats.written, stats.failed, stats.pending) == (6, 0, 0)
    assert os_client.get(index=ubi["queries"], id="r-4")["found"]


def test_a_down_node_never_raises_or_blocks_log(open_logs):
    down = make_client(ConnectionSettings(url=f"http://127.0.0.1:{_free_port()}", timeout_s=1, max_retries=0),
                       retries=False)
    log = SearchLog(down, queries_index="ltrr-test-unreachable", flush_interval_s=0.01, retries=1, max_pending=3)
    open_logs.append(log)
    t0 = time.perf_counter()
    results = [log.log(make_record(f"x-{i}")) for i in range(10)]
    assert time.perf_counter() - t0 < 0.5
    assert results.count(True) >= 3  # the writer may have taken some out of the buffer meanwhile
    assert log.flush(10)  # given up, not hanging
    stats = log.stats
    assert stats.written == 0 and stats.failed == results.count(True) and stats.dropped == results.count(False)
    assert stats.last_error and "Connection" in stats.last_error
    with pytest.raises(SearchLogError, match="reading search 'x-0'"):  # down is not "never logged"
        log.get("x-0")


def test_close_flushes_is_idempotent_and_refuses_later_records(os_client, ubi):
    log = SearchLog(os_client, queries_index=ubi["queries"], flush_interval_s=300, batch_size=1000)
    records = [make_record(f"c-{i}") for i in range(3)]
    assert all(log.log(r) for r in records)
    time.sleep(0.1)
    assert log.stats.written == 0  # nothing is due before the interval or a full batch
    assert log.close(10)
    assert log.stats.written == 3
    assert all(os_client.get(index=ubi["queries"], id=r.search_id)["found"] for r in records)
    assert log.close(10)  # again: nothing to do
    assert not log.log(make_record("late")) and log.stats.dropped == 1


def test_interpreter_exit_flushes_the_buffer(os_client, ubi, opensearch_url):
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])\n"
        "from test_feedback import make_record\n"
        "from orchestrator.client import make_client\n"
        "from orchestrator.config import ConnectionSettings\n"
        "from orchestrator.feedback.searchlog import SearchLog\n"
        "log = SearchLog(make_client(ConnectionSettings(url=sys.argv[3])), queries_index=sys.argv[4], "
        "flush_interval_s=300)\n"
        "assert log.log(make_record('exit-1')) and log.log(make_record('exit-2'))\n"
    )  # no close(): the atexit hook must write both
    tests_dir = Path(__file__).resolve().parent
    env = {**os.environ, "OPENSEARCH_URL": opensearch_url}
    done = subprocess.run([sys.executable, "-c", script, str(tests_dir), str(tests_dir.parent), opensearch_url,
                           ubi["queries"]], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert os_client.get(index=ubi["queries"], id="exit-1")["found"]
    assert os_client.get(index=ubi["queries"], id="exit-2")["found"]


def test_sampled_out_searches_are_consistently_absent(os_client, ubi, open_logs):
    log = SearchLog(os_client, queries_index=ubi["queries"], sample_rate=0.3, flush_interval_s=0.05)
    open_logs.append(log)
    records = [make_record(f"sample-{i}") for i in range(60)]
    kept = [log.log(r) for r in records]
    assert kept == [sampled(r.search_id, 0.3) for r in records]
    assert 0 < sum(kept) < 60 and log.stats.sampled_out == kept.count(False)
    assert log.flush(10)
    again = SearchLog(os_client, queries_index=ubi["queries"], sample_rate=0.3)  # another process, same answer
    open_logs.append(again)
    assert [again.log(r) for r in records] == kept
    out = next(r for r, k in zip(records, kept) if not k)
    assert log.get(out.search_id) is None
    store = FeedbackStore(os_client, log, events_index=ubi["events"])
    with pytest.raises(UnknownSearchError, match="samples 30%") as err:
        store.record(out.search_id, [{"event_id": "e1", "type": "click", "doc_id": "d1"}])
    assert err.value.reason == "sampled_out"


# ------------------------------------------------------------------------------------------------
# Feedback events


def test_events_are_ubi_shaped_and_idempotent_by_event_id(os_client, ubi, open_logs):
    log = SearchLog(os_client, queries_index=ubi["queries"], flush_interval_s=0.05)
    open_logs.append(log)
    log.log(make_record("s-ev"))
    store = FeedbackStore(os_client, log, events_index=ubi["events"])  # the record may still be buffered
    t = NOW + timedelta(seconds=30)
    first = store.record("s-ev", [
        {"event_id": "e-1", "type": "click", "doc_id": "d2", "position": 2, "time": t.isoformat()},
        FeedbackEvent("e-2", "s-ev", "play", "d2", 2, t + timedelta(seconds=5)),
    ])
    assert (first.accepted, first.duplicates, first.late) == (("e-1", "e-2"), (), ())
    again = store.record("s-ev", [  # re-delivery of both, one new event, one repeated within the call
        {"event_id": "e-1", "type": "click", "doc_id": "d2", "position": 2, "time": t.isoformat()},
        {"event_id": "e-2", "type": "play", "doc_id": "d2"},
        {"event_id": "e-3", "type": "favourite", "doc_id": "d4", "time": int((t.timestamp() + 60) * 1000)},
        {"event_id": "e-3", "type": "favourite", "doc_id": "d4"},
    ])
    assert again.accepted == ("e-3",) and sorted(again.duplicates) == ["e-1", "e-2", "e-3"]
    assert store.stats.accepted == 3 and store.stats.duplicates == 3
    events = store.events_for(["s-ev", "other"])["s-ev"]
    assert [e.event_id for e in events] == ["e-1", "e-2", "e-3"]  # time order
    assert [(e.type, e.doc_id, e.position) for e in events] == [("click", "d2", 2), ("play", "d2", 2),
                                                                ("favourite", "d4", None)]
    assert events[0].time == t  # ISO times keep microseconds; epoch milliseconds keep milliseconds
    assert abs(events[2].time - (t + timedelta(seconds=60))) < timedelta(milliseconds=1)
    raw = os_client.get(index=ubi["events"], id="e-1")["_source"]
    assert raw["action_name"] == "click" and raw["query_id"] == "s-ev" and raw["application"] == "ltrr"
    assert raw["event_attributes"]["object"]["object_id"] == "d2"
    assert raw["event_attributes"]["position"]["ordinal"] == 2
    # An event id another search already used is an error, not a silent duplicate.
    log.log(make_record("s-other"))
    with pytest.raises(FeedbackError, match=r"events\[0\].event_id: 'e-1' is already used .*'s-ev'"):
        store.record("s-other", [{"event_id": "e-1", "type": "click", "doc_id": "d1"}])


@pytest.mark.parametrize("event, message", [
    ({"type": "click", "doc_id": "d1"}, r"events\[1\].event_id is missing"),
    ({"event_id": "x", "type": "hover", "doc_id": "d1"}, r"events\[1\].type: unknown event type 'hover'"),
    ({"event_id": "x", "type": "click", "doc_id": ""}, r"events\[1\].doc_id must be a non-empty string"),
    ({"event_id": "x", "type": "click", "doc_id": "d1", "position": True}, r"events\[1\].position must be an integer"),
    ({"event_id": "x", "type": "click", "doc_id": "d1", "position": 0}, r"events\[1\].position must be an integer"),
    ({"event_id": "x", "type": "click", "doc_id": "d1", "time": "yesterday"}, r"events\[1\].time: 'yesterday'"),
    ({"event_id": "x", "type": "click", "doc_id": "d1", "dwell": 3}, r"events\[1\]: unknown fields \['dwell'\]"),
    (["x", "click", "d1"], r"events\[1\] must be an object"),
    (FeedbackEvent("x", "another-search", "click", "d1"), r"events\[1\].search_id: the event belongs to search"),
])
def test_malformed_events_name_the_event_and_field(event, message):
    good = {"event_id": "ok", "type": "click", "doc_id": "d1"}
    with pytest.raises(FeedbackError, match=message):
        [parse_event("s", e, i) for i, e in enumerate([good, event])]


def test_feedback_is_checked_against_the_logged_search(os_client, ubi, open_logs):
    log = SearchLog(os_client, queries_index=ubi["queries"], flush_interval_s=0.05)
    open_logs.append(log)
    log.log(make_record("s-chk"))
    assert log.flush(10)
    store = FeedbackStore(os_client, log, events_index=ubi["events"])
    with pytest.raises(UnknownSearchError, match="unknown search 'nope'") as err:
        store.record("nope", [{"event_id": "e", "type": "click", "doc_id": "d1"}])
    assert err.value.reason == "unknown" and err.value.search_id == "nope"
    cases = [
        ([{"event_id": "a", "type": "click", "doc_id": "d1"}, {"event_id": "b", "type": "click", "doc_id": "d9"}],
         r"events\[1\].doc_id: 'd9' is not in the ranking"),  # d9 was a candidate, never shown
        ([{"event_id": "a", "type": "click", "doc_id": "d3", "position": 1}],
         r"events\[0\].position: search 's-chk' showed 'd3' at position 3, not 1"),
        ([], "events is empty"),
        ({"event_id": "a", "type": "click", "doc_id": "d1"}, "events must be a list"),
    ]
    for events, message in cases:
        with pytest.raises(FeedbackError, match=message):
            store.record("s-chk", events)
    with pytest.raises(FeedbackError, match="search_id must be a non-empty string"):
        store.record("", [{"event_id": "a", "type": "click", "doc_id": "d1"}])
    assert store.events_for(["s-chk"]) == {}  # a rejected call stores nothing, not even its good events


# ------------------------------------------------------------------------------------------------
# Rewards


def _event(search_id: str, event_id: str, kind: str, doc: str, when: datetime) -> FeedbackEvent:
    return FeedbackEvent(event_id, search_id, kind, doc, None, when)


def test_join_grades_rewards_per_arm():
    # bm25 found d1, d3, d9; knn d2, d3, d5; "fuzzy" failed (no credit even if it listed d1).
    record = make_record("s", arm_hits={"bm25": ("d1", "d3", "d9"), "knn": ("d2", "d3", "d5"), "fuzzy": ("d1",)},
                         arm_status={"bm25": "ok", "knn": "ok", "fuzzy": "failed"})
    t = record.time + timedelta(minutes=1)
    events = [_event("s", "1", "click", "d1", t), _event("s", "2", "click", "d1", t), _event("s", "3", "click", "d5", t),
              _event("s", "4", "add_to_cart", "d5", t), _event("s", "5", "play", "d4", t)]
    out = join(record, events, 1800, NOW)
    assert out.engaged == {"d1": 0.3, "d5": 0.7, "d4": 1.0}  # largest grade per item; repeated clicks once
    assert out.rewards == {"bm25": 0.3, "knn": 0.7}  # d4 was shown but found by no arm
    assert out.engaged_ranks == {"bm25": [1], "knn": [3]}
    late = join(record, [_event("s", "6", "play", "d3", record.time + timedelta(seconds=1801))], 1800, NOW)
    assert late.rewards == {"bm25": 0.0, "knn": 0.0} and late.late_events == ("6",) and not late.any_engagement


def test_window_finalization_is_once_with_zeros_and_late_events(os_client, ubi, open_logs):
    log = SearchLog(os_client, queries_index=ubi["queries"], flush_interval_s=0.05)
    open_logs.append(log)
    now = datetime.now(UTC)
    old = now - timedelta(hours=2)
    engaged, quiet, fresh = make_record("s-engaged", when=old), make_record("s-quiet", when=old + timedelta(seconds=1)), \
        make_record("s-fresh", when=now - timedelta(minutes=5))
    for r in (engaged, quiet, fresh):
        log.log(r)
    assert log.flush(10)
    store = FeedbackStore(os_client, log, events_index=ubi["events"])
    store.record("s-engaged", [
        {"event_id": "g1", "type": "play", "doc_id": "d3", "time": (old + timedelta(minutes=3)).isoformat()},
        {"event_id": "g2", "type": "click", "doc_id": "d1", "time": (old + timedelta(minutes=40)).isoformat()},
    ])  # g2 comes 40 minutes after the search: outside a 30-minute window
    joiner = RewardJoiner(log, store, window_s=1800)
    # The event stream's watermark lags: nothing is due yet, so no zeros are manufactured.
    assert joiner.finalize(now, watermark=old + timedelta(minutes=10)) == []
    done = {f.search_id: f for f in joiner.finalize(now)}
    assert set(done) == {"s-engaged", "s-quiet"}  # s-fresh is inside its window
    assert done["s-engaged"].rewards == {"bm25": 1.0, "knn": 1.0} and done["s-engaged"].engaged == {"d3": 1.0}
    assert done["s-engaged"].engaged_ranks == {"bm25": [2], "knn": [2]} and done["s-engaged"].late_events == ("g2",)
    assert done["s-quiet"].rewards == {"bm25": 0.0, "knn": 0.0} and not done["s-quiet"].any_engagement
    assert joiner.stats.finalized == 2 and joiner.stats.late_events == 1
    assert joiner.finalize(now) == []  # not repeated
    assert RewardJoiner(log, store, window_s=1800).finalize(now) == []  # ... nor by another joiner
    stored = os_client.get(index=ubi["queries"], id="s-engaged")["_source"]["query_attributes"]
    assert stored["finalized_at"] and stored["outcome"]["applied_events"] == ["g1"]
    # Feedback after finalization is stored, flagged late and never applied.
    receipt = store.record("s-quiet", [{"event_id": "q1", "type": "play", "doc_id": "d2"}])
    assert receipt.late == ("q1",) and store.stats.late == 1
    assert os_client.get(index=ubi["events"], id="q1")["_source"]["event_attributes"]["late"] is True
    assert joiner.finalize(now) == []
    # Once its window has passed, the fresh search is finalized too.
    later = joiner.finalize(now + timedelta(minutes=30))
    assert [f.search_id for f in later] == ["s-fresh"]


def test_two_joiners_never_both_finalize_a_search(os_client, ubi, open_logs):
    log = SearchLog(os_client, queries_index=ubi["queries"], flush_interval_s=0.05)
    open_logs.append(log)
    now = datetime.now(UTC)
    for i in range(40):
        log.log(make_record(f"race-{i:02d}", when=now - timedelta(hours=1, seconds=i)))
    assert log.flush(10)
    log.refresh()
    store = FeedbackStore(os_client, log, events_index=ubi["events"])
    # Deterministic race: entries read before another joiner finalized them cannot be marked.
    stale = list(log.unfinalized(now - timedelta(minutes=30)))[:5]
    assert len(stale) == 5
    first = RewardJoiner(log, store, window_s=1800, page_size=7).finalize(now, max_searches=10)
    assert len(first) == 10
    won = log.mark_finalized([(e, {"by": "stale"}) for e in stale], now)
    assert won == [False] * 5
    # Concurrent joiners: every search finalized exactly once between them.
    results: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def run(slot: int) -> None:
        barrier.wait()
        results[slot] = [f.search_id for f in RewardJoiner(log, store, window_s=1800, page_size=5).finalize(now)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    both = results[0] + results[1]
    assert len(both) == len(set(both)) == 30
    assert set(both) | {f.search_id for f in first} == {f"race-{i:02d}" for i in range(40)}


# ------------------------------------------------------------------------------------------------
# The click model


def simulate_pbm(theta: np.ndarray, sessions: int, seed: int, *, noise: float) -> tuple[ClickCounts, np.ndarray]:
    """Clicks from a known PBM. Each session shows a query's 10 documents ordered by their true
    attractiveness plus Gaussian ``noise``: a ranker that is right more often than not, so the
    best documents sit at the top (naive CTR per rank then overstates the position effect) and
    every document still visits several ranks (which identifies θ)."""
    rng = np.random.default_rng(seed)
    n_queries, n_docs, depth = 60, 10, len(theta)
    attract = rng.uniform(0.05, 0.9, size=(n_queries, n_docs))
    q = rng.integers(0, n_queries, sessions)
    order = np.argsort(-(attract[q] + rng.normal(0, noise, (sessions, n_docs))), axis=1)[:, :depth]
    clicked = rng.random((sessions, depth)) < theta[None, :] * attract[q[:, None], order]
    queries = np.repeat([f"q{i}" for i in q], depth)
    docs = [f"d{d}" for d in order.ravel()]
    ranks = np.tile(np.arange(1, depth + 1), sessions)
    return ClickCounts.from_arrays(list(queries), docs, ranks, clicked.ravel(), max_rank=depth), attract


def test_em_recovers_examination_probabilities_of_a_known_pbm():
    theta = 1.0 / np.arange(1, 11) ** 0.8
    counts, _ = simulate_pbm(theta, 30_000, seed=5, noise=0.3)
    est = estimate_pbm(counts)
    assert est.converged and est.theta[0] == 1.0
    assert np.max(np.abs(est.theta - theta)) < 0.04, np.round(est.theta, 3)
    naive = counts.ctr_per_rank() / counts.ctr_per_rank()[0]
    assert np.max(np.abs(naive - theta)) > 2 * np.max(np.abs(est.theta - theta))  # EM removes the ranker's bias
    assert est.propensity(3) == pytest.approx(theta[2], abs=0.04) and np.isnan(est.propensity(11))


def test_counts_from_the_log_respect_the_viewport():
    records = [make_record("a", ranking=("d1", "d2", "d3", "d4")), make_record("b", ranking=("d2", "d1", "d3"))]
    events = {"a": [_event("a", "1", "click", "d2", NOW), _event("a", "2", "play", "d2", NOW),
                    _event("a", "3", "click", "d4", NOW)],
              "b": [_event("b", "4", "add_to_cart", "d1", NOW)]}
    counts = ClickCounts.from_log(records, events, max_rank=3)
    assert counts.impressions.sum() == 6  # 3 + 3: d4 of "a" was below the viewport
    assert counts.clicks.sum() == 2 and counts.ignored_clicks == 1  # d2 once in "a"; d1 in "b"; d4 ignored
    assert list(counts.impressions_per_rank()) == [2, 2, 2]
    only_clicks = ClickCounts.from_log(records, events, max_rank=3, click_types=["click"])
    assert only_clicks.clicks.sum() == 1
    with pytest.raises(ClickModelError, match="click_types"):
        ClickCounts.from_log(records, events, click_types=["hover"])


def test_click_training_groups_and_weights():
    theta = np.array([1.0, 0.5, 0.2, 0.04, np.nan])
    records = [make_record("a", ranking=("d1", "d2", "d3", "d4", "d5", "d6")),
               make_record("b", ranking=("d1", "d2")), make_record("c", ranking=("d1", "d2"))]
    events = {"a": [_event("a", "1", "click", "d2", NOW), _event("a", "2", "play", "d4", NOW),
                    _event("a", "3", "click", "d5", NOW), _event("a", "4", "click", "d6", NOW)],
              "b": [_event("b", "5", "click", "d1", NOW), _event("b", "6", "click", "d2", NOW)]}
    groups = click_training_groups(records, events, theta, clip=20.0)
    assert [g.group_id for g in groups] == ["a#2", "a#4", "a#5"]  # d6 is below the viewport; "b" has no negative
    by_rank = {g.clicked_rank: g for g in groups}
    # Clicked item label 1 among the displayed non-clicked ones, displayed order; other clicks left out.
    assert by_rank[2].doc_ids == ("d1", "d2", "d3") and by_rank[2].labels == (0.0, 1.0, 0.0)
    assert by_rank[4].doc_ids == ("d1", "d3", "d4") and by_rank[4].labels == (0.0, 0.0, 1.0)
    assert by_rank[2].weight == pytest.approx(2.0)
    assert by_rank[4].weight == 20.0  # 1/0.04 = 25, clipped
    assert by_rank[5].weight == 20.0  # unknown θ: the clip
    labels = ClickLabels.of(groups)
    assert labels.label("a#4", "d4") == 1.0 and labels.label("a#4", "d2") == 0.0 and labels.label("zz", "d4") == 0.0
    requests = feature_requests(groups, {r.search_id: r for r in records})
    assert [(gid, docs) for gid, _, docs in requests] == [(g.group_id, g.doc_ids) for g in groups]
    assert requests[0][1] == records[0].ltr_params
    with pytest.raises(ClickModelError, match="clip"):
        click_training_groups(records, events, theta, clip=0.5)


def test_group_weights_steer_the_trained_ranker():
    """Two kinds of click groups disagree on feature 0; the heavier-weighted kind wins."""
    from orchestrator.ltr.feature_log import LoggedQuery
    from orchestrator.ltr.features import Feature, FeatureSet
    from orchestrator.ltr.training import TrainingSet

    feature_set = FeatureSet("clicks", "two script features", (Feature("f0", ()), Feature("f1", ())))
    names = feature_set.names
    rng = np.random.default_rng(0)
    queries, labels, kinds = [], [], []
    for i in range(200):
        kind = i % 2  # kind 0 clicks the item with f0 = 1, kind 1 the item with f0 = 0
        x = np.column_stack([[1.0, 0.0], rng.normal(size=2)]).astype(np.float32)
        queries.append(LoggedQuery(f"g{i}", ("a", "b"), x))
        labels.append(np.array([1.0, 0.0]) if kind == 0 else np.array([0.0, 1.0]))
        kinds.append(kind)
    data = TrainingSet(feature_set, queries, labels)
    probe = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    import xgboost as xgb

    def preference(weight_kind0: float, weight_kind1: float) -> float:
        w = np.array([weight_kind0 if k == 0 else weight_kind1 for k in kinds])
        booster = train_weighted(data, w, rounds=20)
        s = booster.predict(xgb.DMatrix(probe, feature_names=list(names)))
        return float(s[0] - s[1])  # > 0: the f0 = 1 item ranks first

    assert preference(5.0, 1.0) > 0 > preference(1.0, 5.0)
    with pytest.raises(ClickModelError, match="one positive finite weight per group"):
        train_weighted(data, np.ones(3))
