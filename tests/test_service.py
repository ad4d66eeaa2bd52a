"""The HTTP service (`ltrr serve`) against the real node: routes, limits, errors, auth, rate limit,
readiness, metrics, logs, background learning and a graceful shutdown that flushes the search log.

Apps are built with ``create_app`` and driven with FastAPI's TestClient (the lifespan runs inside
``with TestClient(app)``). Each app's search log, feedback events, shared policy state and Q2E
memory live in indices of its own (``ltrr-test-svc-*``), so nothing here reads or teaches the
shared ``ubi_*`` indices or the catalogue's memory; the catalogue itself is ``synthetic_music``.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.api import Orchestrator, OrchestratorSettings
from orchestrator.bandit.state import SharedStatistics
from orchestrator.client import make_client
from orchestrator.config import ConnectionSettings
from orchestrator.feedback.events import FeedbackStore
from orchestrator.feedback.q2e import Q2EMemory
from orchestrator.feedback.searchlog import SearchLog
from orchestrator.service.app import create_app
from orchestrator.service.logs import JsonFormatter
from orchestrator.service.security import BearerAuth, RateLimiter

from .conftest import cli_env

CATALOGUE = "synthetic_music"
QUIET = {"learn_interval_s": 3600.0, "sync_interval_s": 3600.0}  # no background work unless a test asks


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------

@contextmanager
def isolated(os_client, *, flush_interval_s: float = 1.0, **overrides: Any) -> Iterator[Orchestrator]:
    """An Orchestrator over synthetic_music whose search log, events, shared policy state and Q2E
    memory (for learning) are fresh indices, deleted afterwards."""
    prefix = f"ltrr-test-svc-{uuid.uuid4().hex[:10]}"
    spool_dir = tempfile.mkdtemp(prefix=prefix)
    settings = OrchestratorSettings(**{"index": CATALOGUE, "seed": 7, "spool_dir": spool_dir, **QUIET, **overrides})
    orch = Orchestrator.from_config(settings, client=os_client)
    if orch.search_log is not None:
        orch.search_log.close()
        log = SearchLog(os_client, queries_index=f"{prefix}-q", flush_interval_s=flush_interval_s)
        orch.search_log = orch.pipeline.search_log = log
        orch.feedback_store = FeedbackStore(os_client, log, events_index=f"{prefix}-e")
    orch.shared = SharedStatistics(os_client, index=f"{prefix}-s")
    orch.memory = Q2EMemory(os_client, f"{prefix}-m")  # what learning teaches; searches keep reading the catalogue's
    try:
        yield orch
    finally:
        orch.close()
        os_client.indices.delete(index=f"{prefix}*", ignore_unavailable=True)
        shutil.rmtree(spool_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def served(os_client) -> Iterator[tuple[TestClient, Orchestrator]]:
    """One app for the tests that only read (searches are logged into its own index)."""
    with isolated(os_client) as orch, TestClient(create_app(orchestrator=orch)) as client:
        yield client, orch


@pytest.fixture(scope="module")
def client(served) -> TestClient:
    return served[0]


def search(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/search", json={"query": "taylor swift love", **body})
    assert response.status_code == 200, response.text
    return response.json()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# Search
# ------------------------------------------------------------------------------------------------

def test_search_returns_results_with_provenance_and_the_policys_decision(client):
    response = client.post("/v1/search", json={"query": "taylor swift love", "size": 5, "device": "mobile"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"]
    body = response.json()
    assert len(body["search_id"]) == 32
    assert 1 <= len(body["results"]) <= 5
    decision = body["decision"]
    assert decision["policy"] == "joint" and decision["arms"] and 0 < decision["propensity"] <= 1
    for result in body["results"]:
        assert result["provenance"], result
        assert {p["arm"] for p in result["provenance"]} <= set(decision["arms"])
        assert result["features"] is None and result["why"] is None
    assert {a["arm"] for a in body["arms"]} >= set(decision["arms"])
    assert body["timings_ms"]["total"] > 0


def test_explain_adds_each_results_features_and_why(client):
    body = search(client, explain=True, size=3)
    assert body["model"], "synthetic_music has an active LTR model"
    for result in body["results"]:
        assert result["features"] and all(isinstance(v, float) for v in result["features"].values())
        assert result["why"].startswith("found by ") and body["model"] in result["why"]


def test_fixed_strategies_bypass_the_policy(client):
    body = search(client, strategies=["bm25_popularity", "fuzzy"], size=5)
    assert body["decision"] is None
    assert {a["arm"] for a in body["arms"]} == {"bm25_popularity", "fuzzy"}


@pytest.mark.parametrize(("payload", "field", "words"), [
    ({"query": "x" * 10_001}, "query", "10000"),
    ({"query": "love " * 300}, None, "query is 1500 characters; the limit is 1000"),
    ({"query": "love", "size": 101}, "size", "100"),
    ({"query": "love", "size": 0}, "size", "1"),
    ({"query": ""}, "query", "at least 1"),
    ({"size": 3}, "query", "required"),
    ({"query": "love", "filters": {"no_such_field": "x"}}, None, "cannot filter on 'no_such_field'"),
    ({"query": "love", "filters": {"genre": {"script": "doc['x']"}}}, None, "genre"),
    ({"query": "love", "strategies": ["bm25_popularity", "nope"]}, None, "unknown strategies ['nope']"),
    ({"query": "love", "budgets": {"bm25_popularity": 5000}}, None, "budgets must be integers between 1 and 1000"),
    ({"query": "love", "device": "d" * 65}, "device", "64"),
    ({"query": "love", "page": 2}, "page", "Extra inputs"),
    ({"query": "   "}, None, "the query is empty"),
])
def test_bad_searches_are_400s_that_name_the_field(client, payload, field, words):
    response = client.post("/v1/search", json=payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] in ("invalid_request", "bad_request")
    assert words in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    if field is not None:
        assert error["field"] == field and error["message"].startswith(f"{field}: ")
    assert "Traceback" not in response.text


def test_unreadable_bodies_are_400s(client):
    not_json = client.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"]["field"] == "body"
    surrogate = client.post("/v1/search", content=b'{"query": "\\ud800 love"}', headers={"content-type": "application/json"})
    assert surrogate.status_code == 400 and surrogate.json()["error"]["field"] == "query"
    listed = client.post("/v1/search", json=["love"])
    assert listed.status_code == 400


def test_a_body_over_the_limit_is_413_before_it_is_parsed(client):
    response = client.post("/v1/search", content=b'{"query": "' + b"x" * (1 << 20) + b'"}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"


def test_unknown_routes_and_methods_get_the_error_body(client):
    missing = client.get("/v2/search")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    wrong = client.get("/v1/search")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


def test_the_callers_request_id_is_kept_when_sane(client):
    assert client.get("/healthz", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    replaced = client.get("/healthz", headers={"x-request-id": "no spaces\tor tabs"}).headers["x-request-id"]
    assert replaced != "no spaces\tor tabs" and len(replaced) == 32


# ------------------------------------------------------------------------------------------------
# Feedback
# ------------------------------------------------------------------------------------------------

def test_feedback_is_stored_once_and_repeats_are_duplicates(client, served, os_client):
    _, orch = served
    body = search(client, size=5)
    first = body["results"][0]["doc_id"]
    event_id = f"ev-{uuid.uuid4().hex}"
    payload = {"search_id": body["search_id"], "events": [{"event_id": event_id, "type": "play", "doc_id": first,
                                                            "position": 1}]}
    stored = client.post("/v1/feedback", json=payload)
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"search_id": body["search_id"], "accepted": 1, "duplicates": 0, "spooled": 0}
    again = client.post("/v1/feedback", json=payload)
    assert again.status_code == 200
    assert again.json()["accepted"] == 0 and again.json()["duplicates"] == 1
    assert orch.feedback_store is not None
    doc = os_client.get(index=orch.feedback_store.index, id=event_id)["_source"]
    assert doc["query_id"] == body["search_id"] and doc["action_name"] == "play"


def test_feedback_for_an_unknown_search_is_404(client):
    response = client.post("/v1/feedback", json={"search_id": "0" * 32, "events": [
        {"event_id": "e1", "type": "click", "doc_id": "trk_000001"}]})
    assert response.status_code == 404, response.text
    assert response.json()["error"]["type"] == "not_found" and "0" * 32 in response.json()["error"]["message"]


def test_feedback_for_a_result_that_was_not_shown_is_400(client):
    body = search(client, size=2)
    response = client.post("/v1/feedback", json={"search_id": body["search_id"], "events": [
        {"event_id": f"ev-{uuid.uuid4().hex}", "type": "click", "doc_id": "never-shown"}]})
    assert response.status_code == 400 and "never-shown" in response.json()["error"]["message"]
    bad_type = client.post("/v1/feedback", json={"search_id": body["search_id"], "events": [
        {"event_id": "e", "type": "purchase", "doc_id": "x"}]})
    assert bad_type.status_code == 400 and bad_type.json()["error"]["field"] == "events.0.type"


def test_feedback_opensearch_cannot_take_is_spooled_with_202_and_delivered_later(os_client, tmp_path):
    with isolated(os_client, flush_interval_s=3600) as orch, TestClient(create_app(orchestrator=orch)) as client:
        body = search(client, size=3)  # its record waits in the log's buffer: the event can be checked
        store = orch.feedback_store
        assert store is not None
        live, store.client = store.client, make_client(ConnectionSettings(url=f"http://127.0.0.1:{free_port()}"),
                                                       retries=False, timeout_s=2)  # nothing listens there
        event = {"event_id": f"ev-{uuid.uuid4().hex}", "type": "click", "doc_id": body["results"][0]["doc_id"]}
        spooled = client.post("/v1/feedback", json={"search_id": body["search_id"], "events": [event]})
        assert spooled.status_code == 202, spooled.text
        assert spooled.json()["spooled"] == 1 and spooled.json()["accepted"] == 0
        samples = metric_samples(client.get("/metrics").text)
        assert sample(samples, "ltrr_feedback_events_total", outcome="spooled") == 1
        store.client = live
        assert orch.drain_spool() == 1
        assert os_client.get(index=store.index, id=event["event_id"])["_source"]["query_id"] == body["search_id"]


def test_each_process_claims_a_spool_directory_of_its_own(os_client, tmp_path):
    shared = tmp_path / "spool"
    with isolated(os_client, spool_dir=str(shared)) as first, isolated(os_client, spool_dir=str(shared)) as second, \
            TestClient(create_app(orchestrator=first)), TestClient(create_app(orchestrator=second)):
        assert first.spool is not None and second.spool is not None
        assert first.spool.directory == shared and second.spool.directory == shared / "worker-1"
        assert first.spool.stats.open and second.spool.stats.open


# ------------------------------------------------------------------------------------------------
# Health, metrics, OpenAPI
# ------------------------------------------------------------------------------------------------

def test_healthz_and_readyz_on_a_ready_catalogue(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] and body["opensearch"] and body["catalogue"] and body["plans_synced"]
    assert body["model"]


def test_readyz_reports_a_missing_catalogue_and_searches_are_503_not_500(os_client):
    missing = f"ltrr-test-missing-{uuid.uuid4().hex[:8]}"
    with isolated(os_client, index=missing) as orch, TestClient(create_app(orchestrator=orch)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False and ready.json()["catalogue"] is False
        assert ready.json()["opensearch"] is True and ready.headers["retry-after"]
        assert client.get("/healthz").status_code == 200  # alive, just not ready
        response = client.post("/v1/search", json={"query": "love"})
        assert response.status_code == 503, response.text
        assert missing in response.json()["error"]["message"] and response.headers["retry-after"]


def test_metrics_count_requests_stages_arms_decisions_and_feedback(os_client):
    with isolated(os_client) as orch, TestClient(create_app(orchestrator=orch)) as client:
        body = search(client, size=3)
        client.post("/v1/search", json={"query": "love", "size": 1000})
        client.post("/v1/feedback", json={"search_id": body["search_id"], "events": [
            {"event_id": f"ev-{uuid.uuid4().hex}", "type": "click", "doc_id": body["results"][0]["doc_id"]}]})
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = metric_samples(response.text)
    assert sample(samples, "ltrr_http_requests_total", method="POST", route="/v1/search", status="200") == 1
    assert sample(samples, "ltrr_http_requests_total", method="POST", route="/v1/search", status="400") == 1
    assert sample(samples, "ltrr_search_stage_seconds_count", stage="total") == 1
    assert sample(samples, "ltrr_search_stage_seconds_count", stage="understand") == 1
    arms = body["decision"]["arms"]
    for arm in arms:
        assert sample(samples, "ltrr_bandit_arm_choices_total", arm=arm) == 1
        assert sample(samples, "ltrr_arm_results_total", arm=arm, status="ok") == 1
    assert sample(samples, "ltrr_bandit_decisions_total", policy="joint",
                  explored=str(body["decision"]["explored"]).lower()) == 1
    assert sample(samples, "ltrr_feedback_events_total", outcome="accepted") == 1
    assert sample(samples, "ltrr_feedback_lag_seconds_count") == 1
    assert ("ltrr_search_log_dropped_total", ()) in samples


def test_the_openapi_document_lists_the_routes_and_400s(client):
    doc = client.get("/openapi.json").json()
    assert {"/v1/search", "/v1/feedback", "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    search_op = doc["paths"]["/v1/search"]["post"]
    assert search_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchBody")
    assert {"200", "400", "503"} <= set(search_op["responses"]) and "422" not in search_op["responses"]
    assert {"200", "202", "404"} <= set(doc["paths"]["/v1/feedback"]["post"]["responses"])
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "securitySchemes" not in doc.get("components", {})  # no token configured: open


# ------------------------------------------------------------------------------------------------
# Auth, rate limit, logs
# ------------------------------------------------------------------------------------------------

def test_a_token_guards_v1_with_constant_time_checks_and_health_stays_open(os_client, caplog):
    token = f"tok-{uuid.uuid4().hex}"
    with isolated(os_client, auth_token=token) as orch, TestClient(create_app(orchestrator=orch)) as client, \
            caplog.at_level(logging.INFO):
        missing = client.post("/v1/search", json={"query": "love"})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["type"] == "unauthorized"
        wrong = client.post("/v1/search", json={"query": "love"}, headers={"authorization": f"Bearer {token}x"})
        assert wrong.status_code == 401
        right = client.post("/v1/search", json={"query": "love"}, headers={"authorization": f"Bearer {token}"})
        assert right.status_code == 200, right.text
        no_feedback = client.post("/v1/feedback", json={"search_id": "x", "events": [
            {"event_id": "e", "type": "click", "doc_id": "d"}]})
        assert no_feedback.status_code == 401
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        assert "HTTPBearer" in client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert token not in caplog.text


def test_the_rate_limit_answers_429_with_retry_after(os_client):
    with isolated(os_client, rate_limit_per_s=1.0) as orch, TestClient(create_app(orchestrator=orch)) as client:
        assert client.post("/v1/search", json={"query": "love"}).status_code == 200
        limited = client.post("/v1/search", json={"query": "love"})
        assert limited.status_code == 429, limited.text
        assert limited.headers["retry-after"] == "1" and limited.json()["error"]["type"] == "rate_limited"
        assert client.get("/healthz").status_code == 200  # probes are not limited
        time.sleep(1.05)
        assert client.post("/v1/search", json={"query": "love"}).status_code == 200


def test_rate_limiter_refills_per_client():
    now = [0.0]
    limiter = RateLimiter(2.0, clock=lambda: now[0])
    assert limiter.acquire("a") == 0 and limiter.acquire("a") == 0
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0  # another client has its own bucket
    now[0] = 0.5
    assert limiter.acquire("a") == 0 and limiter.acquire("a") > 0
    assert RateLimiter.retry_after(0.01) == "1" and RateLimiter.retry_after(2.2) == "3"
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_bearer_auth_accepts_only_the_token():
    auth = BearerAuth("s3cret")
    assert auth.allows("Bearer s3cret") and auth.allows("bearer  s3cret ")
    for header in (None, "", "s3cret", "Basic s3cret", "Bearer s3cre", "Bearer s3cretx", "Bearer \ud800"):
        assert not auth.allows(header)


def test_logs_are_json_without_query_text_or_secrets_unless_queries_are_enabled(os_client, caplog):
    with isolated(os_client) as orch, TestClient(create_app(orchestrator=orch)) as client, caplog.at_level(logging.INFO):
        client.post("/v1/search", json={"query": "secret birthday song"})
    (line,) = [r for r in caplog.records if r.name == "orchestrator.service.access" and getattr(r, "route", "") == "/v1/search"]
    assert not hasattr(line, "query")
    assert not any("birthday" in JsonFormatter().format(r) for r in caplog.records if r.name.startswith("orchestrator"))
    assert line.status == 200 and line.search_id and line.request_id
    caplog.clear()
    with isolated(os_client, log_queries=True) as orch, TestClient(create_app(orchestrator=orch)) as client, \
            caplog.at_level(logging.INFO):
        client.post("/v1/search", json={"query": "secret birthday song"})
    (line,) = [r for r in caplog.records if r.name == "orchestrator.service.access" and getattr(r, "route", "") == "/v1/search"]
    assert line.query == "secret birthday song"

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "search", None, None)
    record.query, record.authorization, record.status = "my query", "Bearer abc", 200
    hidden = json.loads(JsonFormatter().format(record))
    assert "query" not in hidden and hidden["authorization"] == "[redacted]" and hidden["status"] == 200
    assert json.loads(JsonFormatter(log_queries=True).format(record))["query"] == "my query"


def test_an_unexpected_error_is_a_500_with_the_request_id_and_no_traceback(os_client, caplog):
    with isolated(os_client) as orch, TestClient(create_app(orchestrator=orch)) as client:
        def broken(request):
            raise RuntimeError("internal detail that must not leak")

        orch.search = broken  # type: ignore[method-assign]  (the service's error path, not OpenSearch's)
        with caplog.at_level(logging.ERROR):
            response = client.post("/v1/search", json={"query": "love"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "internal" and error["request_id"] == response.headers["x-request-id"]
    assert "internal detail" not in response.text and "Traceback" not in response.text
    (logged,) = [r for r in caplog.records if r.getMessage() == "unexpected error"]
    assert logged.request_id == error["request_id"] and logged.exc_info is not None


# ------------------------------------------------------------------------------------------------
# Background work and shutdown
# ------------------------------------------------------------------------------------------------

def test_shutdown_flushes_the_search_log(os_client):
    with isolated(os_client, flush_interval_s=3600) as orch:
        assert orch.search_log is not None
        index = orch.search_log.index
        with TestClient(create_app(orchestrator=orch)) as client:
            search_id = search(client)["search_id"]
            time.sleep(0.3)
            assert not os_client.exists(index=index, id=search_id)  # still buffered: the writer waits an hour
        assert os_client.get(index=index, id=search_id)["_source"]["query_id"] == search_id
        assert client.post("/v1/search", json={"query": "love"}).status_code == 503  # closed


def test_the_background_thread_learns_and_pushes_the_policys_statistics(os_client):
    with isolated(os_client, learn_interval_s=0.3, sync_interval_s=0.3, reward_window_s=0.5) as orch, \
            TestClient(create_app(orchestrator=orch)) as client:
        body = search(client, size=5)
        assert body["decision"] is not None
        client.post("/v1/feedback", json={"search_id": body["search_id"], "events": [
            {"event_id": f"ev-{uuid.uuid4().hex}", "type": "play", "doc_id": body["results"][0]["doc_id"]}]})
        assert orch.shared is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and orch.shared.read(orch.shared_key) is None:
            time.sleep(0.3)
        stored = orch.shared.read(orch.shared_key)
        assert stored is not None, "the learning step's update was not pushed to the shared state"
        assert orch.search_log is not None
        assert orch.search_log.get_entry(body["search_id"]).finalized_at is not None
        samples = metric_samples(client.get("/metrics").text)
    assert sample(samples, "ltrr_background_runs_total", task="learn", outcome="ok") >= 1


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------

def test_serve_help_and_bad_settings():
    from orchestrator.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and "--port" in result.output and "--workers" in result.output
    bad = runner.invoke(main, ["serve", "--policy", "nonsense"])
    assert bad.exit_code == 2 and "nonsense" in bad.output


def test_ltrr_serve_answers_over_http_and_stops_gracefully_on_sigterm(opensearch_url, os_client, tmp_path):
    port = free_port()
    env = cli_env(opensearch_url, HOME=str(tmp_path), **{k: str(v) for k, v in
                                                        {"LTRR_LEARN_INTERVAL_S": 3600, "LTRR_SYNC_INTERVAL_S": 3600}.items()})
    ltrr = Path(sys.executable).with_name("ltrr")
    proc = subprocess.Popen([str(ltrr), "serve", "--index", CATALOGUE, "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "ltrr serve did not answer within 90 s"
            time.sleep(0.2)
        response = httpx.post(f"{base}/v1/search", json={"query": "taylor swift love", "size": 3}, timeout=30)
        assert response.status_code == 200, response.text
        search_id = response.json()["search_id"]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -signal.SIGTERM), stderr[-2000:]
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    stopped = [line for line in lines if line["message"] == "service stopped"]
    assert stopped and stopped[0]["search_log_failed"] == 0 and stopped[0]["search_log_written"] >= 1
    assert "taylor swift" not in stderr  # no query text in the logs by default
    assert os_client.get(index="ubi_queries", id=search_id)["_source"]["query_id"] == search_id
    os_client.delete(index="ubi_queries", id=search_id, params={"ignore": 404})  # ours; the index is shared
