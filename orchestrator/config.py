"""Validated, immutable configuration: where OpenSearch is and where ltrr keeps its files.

Everything comes from the environment (12-factor style) so the CLI, the HTTP service and the
tests agree without passing flags around:

==========================  ===================================  ===========================
variable                    meaning                              default
==========================  ===================================  ===========================
``OPENSEARCH_URL``          cluster URL (http or https)          ``http://127.0.0.1:9200``
``OPENSEARCH_USER``         basic-auth user                      none
``OPENSEARCH_PASSWORD``     basic-auth password                  none
``OPENSEARCH_CA_CERTS``     CA bundle for TLS verification       system store
``OPENSEARCH_VERIFY_CERTS`` ``false`` to skip TLS verification   ``true``
``OPENSEARCH_TIMEOUT``      request timeout, seconds             ``30``
``OPENSEARCH_MAX_RETRIES``  retries on connection errors/timeouts ``3``
``LTRR_HOME``               downloads, node data, caches         ``$XDG_CACHE_HOME/ltrr``
==========================  ===================================  ===========================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:9200"
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message says which and why."""


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")


def _parse_positive(name: str, raw: str, kind: type) -> float | int:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a {kind.__name__}") from None
    if value < 0 or (kind is float and value == 0):
        raise ConfigError(f"{name}={raw!r} must be positive")
    return value


@dataclass(frozen=True)
class ConnectionSettings:
    """How to reach OpenSearch. Build it with :meth:`from_env`; it validates itself."""

    url: str = DEFAULT_URL
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_certs: str | None = None
    verify_certs: bool = True
    timeout_s: float = 30.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"OPENSEARCH_URL={self.url!r} must look like http(s)://host:port")
        try:
            parts.port
        except ValueError:
            raise ConfigError(f"OPENSEARCH_URL={self.url!r} has an invalid port") from None
        if (self.user is None) != (self.password is None):
            raise ConfigError("set both OPENSEARCH_USER and OPENSEARCH_PASSWORD, or neither")
        if self.ca_certs is not None and not Path(self.ca_certs).is_file():
            raise ConfigError(f"OPENSEARCH_CA_CERTS={self.ca_certs!r} is not a readable file")
        if self.timeout_s <= 0:
            raise ConfigError("timeout must be positive")
        if self.max_retries < 0:
            raise ConfigError("max_retries must be >= 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ConnectionSettings":
        env = os.environ if env is None else env
        return cls(
            url=env.get("OPENSEARCH_URL", DEFAULT_URL).rstrip("/") or DEFAULT_URL,
            user=env.get("OPENSEARCH_USER") or None,
            password=env.get("OPENSEARCH_PASSWORD") or None,
            ca_certs=env.get("OPENSEARCH_CA_CERTS") or None,
            verify_certs=_parse_bool("OPENSEARCH_VERIFY_CERTS", env.get("OPENSEARCH_VERIFY_CERTS", "true")),
            timeout_s=float(_parse_positive("OPENSEARCH_TIMEOUT", env.get("OPENSEARCH_TIMEOUT", "30"), float)),
            max_retries=int(_parse_positive("OPENSEARCH_MAX_RETRIES", env.get("OPENSEARCH_MAX_RETRIES", "3"), int)),
        )

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 9200)

    @property
    def use_ssl(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    @property
    def is_local(self) -> bool:
        """True when the URL names this machine over plain HTTP: the only case where ltrr may
        start its own node. Any other URL is somebody's cluster and is used as it is."""
        return self.host in _LOOPBACK_HOSTS and not self.use_ssl


def ltrr_home(env: Mapping[str, str] | None = None) -> Path:
    """Root of ltrr's files: downloads, the local node's data and logs, caches."""
    env = os.environ if env is None else env
    if env.get("LTRR_HOME"):
        return Path(env["LTRR_HOME"]).expanduser().resolve()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base).expanduser() / "ltrr").resolve()
