"""The local node's failure modes give clear errors (these run real processes, no mocks)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from orchestrator.config import ConfigError, ConnectionSettings, ltrr_home
from orchestrator.node import FALLBACK_VERSION, LocalNode, NodeAlreadyRunning, NodeError, default_version, find_java, maven_fetch


def test_connection_settings_defaults_and_validation(tmp_path):
    s = ConnectionSettings.from_env({})
    assert s.url == "http://127.0.0.1:9200" and s.is_local and s.port == 9200
    remote = ConnectionSettings.from_env({"OPENSEARCH_URL": "https://search.example.com:9243",
                                          "OPENSEARCH_USER": "u", "OPENSEARCH_PASSWORD": "s3cret-pw"})
    assert not remote.is_local and remote.use_ssl and remote.port == 9243
    assert "s3cret-pw" not in repr(remote)  # the password never shows in logs
    with pytest.raises(ConfigError, match="OPENSEARCH_URL"):
        ConnectionSettings.from_env({"OPENSEARCH_URL": "localhost:9200"})
    with pytest.raises(ConfigError, match="both"):
        ConnectionSettings.from_env({"OPENSEARCH_USER": "u"})
    with pytest.raises(ConfigError, match="boolean"):
        ConnectionSettings.from_env({"OPENSEARCH_VERIFY_CERTS": "maybe"})
    with pytest.raises(ConfigError, match="CA_CERTS"):
        ConnectionSettings.from_env({"OPENSEARCH_CA_CERTS": str(tmp_path / "missing.pem")})
    assert ltrr_home({"LTRR_HOME": str(tmp_path)}) == tmp_path.resolve()


def test_missing_java_is_a_clear_error(tmp_path):
    with pytest.raises(NodeError, match="Java not found.*JDK 17"):
        find_java(17, env={"PATH": str(tmp_path)})
    with pytest.raises(NodeError, match="missing"):
        find_java(17, env={"PATH": str(tmp_path), "JAVA_HOME": str(tmp_path / "nojdk")})


def _java_on_path() -> bool:
    import shutil

    return shutil.which("java") is not None


def test_java_too_old_names_the_requirement():
    if not _java_on_path():
        pytest.skip("no java here")
    with pytest.raises(NodeError, match="Java 99 or newer"):
        find_java(99)


def test_missing_maven_artifact_names_it(tmp_path):
    import shutil

    if not shutil.which("mvn"):
        pytest.skip("no mvn here")
    with pytest.raises(NodeError) as e:
        maven_fetch("org.opensearch.plugin:ltrr-no-such-artifact:0.0.1:zip", tmp_path)
    assert "ltrr-no-such-artifact" in str(e.value) and "mirror" in str(e.value)


def test_port_in_use_is_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        node = LocalNode(port=port, root=tmp_path)
        with pytest.raises(NodeError, match="already in use"):
            node.start(timeout_s=5)


def test_stale_pid_file_is_cleared(tmp_path):
    node = LocalNode(port=1, root=tmp_path)
    node.node_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    node.state_file.write_text(json.dumps({"pid": dead.pid, "port": 1}))
    assert node.running_pid() is None
    assert not node.state_file.exists()
    assert node.stop() is False


def _fake_node_process() -> subprocess.Popen:
    """A process that passes for our node (its command line names EmbeddedNode)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "EmbeddedNode"])


def test_start_on_another_port_names_the_running_node(tmp_path):
    fake = _fake_node_process()
    try:
        node = LocalNode(port=9301, root=tmp_path, version=FALLBACK_VERSION)
        node.node_dir.mkdir(parents=True)
        node.state_file.write_text(json.dumps({"pid": fake.pid, "port": 9399}))
        with pytest.raises(NodeError) as e:
            node.start(timeout_s=5)
        assert not isinstance(e.value, NodeAlreadyRunning)
        assert "running on port 9399" in str(e.value) and f"pid {fake.pid}" in str(e.value)
        assert "ltrr node stop" in str(e.value)
        same_port = LocalNode(port=9399, root=tmp_path, version=FALLBACK_VERSION)
        with pytest.raises(NodeAlreadyRunning):
            same_port.start(timeout_s=5)
        assert node.state_file.exists()  # nothing was touched
    finally:
        fake.kill()
        fake.wait()


def _cli(args, home, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENSEARCH_", "LTRR_"))}
    env.update(LTRR_HOME=str(home), LTRR_OPENSEARCH_VERSION=FALLBACK_VERSION,
               OPENSEARCH_URL="http://127.0.0.1:9399")  # local: the node commands apply; nothing answers
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_status_after_the_node_was_killed_says_it_died(tmp_path):
    node = LocalNode(port=9399, root=tmp_path, version=FALLBACK_VERSION)
    node.node_dir.mkdir(parents=True)
    killed = _fake_node_process()
    killed.kill()  # SIGKILL: no clean stop, the pid file stays behind
    killed.wait()
    node.state_file.write_text(json.dumps({"pid": killed.pid, "port": 9399}))
    assert node.dead_pid() == killed.pid
    for _ in range(2):  # status does not clear the pid file: it says the same thing again
        proc = _cli(["node", "status"], tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        message = " ".join(proc.stderr.split())
        assert f"died: pid {killed.pid} is not running" in message and str(node.log_dir) in message
        assert "Traceback" not in proc.stderr
    stop = _cli(["node", "stop"], tmp_path)
    assert stop.returncode == 0 and "had died" in stop.stdout
    assert not node.state_file.exists()
    down = _cli(["node", "status"], tmp_path)
    assert down.returncode == 3 and "down" in down.stdout


def test_node_dying_during_start_is_reported(tmp_path):
    """A distribution whose launcher cannot run: start must fail with the log, never succeed."""
    if not _java_on_path():
        pytest.skip("no java here")
    home = tmp_path / "opensearch" / FALLBACK_VERSION
    (home / "lib").mkdir(parents=True)
    (home / "launcher").mkdir()
    (home / "config").mkdir()
    (home / "config" / "log4j2.properties").write_text("")
    (home / ".ltrr-installed.json").write_text(json.dumps({"plugins": [], "missing_optional": {}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = LocalNode(port=port, root=tmp_path, version=FALLBACK_VERSION)
    with pytest.raises(NodeError, match="exited during start"):
        node.start(timeout_s=60)
    assert node.running_pid() is None


def test_cli_refuses_local_node_for_remote_url():
    env = dict(os.environ, OPENSEARCH_URL="https://search.example.com:9243")
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "node", "start"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "never starts a local node" in proc.stderr.replace("\n", " ")


def test_start_twice_says_already_running(opensearch_url, tmp_path):
    """With the session's node up, a second start on the same state reports it and starts nothing."""
    from orchestrator.config import ConnectionSettings

    settings = ConnectionSettings(url=opensearch_url)
    if not settings.is_local:
        pytest.skip("the test cluster is not a local node")
    candidates = [LocalNode(port=settings.port)]
    # ... and only when that node is the session's (a node on another port is another error)
    running = [n for n in candidates if n.running_pid() and ConnectionSettings(url=n.url).port == settings.port]
    if not running:
        pytest.skip("the session's node is not managed from the default LTRR_HOME state")
    from orchestrator.node import NodeAlreadyRunning

    with pytest.raises(NodeAlreadyRunning, match="already running"):
        running[0].start(timeout_s=5)


def test_version_choice():
    assert default_version({"LTRR_OPENSEARCH_VERSION": "2.19.1"}) == "2.19.1"
    with pytest.raises(NodeError, match="supported versions"):
        default_version({"LTRR_OPENSEARCH_VERSION": "1.0"})


def test_launcher_is_compiled_for_the_minimum_java():
    """A launcher built by a newer JDK must still run on the oldest JDK the version accepts."""
    from orchestrator.config import ltrr_home
    from orchestrator.node import DISTRIBUTIONS

    found = [(v, ltrr_home() / "opensearch" / v / "launcher" / "EmbeddedNode.class") for v in DISTRIBUTIONS]
    found = [(v, p) for v, p in found if p.exists()]
    if not found:
        pytest.skip("no installed node under LTRR_HOME")
    for version, path in found:
        major = int.from_bytes(path.read_bytes()[6:8], "big")
        assert major == DISTRIBUTIONS[version].min_java + 44, (version, major)


def _plugin_zip(path, opensearch_version: str, *, nested: bool = False, extra: dict | None = None):
    """A minimal plugin zip: a descriptor, a jar, an executable script (mode 0755)."""
    import zipfile

    prefix = "opensearch/" if nested else ""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{prefix}plugin-descriptor.properties", f"name=opensearch-ltr\nopensearch.version={opensearch_version}\n")
        zf.writestr(f"{prefix}ltr.jar", b"jar")
        zf.writestr(f"{prefix}log4j-core-2.21.0.jar", b"jar")
        script = zipfile.ZipInfo(f"{prefix}bin/tool")
        script.external_attr = 0o100755 << 16
        zf.writestr(script, "#!/bin/sh\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def test_plugin_zip_sources_versions_and_permissions(tmp_path):
    from orchestrator.node import NodeError, _check_plugin_version, _extract_plugin, _plugin_zip_from

    folder = tmp_path / "zips"
    folder.mkdir()
    _plugin_zip(folder / "opensearch-ltr-3.5.0.0.zip", "3.5.0")
    _plugin_zip(folder / "opensearch-ltr-2.19.1.0.zip", "2.19.1", nested=True)
    # A folder holding zips for several versions: the one for this node is taken.
    assert _plugin_zip_from(str(folder), "opensearch-ltr", "2.19.1.0", tmp_path / "dl").name == "opensearch-ltr-2.19.1.0.zip"
    with pytest.raises(NodeError, match=r"no opensearch-ltr-3\.9\.0\.0\.zip .*opensearch-ltr-2\.19\.1\.0\.zip"):
        _plugin_zip_from(str(folder), "opensearch-ltr", "3.9.0.0", tmp_path / "dl")
    single = folder / "opensearch-ltr-3.5.0.0.zip"
    assert _plugin_zip_from(str(single), "opensearch-ltr", "3.5.0.0", tmp_path / "dl") == single
    with pytest.raises(NodeError, match="does not exist any more"):
        _plugin_zip_from(str(tmp_path / "gone.zip"), "opensearch-ltr", "3.5.0.0", tmp_path / "dl")

    # Unpacked with permissions, excluded jars left out, the CLI layout flattened.
    for zip_name, target in (("opensearch-ltr-3.5.0.0.zip", "a"), ("opensearch-ltr-2.19.1.0.zip", "b")):
        pdir = tmp_path / target / "opensearch-ltr"
        _extract_plugin(folder / zip_name, pdir, exclude=("log4j-",))
        assert (pdir / "ltr.jar").exists() and not (pdir / "log4j-core-2.21.0.jar").exists()
        assert (pdir / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    _check_plugin_version(tmp_path / "a" / "opensearch-ltr", "3.5.0")
    # A zip for the wrong version names both versions.
    with pytest.raises(NodeError, match=r"built for OpenSearch 2\.19\.1, but this node runs OpenSearch 3\.5\.0"):
        _check_plugin_version(tmp_path / "b" / "opensearch-ltr", "3.5.0", folder / "opensearch-ltr-2.19.1.0.zip")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(NodeError, match="not a zip file"):
        _extract_plugin(tmp_path / "bad.zip", tmp_path / "c" / "opensearch-ltr")


def test_plugin_sources_prefer_the_variable_then_remember(tmp_path, monkeypatch):
    from orchestrator.node import DISTRIBUTIONS, _plugin_sources

    dist = DISTRIBUTIONS["3.5.0"]
    remembered = {"plugin_sources": {"opensearch-ltr": {"source": "/old/zips", "sha256": "x"}}}
    monkeypatch.delenv("LTRR_LTR_PLUGIN_ZIP", raising=False)
    assert _plugin_sources(dist, {}) == {}
    assert _plugin_sources(dist, remembered) == {"opensearch-ltr": "/old/zips"}  # a reinstall keeps LTR
    monkeypatch.setenv("LTRR_LTR_PLUGIN_ZIP", str(tmp_path))
    assert _plugin_sources(dist, remembered) == {"opensearch-ltr": str(tmp_path.resolve())}
