"""A local single-node OpenSearch, assembled from Maven artifacts and run by a tiny Java launcher.

Why this shape: the Maven ``integ-test-zip`` distribution of 2.x carries only the transport
module, and core modules are published as jars, not zips. So ltrr fetches the distribution, the
module jars and the plugin zips with ``mvn``, lays out ``modules/<name>/`` and ``plugins/<name>/``
folders with their descriptors (3.x's zip already has every core module; only plugins are added),
and starts the real ``org.opensearch.node.Node`` through ``EmbeddedNode.java``
(no root refusal, no security manager; every module and plugin still loads as a bundle with its
own class loader, version and jar-hell checks).

Layout under ``ltrr_home()``::

    opensearch/<version>/       the assembled distribution (lib, modules, plugins, launcher)
    node/config/                opensearch.yml, log4j2.properties
    node/data/, node/logs/      the node's data and logs
    node/node.json              pid, port, version of the running node
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, java_home, ltrr_home, maven_args, maven_executable, opensearch_version, plugin_source

JAVA_SOURCE = Path(__file__).with_name("java") / "EmbeddedNode.java"


class NodeError(RuntimeError):
    """The local node cannot be installed, started or reached; the message says what to do."""


# --------------------------------------------------------------------------------------------
# What goes into the node
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleSpec:
    """A core module rebuilt as a folder: jars from Maven plus a hand-written descriptor."""

    name: str
    classname: str
    artifacts: tuple[str, ...]  # group:artifact:version (jars, no transitives)
    description: str
    extended_plugins: tuple[str, ...] = ()
    policy: str | None = None


@dataclass(frozen=True)
class PluginSpec:
    """A plugin published as a zip. ``coordinates`` are tried in order; ``exclude`` are jar-name
    prefixes left out of the folder (they would trip the jar-hell check)."""

    name: str
    coordinates: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    required: bool = True
    zip_env: str | None = None  # config.PLUGIN_ZIP_VARS entry naming where the zip is, when Maven does not serve it


@dataclass(frozen=True)
class Distribution:
    version: str
    min_java: int
    modules: tuple[ModuleSpec, ...]
    plugins: tuple[PluginSpec, ...]
    # JVM flags that differ by OpenSearch line (taken from the distribution's config/jvm.options).
    locale_providers: str = "SPI,COMPAT"
    jvm_options: tuple[str, ...] = ()
    plugin_version: str = ""  # plugins are versioned <version>.0 (e.g. 3.5.0.0)

    @property
    def distribution_artifact(self) -> str:
        return f"org.opensearch.distribution.integ-test-zip:opensearch:{self.version}:zip"


def _distribution(version: str, plugin_version: str, min_java: int, asm: str, antlr: str, mustache: str,
                  *, bundled_modules: bool = False, locale_providers: str = "SPI,COMPAT",
                  jvm_options: tuple[str, ...] = ()) -> Distribution:
    v, pv = version, plugin_version
    painless_policy = (
        'grant {\n  permission java.lang.RuntimePermission "createClassLoader";\n'
        '  permission java.lang.RuntimePermission "getClassLoader";\n};\n'
    )
    modules = (
        ModuleSpec(
            "lang-painless",
            "org.opensearch.painless.PainlessPlugin",
            (
                f"org.opensearch.plugin:lang-painless:{v}",
                f"org.opensearch.plugin:opensearch-scripting-painless-spi:{v}",
                f"org.antlr:antlr4-runtime:{antlr}",
                *(f"org.ow2.asm:{a}:{asm}" for a in ("asm", "asm-util", "asm-tree", "asm-commons", "asm-analysis")),
            ),
            "An easy, safe and fast scripting language for OpenSearch",
            policy=painless_policy,
        ),
        ModuleSpec(
            "lang-mustache",
            "org.opensearch.script.mustache.MustachePlugin",
            (f"org.opensearch.plugin:lang-mustache-client:{v}", f"com.github.spullara.mustache.java:compiler:{mustache}"),
            "Mustache scripting integration for OpenSearch",
            policy='grant {\n  permission java.lang.RuntimePermission "accessDeclaredMembers";\n};\n',
        ),
        ModuleSpec(
            "mapper-extras",
            "org.opensearch.index.mapper.MapperExtrasPlugin",
            (f"org.opensearch.plugin:mapper-extras-client:{v}",),
            "Adds advanced field mappers (rank_feature, rank_features, scaled_float, ...)",
        ),
        ModuleSpec(
            "analysis-common",
            "org.opensearch.analysis.common.CommonAnalysisPlugin",
            (f"org.opensearch.plugin:analysis-common:{v}",),
            "Adds common analysis capabilities to OpenSearch",
            extended_plugins=("lang-painless",),
        ),
    )
    if bundled_modules:
        # From 3.x the integ-test-zip ships every core module (painless, mustache, mapper-extras,
        # analysis-common, ...) with its own descriptor: nothing to rebuild from jars.
        modules = ()
    plugins = (
        PluginSpec("opensearch-knn", (f"org.opensearch.plugin:opensearch-knn:{pv}:zip",)),
        PluginSpec(
            "opensearch-ltr",
            (f"org.opensearch:opensearch-ltr:{pv}:zip", f"org.opensearch.plugin:opensearch-ltr:{pv}:zip"),
            # LTR <= 2.19.4 bundles log4j-core, which the server already has: jar hell.
            exclude=("log4j-",),
            required=False,
            zip_env="LTRR_LTR_PLUGIN_ZIP",
        ),
    )
    return Distribution(version, min_java, modules, plugins, locale_providers, jvm_options, plugin_version)


# k-NN's zip is served on Maven Central only at 2.19.1.0 and 3.5.0.0 (checked 2026-11-25);
# 2.19.1 runs on the Java 17 every machine here has. Dependency versions come from the POMs.
# 3.5.0 needs Java 21+ (tested on Temurin 25); its zip already carries the modules, so the
# asm/antlr/mustache versions (from the 3.5.0 POMs) are unused there.
DISTRIBUTIONS: dict[str, Distribution] = {
    "2.19.1": _distribution("2.19.1", "2.19.1.0", 17, asm="9.7", antlr="4.13.1", mustache="0.9.14"),
    "3.5.0": _distribution(
        "3.5.0", "3.5.0.0", 21, asm="9.9.1", antlr="4.13.1", mustache="0.9.14", bundled_modules=True,
        # COMPAT is gone from Java 23; 3.x's launcher uses SPI,CLDR. The rest is from jvm.options
        # (the -javaagent line is left out: the embedded launcher runs without it).
        locale_providers="SPI,CLDR",
        jvm_options=("--add-modules=jdk.incubator.vector", "-Dorg.apache.lucene.store.MMapDirectory.sharedArenaMaxPermits=1"),
    ),
}
NEWEST_VERSION = "3.5.0"
FALLBACK_VERSION = "2.19.1"
DEFAULT_VERSION = NEWEST_VERSION


def default_version(env: dict[str, str] | None = None) -> str:
    """``LTRR_OPENSEARCH_VERSION`` when set; else the newest version this machine's Java can run
    (3.5.0 with a JDK 21+, otherwise 2.19.1 on Java 17)."""
    env = dict(os.environ) if env is None else env
    chosen = opensearch_version(env)
    if chosen:
        if chosen not in DISTRIBUTIONS:
            raise NodeError(f"LTRR_OPENSEARCH_VERSION={chosen!r}: supported versions are {', '.join(DISTRIBUTIONS)}")
        return chosen
    try:
        find_java(DISTRIBUTIONS[NEWEST_VERSION].min_java, env)
        return NEWEST_VERSION
    except NodeError:
        return FALLBACK_VERSION


# --------------------------------------------------------------------------------------------
# Java and Maven
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JavaRuntime:
    java: Path
    javac: Path | None
    feature: int
    home: Path


# Where JDKs are installed side by side; looked at only when the default java is too old.
JVM_DIRS: tuple[str, ...] = ("/usr/lib/jvm", "/Library/Java/JavaVirtualMachines")


def find_java(min_feature: int, env: dict[str, str] | None = None) -> JavaRuntime:
    """The JDK to run the node: ``LTRR_JAVA_HOME``, else ``JAVA_HOME``, else ``java`` on PATH; when
    those are too old and ``LTRR_JAVA_HOME`` is unset, the newest fitting JDK under ``JVM_DIRS``."""
    env = dict(os.environ) if env is None else env
    candidates: list[Path] = []
    ltrr_java_home = java_home(env)
    for home in (ltrr_java_home, Path(env["JAVA_HOME"]) if env.get("JAVA_HOME") else None):
        if home is not None:
            candidates.append(home / "bin" / "java")
    on_path = shutil.which("java", path=env.get("PATH"))
    if on_path:
        candidates.append(Path(on_path).resolve())
    if not candidates:
        raise NodeError(
            f"Java not found. The local OpenSearch node needs a JDK {min_feature} or newer: "
            "install one (e.g. apt-get install openjdk-17-jdk-headless) or set LTRR_JAVA_HOME."
        )
    seen: list[str] = []
    too_old = False
    for java in candidates:
        if not java.exists():
            seen.append(f"{java} (missing)")
            continue
        feature = _java_feature(java)
        if feature is None:
            seen.append(f"{java} (version unreadable)")
            continue
        if feature < min_feature:
            seen.append(f"{java} (Java {feature})")
            too_old = True
            continue
        home = java.parent.parent
        javac = home / "bin" / "javac"
        return JavaRuntime(java, javac if javac.exists() else None, feature, home)
    if too_old and ltrr_java_home is None:
        found: list[JavaRuntime] = []
        tried = {str(c.resolve()) for c in candidates if c.exists()}
        for root in JVM_DIRS:
            for home in sorted(Path(root).glob("*")) if Path(root).is_dir() else ():
                home = home / "Contents" / "Home" if (home / "Contents" / "Home").is_dir() else home
                java = home / "bin" / "java"
                if not java.is_file() or str(java.resolve()) in tried:
                    continue
                tried.add(str(java.resolve()))
                feature = _java_feature(java)
                if feature is None:
                    continue
                if feature < min_feature:
                    seen.append(f"{java} (Java {feature})")
                    continue
                javac = home / "bin" / "javac"
                found.append(JavaRuntime(java, javac if javac.exists() else None, feature, home))
        if found:  # prefer a full JDK, then the newest
            return max(found, key=lambda j: (j.javac is not None, j.feature))
    raise NodeError(
        f"OpenSearch here needs Java {min_feature} or newer; found only: {', '.join(seen)}. "
        "Install a newer JDK or set LTRR_JAVA_HOME to one."
    )


def _java_feature(java: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(java), "-XshowSettings:properties", "-version"], capture_output=True, text=True, timeout=30
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"java\.specification\.version = (\d+)(?:\.(\d+))?", out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def maven_fetch(artifact: str, dest: Path, *, mvn: str | None = None) -> Path:
    """Copy one artifact (no transitives) into ``dest`` with ``mvn``; Maven keeps its own cache in
    ``~/.m2`` and honours mirrors from ``~/.m2/settings.xml``. Returns the file."""
    try:
        mvn = mvn or maven_executable() or shutil.which("mvn")
        extra = maven_args()
    except ConfigError as e:
        raise NodeError(str(e)) from None
    if not mvn:
        raise NodeError(
            "Maven (mvn) not found: it fetches OpenSearch from Maven Central. Install it "
            "(apt-get install maven) or point ltrr at an existing cluster with OPENSEARCH_URL."
        )
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [mvn, "-B", "-q", "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={dest}",
           "-Dmdep.overWriteReleases=false", "-Dtransitive=false"]
    if extra:
        cmd[1:1] = extra
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir())
    parts = artifact.split(":")
    name, version = parts[1], parts[2]
    ext = parts[3] if len(parts) > 3 else "jar"
    path = dest / f"{name}-{version}.{ext}"
    if proc.returncode != 0 or not path.exists():
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ERROR" in ln][:3]
        raise NodeError(
            f"could not fetch {artifact} with Maven.\n  {' '.join(errors)[:600]}\n"
            "If Maven Central is unreachable, configure a mirror in ~/.m2/settings.xml (<mirrors>) "
            "or set LTRR_MAVEN_ARGS (e.g. '-s /path/settings.xml'); or use an existing cluster "
            "with OPENSEARCH_URL instead of a local node."
        )
    return path


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


@dataclass
class InstallReport:
    home: Path
    downloaded: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)
    missing_optional: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _descriptor(name: str, description: str, version: str, os_version: str, classname: str,
                extended: Sequence[str] = ()) -> str:
    return (
        f"description={description}\nversion={version}\nname={name}\nclassname={classname}\n"
        f"java.version=11\nopensearch.version={os_version}\nextended.plugins={','.join(extended)}\n"
        "has.native.controller=false\n"
    )


def install(version: str | None = None, *, home_root: Path | None = None,
            log: Callable[[str], None] = lambda s: None, force: bool = False) -> InstallReport:
    """Assemble the distribution under ``<ltrr_home>/opensearch/<version>`` once; later calls
    return at once (nothing is downloaded twice). Assembly happens in a temp folder renamed into
    place at the end, so an interrupted install never leaves a half-built home; ``force`` rebuilds
    and replaces a finished home only once the new one is complete."""
    version = version or default_version()
    if version not in DISTRIBUTIONS:
        raise NodeError(f"unknown OpenSearch version {version!r}; supported: {', '.join(DISTRIBUTIONS)}")
    dist = DISTRIBUTIONS[version]
    root = (home_root or ltrr_home()) / "opensearch"
    home = root / version
    marker = home / ".ltrr-installed.json"
    previous = json.loads(marker.read_text()) if marker.exists() else {}
    sources = _plugin_sources(dist, previous)
    if previous and not force:
        missing = set(previous.get("missing_optional", {}))
        addable = sorted(name for name in missing if name in sources)
        if not addable:
            return InstallReport(home, plugins=previous.get("plugins", []),
                                 missing_optional=previous.get("missing_optional", {}))
        # A plugin that was missing can be had now (e.g. LTRR_LTR_PLUGIN_ZIP was set since): rebuild
        # aside with it; the current home keeps serving until the new one is complete.
        log(f"adding {', '.join(addable)} to the installed OpenSearch {version}")

    t0 = time.monotonic()
    java = find_java(dist.min_java)
    if java.javac is None:
        raise NodeError(f"{java.home} is a JRE without javac; the node launcher needs a full JDK {dist.min_java}+")
    root.mkdir(parents=True, exist_ok=True)
    report = InstallReport(home)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{version}-") as tmp:
        tmp = Path(tmp)
        dl = tmp / "downloads"
        log(f"fetching {dist.distribution_artifact}")
        zpath = maven_fetch(dist.distribution_artifact, dl)
        report.downloaded.append(dist.distribution_artifact)
        with zipfile.ZipFile(zpath) as zf:
            zf.extractall(tmp / "unpacked")
        (top,) = list((tmp / "unpacked").iterdir())
        build = tmp / "home"
        shutil.move(str(top), build)

        for module in dist.modules:
            mdir = build / "modules" / module.name
            for artifact in module.artifacts:
                log(f"fetching {artifact}")
                maven_fetch(artifact, mdir)
                report.downloaded.append(artifact)
            (mdir / "plugin-descriptor.properties").write_text(
                _descriptor(module.name, module.description, version, version, module.classname,
                            module.extended_plugins))
            if module.policy:
                (mdir / "plugin-security.policy").write_text(module.policy)

        installed_sources: dict[str, dict[str, str]] = {}
        for plugin in dist.plugins:
            zip_path: Path | None = None
            errors: list[str] = []
            source = sources.get(plugin.name)
            if source:
                log(f"taking {plugin.name} from {source}")
                zip_path = _plugin_zip_from(source, plugin.name, dist.plugin_version, dl)
                installed_sources[plugin.name] = {"source": source, "sha256": _sha256(zip_path)}
            else:
                for coordinate in plugin.coordinates:
                    try:
                        log(f"fetching {coordinate}")
                        zip_path = maven_fetch(coordinate, dl)
                        report.downloaded.append(coordinate)
                        break
                    except NodeError as e:
                        errors.append(coordinate)
                        last = str(e)
            if zip_path is None:
                why = (f"not served by Maven ({', '.join(errors)}); to add it, set {plugin.zip_env} to the "
                       f"{plugin.name} zip for OpenSearch {version} (a file, a folder of zips or an https URL), "
                       "then `ltrr node reinstall` (see the README)")
                if plugin.required:
                    raise NodeError(f"{plugin.name}: {last}")
                report.missing_optional[plugin.name] = why
                log(f"warning: {plugin.name} {why}")
                continue
            pdir = build / "plugins" / plugin.name
            _extract_plugin(zip_path, pdir, plugin.exclude)
            _check_plugin_version(pdir, version, zip_path)
            report.plugins.append(plugin.name)

        log("compiling the node launcher")
        launcher = build / "launcher"
        launcher.mkdir()
        shutil.copy2(JAVA_SOURCE, launcher / JAVA_SOURCE.name)
        proc = subprocess.run(
            # --release: the class must run on any JDK the version accepts, not just this one.
            [str(java.javac), "-proc:none", "--release", str(dist.min_java), "-cp", str(build / "lib" / "*"), "-d", str(launcher),
             str(launcher / JAVA_SOURCE.name)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise NodeError(f"compiling the launcher failed:\n{proc.stderr[-2000:]}")
        shutil.rmtree(dl, ignore_errors=True)
        report.seconds = time.monotonic() - t0
        (build / ".ltrr-installed.json").write_text(json.dumps(
            {"version": version, "plugins": report.plugins, "missing_optional": report.missing_optional,
             "artifacts": report.downloaded, "plugin_sources": installed_sources, "java": str(java.java)}, indent=2))
        if home.exists():
            shutil.rmtree(home)
        shutil.move(str(build), home)
    return report


def _plugin_sources(dist: Distribution, previous: dict) -> dict[str, str]:
    """Where each non-Maven plugin comes from: its variable (e.g. ``LTRR_LTR_PLUGIN_ZIP``) when
    set, else the source the installed distribution remembers (so a reinstall keeps the plugin)."""
    out: dict[str, str] = {}
    remembered = previous.get("plugin_sources", {})
    for plugin in dist.plugins:
        if not plugin.zip_env:
            continue
        try:
            source = plugin_source(plugin.zip_env)
        except ConfigError as e:
            raise NodeError(str(e)) from None
        source = source or remembered.get(plugin.name, {}).get("source")
        if source:
            out[plugin.name] = source
    return out


def _plugin_zip_from(source: str, name: str, plugin_version: str, download_dir: Path) -> Path:
    """The zip of plugin ``name`` at ``plugin_version`` (e.g. 3.5.0.0) from ``source``: an https
    URL (downloaded), a folder holding ``<name>-<plugin_version>.zip``, or a zip file."""
    if source.startswith("https://"):
        download_dir.mkdir(parents=True, exist_ok=True)
        target = download_dir / f"{name}-{plugin_version}.zip"
        try:
            with urllib.request.urlopen(source, timeout=120) as resp, open(target, "wb") as out:
                shutil.copyfileobj(resp, out)
        except (urllib.error.URLError, OSError) as e:
            raise NodeError(f"{name}: downloading {source} failed: {e}") from None
        return target
    path = Path(source)
    if path.is_dir():
        wanted = path / f"{name}-{plugin_version}.zip"
        if not wanted.is_file():
            have = ", ".join(sorted(p.name for p in path.glob("*.zip"))) or "no zips"
            raise NodeError(f"{name}: {path} has no {wanted.name} for this node (it has: {have})")
        return wanted
    if not path.is_file():
        raise NodeError(f"{name}: {source} does not exist any more; set the plugin's variable again")
    return path


def _extract_plugin(zip_path: Path, pdir: Path, exclude: Sequence[str] = ()) -> None:
    """Unpack a plugin zip into ``pdir`` with its unix permissions, leaving out jars whose names
    start with one of ``exclude``; a zip in the plugin CLI's layout (everything under
    ``opensearch/``) is flattened."""
    pdir.mkdir(parents=True)
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise NodeError(f"{pdir.name}: {zip_path} is not a zip file") from None
    with zf:
        for member in zf.infolist():
            base = member.filename.rsplit("/", 1)[-1]
            if any(base.startswith(p) and base.endswith(".jar") for p in exclude):
                continue
            extracted = zf.extract(member, pdir)
            mode = (member.external_attr >> 16) & 0o777  # zipfile.extract drops unix permissions
            if mode:
                os.chmod(extracted, mode)
    nested = pdir / "opensearch"
    if not (pdir / "plugin-descriptor.properties").exists() and nested.is_dir():
        for child in nested.iterdir():
            shutil.move(str(child), pdir)
        nested.rmdir()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_plugin_version(pdir: Path, version: str, zip_path: Path | None = None) -> None:
    desc = pdir / "plugin-descriptor.properties"
    if not desc.exists():
        raise NodeError(f"{pdir.name}: the zip has no plugin-descriptor.properties")
    props = dict(line.split("=", 1) for line in desc.read_text().splitlines() if "=" in line and not line.startswith("#"))
    built_for = props.get("opensearch.version", "").strip()
    if built_for != version:
        where = f" ({zip_path})" if zip_path else ""
        raise NodeError(f"{pdir.name}{where} is built for OpenSearch {built_for or 'an unknown version'}, but this "
                        f"node runs OpenSearch {version}: use the {pdir.name} zip for {version}")


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    url: str
    version: str
    plugins: tuple[str, ...]
    modules: tuple[str, ...]
    pid: int | None
    heap_used_mb: float | None
    heap_max_mb: float | None
    data_path: Path
    log_path: Path
    status: str


class LocalNode:
    """Start, stop and inspect the local node. All state lives in files under ``node_dir``, so a
    second ``ltrr`` process (or a test run) sees the same node."""

    def __init__(self, *, port: int = 9200, heap_mb: int = 1024, version: str | None = None,
                 root: Path | None = None, node_dir: Path | None = None) -> None:
        if not 1 <= port <= 65535:
            raise NodeError(f"port {port} is out of range")
        if heap_mb < 256:
            raise NodeError("heap must be at least 256 MiB")
        self.port = port
        self.heap_mb = heap_mb
        self.version = version or default_version()
        self.root = root or ltrr_home()
        # The distribution is shared under root; node_dir (data, logs, state) may live elsewhere,
        # e.g. a throwaway node for a test session.
        self.node_dir = node_dir or self.root / "node"
        self.state_file = self.node_dir / "node.json"

    # ---- paths ---------------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        # Per version: an index written by 3.x cannot be opened by 2.19, and vice versa.
        return self.node_dir / f"data-{self.version}"

    @property
    def log_dir(self) -> Path:
        return self.node_dir / "logs"

    @property
    def console_log(self) -> Path:
        return self.log_dir / "console.log"

    @property
    def server_log(self) -> Path:
        return self.log_dir / "ltrr.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._state().get('port', self.port)}"

    # ---- state ---------------------------------------------------------------------------
    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def running_pid(self) -> int | None:
        """The pid of our node if its process is alive; clears a stale state file."""
        pid = self._state().get("pid")
        if not pid:
            return None
        if _pid_alive(pid) and _is_our_java(pid):
            return pid
        self.state_file.unlink(missing_ok=True)
        return None

    def dead_pid(self) -> int | None:
        """The pid in the state file when that process is gone (the node died or was killed
        without ``stop``), else None. Unlike :meth:`running_pid` it leaves the file in place."""
        pid = self._state().get("pid")
        if not pid or (_pid_alive(pid) and _is_our_java(pid)):
            return None
        return pid

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self, *, timeout_s: float = 180.0, log: Callable[[str], None] = lambda s: None) -> NodeInfo:
        """Start the node and wait until it answers, is at least yellow, and is *this* process
        (not another server that took the port meanwhile). Two concurrent starts serialise on a
        lock; the second finds the first's node running."""
        self.node_dir.mkdir(parents=True, exist_ok=True)
        with open(self.node_dir / ".start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._start_locked(timeout_s, log)

    def _start_locked(self, timeout_s: float, log: Callable[[str], None]) -> NodeInfo:
        pid = self.running_pid()
        if pid:
            port = self._state().get("port", self.port)
            if port != self.port:  # one local node per node_dir: it cannot also run on self.port
                raise NodeError(
                    f"a local node is already running on port {port} (pid {pid}), not on {self.port}; "
                    f"stop it first (ltrr node stop), or use it: OPENSEARCH_URL=http://127.0.0.1:{port}")
            raise NodeAlreadyRunning(f"a node is already running (pid {pid}) at {self.url}")
        if _port_in_use(self.port):
            raise NodeError(
                f"port {self.port} on 127.0.0.1 is already in use by another process; "
                "stop it or choose another port (--port, or OPENSEARCH_URL=http://127.0.0.1:<port>)")
        report = install(self.version, home_root=self.root, log=log)
        for name, why in report.missing_optional.items():
            log(f"warning: plugin {name} is not installed: {why}")
        dist_home = report.home
        java = find_java(DISTRIBUTIONS[self.version].min_java)
        config = self.node_dir / "config"
        for d in (config, self.data_path, self.log_dir, self.node_dir / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copy2(dist_home / "config" / "log4j2.properties", config / "log4j2.properties")
        settings = {
            "cluster.name": "ltrr",
            "node.name": "ltrr-node",
            "network.host": "127.0.0.1",
            "http.port": self.port,
            "transport.port": "9300-9399",
            "discovery.type": "single-node",
            "path.data": str(self.data_path),
            "path.logs": str(self.log_dir),
            # A nearly full disk on a laptop or CI box must not turn indices read-only.
            "cluster.routing.allocation.disk.threshold_enabled": False,
        }
        if "opensearch-ltr" in report.plugins:
            settings["ltr.caches.max_mem"] = "64mb"
        (config / "opensearch.yml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
        cmd = [str(java.java), *self._jvm_options(), "-cp",
               f"{dist_home / 'lib' / '*'}{os.pathsep}{dist_home / 'launcher'}",
               "EmbeddedNode", str(dist_home), str(config)]
        log(f"starting OpenSearch {self.version} on 127.0.0.1:{self.port} (heap {self.heap_mb} MiB)")
        console = open(self.console_log, "ab")
        proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.node_dir)
        console.close()
        self.state_file.write_text(json.dumps({"pid": proc.pid, "port": self.port, "version": self.version,
                                               "heap_mb": self.heap_mb, "started": time.time()}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                self.state_file.unlink(missing_ok=True)
                raise NodeError(f"the node exited during start (code {code}). Last log lines:\n{self.tail(40)}")
            health = _get_json(f"http://127.0.0.1:{self.port}/_cluster/health", timeout=2)
            if health and health.get("status") in ("yellow", "green"):
                if _answering_pid(self.port) != proc.pid:
                    self._terminate(proc.pid)
                    self.state_file.unlink(missing_ok=True)
                    raise NodeError(f"another server answers on port {self.port}, not the node just started; "
                                    "stopped ours. Choose another port.")
                info = self.info()
                if info is not None and proc.poll() is None:
                    return info
            time.sleep(0.5)
        self._terminate(proc.pid)
        self.state_file.unlink(missing_ok=True)
        raise NodeError(f"the node did not answer within {timeout_s:.0f}s; stopped it. Last log lines:\n{self.tail(40)}")

    def _jvm_options(self) -> list[str]:
        tmp = self.node_dir / "tmp"
        dist = DISTRIBUTIONS[self.version]
        return [
            f"-Xms{self.heap_mb}m", f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC", "-XX:G1ReservePercent=25",
            "-XX:InitiatingHeapOccupancyPercent=30", "-Xss1m", f"-Djava.io.tmpdir={tmp}",
            "-Djava.awt.headless=true", "-Dfile.encoding=UTF-8", "-Djna.nosys=true",
            "-XX:-OmitStackTraceInFastThrow", "-Dio.netty.noUnsafe=true", "-Dio.netty.noKeySetOptimization=true",
            "-Dio.netty.recycler.maxCapacityPerThread=0", "-Dio.netty.allocator.numDirectArenas=0",
            "-Dlog4j.shutdownHookEnabled=false", "-Dlog4j2.disable.jmx=true", "-Dlog4j2.formatMsgNoLookups=true",
            f"-Djava.locale.providers={dist.locale_providers}", "-Dopensearch.networkaddress.cache.ttl=60",
            f"-XX:ErrorFile={self.log_dir}/hs_err_pid%p.log", *dist.jvm_options,
        ]

    def stop(self, *, timeout_s: float = 60.0) -> bool:
        """Stop the node cleanly (SIGTERM runs the node's shutdown hook). Returns False when no
        node was running."""
        pid = self.running_pid()
        if not pid:
            return False
        self._terminate(pid, timeout_s)
        self.state_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _terminate(pid: int, timeout_s: float = 60.0) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.2)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def info(self) -> NodeInfo | None:
        """What the running node says about itself, or None when it does not answer."""
        base = self.url
        root = _get_json(base + "/", timeout=3)
        if not root:
            return None
        nodes = _get_json(base + "/_nodes/plugins,jvm", timeout=5) or {}
        stats = _get_json(base + "/_nodes/stats/jvm", timeout=5) or {}
        health = _get_json(base + "/_cluster/health", timeout=5) or {}
        node = next(iter(nodes.get("nodes", {}).values()), {})
        nstat = next(iter(stats.get("nodes", {}).values()), {})
        mem = nstat.get("jvm", {}).get("mem", {})
        return NodeInfo(
            url=base,
            version=root.get("version", {}).get("number", "?"),
            plugins=tuple(sorted(p["name"] for p in node.get("plugins", []))),
            modules=tuple(sorted(m["name"] for m in node.get("modules", []))),
            pid=self.running_pid(),
            heap_used_mb=mem.get("heap_used_in_bytes", 0) / 2**20 if mem else None,
            heap_max_mb=mem.get("heap_max_in_bytes", 0) / 2**20 if mem else None,
            data_path=self.data_path,
            log_path=self.server_log,
            status=health.get("status", "?"),
        )

    def tail(self, lines: int = 50) -> str:
        chunks = []
        for path in (self.console_log, self.server_log):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(chunks) or "(no log yet)"


class NodeAlreadyRunning(NodeError):
    pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _is_our_java(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the pid file
    return b"EmbeddedNode" in cmdline


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _answering_pid(port: int) -> int | None:
    """The process id the OpenSearch on ``port`` reports for itself."""
    nodes = _get_json(f"http://127.0.0.1:{port}/_nodes/_local/process", timeout=3) or {}
    node = next(iter(nodes.get("nodes", {}).values()), {})
    return node.get("process", {}).get("id")


def cluster_answers(url: str, timeout: float = 3.0) -> bool:
    """Whether an OpenSearch answers at ``url`` (plain HTTP, no auth: the local case)."""
    root = _get_json(url.rstrip("/") + "/", timeout=timeout)
    return bool(root and "version" in root and "cluster_name" in root)


def _get_json(url: str, timeout: float) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
