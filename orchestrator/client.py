"""The OpenSearch connection: one place that turns :class:`ConnectionSettings` into a client."""

from __future__ import annotations

from opensearchpy import OpenSearch

from .config import ConnectionSettings


def make_client(settings: ConnectionSettings | None = None, *, timeout_s: float | None = None) -> OpenSearch:
    """A client with auth, TLS, timeouts and retries from ``settings`` (default: the environment).

    Retries cover connection errors and timeouts only, never 4xx answers, so a bad request is
    reported at once instead of being repeated.
    """
    s = settings or ConnectionSettings.from_env()
    kwargs: dict = {
        "hosts": [s.url],
        "timeout": timeout_s if timeout_s is not None else s.timeout_s,
        "max_retries": s.max_retries,
        "retry_on_timeout": True,
        "http_compress": False,
    }
    if s.user is not None:
        kwargs["http_auth"] = (s.user, s.password)
    if s.use_ssl:
        kwargs["use_ssl"] = True
        kwargs["verify_certs"] = s.verify_certs
        kwargs["ssl_show_warn"] = s.verify_certs
        if s.ca_certs:
            kwargs["ca_certs"] = s.ca_certs
    return OpenSearch(**kwargs)
