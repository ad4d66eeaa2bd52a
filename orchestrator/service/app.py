"""The HTTP service: a thin FastAPI layer over :class:`orchestrator.api.Orchestrator`.

    uvicorn --factory orchestrator.service.app:create_app     # or: ltrr serve --index NAME --port N

Routes: ``POST /v1/search``, ``POST /v1/feedback``, ``GET /healthz`` (the process answers),
``GET /readyz`` (OpenSearch, catalogue and plans ready; 503 otherwise), ``GET /metrics``
(Prometheus), ``GET /openapi.json``. Every error is ``{"error": {"type", "message", ...}}`` with
the request id; a request the service cannot read is a 400 naming the field, never a 422 or 500.

Each worker runs its own Orchestrator and one background thread that runs a learning step every
``learn_interval_s`` and merges the policy with the shared state every ``sync_interval_s``, so
workers (and other processes) learn from each other's searches. Shutdown stops that thread and
closes the orchestrator: the search log is flushed and the policy's unsent statistics are pushed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..api import (
    ApiError,
    FeedbackEventIn,
    FeedbackOut,
    FeedbackRequest,
    Orchestrator,
    OrchestratorSettings,
    SearchRequest,
    SearchResponseOut,
)
from .metrics import ServiceMetrics, multiprocess_dir
from .security import BearerAuth, RateLimiter

log = logging.getLogger("orchestrator.service")
access_log = logging.getLogger("orchestrator.service.access")

MAX_BODY_BYTES = 1 << 20  # a search is < 50 kB and 100 feedback events < 100 kB; anything bigger is not ours
READY_TIMEOUT_S = 2.0  # a probe must answer fast even when OpenSearch does not (the client waits 30 s)
SHUTDOWN_JOIN_S = 30.0
# Module level: route signatures are resolved from the module's globals (annotations are strings here).
BEARER = HTTPBearer(auto_error=False, description="the service's token (LTRR_AUTH_TOKEN)")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_ERROR_TYPES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                406: "not_acceptable", 413: "payload_too_large", 415: "unsupported_media_type", 429: "rate_limited",
                500: "internal", 502: "bad_gateway", 503: "unavailable"}


# ------------------------------------------------------------------------------------------------
# Response models of the service's own routes and errors
# ------------------------------------------------------------------------------------------------

class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(..., description="bad_request, not_found, unauthorized, rate_limited, unavailable, internal...")
    message: str
    request_id: str | None = None
    field: str | None = Field(None, description="the request field at fault, when one is")


class ErrorOut(BaseModel):
    error: ErrorBody


class HealthOut(BaseModel):
    status: str = "ok"


class ReadyOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    ready: bool
    opensearch: bool | None = None
    catalogue: bool | None = None
    plans_synced: bool | None = None
    model: str | None = Field(None, description="the active LTR model (none: results keep the fused order)")
    detail: str | None = None


# The request bodies: the API's models, strict about JSON types (``"size": "10"`` or
# ``"explain": 0`` are 400s, as the document says, instead of being coerced).
def _iso_time(value: Any) -> Any:
    """JSON carries times as ISO 8601 strings; strict validation wants a datetime."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value  # rejected by the strict check, naming the field
    return value


class SearchBody(SearchRequest):
    model_config = ConfigDict(strict=True, title="SearchRequest")


class FeedbackEventBody(FeedbackEventIn):
    model_config = ConfigDict(strict=True, title="FeedbackEvent")

    time: Annotated[datetime | None, BeforeValidator(_iso_time)] = Field(None, description="ISO 8601; default: now")


class FeedbackBody(FeedbackRequest):
    model_config = ConfigDict(strict=True, title="FeedbackRequest")

    events: list[FeedbackEventBody] = Field(..., min_length=1, max_length=100)


class Unauthorized(ApiError):
    status = 401


class RateLimited(ApiError):
    status = 429

    def __init__(self, message: str, retry_after_s: int, **details: Any):
        super().__init__(message, **details)
        self.retry_after_s = retry_after_s


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    retry = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
    return {s: {"model": ErrorOut, "description": _ERROR_TYPES.get(s, "error").replace("_", " "),
                **({"headers": retry} if s in (429, 503) else {})} for s in statuses}


# ------------------------------------------------------------------------------------------------
# Errors -> JSON
# ------------------------------------------------------------------------------------------------

def _jsonable(value: Any, depth: int = 0) -> Any:
    """Error details as plain JSON (pydantic error contexts may hold exceptions, NaN...)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth < 6 and isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if depth < 6 and isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    return str(value)


def error_response(status: int, message: str, request_id: str | None, *, type_: str | None = None,
                   headers: dict[str, str] | None = None, **details: Any) -> Response:
    extra = {k: v for k, v in _jsonable(details).items() if k not in ("type", "message", "request_id")}
    body = {"error": {"type": type_ or _ERROR_TYPES.get(status, "error"), "message": message, **extra,
                      "request_id": request_id}}
    # ASCII escapes: a message may quote the caller's input, which can hold lone surrogates.
    return Response(json.dumps(body, ensure_ascii=True, allow_nan=False), status_code=status,
                    media_type="application/json", headers=headers)


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def _field_of(loc: Any) -> str:
    parts = [str(p) for p in (loc or ())]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    details = dict(exc.details)
    details.pop("errors", None)  # pydantic's raw errors echo the input; the message names the field
    return error_response(exc.status, exc.message, _request_id(request), type_=_ERROR_TYPES.get(exc.status),
                          headers=headers or None, **details)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": "body" if e.get("type") == "json_invalid" else _field_of(e.get("loc")),
               "message": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]  # never the input: it may be query text
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    return error_response(400, f"{first['field']}: {first['message']}", _request_id(request), type_="invalid_request",
                          field=first["field"], errors=errors)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), _request_id(request), headers=dict(exc.headers or {}))


async def _opensearch_error(request: Request, exc: Exception) -> Response:
    """OpenSearch failures the orchestrator did not map: a missing index or script means the
    service is not ready (503, like /readyz); another rejection is a fault on our side (502)."""
    from opensearchpy.exceptions import ConnectionError as OSConnectionError
    from opensearchpy.exceptions import NotFoundError, TransportError

    assert isinstance(exc, TransportError)
    reason = str(exc.error) if isinstance(exc.error, str) else type(exc).__name__  # never exc.info: it may hold the query
    status = exc.status_code if isinstance(exc.status_code, int) else None
    log.warning("OpenSearch error", extra={"request_id": _request_id(request), "opensearch_status": status,
                                           "reason": reason})
    if isinstance(exc, NotFoundError) and isinstance(exc.info, dict):  # "no such index [x]": names what is missing
        detail = (exc.info.get("error") or {}).get("reason") if isinstance(exc.info.get("error"), dict) else None
        reason = f"{reason}: {detail}" if isinstance(detail, str) else reason
    if isinstance(exc, (OSConnectionError, NotFoundError)) or status is None or status >= 500 or status == 429:
        what = "is the catalogue loaded and `ltrr plans sync` run?" if isinstance(exc, NotFoundError) else "retry later"
        return error_response(503, f"OpenSearch answered {status or 'nothing'} ({reason}): {what}", _request_id(request),
                              headers={"Retry-After": "5"})
    return error_response(502, f"OpenSearch rejected the request ({status}: {reason})", _request_id(request))


# ------------------------------------------------------------------------------------------------
# The per-request middleware: request id, body limit, unexpected errors, metrics, access log
# ------------------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestMiddleware:
    """Pure ASGI (no response buffering). Reads the body up to ``max_body_bytes`` before the app
    sees it (413 past that), gives each request an id (``X-Request-ID``: the caller's when it is
    sane), turns an unexpected exception into a 500 without a traceback (logged with the id), and
    records the request's route, status and time."""

    def __init__(self, app: Any, metrics: ServiceMetrics, max_body_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            body = await self._read_body(headers, receive)
            if body is None:
                await error_response(413, f"the request body is larger than {self.max_body_bytes} bytes",
                                     request_id)(scope, receive, send_with_id)
            else:
                await self.app(scope, _replay(body, receive), send_with_id)
        except Exception:
            log.exception("unexpected error", extra={"request_id": request_id, "route": _route(scope)})
            if not started:
                await error_response(500, "internal error; the service log has the details under this request id",
                                     request_id)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - t0
            route = _route(scope)
            self.metrics.observe_request(scope.get("method", ""), route, status, elapsed)
            fields = {"request_id": request_id, "method": scope.get("method"), "route": route, "status": status,
                      "duration_ms": round(elapsed * 1000, 2), **state.get("log_fields", {})}
            access_log.info("request", extra=fields)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | None:
        """The whole body, or None when it exceeds the limit (by Content-Length or as it streams)."""
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # disconnected: the app sees an empty body
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as a server would deliver it

    return replay


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"  # never the raw path: unbounded label values


# ------------------------------------------------------------------------------------------------
# Background learning and sync
# ------------------------------------------------------------------------------------------------

class BackgroundWork:
    """One daemon thread per worker: ``orchestrator.learn()`` every ``learn_interval_s`` and
    ``orchestrator.sync()`` (and a spool drain, when the orchestrator has one) every
    ``sync_interval_s``. An error is logged and counted, never fatal: the next round retries."""

    def __init__(self, orchestrator: Orchestrator, *, learn_interval_s: float, sync_interval_s: float,
                 metrics: ServiceMetrics, clock: Callable[[], float] = time.monotonic):
        self.orchestrator = orchestrator
        self.learn_interval_s = learn_interval_s
        self.sync_interval_s = sync_interval_s
        self.metrics = metrics
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ltrr-service-background", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = SHUTDOWN_JOIN_S) -> bool:
        """Stop after the step in progress; False when it did not end within ``timeout_s``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        next_learn = self.clock() + self.learn_interval_s
        next_sync = self.clock() + self.sync_interval_s
        while not self._stop.wait(max(0.0, min(next_learn, next_sync) - self.clock())):
            if self.clock() >= next_learn:
                self._step("learn", self._learn)
                next_learn = self.clock() + self.learn_interval_s
                next_sync = max(next_sync, self.clock() + min(self.sync_interval_s, self.learn_interval_s))  # learn synced
            if self.clock() >= next_sync and not self._stop.is_set():
                self._step("sync", self._sync)
                next_sync = self.clock() + self.sync_interval_s

    def _step(self, task: str, work: Callable[[], str]) -> None:
        try:
            outcome = work()
        except Exception as e:
            outcome = "error"
            log.warning("background %s failed: %s: %s", task, type(e).__name__, str(e)[:300])
        self.metrics.background.labels(task, outcome).inc()

    def _learn(self) -> str:
        orch = self.orchestrator
        # A model activated meanwhile (ltrr ltr train / rollback) serves from now on; a deleted one
        # stops costing every search a failing rerank request.
        orch.refresh_model()
        if orch.search_log is None or orch.feedback_store is None:
            return "skipped"
        report = orch.learn()
        fields = {"finalized": getattr(report, "finalized", None), "engaged": getattr(report, "engaged", None),
                  "policy_updates": getattr(report, "policy_updates", None), "errors": getattr(report, "errors", None)}
        log.log(logging.INFO if fields["finalized"] or fields["errors"] else logging.DEBUG, "learning step", extra=fields)
        return "error" if fields["errors"] else "ok"

    def _sync(self) -> str:
        self.orchestrator.sync()
        drain = getattr(self.orchestrator, "drain_spool", None)  # the feedback spool, where the API has one
        if callable(drain):
            drain()
        return "ok"


def claim_spool(orch: Orchestrator, max_workers: int = 256) -> None:
    """Give this process a feedback spool directory of its own (a spool is one process's): the
    configured one when free, else the first free ``worker-<k>`` inside it, which the workers of
    ``ltrr serve --workers N`` take in turn (and a restart takes again, delivering what is left).
    Taken now, at startup, so a conflict is found before the first feedback needs the spool."""
    from ..feedback.spool import Spool, SpoolError, SpoolInUse

    spool = getattr(orch, "spool", None)
    if not isinstance(spool, Spool):
        return
    try:
        spool.acquire()
        return
    except SpoolInUse:
        pass
    except SpoolError as e:
        log.warning("feedback spool unavailable (%s): feedback OpenSearch cannot take will be refused", e)
        return
    for k in range(1, max_workers):
        candidate = Spool(spool.directory / f"worker-{k}", max_events=spool.config.max_events)
        try:
            orch.spool = candidate.acquire()
        except SpoolInUse:
            continue
        except SpoolError as e:
            log.warning("feedback spool unavailable (%s): feedback OpenSearch cannot take will be refused", e)
            return
        spool.close()
        log.info("feedback spool of this worker", extra={"spool_dir": str(candidate.directory)})
        return
    log.warning("no free feedback spool directory under %s: feedback OpenSearch cannot take will be refused",
                spool.directory)


# ------------------------------------------------------------------------------------------------
# The app
# ------------------------------------------------------------------------------------------------

class ServiceState:
    """What the routes share: the orchestrator (None until startup), metrics, auth, limits."""

    def __init__(self, settings: OrchestratorSettings, orchestrator: Orchestrator | None):
        self.settings = settings
        self.orchestrator = orchestrator
        self.metrics = ServiceMetrics()
        token = settings.auth_token.get_secret_value() if settings.auth_token is not None else ""
        self.auth = BearerAuth(token) if token else None
        self.limiter = RateLimiter(settings.rate_limit_per_s) if settings.rate_limit_per_s else None
        self.closing = False
        self.background: BackgroundWork | None = None
        self.ready_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ltrr-readyz")
        self._ready_future: asyncio.Future[dict[str, Any]] | None = None

    def require_orchestrator(self) -> Orchestrator:
        if self.orchestrator is None or self.closing:
            raise _NotServing("the service is " + ("shutting down" if self.closing else "starting"), retry_after_s=1)
        return self.orchestrator

    async def readiness(self) -> dict[str, Any] | None:
        """``Orchestrator.ready()``'s checks within READY_TIMEOUT_S (None: they took longer); one
        check runs at a time, concurrent probes wait for it."""
        orch = self.require_orchestrator()
        future = self._ready_future
        if future is None or future.done():
            future = self._ready_future = asyncio.get_running_loop().run_in_executor(self.ready_pool, orch.ready)
        try:
            return await asyncio.wait_for(asyncio.shield(future), READY_TIMEOUT_S)
        except TimeoutError:
            return None


class _NotServing(ApiError):
    status = 503

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _ServiceApp(FastAPI):
    """FastAPI whose OpenAPI document says what the service does: validation errors are 400s
    with the error body (FastAPI documents them as 422s), and the search body carries this
    service's limits: the query length of its settings, the known strategies, budget bounds."""

    service_settings: OrchestratorSettings | None = None

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = super().openapi()
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    if isinstance(operation, dict):
                        operation.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            if "HTTPValidationError" not in json.dumps(schema.get("paths", {})):
                schemas.pop("HTTPValidationError", None)
                schemas.pop("ValidationError", None)
            if "SearchBody" in schemas and self.service_settings is not None:
                _document_limits(schemas["SearchBody"]["properties"], self.service_settings)
            self.openapi_schema = schema
        return self.openapi_schema


def _document_limits(properties: dict[str, Any], settings: OrchestratorSettings) -> None:
    from ..strategies import load_plans

    plans = sorted(load_plans())  # the plans from_config loads
    properties["query"]["maxLength"] = settings.max_query_chars
    properties["strategies"]["anyOf"] = [{"type": "array", "items": {"type": "string", "enum": plans}, "maxItems": 32},
                                         {"type": "null"}]
    properties["budgets"]["anyOf"] = [{"type": "object", "propertyNames": {"enum": plans},
                                       "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 1000}},
                                      {"type": "null"}]


def settings_from_env(**overrides: Any) -> OrchestratorSettings:
    """The environment's settings (``LTRR_*``) with ``overrides``; raises pydantic's ValidationError."""
    return OrchestratorSettings(**overrides)  # (pyright does not see the defaults given through Field)


def create_app(settings: OrchestratorSettings | None = None, orchestrator: Orchestrator | None = None) -> FastAPI:
    """The service's ASGI app. ``settings`` default to the orchestrator's, else the environment
    (``LTRR_*``); without ``orchestrator`` one is built at startup from ``settings``. The app owns
    the orchestrator either way: shutdown closes it."""
    if settings is None:
        settings = orchestrator.settings if orchestrator is not None else settings_from_env()
    service = ServiceState(settings, orchestrator)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service.orchestrator is None:
            service.orchestrator = await run_in_threadpool(Orchestrator.from_config, settings)
        await run_in_threadpool(claim_spool, service.orchestrator)
        service.closing = False
        service.background = BackgroundWork(service.orchestrator, learn_interval_s=settings.learn_interval_s,
                                            sync_interval_s=settings.sync_interval_s, metrics=service.metrics)
        service.background.start()
        log.info("service started", extra={"index": settings.index, "policy": settings.policy,
                                           "auth": service.auth is not None, "rate_limit_per_s": settings.rate_limit_per_s})
        try:
            yield
        finally:
            service.closing = True  # uvicorn has let the requests in flight finish; any later one gets 503
            if not service.background.stop():
                log.warning("background learning did not stop within %.0f s", SHUTDOWN_JOIN_S)
            orch = service.orchestrator
            await run_in_threadpool(orch.close)  # flushes the search log, pushes the policy's deltas
            service.metrics.observe_search_log(orch.search_log)
            stats = orch.search_log.stats if orch.search_log is not None else None
            log.info("service stopped", extra={"search_log_written": getattr(stats, "written", None),
                                               "search_log_failed": getattr(stats, "failed", None),
                                               "search_log_dropped": getattr(stats, "dropped", None)})
            service.ready_pool.shutdown(wait=False, cancel_futures=True)
            if multiprocess_dir():
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())

    from importlib.metadata import PackageNotFoundError, version

    try:
        app_version = version("ltrr")
    except PackageNotFoundError:
        app_version = "0"
    app = _ServiceApp(title="ltrr", version=app_version, lifespan=lifespan,
                      description="Learning to rank and retrieve over OpenSearch: search, feedback, health, metrics.")
    app.service_settings = settings
    app.state.service = service
    app.add_middleware(RequestMiddleware, metrics=service.metrics)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    from opensearchpy.exceptions import TransportError

    app.add_exception_handler(TransportError, _opensearch_error)

    # ---- who may call /v1 ------------------------------------------------------------------
    guards: list[Any] = []
    common_errors = [400, 413, 502, 503]
    if service.limiter is not None:
        limiter = service.limiter

        async def rate_limit(request: Request) -> None:
            client = request.client.host if request.client is not None else "unknown"
            wait_s = limiter.acquire(client)
            if wait_s > 0:
                raise RateLimited(f"more than {limiter.rate:g} requests per second; retry later",
                                  retry_after_s=int(RateLimiter.retry_after(wait_s)))

        guards.append(Depends(rate_limit))
        common_errors.append(429)
    if service.auth is not None:
        auth = service.auth
        async def authenticate(request: Request,
                               _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]) -> None:
            if not auth.allows(request.headers.get("authorization")):
                raise Unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")

        guards.append(Depends(authenticate))
        common_errors.append(401)

    # ---- routes ----------------------------------------------------------------------------
    @app.post("/v1/search", response_model=SearchResponseOut, dependencies=guards, tags=["search"],
              responses=_error_responses(*common_errors), summary="Search the catalogue")
    def search(body: SearchBody, request: Request) -> SearchResponseOut:
        """Understand the query, run the arms the policy chooses (or the given ``strategies``/
        ``budgets``) in one round trip, fuse, rerank with the active model. ``explain`` adds each
        result's features and why it ranks where it does."""
        orch = service.require_orchestrator()
        response = orch.search(body)
        service.metrics.observe_search(response)
        service.metrics.observe_search_log(orch.search_log)
        fields: dict[str, Any] = {"search_id": response.search_id, "results": len(response.results),
                                  "arms": [a.arm for a in response.arms if a.status == "ok"], "model": response.model,
                                  "degraded": response.degraded or None}
        if settings.log_queries:
            fields["query"] = body.query
        request.state.log_fields = fields
        return response

    @app.post("/v1/feedback", response_model=FeedbackOut, dependencies=guards, tags=["feedback"],
              responses={202: {"model": FeedbackOut, "description": "held in the spool: OpenSearch is unreachable"},
                         **_error_responses(*common_errors, 404)},
              summary="Record engagement with a search's results")
    def feedback(body: FeedbackBody, request: Request, response: Response, background: BackgroundTasks) -> FeedbackOut:
        """Store engagement events of a logged search (idempotent by ``event_id``: a repeated event
        is counted as a duplicate). 200 when stored, 202 when spooled for later delivery."""
        orch = service.require_orchestrator()
        out = orch.feedback(body.search_id, body.events)
        service.metrics.observe_feedback(out)
        if out.spooled:
            response.status_code = 202
        elif out.accepted:
            background.add_task(_observe_lag, orch, service.metrics, body.search_id, datetime.now(UTC))
        request.state.log_fields = {"search_id": body.search_id, "accepted": out.accepted,
                                    "duplicates": out.duplicates, "spooled": out.spooled}
        return out

    @app.get("/healthz", response_model=HealthOut, tags=["health"], summary="The process answers")
    async def healthz() -> HealthOut:
        return HealthOut()

    @app.get("/readyz", response_model=ReadyOut, tags=["health"], summary="Ready to serve searches",
             responses={503: {"model": ReadyOut, "description": "not ready: the checks say what is missing"}})
    async def readyz(request: Request) -> Response:
        """200 when OpenSearch answers, the catalogue exists and every plan's script is stored;
        503 otherwise. ``model`` names the active LTR model (without one results keep the fused
        order, which is not an outage)."""
        try:
            checks = await service.readiness()
        except ApiError as e:
            checks = {"ready": False, "detail": e.message}
        if checks is None:
            checks = {"ready": False, "detail": f"the readiness checks took longer than {READY_TIMEOUT_S:g} s"}
        out = ReadyOut.model_validate(_jsonable(checks))
        return JSONResponse(out.model_dump(), status_code=200 if out.ready else 503,
                            headers=None if out.ready else {"Retry-After": "5"})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}})
    def metrics() -> Response:
        if service.orchestrator is not None:
            service.metrics.observe_search_log(service.orchestrator.search_log)
        content, content_type = service.metrics.exposition()
        return Response(content, media_type=content_type)

    return app


def _observe_lag(orch: Orchestrator, metrics: ServiceMetrics, search_id: str, received: datetime) -> None:
    """Feedback lag: from the search's log record to this feedback (after the response is sent)."""
    if orch.search_log is None:
        return
    try:
        record = orch.search_log.get(search_id)
    except Exception as e:  # a metric never fails a request
        log.debug("feedback lag not measured: %s", type(e).__name__)
        return
    if record is not None:
        lag = (received - record.time).total_seconds()
        if lag >= 0:
            metrics.feedback_lag.observe(lag)
