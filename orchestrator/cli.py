"""The ``ltrr`` command line."""

from __future__ import annotations

import os
import sys
import time

import click
from rich.console import Console
from rich.table import Table

from .config import ConfigError, ConnectionSettings, ltrr_home
from .node import DEFAULT_VERSION, LocalNode, NodeAlreadyRunning, NodeError, install

console = Console(stderr=False)
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


def _settings() -> ConnectionSettings:
    try:
        return ConnectionSettings.from_env()
    except ConfigError as e:
        _fail(str(e), 2)
        raise  # unreachable


@click.group()
@click.version_option(package_name="ltrr")
def main() -> None:
    """ltrr: learning to rank *and retrieve* over OpenSearch."""


# ------------------------------------------------------------------------------------------------
# ltrr node ...
# ------------------------------------------------------------------------------------------------


def _local_node(port: int | None, heap: int | None) -> LocalNode:
    settings = _settings()
    if not settings.is_local:
        _fail(f"OPENSEARCH_URL={settings.url} points at another cluster; ltrr never starts a local "
              "node then. Unset OPENSEARCH_URL to use the local node.", 2)
    if port is None:
        port = settings.port
    heap = heap or int(os.environ.get("LTRR_NODE_HEAP_MB", "1024"))
    try:
        return LocalNode(port=port, heap_mb=heap, version=os.environ.get("LTRR_OPENSEARCH_VERSION", DEFAULT_VERSION))
    except NodeError as e:
        _fail(str(e), 2)
        raise


@main.group()
def node() -> None:
    """Run a local single-node OpenSearch (k-NN, LTR, painless, mustache, mapper-extras)."""


@node.command("start")
@click.option("--port", type=int, default=None, help="HTTP port (default: from OPENSEARCH_URL, else 9200).")
@click.option("--heap", "heap_mb", type=int, default=None, help="Heap in MiB (default 1024, or LTRR_NODE_HEAP_MB).")
@click.option("--timeout", type=float, default=180.0, show_default=True, help="Seconds to wait for the node.")
def node_start(port: int | None, heap_mb: int | None, timeout: float) -> None:
    """Download (first time only), start and wait until the cluster is at least yellow."""
    local = _local_node(port, heap_mb)
    t0 = time.monotonic()
    try:
        info = local.start(timeout_s=timeout, log=lambda s: err.print(f"[dim]{s}[/]", highlight=False))
    except NodeAlreadyRunning as e:
        console.print(f"[yellow]{e}[/]")
        return
    except NodeError as e:
        _fail(str(e))
        return
    console.print(f"[green]OpenSearch {info.version} is up[/] at {info.url} (status {info.status}, "
                  f"{time.monotonic() - t0:.1f}s)")
    console.print(f"  plugins: {', '.join(info.plugins) or '-'}")
    console.print(f"  modules: {', '.join(info.modules)}")
    console.print(f"  data: {info.data_path}\n  logs: {info.log_path}")
    missing = {"opensearch-knn", "opensearch-ltr"} - set(info.plugins)
    if missing:
        err.print(f"[yellow]warning:[/] missing plugins: {', '.join(sorted(missing))} (see `ltrr node status`)")


@node.command("stop")
def node_stop() -> None:
    """Stop the local node cleanly."""
    local = _local_node(None, None)
    if local.stop():
        console.print("stopped")
    else:
        console.print("no local node is running")


@node.command("status")
def node_status() -> None:
    """Up or down, version, plugins, heap, data path."""
    local = _local_node(None, None)
    info = local.info() if local.running_pid() else None
    table = Table(show_header=False, box=None)
    if info is None:
        table.add_row("state", "[red]down[/]")
        table.add_row("data", str(local.data_path))
        table.add_row("logs", str(local.log_dir))
        console.print(table)
        sys.exit(3)
    table.add_row("state", f"[green]up[/] ({info.status})")
    table.add_row("url", info.url)
    table.add_row("version", info.version)
    table.add_row("pid", str(info.pid))
    table.add_row("plugins", ", ".join(info.plugins) or "-")
    table.add_row("modules", ", ".join(info.modules))
    if info.heap_max_mb:
        table.add_row("heap", f"{info.heap_used_mb:.0f} / {info.heap_max_mb:.0f} MiB")
    table.add_row("data", str(info.data_path))
    table.add_row("logs", str(info.log_path))
    marker = ltrr_home() / "opensearch" / local.version / ".ltrr-installed.json"
    if marker.exists():
        import json

        missing = json.loads(marker.read_text()).get("missing_optional", {})
        for name, why in missing.items():
            table.add_row(f"missing {name}", why)
    console.print(table)


@node.command("logs")
@click.option("-n", "--lines", type=int, default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
def node_logs(lines: int, follow: bool) -> None:
    """Tail the node's log."""
    local = _local_node(None, None)
    path = local.server_log if local.server_log.exists() else local.console_log
    if not path.exists():
        _fail(f"no log at {path} yet")
    click.echo("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    if follow:
        with open(path, errors="replace") as f:
            f.seek(0, os.SEEK_END)
            try:
                while True:
                    line = f.readline()
                    if line:
                        click.echo(line, nl=False)
                    else:
                        time.sleep(0.3)
            except KeyboardInterrupt:
                pass


@node.command("install")
def node_install() -> None:
    """Fetch and assemble the node without starting it (what `start` does the first time)."""
    try:
        report = install(os.environ.get("LTRR_OPENSEARCH_VERSION", DEFAULT_VERSION),
                         log=lambda s: err.print(f"[dim]{s}[/]", highlight=False))
    except NodeError as e:
        _fail(str(e))
        return
    console.print(f"installed at {report.home}; plugins: {', '.join(report.plugins)}")
    for name, why in report.missing_optional.items():
        err.print(f"[yellow]warning:[/] {name}: {why}")


@node.command("reinstall")
def node_reinstall() -> None:
    """Rebuild the distribution folder (e.g. after setting LTRR_LTR_PLUGIN_ZIP). Data is kept."""
    import shutil

    version = os.environ.get("LTRR_OPENSEARCH_VERSION", DEFAULT_VERSION)
    local = _local_node(None, None)
    if local.running_pid():
        _fail("stop the node first: ltrr node stop")
    shutil.rmtree(ltrr_home() / "opensearch" / version, ignore_errors=True)
    node_install.callback()  # type: ignore[misc]


if __name__ == "__main__":
    main()
