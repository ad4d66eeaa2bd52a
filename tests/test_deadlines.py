"""Deadlines and errors: a search holds its deadline end to end (through a TCP proxy that can stall
the node), and the CLI reports failures as errors (exit codes, one line, no writes by reads)."""

from __future__ import annotations

import json
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest
import yaml
from opensearchpy.exceptions import NotFoundError

from orchestrator.catalog import drop, load_dataset
from orchestrator.client import make_client
from orchestrator.config import ConnectionSettings
from orchestrator.datasets import Dataset
from orchestrator.pipeline import SearchPipeline
from orchestrator.strategies import StrategyCall, StrategyExecutor, load_plans, plans_dir, sync_plans

from .conftest import cli_env

_REQUEST_LINE = re.compile(rb"(?:GET|POST|PUT|HEAD|DELETE) /[^ ]* HTTP/1\.[01]\r\n")


class StallingProxy:
    """A TCP proxy on 127.0.0.1 in front of the node. ``stall()`` makes it hold every connection,
    new or open: it accepts, reads and counts requests, and never forwards nor answers."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.stalled = threading.Event()
        self.closing = threading.Event()
        self.held_requests = 0  # requests received while stalled
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall(self) -> None:
        self.stalled.set()

    def close(self) -> None:
        self.closing.set()
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.append(s)

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self._track(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name="proxy-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        if self.stalled.is_set():
            self._hold(conn, b"")
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        self._track(upstream)
        threading.Thread(target=self._pump, args=(upstream, conn, False), daemon=True).start()
        self._pump(conn, upstream, True)

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while not self.closing.is_set():
                if self.stalled.is_set():
                    if from_client:
                        self._hold(src, b"")
                    return  # the node's side: nothing more is forwarded to the client
                ready, _, _ = select.select([src], [], [], 0.02)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if self.stalled.is_set():  # stalled while waiting: hold this request too
                    if from_client:
                        self._hold(src, data)
                    return
                dst.sendall(data)
        except OSError:
            return

    def _hold(self, conn: socket.socket, pending: bytes) -> None:
        """Read what the client sends, count its requests, answer nothing, until it hangs up."""
        buffer = pending
        counted = 0
        try:
            while not self.closing.is_set():
                found = len(_REQUEST_LINE.findall(buffer))
                if found > counted:
                    with self._lock:
                        self.held_requests += found - counted
                    counted = found
                ready, _, _ = select.select([conn], [], [], 0.02)
                if ready:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
        except OSError:
            return


def _tiny_dataset(root):
    root.mkdir()
    docs = [("d1", "Love Story", "pop", 2008), ("d2", "Blue in Green", "jazz", 1959), ("d3", "Feeling Good", "soul", 1965),
            ("d4", "Love Me Do", "pop", 1962), ("d5", "So What", "jazz", 1959), ("d6", "Love for Sale", "jazz", 1956)]
    with open(root / "corpus.jsonl", "w") as f:
        for i, title, genre, year in docs:
            f.write(json.dumps({"_id": i, "title": title, "text": f"{title} is a {genre} song", "genre": genre,
                                "year": year}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        f.write(json.dumps({"_id": "q1", "text": "feeling good"}) + "\n")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t2\n")
    (root / "dataset.yaml").write_text(json.dumps({"name": "tiny", "facets": ["genre"], "numeric": ["year"]}))
    return Dataset.open(root)


@pytest.fixture(scope="module")
def tiny(os_client, tmp_path_factory):
    """A tiny catalogue (genre facet, year numeric) and the shipped plans stored."""
    ds = _tiny_dataset(tmp_path_factory.mktemp("deadlines") / "tiny")
    alias = f"ltrr-test-deadline-{uuid.uuid4().hex[:8]}"
    load_dataset(os_client, ds, alias=alias, embed=False)
    assert all(r.rendered_ok for r in sync_plans(os_client, load_plans()))
    yield alias, ds
    drop(os_client, alias)


@pytest.fixture
def proxy(opensearch_url):
    parts = urlsplit(opensearch_url)
    if parts.scheme != "http":
        pytest.skip("the stalling proxy speaks plain HTTP only")
    p = StallingProxy(parts.hostname, parts.port or 9200)
    yield p
    p.close()


def _proxied_pipeline(proxy: StallingProxy, alias: str, timeout_ms: int) -> SearchPipeline:
    settings = ConnectionSettings.from_env()
    settings = ConnectionSettings(url=proxy.url, user=settings.user, password=settings.password)
    return SearchPipeline(make_client(settings, retries=False), alias, load_plans(), encoder=None, timeout_ms=timeout_ms)


def test_search_passes_through_the_proxy(tiny, proxy):
    alias, _ = tiny
    pipe = _proxied_pipeline(proxy, alias, 300)
    resp = pipe.search("feeling good", strategies=["bm25_popularity", "fuzzy"])
    assert resp.errors == {}
    assert resp.hits[0].doc_id == "d3"


def test_a_stalled_node_costs_one_deadline_not_retries(tiny, proxy):
    alias, _ = tiny
    pipe = _proxied_pipeline(proxy, alias, 300)
    warm = pipe.search("love", strategies=["bm25_popularity", "fuzzy"])  # mapping and dictionary cached
    assert warm.errors == {} and warm.hits
    proxy.stall()
    t0 = time.monotonic()
    resp = pipe.search("love", strategies=["bm25_popularity", "fuzzy", "q2e_memory"])  # no exception
    elapsed = time.monotonic() - t0
    # 300 ms arms + 500 ms margin = one 0.8 s deadline; the old client retries took 4 deadlines.
    assert elapsed < 5, elapsed
    assert resp.all_failed and set(resp.errors) == {"bm25_popularity", "fuzzy", "q2e_memory"}
    assert all("timed out" in error.lower() for error in resp.errors.values()), resp.errors
    assert resp.hits == () and not resp.candidates
    time.sleep(0.2)
    # The Q2E memory check (its own 100 ms timeout) and the _msearch, each sent once: nothing retried.
    assert proxy.held_requests == 2


def test_missing_stored_script_is_named_with_the_fix(tiny, os_client, tmp_path):
    alias, _ = tiny
    plan_id = f"bm25_unsynced_{uuid.uuid4().hex[:8]}"
    _copy_plan(plans_dir() / "bm25_popularity.yaml", tmp_path / f"{plan_id}.yaml", plan_id)
    shutil.copy(plans_dir() / "fuzzy.yaml", tmp_path)  # stored by the fixture
    plans = load_plans(tmp_path)
    executor = StrategyExecutor(os_client, plans)
    report = executor.run(alias, [StrategyCall(plan_id, 5, {"query": "love"}), StrategyCall("fuzzy", 5, {"query": "love"})])
    missing, fine = report.results
    assert missing.error == f"stored script {plans[plan_id].script_id} not found: run `ltrr plans sync`"
    assert fine.error is None and fine.hits
    # With no script found at all, OpenSearch refuses the whole _msearch ("no requests added").
    (alone,) = executor.run(alias, [StrategyCall(plan_id, 5, {"query": "love"})]).results
    assert "`ltrr plans sync`" in alone.error and "no requests added" in alone.error


# ------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------


def _copy_plan(source, target, plan_id: str) -> None:
    raw = yaml.safe_load(source.read_text())
    raw["id"] = plan_id
    target.write_text(yaml.safe_dump(raw, sort_keys=False))


def _ltrr(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_search_exits_non_zero_when_every_strategy_fails(tiny, os_client, opensearch_url, tmp_path):
    alias, _ = tiny
    plans = tmp_path / "plans"
    plans.mkdir()
    shutil.copy(plans_dir() / "bm25_popularity.yaml", plans)
    # rank_feature on a text field fails inside OpenSearch
    (plans / "broken_arm.yaml").write_text(yaml.safe_dump({
        "id": "broken_arm", "description": "always fails", "params": {"size": {"type": "integer", "default": 5}},
        "template": '{"size": {{size}}, "timeout": "{{timeout}}", "query": {"rank_feature": {"field": "title"}}}'}))
    synced = sync_plans(os_client, load_plans(plans))
    script_id = next(r.script_id for r in synced if r.plan == "broken_arm")
    env = cli_env(opensearch_url, HOME=str(tmp_path), LTRR_QUERY_PLANS=str(plans))
    try:
        proc = _ltrr(env, "search", "love", "--index", alias, "--strategies", "broken_arm")
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "broken_arm" in proc.stderr and "every strategy failed" in proc.stderr
        proc = _ltrr(env, "search", "love", "--index", alias, "--strategies", "broken_arm", "--json")
        assert proc.returncode == 1 and json.loads(proc.stdout)["errors"]["broken_arm"]
        # One arm failing among working ones is a served search.
        proc = _ltrr(env, "search", "love", "--index", alias, "--strategies", "broken_arm,bm25_popularity")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "broken_arm" in proc.stderr
    finally:
        os_client.delete_script(id=script_id)


def test_cli_reports_a_down_cluster_in_one_line(tiny, tmp_path):
    _, ds = tiny
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    url = f"http://127.0.0.1:{port}"
    env = cli_env(url, HOME=str(tmp_path))
    for args in (["search", "love", "--index", "x"], ["evaluate", str(ds.root), "--index", "x"], ["index", "list"],
                 ["plans", "sync"], ["index", "init"]):
        proc = _ltrr(env, *args, timeout=120)
        assert proc.returncode != 0, args
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (args, proc.stderr)
        assert lines[0].startswith(f"error: cannot reach OpenSearch at {url}: "), lines[0]
    proc = _ltrr(env, "load", str(ds.root), "--index", "x", "--no-embed", timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot reach OpenSearch at {url}: ")


def test_cli_reads_never_store_scripts(tiny, os_client, opensearch_url, tmp_path):
    alias, ds = tiny
    plan_id = f"bm25_unsynced_{uuid.uuid4().hex[:8]}"
    plans = tmp_path / "plans"
    plans.mkdir()
    _copy_plan(plans_dir() / "bm25_popularity.yaml", plans / f"{plan_id}.yaml", plan_id)
    script_id = load_plans(plans)[plan_id].script_id
    env = cli_env(opensearch_url, HOME=str(tmp_path), LTRR_QUERY_PLANS=str(plans))
    for args in (["search", "love", "--index", alias], ["search", "love", "--index", alias, "--strategies", plan_id],
                 ["evaluate", str(ds.root), "--index", alias]):
        proc = _ltrr(env, *args)
        assert proc.returncode == 1, (args, proc.stderr[-2000:])
        assert "ltrr plans sync" in proc.stderr and script_id in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    with pytest.raises(NotFoundError):
        os_client.get_script(id=script_id)  # nothing was stored


def test_cli_load_prints_its_warnings(os_client, opensearch_url, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    (root / "corpus.jsonl").write_text("")
    (root / "dataset.yaml").write_text(json.dumps({"name": "empty"}))
    alias = f"ltrr-test-warn-{uuid.uuid4().hex[:8]}"
    env = cli_env(opensearch_url, HOME=str(tmp_path))
    try:
        proc = _ltrr(env, "load", str(root), "--index", alias, "--no-embed")
        assert "warning: no rows were accepted; the alias was not moved" in proc.stderr, proc.stderr[-2000:]
    finally:
        drop(os_client, alias)
