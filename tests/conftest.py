"""Shared fixtures. Integration tests get a real OpenSearch from, in order:

1. ``OPENSEARCH_URL`` when set (CI starts the local node and sets it; or your own cluster);
2. testcontainers with the official image, when a Docker engine answers;
3. a throwaway local node (``orchestrator.node``) on a free port, stopped at the end.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from orchestrator.client import make_client
from orchestrator.config import ConnectionSettings
from orchestrator.node import NEWEST_VERSION

OFFICIAL_IMAGE = f"opensearchproject/opensearch:{NEWEST_VERSION}"  # includes the k-NN and LTR plugins


def shared_dir() -> Path:
    """``../shared`` beside the repo (CI lays it there), or ``LTRR_SHARED_DIR``."""
    if os.environ.get("LTRR_SHARED_DIR"):
        return Path(os.environ["LTRR_SHARED_DIR"])
    return Path(__file__).resolve().parents[2] / "shared"


def cli_env(opensearch_url: str, **extra: str) -> dict[str, str]:
    """Environment for `ltrr` subprocesses: the test cluster's URL plus any auth/TLS settings."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENSEARCH_", "LTRR_"))}
    env.update({"OPENSEARCH_URL": opensearch_url, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}, **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _docker_answers() -> bool:
    try:
        import docker  # installed with testcontainers

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def opensearch_url(tmp_path_factory):
    if os.environ.get("OPENSEARCH_URL"):
        yield os.environ["OPENSEARCH_URL"].rstrip("/")
        return
    if _docker_answers():
        from testcontainers.opensearch import OpenSearchContainer

        with OpenSearchContainer(OFFICIAL_IMAGE, security_enabled=False) as container:
            config = container.get_config()
            yield f"http://{config['host']}:{config['port']}"
        return
    from orchestrator.node import LocalNode

    node = LocalNode(port=_free_port(), heap_mb=1024, node_dir=tmp_path_factory.mktemp("node"))
    node.start(timeout_s=300)
    try:
        yield node.url
    finally:
        node.stop()


@pytest.fixture(scope="session")
def os_client(opensearch_url):
    # With OPENSEARCH_URL set, auth and TLS come from the environment too.
    settings = ConnectionSettings.from_env() if os.environ.get("OPENSEARCH_URL") else ConnectionSettings(url=opensearch_url)
    client = make_client(settings)
    client.cluster.health(wait_for_status="yellow", timeout=60)
    return client


@pytest.fixture(scope="session")
def installed_plugins(os_client) -> set[str]:
    return {row["component"] for row in os_client.cat.plugins(format="json")}


@pytest.fixture(scope="session")
def ltr_client(os_client, installed_plugins):
    """The client of a node with the LTR plugin and its default store. Without the plugin the
    test skips, except where the plugin can be had (CI sets LTRR_REQUIRE_LTR): there it fails."""
    if "opensearch-ltr" not in installed_plugins:
        why = ("the opensearch-ltr plugin is not installed on this node (Maven Central does not serve its "
               "zip; set LTRR_LTR_PLUGIN_ZIP and `ltrr node reinstall`, or use a cluster that has it via "
               "OPENSEARCH_URL)")
        if os.environ.get("LTRR_REQUIRE_LTR"):
            pytest.fail(why)
        pytest.skip(why)
    os_client.transport.perform_request("PUT", "/_ltr", params={"ignore": 400})
    return os_client


@pytest.fixture
def index_name(os_client):
    """A unique index name, deleted after the test."""
    name = f"ltrr-test-{uuid.uuid4().hex[:10]}"
    yield name
    os_client.indices.delete(index=name, ignore_unavailable=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "os_client" in getattr(item, "fixturenames", ()) or "opensearch_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
