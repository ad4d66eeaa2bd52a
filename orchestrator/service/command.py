"""``ltrr serve``: the HTTP service under uvicorn, one or several worker processes."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import click

APP_FACTORY = "orchestrator.service.app:create_app"
GRACEFUL_SHUTDOWN_S = 30  # in-flight requests get this long after SIGTERM; then the log is flushed


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    get_secret = getattr(value, "get_secret_value", None)
    return str(get_secret() if callable(get_secret) else value)


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"cannot read the token file {path}: {e}")
    if not token or any(c.isspace() for c in token):
        _fail(f"the token file {path} must hold one token without spaces")
    return token


@click.command("serve")
@click.option("--index", default=None, help="Catalogue alias to search [default: LTRR_INDEX, else synthetic_music].")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes; they share what they learn through OpenSearch.")
@click.option("--policy", default=None, help="Bandit policy (joint, linucb, thompson, epsilon, random, static:a+b, all).")
@click.option("--rate-limit", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Requests per second per client on /v1 (429 past it) [default: LTRR_RATE_LIMIT_PER_S, else none].")
@click.option("--auth-token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File holding the bearer token /v1 requires (or set LTRR_AUTH_TOKEN; never on the command line).")
@click.option("--log-queries/--no-log-queries", default=None,
              help="Write query text into the logs [default: LTRR_LOG_QUERIES, else no].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.option("--learn-interval", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds between learning steps [default: LTRR_LEARN_INTERVAL_S, else 30].")
@click.option("--sync-interval", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds between merges with the shared policy state [default: LTRR_SYNC_INTERVAL_S, else 5].")
def serve(index: str | None, port: int, host: str, workers: int, policy: str | None, rate_limit: float | None,
          auth_token_file: Path | None, log_queries: bool | None, log_level: str, learn_interval: float | None,
          sync_interval: float | None) -> None:
    """Serve search and feedback over HTTP: POST /v1/search, POST /v1/feedback, GET /healthz,
    /readyz, /metrics and /openapi.json. Settings not given here come from the environment
    (LTRR_*, OPENSEARCH_*). SIGTERM or Ctrl-C stops gracefully: requests in flight finish, the
    search log is flushed and the policy's statistics are pushed."""
    from pydantic import ValidationError

    from ..config import ConfigError, ConnectionSettings
    from .logs import logging_config

    overrides: dict[str, Any] = {"index": index, "policy": policy, "rate_limit_per_s": rate_limit,
                                 "log_queries": log_queries, "learn_interval_s": learn_interval,
                                 "sync_interval_s": sync_interval}
    if auth_token_file is not None:
        overrides["auth_token"] = _read_token(auth_token_file)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        ConnectionSettings.from_env()
    except ConfigError as e:
        _fail(str(e))
    from .app import settings_from_env

    try:  # validated here, once, so a bad setting is one line and not one traceback per worker
        settings = settings_from_env(**overrides)
    except ValidationError as e:
        _fail("; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in e.errors()))
    _check_policy(settings)
    if settings.auth_token is None and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host} without a token: anyone who reaches the port may search and send "
                   "feedback (set LTRR_AUTH_TOKEN or --auth-token-file)", err=True)
    # The workers build their settings from the environment (uvicorn starts them with the factory).
    for name, value in overrides.items():
        os.environ[f"LTRR_{name.upper()}"] = _env_value(value)

    metrics_dir: str | None = None
    if workers > 1:
        metrics_dir = _multiprocess_metrics_dir()

    import uvicorn

    if workers > 1:
        _keep_tcp_nodelay()
    try:
        uvicorn.run(APP_FACTORY, factory=True, host=host, port=port, workers=workers,
                    log_config=logging_config(log_level, log_queries=settings.log_queries), access_log=False,
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, server_header=False)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _keep_tcp_nodelay() -> None:
    """With several workers uvicorn binds the listening socket itself, without its protocol number,
    so asyncio does not set TCP_NODELAY on accepted connections and every response waits ~40 ms for
    a delayed ACK (uvicorn issue 3149). Rebuild the socket with IPPROTO_TCP on the same descriptor."""
    import socket

    import uvicorn.config

    original = uvicorn.config.Config.bind_socket
    if getattr(original, "_ltrr_nodelay", False):
        return

    def bind_socket(self: Any) -> socket.socket:
        sock = original(self)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            fixed = socket.socket(sock.family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=sock.detach())
            fixed.set_inheritable(True)
            return fixed
        return sock

    bind_socket._ltrr_nodelay = True  # type: ignore[attr-defined]
    uvicorn.config.Config.bind_socket = bind_socket  # type: ignore[method-assign]


def _check_policy(settings: Any) -> None:
    """Build the policy once here: a bad spec is one line now, not a failed start in every worker."""
    from ..bandit.base import BudgetConfig, PolicyConfigError
    from ..bandit.context import CONTEXT_DIM
    from ..bandit.policies import make_policy
    from ..strategies import PlanError, load_plans

    try:
        plans = load_plans()
        budget = BudgetConfig(total=settings.budget_total, levels=settings.budget_levels, max_arms=settings.max_arms,
                              costs={name: plan.cost for name, plan in plans.items()})
        make_policy(settings.policy, list(plans), budget, CONTEXT_DIM, seed=0)
    except (PolicyConfigError, PlanError) as e:
        _fail(f"policy {settings.policy!r}: {e}")


def _multiprocess_metrics_dir() -> str | None:
    """Workers' Prometheus values go to one directory, summed by /metrics. A directory given in
    PROMETHEUS_MULTIPROC_DIR is kept (its stale *.db files are removed, as the client requires);
    else a fresh one is made and removed at exit (the return value)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink(missing_ok=True)
        return None
    made = tempfile.mkdtemp(prefix="ltrr-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return made
