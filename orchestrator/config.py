"""Validated, immutable configuration: where OpenSearch is and where ltrr keeps its files.

Everything comes from the environment (12-factor style) so the CLI, the HTTP service and the
tests agree without passing flags around:

============================  =========================================  ==================================
variable                      meaning                                    default
============================  =========================================  ==================================
``OPENSEARCH_URL``            cluster URL (http or https)                ``http://127.0.0.1:9200``
``OPENSEARCH_USER``           basic-auth user                            none
``OPENSEARCH_PASSWORD``       basic-auth password                        none
``OPENSEARCH_CA_CERTS``       CA bundle for TLS verification             system store
``OPENSEARCH_VERIFY_CERTS``   ``false`` to skip TLS verification         ``true``
``OPENSEARCH_TIMEOUT``        request timeout, seconds                   ``30``
``OPENSEARCH_MAX_RETRIES``    retries on connection errors/timeouts      ``3``
``LTRR_HOME``                 downloads, node data, caches               ``$XDG_CACHE_HOME/ltrr``
``LTRR_QUERY_PLANS``          directory of query plan YAML files         the packaged ``query_plans/``
``LTRR_INDEX_TEMPLATES``      directory of index template YAML files     the packaged ``index_templates/``
``LTRR_NODE_HEAP_MB``         local node's heap, MiB                     ``1024``
``LTRR_OPENSEARCH_VERSION``   local node's version: 2.19.1 or 3.5.0      newest the JDK can run
``LTRR_JAVA_HOME``            JDK that runs the local node               ``JAVA_HOME``, ``java`` on PATH
``LTRR_MVN``                  Maven executable (fetches the node)        ``mvn`` on PATH
``LTRR_MAVEN_ARGS``           extra Maven arguments, e.g. ``-s m2.xml``  none
``LTRR_LTR_PLUGIN_ZIP``       LTR plugin zip: file, folder or https URL  none
``LTRR_MODEL_CARDS``          where model cards are written              ``ltr_models/cards`` (if writable)
============================  =========================================  ==================================

Only this module reads them: the rest of ltrr calls the functions below. (Outside the package,
``.ci/run`` reads ``LTRR_CI_PORT`` and the tests read ``LTRR_SHARED_DIR``.) ``query_plans/``,
``index_templates/`` and ``ltr_models/`` sit at the top of the source tree and are installed as
package data (``orchestrator.query_plans`` etc.); :func:`package_data_dir` finds them in the
checkout (editable install) or in site-packages (``pip install .``).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
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
            _ = parts.port  # raises for a malformed port
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
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConnectionSettings:
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


def _get(env: Mapping[str, str] | None, name: str) -> str | None:
    """The variable's value; unset and empty are the same (``None``)."""
    env = os.environ if env is None else env
    return env.get(name) or None


# ------------------------------------------------------------------------------------------------
# Package data: query plans, index templates, LTR models
# ------------------------------------------------------------------------------------------------

PACKAGE_DATA = ("query_plans", "index_templates", "ltr_models")


def package_data_dir(name: str) -> Path:
    """The directory of package data ``orchestrator.<name>`` (one of :data:`PACKAGE_DATA`), found
    through ``importlib.resources``: the checkout's top-level ``<name>/`` in an editable install,
    ``site-packages/orchestrator/<name>/`` in a regular one."""
    if name not in PACKAGE_DATA:
        raise ValueError(f"unknown package data {name!r} (known: {', '.join(PACKAGE_DATA)})")
    package = f"{__package__}.{name}"
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise ConfigError(f"package data {package} is not installed: reinstall ltrr "
                          "(pip install . or pip install -e .)") from None
    if not isinstance(root, Path) or not root.is_dir():
        raise ConfigError(f"package data {package} is not a directory on disk ({root}): install ltrr "
                          "unzipped (pip install .)")
    return root


def _dir_setting(var: str, default: str, env: Mapping[str, str] | None) -> Path:
    raw = _get(env, var)
    if raw is None:
        return package_data_dir(default)
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{var}={raw!r} is not a directory")
    return path


def query_plans_dir(env: Mapping[str, str] | None = None) -> Path:
    """``LTRR_QUERY_PLANS``, else the packaged ``query_plans/``."""
    return _dir_setting("LTRR_QUERY_PLANS", "query_plans", env)


def index_templates_dir(env: Mapping[str, str] | None = None) -> Path:
    """``LTRR_INDEX_TEMPLATES``, else the packaged ``index_templates/``."""
    return _dir_setting("LTRR_INDEX_TEMPLATES", "index_templates", env)


def ltr_models_dir() -> Path:
    """The packaged ``ltr_models/``: LTR feature sets and trained models with their model cards."""
    return package_data_dir("ltr_models")


def model_cards_dir(env: Mapping[str, str] | None = None) -> Path:
    """``LTRR_MODEL_CARDS``, else ``ltr_models/cards`` beside the feature sets when that is
    writable (a checkout), else ``$LTRR_HOME/model_cards`` (an installed package)."""
    raw = _get(env, "LTRR_MODEL_CARDS")
    if raw is not None:
        return Path(raw).expanduser()
    packaged = ltr_models_dir()
    if os.access(packaged, os.W_OK):
        return packaged / "cards"
    return ltrr_home(env) / "model_cards"


# ------------------------------------------------------------------------------------------------
# The local node
# ------------------------------------------------------------------------------------------------

DEFAULT_HEAP_MB = 1024
# Variables naming where a plugin zip comes from (file, folder or https URL) when Maven does not
# serve the plugin.
PLUGIN_ZIP_VARS = ("LTRR_LTR_PLUGIN_ZIP",)


def node_heap_mb(env: Mapping[str, str] | None = None) -> int:
    """``LTRR_NODE_HEAP_MB``: the local node's heap in MiB (default 1024)."""
    raw = _get(env, "LTRR_NODE_HEAP_MB")
    if raw is None:
        return DEFAULT_HEAP_MB
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"LTRR_NODE_HEAP_MB={raw!r} is not an integer (MiB)") from None
    if value <= 0:
        raise ConfigError(f"LTRR_NODE_HEAP_MB={raw!r} must be positive")
    return value


def opensearch_version(env: Mapping[str, str] | None = None) -> str | None:
    """``LTRR_OPENSEARCH_VERSION``: the local node's version, or ``None`` to pick by the JDK
    (node.default_version checks it against the supported versions)."""
    raw = _get(env, "LTRR_OPENSEARCH_VERSION")
    return raw.strip() if raw else None


def java_home(env: Mapping[str, str] | None = None) -> Path | None:
    """``LTRR_JAVA_HOME``: the JDK to run the local node, tried before ``JAVA_HOME``."""
    raw = _get(env, "LTRR_JAVA_HOME")
    return Path(raw).expanduser() if raw else None


def maven_executable(env: Mapping[str, str] | None = None) -> str | None:
    """``LTRR_MVN``: the Maven command, instead of ``mvn`` on the PATH."""
    return _get(env, "LTRR_MVN")


def maven_args(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """``LTRR_MAVEN_ARGS``: extra Maven arguments (shell-quoted), e.g. ``-s /path/settings.xml``."""
    raw = _get(env, "LTRR_MAVEN_ARGS")
    if raw is None:
        return ()
    try:
        return tuple(shlex.split(raw))
    except ValueError as e:
        raise ConfigError(f"LTRR_MAVEN_ARGS={raw!r}: {e}") from None


def plugin_source(var: str, env: Mapping[str, str] | None = None) -> str | None:
    """Where to take a plugin zip from, named by ``var`` (one of :data:`PLUGIN_ZIP_VARS`): a zip
    file, a folder holding ``<plugin>-<version>.zip`` for several versions (as an absolute path),
    or an ``https://`` URL of the zip; ``None`` when unset."""
    if var not in PLUGIN_ZIP_VARS:
        raise ValueError(f"unknown plugin zip variable {var!r} (known: {', '.join(PLUGIN_ZIP_VARS)})")
    raw = _get(env, var)
    if raw is None:
        return None
    if raw.startswith("https://"):
        return raw
    if "://" in raw:
        raise ConfigError(f"{var}={raw!r}: only https:// URLs are accepted (or a local zip or folder)")
    path = Path(raw).expanduser()
    if not path.exists():
        raise ConfigError(f"{var}={raw!r} does not exist (give a zip, a folder of zips or an https URL)")
    return str(path.resolve())
