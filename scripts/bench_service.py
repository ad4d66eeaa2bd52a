"""Benchmark: the HTTP service under load, against the bare client sending the same OpenSearch requests.

An asyncio/httpx load generator on loopback sends ``POST /v1/search`` (one query text each, from a
fixed list) to ``ltrr serve`` at each concurrency (default 1, 8, 32) and measures throughput,
latency p50/p95/p99 and errors. From each response's ``timings_ms`` it takes the orchestrator's
share, ``wall - opensearch_took - rerank_took - embed``, against OpenSearch's time
(``opensearch_took + rerank_took``).

The baseline, measured in the same run right after each level: for every search the service
answered, the OpenSearch requests it made (the ``_msearch/template`` of the arms its policy chose,
with their budgets, and the LTR rerank of the fused window) are rebuilt here with the pipeline's
own code (``SearchPipeline.calls_for`` + ``executor.msearch_body`` and ``ltr.rerank.rerank_body``)
and replayed with httpx straight to OpenSearch at the same concurrency. Not replayed: the
service's cached Q2E-memory probes and its search-log writes (orchestrator costs, not searches).

Goals (the issue): the orchestrator adds at most 25% to OpenSearch's time at p50; at concurrency
32 no errors and throughput within 10% of the bare client's.

    scripts/load_catalogue_100k.sh                  # once: the 100k catalogue, plans, LTR model
    python scripts/bench_service.py [--index synthetic_100k] [--requests 400] [--json out.json]

Without ``orchestrator/service/command.py`` (``ltrr serve``) or with ``--service fallback`` it
serves the same API from a minimal uvicorn app over ``orchestrator.api.Orchestrator``;
``--url`` measures a service that is already running instead of starting one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.api import ApiError, OrchestratorSettings, SearchRequest, SearchResponseOut  # noqa: E402

GOAL_ORCHESTRATOR_SHARE = 0.25  # of OpenSearch's time, at p50
GOAL_THROUGHPUT_RATIO = 0.90  # service / bare client, at the highest concurrency, with no errors
READY_TIMEOUT_S = 180.0  # workers load the encoder and the facet dictionaries before they answer


# ------------------------------------------------------------------------------------------------
# What one request and one level measured
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """One request as the generator saw it; ``data`` is what the response said (timings, arms)."""

    index: int  # position in the level's request sequence (the query is texts[index % len])
    latency_ms: float
    error: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LevelRun:
    concurrency: int
    elapsed_s: float
    outcomes: tuple[Outcome, ...]

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is None]

    @property
    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]

    @property
    def throughput(self) -> float:
        """Answered requests per second (errors do not count)."""
        return len(self.ok) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency(self, q: float) -> float:
        return pct([o.latency_ms for o in self.ok], q)

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for o in self.errors:
            kinds[str(o.error)[:120]] = kinds.get(str(o.error)[:120], 0) + 1
        return {"requests": len(self.outcomes), "errors": len(self.errors), "error_kinds": kinds,
                "elapsed_s": round(self.elapsed_s, 3), "throughput_rps": round(self.throughput, 2),
                **{f"p{q}_ms": round(self.latency(q), 2) for q in (50, 95, 99)}}


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


async def drive(concurrency: int, n_requests: int | None, seconds: float | None,
                send: Callable[[int], Awaitable[Outcome]]) -> LevelRun:
    """``concurrency`` closed-loop clients taking request numbers 0, 1, 2... until ``n_requests``
    were sent or ``seconds`` have passed (each sends its next request when its last one ends)."""
    outcomes: list[Outcome] = []
    counter = iter(range(n_requests if n_requests is not None else sys.maxsize))
    t0 = time.perf_counter()
    deadline = t0 + seconds if seconds is not None else None

    async def client() -> None:
        for i in counter:  # one shared iterator: each number is taken once
            if deadline is not None and time.perf_counter() >= deadline:
                return
            outcomes.append(await send(i))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return LevelRun(concurrency, time.perf_counter() - t0, tuple(sorted(outcomes, key=lambda o: o.index)))


# ------------------------------------------------------------------------------------------------
# The service: its client, and how it is started
# ------------------------------------------------------------------------------------------------

def service_sender(http: Any, texts: Sequence[str], size: int) -> Callable[[int], Awaitable[Outcome]]:
    async def send(i: int) -> Outcome:
        t = time.perf_counter()
        try:
            resp = await http.post("/v1/search", json={"query": texts[i % len(texts)], "size": size})
            body = resp.content
        except Exception as e:  # a refused or dropped connection, a timeout: an error of this request
            return Outcome(i, (time.perf_counter() - t) * 1000, f"{type(e).__name__}: {e}"[:200])
        latency = (time.perf_counter() - t) * 1000
        if resp.status_code != 200:
            return Outcome(i, latency, f"HTTP {resp.status_code}: {body[:120]!r}")
        out = json.loads(body)
        # The arms the service ran, with their budgets, in its order (arms that did not apply sent nothing).
        budgets = {a["arm"]: int(a["budget"]) for a in out.get("arms", []) if a.get("status") != "not_applicable"}
        reranked = out.get("model") is not None or any(str(d).startswith("rerank") for d in out.get("degraded", []))
        return Outcome(i, latency, None, {"timings": out.get("timings_ms", {}), "budgets": budgets,
                                          "model": out.get("model"), "reranked": reranked})

    return send


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_command(mode: str, index: str, workers: int, port: int) -> tuple[str, list[str]]:
    """Which service to start: ``ltrr serve`` once it exists (mode auto/serve), else the fallback."""
    has_serve = (ROOT / "orchestrator" / "service" / "command.py").is_file()
    if mode == "serve" and not has_serve:
        sys.exit("--service serve: orchestrator/service/command.py does not exist yet (use --service fallback)")
    if mode in ("auto", "serve") and has_serve:
        ltrr = Path(sys.executable).with_name("ltrr")
        exe = [str(ltrr)] if ltrr.is_file() else [sys.executable, "-m", "orchestrator.cli"]
        return "ltrr serve", [*exe, "serve", "--index", index, "--workers", str(workers), "--port", str(port)]
    return "fallback (minimal uvicorn app over orchestrator.api.Orchestrator)", [
        sys.executable, str(Path(__file__).resolve()), "--fallback-server", "--port", str(port), "--workers", str(workers)]


@contextmanager
def running_service(argv: list[str], env: Mapping[str, str], base_url: str, console: Console) -> Iterator[None]:
    """Start the service, wait until /readyz answers 200, and SIGTERM it afterwards."""
    import httpx

    log = tempfile.NamedTemporaryFile("w+", prefix="ltrr-bench-service-", suffix=".log", delete=False)
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own group: the workers can be ended with it

    def tail() -> str:
        log.flush()
        return Path(log.name).read_text(errors="replace")[-3000:]

    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the service exited with {proc.returncode} before it was ready:\n{tail()}")
            try:
                if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > READY_TIMEOUT_S:
                raise SystemExit(f"the service was not ready after {READY_TIMEOUT_S:.0f} s:\n{tail()}")
            time.sleep(0.5)
        console.print(f"service ready after {time.monotonic() - t0:.1f} s (log: {log.name})")
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=45)  # ltrr serve gives requests in flight 30 s, then flushes its log
            except subprocess.TimeoutExpired:
                console.print("[yellow]the service did not stop within 45 s after SIGTERM: killing its process group[/]")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def fallback_app() -> Any:
    """A minimal stand-in for ``ltrr serve`` (uvicorn factory, one Orchestrator per worker process,
    configured from ``LTRR_*``): ``POST /v1/search`` and ``GET /readyz`` only."""
    from orchestrator.api import Orchestrator

    holder: dict[str, Orchestrator] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        holder["orch"] = Orchestrator.from_config()
        try:
            yield
        finally:
            holder["orch"].close()

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(_request: Any, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    # A plain def: FastAPI runs it in its thread pool, as the orchestrator's search blocks.
    @app.post("/v1/search", response_model=SearchResponseOut)
    def search(request: SearchRequest) -> SearchResponseOut:
        return holder["orch"].search(request)

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        checks = holder["orch"].ready()
        return JSONResponse(checks, status_code=200 if checks["ready"] else 503)

    return app


def serve_fallback(port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run("bench_service:fallback_app", factory=True, host="127.0.0.1", port=port, workers=workers,
                app_dir=str(Path(__file__).resolve().parent), log_level="warning")


# ------------------------------------------------------------------------------------------------
# The baseline: the service's OpenSearch requests, rebuilt and replayed with the bare client
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BareRequest:
    """One search's OpenSearch requests, serialised: the _msearch/template (ndjson) and the rerank."""

    msearch: bytes
    rerank: bytes | None


class RequestBuilder:
    """Rebuilds the requests the service sent for a search from its query and the arms and budgets
    its policy chose: the same pipeline code, run here against the same node (the rerank window
    depends on the arms' hits, so each search is run once). Built once per distinct search."""

    def __init__(self, client: Any, index: str, texts: Sequence[str], *, encoder: Any, timeout_ms: int,
                 rerank_window: int, size: int):
        from orchestrator.feedback.q2e import Q2EMemory
        from orchestrator.ltr.model import ModelRegistry
        from orchestrator.ltr.rerank import Reranker, RerankOutcome
        from orchestrator.pipeline import SearchPipeline
        from orchestrator.strategies import ExecutionReport, StrategyCall, StrategyExecutor, load_plans

        plans = load_plans()
        self.index, self.size = index, size
        self.pipe = SearchPipeline(client, index, plans, encoder=None, timeout_ms=timeout_ms,
                                   rerank_window=rerank_window, memory=Q2EMemory(client, index))
        self.understander = self.pipe.understander()
        self.vectors = dict(zip(texts, self._encode(encoder, texts)))
        self.vector_plans = {name for name, plan in plans.items() if any(p.type == "vector" for p in plan.params)}
        captured: dict[str, Any] = {}
        self._captured = captured

        class Capturing(StrategyExecutor):
            def run(self, index: str, calls: Sequence[StrategyCall]) -> ExecutionReport:
                captured["msearch"] = self.msearch_body(index, calls)
                return super().run(index, calls)

        self.pipe.executor = Capturing(client, plans)
        self.model, card = ModelRegistry(client).active(index)
        self.reranker: Any = None
        if self.model:
            from orchestrator.ltr.rerank import rerank_body

            class CapturingReranker(Reranker):
                def rerank(self, params: Mapping[str, Any], window: Sequence[str], *, explain: bool = False) -> RerankOutcome:
                    captured["rerank"] = rerank_body(self.model, params, window, feature_set=self.feature_set)
                    return super().rerank(params, window, explain=explain)

            self.reranker = CapturingReranker(client, index, self.model, (card or {}).get("feature_set"))
        self._cache: dict[tuple[str, tuple[tuple[str, int], ...], bool], BareRequest] = {}

    @staticmethod
    def _encode(encoder: Any, texts: Sequence[str]) -> Any:
        from orchestrator.understanding import normalize_query

        return encoder.encode([normalize_query(t) for t in texts])  # as the service: the normalised text

    def build(self, text: str, budgets: Mapping[str, int], reranked: bool) -> BareRequest:
        key = (text, tuple(budgets.items()), reranked)
        if not budgets:  # no arm applied: the service sent nothing
            return BareRequest(b"", None)
        if key not in self._cache:
            self._captured.clear()
            # The service embeds only when a chosen arm takes the vector; the rerank's features get it then too.
            vector = self.vectors[text] if self.vector_plans & set(budgets) else None
            self.pipe.reranker = self.reranker if reranked else None
            self.pipe.search(text, budgets=dict(budgets), size=self.size, understander=self.understander, vector=vector)
            msearch = b"".join(dumps(line) + b"\n" for line in self._captured["msearch"])
            rerank = self._captured.get("rerank")
            self._cache[key] = BareRequest(msearch, dumps(rerank) if rerank is not None else None)
        return self._cache[key]


def dumps(obj: Any) -> bytes:
    import orjson

    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def bare_sender(http: Any, index: str, requests: Sequence[BareRequest], timeout_ms: int) -> Callable[[int], Awaitable[Outcome]]:
    from orchestrator.strategies import MSEARCH_FILTER_PATH

    msearch_params = {"filter_path": MSEARCH_FILTER_PATH}
    rerank_params = {"timeout": f"{timeout_ms}ms"}  # as the Reranker sends it

    async def send(i: int) -> Outcome:
        req = requests[i]
        t = time.perf_counter()
        error, took = None, 0.0
        try:
            if req.msearch:
                resp = await http.post("/_msearch/template", content=req.msearch, params=msearch_params,
                                       headers={"content-type": "application/x-ndjson"})
                ms = json.loads(resp.content)
                error = None if resp.status_code == 200 else f"msearch HTTP {resp.status_code}"
                error = error or next((f"msearch item: {r['error'].get('type', r['error'])}" for r in ms.get("responses", [])
                                       if isinstance(r, dict) and "error" in r), None)
                took = float(ms.get("took", 0))
            if req.rerank is not None and error is None:
                resp = await http.post(f"/{index}/_search", content=req.rerank, params=rerank_params,
                                       headers={"content-type": "application/json"})
                rr = json.loads(resp.content)
                error = None if resp.status_code == 200 else f"rerank HTTP {resp.status_code}"
                took += float(rr.get("took", 0))
        except Exception as e:
            return Outcome(i, (time.perf_counter() - t) * 1000, f"{type(e).__name__}: {e}"[:200])
        return Outcome(i, (time.perf_counter() - t) * 1000, error, {"took": took})

    return send


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def share(run: LevelRun) -> dict[str, float]:
    """The orchestrator's share from the responses: p50 of (wall - OpenSearch took - rerank took -
    encoder) against p50 of OpenSearch's time (took + rerank took); and the HTTP layer (what the
    generator saw beyond the orchestrator's wall: HTTP, JSON, the worker's queue)."""
    rows = [(o.latency_ms, o.data["timings"]) for o in run.ok if o.data.get("timings")]
    if not rows:
        return {}

    def t(timings: Mapping[str, Any], name: str) -> float:
        return float(timings.get(name) or 0.0)

    own = [t(x, "wall") - t(x, "opensearch_took") - t(x, "rerank_took") - t(x, "embed") for _, x in rows]
    opensearch = [t(x, "opensearch_took") + t(x, "rerank_took") for _, x in rows]
    p50_own, p50_os = pct(own, 50), pct(opensearch, 50)
    return {"orchestrator_p50_ms": round(p50_own, 2), "orchestrator_p95_ms": round(pct(own, 95), 2),
            "opensearch_p50_ms": round(p50_os, 2), "share_p50": round(p50_own / p50_os, 4) if p50_os > 0 else float("inf"),
            "embed_p50_ms": round(pct([t(x, "embed") for _, x in rows], 50), 2),
            "embedded_fraction": round(sum(t(x, "embed") > 0 for _, x in rows) / len(rows), 3),
            "reranked_fraction": round(sum(bool(o.data.get("reranked")) for o in run.ok) / len(run.ok), 3),
            "http_layer_p50_ms": round(pct([lat - t(x, "wall") for lat, x in rows], 50), 2),
            "wall_p50_ms": round(pct([t(x, "wall") for _, x in rows], 50), 2)}


async def measure(args: argparse.Namespace, base_url: str, texts: Sequence[str], builder: RequestBuilder,
                  console: Console) -> list[dict[str, Any]]:
    import httpx

    from orchestrator.config import ConnectionSettings

    top = max(args.concurrency)
    limits = httpx.Limits(max_connections=top, max_keepalive_connections=top)
    timeout = httpx.Timeout(args.request_timeout)
    cs = ConnectionSettings.from_env()
    verify: Any = cs.ca_certs or cs.verify_certs
    auth = (cs.user, cs.password or "") if cs.user else None
    levels: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as service_http, \
            httpx.AsyncClient(base_url=cs.url, limits=limits, timeout=timeout, verify=verify, auth=auth) as bare_http:
        send = service_sender(service_http, texts, args.size)
        warm = await drive(top, max(args.warmup, top), None, send)  # caches, every connection, both workers
        console.print(f"warm-up: {len(warm.outcomes)} requests, {len(warm.errors)} errors")
        bare_warm = False
        for c in args.concurrency:
            service = await drive(c, args.requests, args.seconds, send)
            t = time.perf_counter()
            replay = [builder.build(texts[o.index % len(texts)], o.data["budgets"], bool(o.data["reranked"]))
                      for o in service.ok]
            build_s = time.perf_counter() - t
            bare = LevelRun(c, 0.0, ())
            if replay:
                bare_send = bare_sender(bare_http, args.index, replay, args.timeout_ms)
                if not bare_warm:  # as the service: warmed once, before its first level
                    await drive(top, min(len(replay), max(args.warmup, top)), None, bare_send)
                    bare_warm = True
                bare = await drive(c, len(replay), None, bare_send)
            level = {"concurrency": c, "service": {**service.summary(), **share(service)}, "bare": bare.summary(),
                     "requests_rebuilt_s": round(build_s, 2)}
            if bare.ok:
                level["bare"]["opensearch_took_p50_ms"] = round(pct([float(o.data["took"]) for o in bare.ok], 50), 2)
                # What sending the requests costs beyond OpenSearch's took even without an orchestrator.
                level["bare"]["overhead_p50_ms"] = round(pct([o.latency_ms - float(o.data["took"]) for o in bare.ok], 50), 2)
            level["ratios"] = {
                "throughput_service_over_bare": round(service.throughput / bare.throughput, 4) if bare.throughput else None,
                "p50_service_over_bare": round(service.latency(50) / bare.latency(50), 4) if bare.ok else None}
            levels.append(level)
            s, b = level["service"], level["bare"]
            console.print(f"c={c}: service {s['throughput_rps']:.1f} req/s p50 {s['p50_ms']:.1f} ms ({s['errors']} errors);"
                          f" bare {b['throughput_rps']:.1f} req/s p50 {b['p50_ms']:.1f} ms ({b['errors']} errors)")
    return levels


def report(levels: list[dict[str, Any]], console: Console, title: str) -> dict[str, Any]:
    table = Table("concurrency", "client", "requests", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "service / bare",
                  title=title)
    for lv in levels:
        s, b, r = lv["service"], lv["bare"], lv["ratios"]
        ratio = f"{r['throughput_service_over_bare']:.2f}x req/s" if r["throughput_service_over_bare"] else "-"
        p50 = f"{r['p50_service_over_bare']:.2f}x p50" if r["p50_service_over_bare"] else "-"
        for name, m, note in (("service", s, ratio), ("bare client", b, p50)):
            table.add_row(str(lv["concurrency"]) if name == "service" else "", name, str(m["requests"]),
                          str(m["errors"]), f"{m['throughput_rps']:.1f}", f"{m['p50_ms']:.1f}", f"{m['p95_ms']:.1f}",
                          f"{m['p99_ms']:.1f}", note, end_section=name != "service")
    console.print(table)

    shares = Table("concurrency", "OpenSearch took p50", "orchestrator p50 (p95)", "share p50", "encoder p50 (share embedded)",
                   "HTTP layer p50", "bare: latency - took p50", "reranked",
                   title="from the responses: orchestrator = wall - OpenSearch took - rerank took - encoder (ms)")
    goals: dict[str, Any] = {"orchestrator_share_p50": {}, "concurrency_top": {}}
    for lv in levels:
        s = lv["service"]
        if "share_p50" not in s:
            continue
        met = s["share_p50"] <= GOAL_ORCHESTRATOR_SHARE
        goals["orchestrator_share_p50"][lv["concurrency"]] = {"share": s["share_p50"], "met": met}
        shares.add_row(str(lv["concurrency"]), f"{s['opensearch_p50_ms']:.2f}",
                       f"{s['orchestrator_p50_ms']:.2f} ({s['orchestrator_p95_ms']:.2f})",
                       f"[{'green' if met else 'red'}]{s['share_p50']:.0%}[/]",
                       f"{s['embed_p50_ms']:.2f} ({s['embedded_fraction']:.0%})", f"{s['http_layer_p50_ms']:.2f}",
                       f"{lv['bare'].get('overhead_p50_ms', float('nan')):.2f}", f"{s['reranked_fraction']:.0%}")
    console.print(shares)
    console.print("HTTP layer: what the generator saw beyond the orchestrator's wall (HTTP, JSON, the worker's queue); "
                  "bare: the same requests' cost beyond OpenSearch's took with no orchestrator (two round trips when reranked)")

    def verdict(ok: bool) -> str:
        return "[green]met[/]" if ok else "[red]missed[/]"

    for lv in levels:
        c, s, b = lv["concurrency"], lv["service"], lv["bare"]
        g = goals["orchestrator_share_p50"].get(c)
        if g is None:
            continue
        console.print(f"goal 1, c={c}: orchestrator adds {g['share']:.0%} to OpenSearch's time at p50 "
                      f"(goal <= {GOAL_ORCHESTRATOR_SHARE:.0%}): {verdict(g['met'])}")
        if b["requests"] - b["errors"] > 0:  # the same question end to end, against the bare client's latency
            added = (s["p50_ms"] - s["embed_p50_ms"]) / b["p50_ms"] - 1
            g["end_to_end_added"] = round(added, 4)
            console.print(f"  end to end: service p50 - encoder p50 = {s['p50_ms'] - s['embed_p50_ms']:.1f} ms vs the bare "
                          f"client's p50 {b['p50_ms']:.1f} ms (+{added:.0%}; HTTP layer p50 {s['http_layer_p50_ms']:.1f} ms)")
    top = max(levels, key=lambda lv: lv["concurrency"])
    ratio = top["ratios"]["throughput_service_over_bare"] or 0.0
    met = top["service"]["errors"] == 0 and ratio >= GOAL_THROUGHPUT_RATIO
    goals["concurrency_top"] = {"concurrency": top["concurrency"], "errors": top["service"]["errors"],
                                "throughput_ratio": ratio, "met": met}
    console.print(f"goal 2, c={top['concurrency']}: {top['service']['errors']} errors, throughput {ratio:.2f}x the bare "
                  f"client's (goal: 0 errors and >= {GOAL_THROUGHPUT_RATIO:.2f}x): {verdict(met)}")
    if top["service"]["error_kinds"]:
        console.print(f"errors at c={top['concurrency']}: {top['service']['error_kinds']}")
    return goals


def finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (JSON has neither)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def machine_note(workers: str) -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPUs shared by the service ({workers}), OpenSearch, this generator (and its "
            f"bare-client replay) and anything else running (load average {load[0]:.2f} at start): the service's "
            "encoder and Python work compete with OpenSearch for the same cores, which the bare client does not")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--index", default="synthetic_100k", help="catalogue alias (scripts/load_catalogue_100k.sh loads it)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32],
                    help="comma-separated levels, e.g. 1,8,32")
    ap.add_argument("--requests", type=int, default=None, help="requests per level (default 400; with --seconds: at most)")
    ap.add_argument("--seconds", type=float, default=None, help="run each level this long instead")
    ap.add_argument("--warmup", type=int, default=64, help="requests before measuring (the service, then the bare client)")
    ap.add_argument("--queries", type=int, default=300, help="distinct query texts, cycled")
    ap.add_argument("--seed", type=int, default=7, help="of the query texts (generate_queries)")
    ap.add_argument("--size", type=int, default=10)
    ap.add_argument("--service", choices=["auto", "serve", "fallback"], default="auto",
                    help="auto: `ltrr serve` when orchestrator/service/command.py exists, else the fallback app")
    ap.add_argument("--url", default=None, help="measure a service already running at this URL (not started here)")
    ap.add_argument("--port", type=int, default=0, help="port of the started service (0: a free one)")
    ap.add_argument("--no-search-log", action="store_true", help="start the service with LTRR_SEARCH_LOG=false")
    ap.add_argument("--timeout-ms", type=int, default=1000, help="the service's arm deadline (LTRR_TIMEOUT_MS)")
    ap.add_argument("--request-timeout", type=float, default=30.0, help="the generator's timeout per request (s)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--fallback-server", action="store_true", help=argparse.SUPPRESS)  # the fallback's own process
    args = ap.parse_args()
    if args.fallback_server:
        serve_fallback(args.port, args.workers)
        return
    if args.requests is None and args.seconds is None:
        args.requests = 400
    if any(c < 1 for c in args.concurrency) or (args.requests or 1) < 1 or args.queries < 1 or args.workers < 1 \
            or (args.seconds is not None and args.seconds <= 0):
        ap.error("--concurrency, --requests, --seconds, --queries and --workers must be positive")

    from orchestrator.client import make_client
    from orchestrator.embeddings import SentenceEncoder
    from orchestrator.strategies import load_plans, missing_scripts
    from orchestrator.synthetic import generate_queries

    console = Console(width=160)
    note = machine_note(f"{args.workers} workers" if not args.url else "started elsewhere")
    client = make_client(retries=False)
    if not client.indices.exists(index=args.index):
        sys.exit(f"no index {args.index!r}: run scripts/load_catalogue_100k.sh first")
    if missing_scripts(client, list(load_plans().values())):
        sys.exit("the plans' stored scripts are missing: run `ltrr plans sync`")
    t = time.perf_counter()
    texts = [q.text for q in generate_queries(client.count(index=args.index)["count"], args.queries, seed=args.seed)]
    # The service's settings as it reads them (LTRR_*), for what shapes its requests: deadline, rerank window.
    settings = OrchestratorSettings(**{"index": args.index, "timeout_ms": args.timeout_ms})
    builder = RequestBuilder(client, args.index, texts, encoder=SentenceEncoder(), timeout_ms=settings.timeout_ms,
                             rerank_window=settings.rerank_window, size=args.size)
    console.print(f"{len(texts)} query texts and their vectors in {time.perf_counter() - t:.1f} s; "
                  f"active LTR model: {builder.model or 'none (the service keeps the fused order)'}")

    if args.url:
        mode, base_url = f"already running at {args.url}", args.url.rstrip("/")
        levels = asyncio.run(measure(args, base_url, texts, builder, console))
    else:
        port = args.port or free_port()
        mode, argv = service_command(args.service, args.index, args.workers, port)
        base_url = f"http://127.0.0.1:{port}"
        env = {"LTRR_INDEX": args.index, "LTRR_TIMEOUT_MS": str(args.timeout_ms)}
        if args.no_search_log:
            env["LTRR_SEARCH_LOG"] = "false"
        console.print(f"starting {mode}: {' '.join(argv)}")
        with running_service(argv, env, base_url, console):
            levels = asyncio.run(measure(args, base_url, texts, builder, console))

    workers = f"{args.workers} workers" if not args.url else "workers as started"
    title = (f"service ({mode}, {workers}) vs bare client, index {args.index}, "
             + (f"{args.seconds:g} s" if args.seconds else f"{args.requests} requests") + " per level")
    console.print(f"[bold]note:[/] {note}")
    goals = report(levels, console, title)
    if args.json:
        args.json.write_text(json.dumps(finite({"index": args.index, "service": mode, "workers": args.workers,
                                         "queries": len(texts), "requests_per_level": args.requests,
                                         "seconds_per_level": args.seconds, "model": builder.model,
                                         "search_log": not args.no_search_log, "machine": note,
                                         "levels": levels, "goals": goals}), indent=2))
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
