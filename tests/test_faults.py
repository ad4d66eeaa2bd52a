"""Faults: the orchestrator against the real node behind a TCP proxy (tests/proxy.py) that refuses,
drops, stalls or passes traffic, and the feedback spool that keeps events while the node is away.

* node down -> 503 (``Unavailable`` with Retry-After) at once, and the next search after the node
  returns succeeds with no restart;
* one arm slow -> the others' results, that arm flagged ``timed_out``;
* the LTR model deleted under a running orchestrator -> the fused order, flagged;
* feedback while down -> spooled on disk, delivered (validated then) after recovery: what was
  accepted equals what is stored; across a SIGKILL and a restart nothing spooled is lost;
* a graceful close writes the search log and pushes the policy's delta; a SIGKILL loses at most
  the search log's unflushed buffer (measured and printed).

Every orchestrator here logs to this test's own UBI and shared-state indices, not the shared ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from opensearchpy.exceptions import ConnectionError as OSConnectionError
from opensearchpy.exceptions import ConnectionTimeout, NotFoundError, RequestError, TransportError

from orchestrator.api import BadRequest, Orchestrator, SearchResponseOut, Unavailable
from orchestrator.bandit.state import SharedStatistics
from orchestrator.catalog import drop, load_dataset
from orchestrator.client import make_client
from orchestrator.config import ConnectionSettings
from orchestrator.datasets import Dataset
from orchestrator.feedback.events import FeedbackStore, FeedbackStoreError
from orchestrator.feedback.searchlog import SearchLog, SearchLogError
from orchestrator.feedback.spool import (
    DeferDelivery,
    RefusedDelivery,
    Spool,
    SpooledFeedback,
    SpoolFull,
    SpoolInUse,
    is_client_error,
    is_unreachable,
)
from orchestrator.strategies import load_plans, plans_dir, sync_plans
from orchestrator.synthetic import write_synthetic

from .proxy import FaultProxy

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["love", "rock", "blue", "night", "dance", "heart", "summer", "dream"]
CLIENT_TIMEOUT_S = 5.0  # the proxied clients' request timeout (the service's default is 30 s)


# ------------------------------------------------------------------------------------------------
# The spool on its own (no node)
# ------------------------------------------------------------------------------------------------


def _event(event_id: str, doc_id: str = "d1", **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "type": "click", "doc_id": doc_id, **extra}


def _collect(into: list[tuple[str, list[str]]]):
    def deliver(entry: SpooledFeedback) -> None:
        into.append((entry.search_id, [e["event_id"] for e in entry.events]))
    return deliver


def test_spool_writes_each_put_before_returning_and_replays_in_order(tmp_path):
    spool = Spool(tmp_path / "spool")
    at = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert spool.put("s1", [_event("e1"), _event("e2", time=at)]) == 2
    assert spool.put("s2", [_event("e3")]) == 1
    # On disk already (fsync'd): another reader sees both lines while the spool is still open.
    lines = [json.loads(line) for path in sorted((tmp_path / "spool").glob("*.jsonl"))
             for line in path.read_text().splitlines()]
    assert [(line["search_id"], [e["event_id"] for e in line["events"]]) for line in lines] == [
        ("s1", ["e1", "e2"]), ("s2", ["e3"])]
    # An event without a time gets the time it was received (not the time it is delivered).
    received = datetime.fromisoformat(lines[0]["events"][0]["time"])
    assert abs((datetime.now(UTC) - received).total_seconds()) < 60
    assert lines[0]["events"][1]["time"] == "2024-05-01T10:00:00.000000Z"
    assert spool.pending == 3
    delivered: list[tuple[str, list[str]]] = []
    report = spool.drain(_collect(delivered))
    assert delivered == [("s1", ["e1", "e2"]), ("s2", ["e3"])]
    assert (report.delivered, report.remaining, report.stopped) == (3, 0, None)
    assert not list((tmp_path / "spool").glob("*.jsonl")) and spool.pending == 0
    assert spool.drain(_collect(delivered)).delivered == 0  # nothing twice
    spool.close()


def test_a_full_spool_refuses_and_keeps_what_it_holds(tmp_path):
    spool = Spool(tmp_path, max_events=3)
    spool.put("s1", [_event("e1"), _event("e2")])
    with pytest.raises(SpoolFull, match="limit 3"):
        spool.put("s2", [_event("e3"), _event("e4")])
    spool.put("s2", [_event("e3")])  # what fits still goes in
    assert spool.pending == 3 and spool.stats.full == 1
    delivered: list[tuple[str, list[str]]] = []
    spool.drain(_collect(delivered))
    assert [ids for _, ids in delivered] == [["e1", "e2"], ["e3"]]
    spool.put("s3", [_event("e4"), _event("e5")])  # room again
    spool.close()


def test_a_crash_mid_drain_redelivers_and_a_torn_tail_is_skipped(tmp_path):
    spool = Spool(tmp_path, segment_lines=2)
    for i in range(5):
        spool.put(f"s{i}", [_event(f"e{i}")])
    delivered: list[tuple[str, list[str]]] = []

    def fail_at_fourth(entry: SpooledFeedback) -> None:
        if entry.search_id == "s3":
            raise OSConnectionError("N/A", "connection refused", None)
        delivered.append((entry.search_id, [e["event_id"] for e in entry.events]))

    report = spool.drain(fail_at_fourth)
    assert report.stopped and "connection refused" in report.stopped
    assert [sid for sid, _ in delivered] == ["s0", "s1", "s2"] and report.remaining == 2
    assert len(list(tmp_path.glob("*.jsonl"))) == 2  # the first segment went once both its lines were delivered
    # A crash: the process dies mid-write (a line without its newline), then a new process starts.
    last = sorted(tmp_path.glob("*.jsonl"))[-1]
    with open(last, "ab") as f:
        f.write(b'{"v": 1, "search_id": "s5", "ev')
    spool.close()
    restarted = Spool(tmp_path, segment_lines=2)
    again: list[tuple[str, list[str]]] = []
    report = restarted.drain(_collect(again))
    # s2 shared a segment with s3, so it comes again (at least once; the event id makes it a no-op).
    assert [sid for sid, _ in again] == ["s2", "s3", "s4"]
    assert (report.delivered, report.torn, report.remaining) == (3, 1, 0)
    assert restarted.stats.torn == 1 and not list(tmp_path.glob("*.jsonl"))
    restarted.put("s6", [_event("e6")])  # appends to a new segment, never after a torn tail
    assert [sid for sid, _ in _drained(restarted)] == ["s6"]
    restarted.close()


def _drained(spool: Spool) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    spool.drain(_collect(out))
    return out


def test_refused_deliveries_are_dropped_and_counted_deferred_ones_come_back(tmp_path):
    spool = Spool(tmp_path)
    for sid in ("ok", "refused", "later"):
        spool.put(sid, [_event(f"{sid}-1"), _event(f"{sid}-2")])
    seen: list[tuple[str, int]] = []

    def deliver(entry: SpooledFeedback) -> None:
        seen.append((entry.search_id, entry.attempts))
        if entry.search_id == "refused":
            raise RefusedDelivery("doc not shown")
        if entry.search_id == "later" and entry.attempts < 2:
            raise DeferDelivery("not written yet")

    first = spool.drain(deliver)
    assert (first.delivered, first.refused, first.deferred, first.remaining) == (2, 2, 2, 2)
    second = spool.drain(deliver)
    third = spool.drain(deliver)
    assert (second.deferred, third.delivered, third.remaining) == (2, 2, 0)
    assert seen == [("ok", 0), ("refused", 0), ("later", 0), ("later", 1), ("later", 2)]
    stats = spool.stats
    assert (stats.delivered, stats.refused, stats.deferred, stats.pending) == (4, 2, 4, 0)
    spool.close()


def test_two_spools_cannot_share_a_directory(tmp_path):
    first = Spool(tmp_path).acquire()
    with pytest.raises(SpoolInUse, match=f"pid {os.getpid()}"):
        Spool(tmp_path).put("s", [_event("e")])
    other_process = subprocess.run(
        [sys.executable, "-c", "import sys; from orchestrator.feedback.spool import Spool, SpoolInUse\n"
         "try:\n    Spool(sys.argv[1]).acquire()\nexcept SpoolInUse as e:\n    print(e); sys.exit(3)", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert other_process.returncode == 3, other_process.stderr
    assert "in use by another process" in other_process.stdout
    # Nothing spooled here yet: a drain in another spool object neither locks nor fails.
    assert Spool(tmp_path).drain(lambda entry: None).delivered == 0
    first.close()
    second = Spool(tmp_path)
    assert second.put("s", [_event("e")]) == 1
    second.close()


def test_store_failures_are_told_apart():
    refused = ConnectionError("refused")
    down = FeedbackStoreError("storing failed")
    down.__cause__ = OSConnectionError("N/A", "refused", refused)
    lookup = FeedbackStoreError("reading search failed")
    lookup.__cause__ = SearchLogError("get failed")
    lookup.__cause__.__cause__ = ConnectionTimeout("TIMEOUT", "read timed out", None)
    overloaded = FeedbackStoreError("bulk failed")
    overloaded.__cause__ = TransportError(429, "es_rejected_execution_exception", {})
    bad = FeedbackStoreError("bulk failed")
    bad.__cause__ = RequestError(400, "mapper_parsing_exception", {})
    items_refused = FeedbackStoreError("2 events were not stored (0 were)")
    assert [is_unreachable(e) for e in (down, lookup, overloaded, bad, items_refused)] == [True, True, True, False, False]
    assert [is_client_error(e) for e in (down, lookup, overloaded, bad, items_refused)] == [False, False, False, True, False]


# ------------------------------------------------------------------------------------------------
# The orchestrator behind the proxy
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """This test's own search log, events and shared-state indices."""

    prefix: str

    @property
    def queries(self) -> str:
        return f"{self.prefix}-q"

    @property
    def events(self) -> str:
        return f"{self.prefix}-e"

    @property
    def state(self) -> str:
        return f"{self.prefix}-s"


def _client(url: str):
    settings = ConnectionSettings.from_env()
    return make_client(ConnectionSettings(url=url, user=settings.user, password=settings.password,
                                          timeout_s=CLIENT_TIMEOUT_S), retries=False)


def _build(url: str, alias: str, names: Names, spool_dir: Path | str, *, flush_interval_s: float = 1.0,
           max_pending: int = 10_000, **overrides: Any) -> Orchestrator:
    """An orchestrator as ``from_config`` makes it, talking to ``url``, with its search log,
    events and shared statistics moved to this test's indices."""
    overrides = {"encoder": False, "rerank": False, "seed": 7, **overrides}
    orch = Orchestrator.from_config(client=_client(url), index=alias, spool_dir=str(spool_dir), **overrides)
    if orch.search_log is None:
        return orch
    orch.search_log.close()
    client = orch.pipeline.client
    log = SearchLog(client, queries_index=names.queries, flush_interval_s=flush_interval_s, max_pending=max_pending)
    orch.search_log = orch.pipeline.search_log = log
    orch.feedback_store = FeedbackStore(client, log, events_index=names.events)
    orch.shared = SharedStatistics(client, index=names.state)
    return orch


@pytest.fixture(scope="module")
def catalogue(os_client, tmp_path_factory) -> Iterator[str]:
    """A 20,000-item synthetic catalogue without vectors (loads in seconds), the shipped plans stored."""
    root = tmp_path_factory.mktemp("faults") / "music"
    write_synthetic(root, 20_000, 20, seed=5)
    alias = f"ltrr-test-faults-{uuid.uuid4().hex[:8]}"
    load_dataset(os_client, Dataset.open(root), alias=alias, embed=False)
    assert all(r.rendered_ok for r in sync_plans(os_client, load_plans()))
    yield alias
    drop(os_client, alias, memory=True)


@pytest.fixture
def names(os_client) -> Iterator[Names]:
    n = Names(f"ltrr-test-faults-{uuid.uuid4().hex[:8]}")
    yield n
    os_client.indices.delete(index=f"{n.prefix}-*", ignore_unavailable=True)


@pytest.fixture
def proxy(opensearch_url) -> Iterator[FaultProxy]:
    parts = urlsplit(opensearch_url)
    if parts.scheme != "http":
        pytest.skip("the fault proxy speaks plain HTTP only")
    p = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 9200)
    yield p
    p.close()


def _deadline_s(orch: Orchestrator) -> float:
    return (orch.settings.timeout_ms + orch.pipeline.executor.margin_ms) / 1000


def _stored_events(os_client, names: Names) -> dict[str, str]:
    """event id -> search id of every event in this test's events index."""
    try:
        os_client.indices.refresh(index=names.events)
        hits = os_client.search(index=names.events, body={"size": 1000, "query": {"match_all": {}}})["hits"]["hits"]
    except NotFoundError:
        return {}
    return {h["_id"]: h["_source"]["query_id"] for h in hits}


def _stored_searches(os_client, names: Names, ids: list[str]) -> set[str]:
    try:
        os_client.indices.refresh(index=names.queries)
        docs = os_client.mget(index=names.queries, body={"ids": ids}, params={"_source": "false"})["docs"]
    except NotFoundError:
        return set()
    return {d["_id"] for d in docs if d.get("found")}


@pytest.mark.parametrize("fault", ["refuse", "drop"])
def test_node_down_is_a_quick_503_and_the_next_search_after_it_returns_succeeds(catalogue, names, proxy, tmp_path, fault):
    orch = _build(proxy.url, catalogue, names, tmp_path / "spool")
    try:
        assert orch.search({"query": "love"}).results
        getattr(proxy, fault)()
        for query in ("love", "a query never seen before"):
            t0 = time.monotonic()
            with pytest.raises(Unavailable) as caught:
                orch.search({"query": query})
            elapsed = time.monotonic() - t0
            assert elapsed < _deadline_s(orch) + 1.0, elapsed  # never the client's timeout, never a hang
            assert caught.value.status == 503 and caught.value.retry_after_s > 0
            assert "unreachable" in caught.value.message or "every arm failed" in caught.value.message
        assert orch.ready()["opensearch"] is False
        proxy.pass_through()
        answer = orch.search({"query": "rock"})  # the same orchestrator: no restart
        assert answer.results and all(a.status == "ok" for a in answer.arms) and not answer.degraded
        assert orch.ready()["ready"] is True
    finally:
        proxy.pass_through()
        orch.close()


def test_a_stalled_node_costs_a_policy_search_one_deadline(catalogue, names, proxy, tmp_path):
    orch = _build(proxy.url, catalogue, names, tmp_path / "spool", search_log=False)  # no writer retrying at close
    try:
        assert orch.search({"query": "love"}).results  # mapping and facet dictionary cached
        proxy.stall()
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            orch.search({"query": "a query the memory was never asked about"})
        elapsed = time.monotonic() - t0
        assert elapsed < _deadline_s(orch) + 1.0, f"{elapsed:.1f} s with a {CLIENT_TIMEOUT_S} s client timeout"
    finally:
        proxy.pass_through()
        orch.close()


# ---- one arm slow ------------------------------------------------------------------------------

SLOW_SCRIPT = "double x = 0; for (int i = 0; i < params.work; ++i) { x += Math.sqrt(i); } return 1 + x * 0;"
FIRST_CHECK_MS = 150  # how long the slow arm should take to score its first 4,096 documents


@pytest.fixture(scope="module")
def slow_plans(os_client, catalogue, tmp_path_factory) -> Iterator[Path]:
    """The shipped plans plus ``slow_script``: a painless loop per document, sized on this
    machine so that scoring 4,096 documents takes about FIRST_CHECK_MS.

    Why sized: OpenSearch checks a search's ``timeout`` only between scoring intervals (4,096
    documents, then 8,192, 16,384...) and against a clock it updates every 200 ms, so a CPU-bound
    arm is stopped at the first interval boundary after the first clock tick past its timeout.
    """
    def first_interval_ms(work: int) -> float:
        body = {"size": 1, "_source": False, "terminate_after": 4096, "query": {"script_score": {
            "query": {"match_all": {}}, "script": {"source": SLOW_SCRIPT, "params": {"work": work}}}}}
        return min(float(os_client.search(index=catalogue, body=body)["took"]) for _ in range(3))

    probe = 5000
    work = max(100, min(900_000, int(probe * FIRST_CHECK_MS / max(first_interval_ms(probe), 1.0))))
    directory = tmp_path_factory.mktemp("plans")
    for path in plans_dir().glob("*.yaml"):
        (directory / path.name).write_bytes(path.read_bytes())
    (directory / "slow_script.yaml").write_text(yaml.safe_dump({
        "id": "slow_script", "description": "a deliberately slow arm (painless work per document)",
        "params": {"size": {"type": "integer", "default": 10, "min": 1, "max": 1000},
                   "work": {"type": "integer", "default": work, "min": 1, "max": 900_000}},
        "template": ('{"size": {{size}}, "_source": false, "track_total_hits": false, "timeout": "{{timeout}}", '
                     '"query": {"script_score": {"query": {"match_all": {}}, "script": {"source": "' + SLOW_SCRIPT
                     + '", "params": {"work": {{work}}}}}}}')}))
    slow = load_plans(directory)["slow_script"]
    assert all(r.rendered_ok for r in sync_plans(os_client, {"slow_script": slow}))
    yield directory
    os_client.delete_script(id=slow.script_id, params={"ignore": 404})


def test_a_slow_arm_times_out_alone_and_is_flagged(catalogue, names, proxy, tmp_path, slow_plans, monkeypatch):
    monkeypatch.setenv("LTRR_QUERY_PLANS", str(slow_plans))
    orch = _build(proxy.url, catalogue, names, tmp_path / "spool", timeout_ms=50)
    # The slow arm is stopped up to one interval plus one clock tick after its 50 ms; the default
    # 500 ms margin does not always cover that on a busy machine (the whole _msearch then fails:
    # see the report), so this test widens it to look at the flagging, not at the margin.
    orch.pipeline.executor.margin_ms = 3000
    try:
        t0 = time.monotonic()
        answer = orch.search({"query": "love", "strategies": ["bm25_popularity", "slow_script"]})
        elapsed = time.monotonic() - t0
        arms = {a.arm: a for a in answer.arms}
        assert arms["slow_script"].status == "timed_out" and arms["slow_script"].hits == 0
        assert arms["slow_script"].took_ms is not None and arms["slow_script"].took_ms >= 50
        assert arms["bm25_popularity"].status == "ok" and arms["bm25_popularity"].hits > 0
        assert answer.degraded == ["arm slow_script: timed out after 50 ms"]
        assert answer.results and all({p.arm for p in r.provenance} == {"bm25_popularity"} for r in answer.results)
        assert elapsed < _deadline_s(orch) + 1.0
    finally:
        orch.close()


# ---- the model missing ---------------------------------------------------------------------------


def test_a_deleted_model_leaves_the_fused_order_flagged(ltr_client, catalogue, names, proxy, tmp_path):
    from orchestrator.ltr.features import init_feature_set, load_feature_set
    from orchestrator.ltr.model import delete_model, upload_model
    from orchestrator.ltr.rerank import Reranker

    feature_set = load_feature_set(list(load_plans()))
    init_feature_set(ltr_client, feature_set)
    model = f"ltrr-test-faults-{uuid.uuid4().hex[:8]}"
    feature = feature_set.names[0]
    upload_model(ltr_client, feature_set, model, {"objective": "rank:pairwise", "splits": [
        {"nodeid": 0, "depth": 0, "split": feature, "split_condition": 0.5, "yes": 1, "no": 2, "missing": 2,
         "children": [{"nodeid": 1, "leaf": 1.0}, {"nodeid": 2, "leaf": 2.0}]}]})
    request = {"query": "love", "strategies": ["bm25_popularity", "fuzzy"]}
    orch = _build(proxy.url, catalogue, names, tmp_path / "spool", rerank=True)
    fused = _build(proxy.url, catalogue, names, tmp_path / "spool-fused", rerank=False)
    try:
        # As if the model had been active when the orchestrator started.
        orch.pipeline.reranker = Reranker(orch.pipeline.client, catalogue, model, feature_set.name)
        reranked = orch.search(request)
        assert reranked.model == model and not reranked.degraded
        assert all(r.model_score is not None for r in reranked.results)
        delete_model(ltr_client, model)
        after: SearchResponseOut = orch.search(request)
        assert after.model is None
        assert len(after.degraded) == 1 and after.degraded[0].startswith("rerank: ") and model in after.degraded[0]
        assert all(r.model_score is None and r.score == r.fused_score for r in after.results)
        assert [r.doc_id for r in after.results] == [r.doc_id for r in fused.search(request).results]
    finally:
        delete_model(ltr_client, model)
        orch.close()
        fused.close()


# ---- feedback while down -------------------------------------------------------------------------


def _shown(answer: SearchResponseOut, event_id: str, rank: int = 0, type_: str = "click") -> dict[str, Any]:
    return {"event_id": event_id, "type": type_, "doc_id": answer.results[rank].doc_id, "position": rank + 1}


def test_feedback_while_down_is_spooled_and_stored_after_recovery(os_client, catalogue, names, proxy, tmp_path):
    orch = _build(proxy.url, catalogue, names, tmp_path / "spool", flush_interval_s=3600)  # writes on flush only
    try:
        stored_first = [orch.search({"query": q}) for q in QUERIES[:3]]
        assert orch.search_log is not None and orch.search_log.flush()
        buffered = orch.search({"query": QUERIES[3]})  # its record stays in this process's buffer
        a, b, c = stored_first
        before = orch.feedback(a.search_id, [_shown(a, "a-1")])
        assert (before.accepted, before.spooled) == (1, 0)

        proxy.refuse()
        # The record is in the index, which cannot be read: spooled unvalidated.
        out_b = orch.feedback(b.search_id, [_shown(b, "b-1"), _shown(b, "b-2", 1, "play")])
        # The record is in the buffer: validated here, the write failed.
        out_buffered = orch.feedback(buffered.search_id, [_shown(buffered, "buf-1")])
        # Not shown by that search: cannot be checked now, refused at delivery.
        out_bad = orch.feedback(c.search_id, [{"event_id": "c-1", "type": "click", "doc_id": "not-shown"}])
        # A re-delivery of an event stored before the outage.
        out_again = orch.feedback(a.search_id, [_shown(a, "a-1")])
        assert [(o.accepted, o.spooled) for o in (out_b, out_buffered, out_bad, out_again)] == [(0, 2), (0, 1), (0, 1), (0, 1)]
        with pytest.raises(BadRequest):  # syntax is still checked at once
            orch.feedback(c.search_id, [{"event_id": "c-2", "type": "teleport", "doc_id": "x"}])
        with pytest.raises(BadRequest):  # an event the search logged in this process did not show
            orch.feedback(buffered.search_id, [{"event_id": "buf-2", "type": "click", "doc_id": "not-shown"}])
        assert orch.spool is not None and orch.spool.pending == 5
        assert orch.drain_spool() == 0 and orch.spool.pending == 5  # still down: kept, in order

        proxy.pass_through()
        assert orch.search_log.flush()  # the buffered search's record reaches the index
        orch.learn()  # a learning step delivers the spool first
        stats = orch.spool.stats
        assert (stats.pending, stats.delivered, stats.refused) == (0, 4, 1)
        accepted = before.accepted + out_b.spooled + out_buffered.spooled  # new events accepted while up or down
        stored = _stored_events(os_client, names)
        assert len(stored) == accepted
        assert stored == {"a-1": a.search_id, "b-1": b.search_id, "b-2": b.search_id, "buf-1": buffered.search_id}
        assert orch.feedback(b.search_id, [_shown(b, "b-1")]).duplicates == 1  # delivered once, known after
    finally:
        proxy.pass_through()
        orch.close()


def test_a_full_spool_answers_503_and_drops_nothing(os_client, catalogue, names, proxy, tmp_path):
    orch = _build(proxy.url, catalogue, names, tmp_path / "spool", spool_max_events=2)
    try:
        answer = orch.search({"query": "love"})
        assert orch.search_log is not None and orch.search_log.flush()
        proxy.drop()
        assert orch.feedback(answer.search_id, [_shown(answer, "e-1"), _shown(answer, "e-2", 1)]).spooled == 2
        with pytest.raises(Unavailable) as caught:
            orch.feedback(answer.search_id, [_shown(answer, "e-3", 2)])
        assert caught.value.status == 503 and caught.value.retry_after_s == 30 and "limit 2" in caught.value.message
        proxy.pass_through()
        assert orch.drain_spool() == 2
        assert orch.feedback(answer.search_id, [_shown(answer, "e-3", 2)]).accepted == 1  # the client's retry
        assert set(_stored_events(os_client, names)) == {"e-1", "e-2", "e-3"}
    finally:
        proxy.pass_through()
        orch.close()


# ---- shutdown: graceful and not ----------------------------------------------------------------


def test_graceful_close_writes_the_search_log_and_pushes_the_policy_delta(os_client, catalogue, names, proxy, tmp_path):
    from orchestrator.bandit.context import RequestContext

    orch = _build(proxy.url, catalogue, names, tmp_path / "spool", flush_interval_s=3600)  # only close() writes
    answers = [orch.search({"query": q}) for q in QUERIES[:3]]
    # What a learning step does with a finished search: the policy learns, its delta waits for a sync.
    direct = orch.pipeline.search("dance", request=RequestContext())
    assert direct.context is not None and direct.decision is not None and orch.policy is not None
    with orch.lock:
        orch.policy.update(direct.context, direct.decision, dict.fromkeys(direct.decision.arms, 1.0), outcome=1.0)
    ids = [a.search_id for a in answers] + [direct.search_id]
    assert _stored_searches(os_client, names, ids) == set()
    assert orch.shared is not None and orch.shared.read(orch.shared_key) is None
    orch.close()
    assert _stored_searches(os_client, names, ids) == set(ids)
    merged = SharedStatistics(os_client, index=names.state).read(orch.shared_key)
    assert merged is not None and sum(arm.pulls for arm in merged.statistics.arms.values()) >= 1
    with pytest.raises(Unavailable):
        orch.search({"query": "love"})  # closed


def _worker_main() -> None:
    """A serving process for the tests below: JSON commands on stdin, JSON answers on stdout."""
    url, alias, prefix, spool_dir, flush_interval_s = sys.argv[1:6]
    orch = _build(url, alias, Names(prefix), spool_dir, flush_interval_s=float(flush_interval_s))
    assert orch.search_log is not None
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "search":
            answer = orch.search({"query": command["query"]})
            out: Any = {"search_id": answer.search_id, "doc_ids": [r.doc_id for r in answer.results]}
        elif op == "burst":  # searches one after another for that long; when each was answered (and logged)
            out = []
            end = time.monotonic() + command["seconds"]
            while time.monotonic() < end:
                answer = orch.search({"query": f"{QUERIES[len(out) % len(QUERIES)]} {len(out)}"})
                out.append({"search_id": answer.search_id, "at": time.time()})
        elif op == "feedback":
            out = orch.feedback(command["search_id"], command["events"]).model_dump()
        elif op == "flush":
            out = {"flushed": orch.search_log.flush()}
        elif op == "exit":  # a normal interpreter exit, without close(): atexit writes the search log
            print(json.dumps({"exiting": True}), flush=True)
            sys.exit(0)
        else:
            out = {"error": f"unknown op {op!r}"}
        print(json.dumps(out), flush=True)


class _Worker:
    def __init__(self, url: str, alias: str, names: Names, spool_dir: Path, flush_interval_s: float = 1.0):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.test_faults import _worker_main; _worker_main()", url, alias,
             names.prefix, str(spool_dir), str(flush_interval_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env)

    def call(self, **command: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the worker died (exit code {self.proc.poll()})"
        return json.loads(line)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()


def test_spooled_feedback_survives_sigkill_and_a_restart(os_client, catalogue, names, proxy, tmp_path):
    spool_dir = tmp_path / "spool"
    worker = _Worker(proxy.url, catalogue, names, spool_dir)
    restarted = None
    try:
        answer = worker.call(op="search", query="love")
        assert worker.call(op="flush") == {"flushed": True}
        proxy.refuse()
        events = [{"event_id": f"k-{i}", "type": "click", "doc_id": doc, "position": i + 1}
                  for i, doc in enumerate(answer["doc_ids"][:3])]
        assert worker.call(op="feedback", search_id=answer["search_id"], events=events)["spooled"] == 3
        proxy.pass_through()
        restarted = _build(proxy.url, catalogue, names, spool_dir)
        assert restarted.spool is not None
        with pytest.raises(SpoolInUse):  # the worker still owns the directory
            restarted.spool.acquire()
        assert restarted.drain_spool() == 0
        worker.kill()  # no close(), no atexit: the kernel releases the lock
        assert restarted.drain_spool() == 3
        assert _stored_events(os_client, names) == {e["event_id"]: answer["search_id"] for e in events}
        assert restarted.spool.pending == 0 and not list(spool_dir.glob("*.jsonl"))
    finally:
        proxy.pass_through()
        worker.close()
        if restarted is not None:
            restarted.close()


def test_spooled_feedback_waits_for_a_search_another_process_has_not_written_yet(os_client, catalogue, names, proxy,
                                                                                  tmp_path, monkeypatch):
    import orchestrator.api

    worker = _Worker(proxy.url, catalogue, names, tmp_path / "worker-spool", flush_interval_s=3600)
    orch = _build(proxy.url, catalogue, names, tmp_path / "spool")
    try:
        answer = worker.call(op="search", query="love")  # in the worker's log buffer only
        proxy.refuse()
        event = {"event_id": "w-1", "type": "play", "doc_id": answer["doc_ids"][0]}
        assert orch.feedback(answer["search_id"], [event]).spooled == 1
        assert orch.feedback("never-logged", [{"event_id": "n-1", "type": "click", "doc_id": "x"}]).spooled == 1
        proxy.pass_through()
        assert orch.drain_spool() == 0  # neither search is in the index yet: both deferred, not dropped
        assert orch.spool is not None and orch.spool.pending == 2 and orch.spool.stats.refused == 0
        assert worker.call(op="flush") == {"flushed": True}
        monkeypatch.setattr(orchestrator.api, "SPOOL_UNKNOWN_SEARCH_GRACE_S", 0.0)  # waited long enough
        assert orch.drain_spool() == 1
        assert orch.spool.pending == 0 and orch.spool.stats.refused == 1  # the search that never was
        assert _stored_events(os_client, names) == {"w-1": answer["search_id"]}
    finally:
        proxy.pass_through()
        worker.close()
        orch.close()


def test_sigkill_loses_at_most_the_unflushed_search_log_buffer(os_client, catalogue, names, proxy, tmp_path, capsys):
    flush_interval_s = 1.0
    worker = _Worker(proxy.url, catalogue, names, tmp_path / "spool", flush_interval_s)
    try:
        warm = worker.call(op="search", query="love")  # the queries index exists: the steady state
        assert worker.call(op="flush") == {"flushed": True}
        logged = worker.call(op="burst", seconds=3.0)
        killed_at = time.time()
        worker.kill()
    finally:
        worker.close()
    assert _stored_searches(os_client, names, [warm["search_id"]]) == {warm["search_id"]}
    stored = _stored_searches(os_client, names, [s["search_id"] for s in logged])
    lost = [s for s in logged if s["search_id"] not in stored]
    # Only the tail can be missing: every record older than one flush interval (plus the bulk
    # request that was writing it) had reached the index.
    assert all(s["search_id"] in stored for s in logged if killed_at - s["at"] > flush_interval_s + 2.0)
    assert stored >= {s["search_id"] for s in logged[: len(logged) - len(lost)]}  # the lost ones are the newest
    oldest_lost = max((killed_at - s["at"] for s in lost), default=0.0)
    span = logged[-1]["at"] - logged[0]["at"]
    with capsys.disabled():
        print(f"\nSIGKILL after {len(logged)} searches in {span:.2f} s (flush interval {flush_interval_s} s): "
              f"{len(lost)} search log records lost, the oldest logged {oldest_lost:.2f} s before the kill")

    # The same burst ended by a normal exit (no close()): the atexit hook writes everything.
    names_exit = Names(names.prefix + "-x")
    worker = _Worker(proxy.url, catalogue, names_exit, tmp_path / "spool-exit", flush_interval_s)
    try:
        logged = worker.call(op="burst", seconds=0.5)
        assert worker.call(op="exit") == {"exiting": True}
        assert worker.proc.wait(timeout=60) == 0
    finally:
        worker.close()
    assert _stored_searches(os_client, names_exit, [s["search_id"] for s in logged]) == {s["search_id"] for s in logged}
