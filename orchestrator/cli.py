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


# ------------------------------------------------------------------------------------------------
# ltrr index ... / ltrr load
# ------------------------------------------------------------------------------------------------


def _client():
    from .client import make_client

    return make_client(_settings())


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@main.group()
def index() -> None:
    """Versioned indices behind aliases: <name> -> <name>-v<N>."""


@index.command("create")
@click.argument("name")
@click.option("--template", default="catalog", show_default=True,
              help="A file of index_templates/ (catalog, events, bandit_state).")
@click.option("--dataset", "dataset_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Add the facet and numeric fields this dataset's dataset.yaml declares.")
@click.option("--no-swap", is_flag=True, help="Create the new version without pointing the alias at it.")
def index_create(name: str, template: str, dataset_dir: str | None, no_swap: bool) -> None:
    """Create the next version of NAME from a template (and point NAME at it)."""
    from .catalog import CatalogError, create_version, swap_alias
    from .datasets import Dataset

    client = _client()
    try:
        spec = Dataset.open(dataset_dir).spec if dataset_dir else None
        created = create_version(client, name, template, spec)
        if not no_swap:
            swap_alias(client, name, created)
    except (CatalogError, ValueError) as e:
        _fail(str(e))
        return
    console.print(f"created {created}" + ("" if no_swap else f"; {name} -> {created}"))


@index.command("init")
def index_init() -> None:
    """Create the events and bandit-state indices when missing (idempotent)."""
    from .catalog import ensure_index

    client = _client()
    for alias, template in (("ltrr-events", "events"), ("ltrr-bandit-state", "bandit_state")):
        console.print(f"{alias} -> {ensure_index(client, alias, template)}")


@index.command("list")
@click.argument("name", required=False)
def index_list(name: str | None) -> None:
    """Versions, document counts, sizes, and which version serves."""
    from .catalog import list_versions

    versions = list_versions(_client(), name)
    table = Table("alias", "index", "docs", "size", "serving")
    for v in versions:
        table.add_row(v.alias, v.index, str(v.docs), _human_bytes(v.size_bytes), "yes" if v.serving else "")
    console.print(table)


@index.command("swap")
@click.argument("name")
@click.argument("version", type=int)
def index_swap(name: str, version: int) -> None:
    """Point NAME at NAME-v<VERSION> atomically (roll forward or back)."""
    from .catalog import CatalogError, swap_alias

    try:
        swap_alias(_client(), name, f"{name}-v{version}")
    except CatalogError as e:
        _fail(str(e))
    console.print(f"{name} -> {name}-v{version}")


@index.command("drop")
@click.argument("name")
@click.option("--version", type=int, default=None, help="Drop only this (non-serving) version.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def index_drop(name: str, version: int | None, yes: bool) -> None:
    """Delete one version, or every version of NAME."""
    from .catalog import CatalogError, drop

    if version is None and not yes:
        click.confirm(f"delete every version of {name}?", abort=True)
    try:
        dropped = drop(_client(), name, version)
    except CatalogError as e:
        _fail(str(e))
        return
    console.print(f"dropped {', '.join(dropped) or 'nothing'}")


@main.command("load")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--index", "alias", default=None, help="Alias to load into (default: the dataset's name).")
@click.option("--limit", type=int, default=None, help="Load only the first N corpus rows.")
@click.option("--no-embed", is_flag=True, help="Skip sentence embeddings (k-NN strategy will find nothing).")
@click.option("--allow-errors", is_flag=True, help="Exit 0 even when rows were rejected.")
@click.option("--chunk-size", type=int, default=500, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True, help="Bulk requests in flight.")
def load(dataset_dir: str, alias: str | None, limit: int | None, no_embed: bool, allow_errors: bool,
         chunk_size: int, threads: int) -> None:
    """Load a BEIR-layout DATASET_DIR into a new index version and swap the alias to it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from .catalog import BulkOptions, CatalogError, load_dataset
    from .datasets import Dataset, DatasetSpecError

    try:
        dataset = Dataset.open(dataset_dir)
    except (DatasetSpecError, FileNotFoundError) as e:
        _fail(str(e), 2)
        return
    encoder = cache = None
    if not no_embed:
        from .embeddings import EmbeddingCache, SentenceEncoder

        encoder, cache = SentenceEncoder(), EmbeddingCache()
    client = _client()
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, transient=False) as bar:
        task = bar.add_task(f"loading {dataset.spec.name}", total=None)
        try:
            report = load_dataset(client, dataset, alias=alias, limit=limit, embed=not no_embed, encoder=encoder,
                                  embedding_cache=cache, options=BulkOptions(chunk_size=chunk_size, threads=threads),
                                  swap_on_errors=allow_errors,
                                  progress=lambda done, total: bar.update(task, completed=done, total=total))
        except CatalogError as e:
            _fail(str(e))
            return
    for error in report.rejected[:20]:
        err.print(f"[red]rejected[/] {error}", highlight=False)
    if len(report.rejected) > 20:
        err.print(f"... and {len(report.rejected) - 20} more rejected rows")
    table = Table(show_header=False, box=None)
    table.add_row("index", f"{report.alias} -> {report.index}" if report.swapped
                  else f"{report.index} (built, NOT serving: rows were rejected; `ltrr index swap` or --allow-errors)")
    table.add_row("rows read", str(report.rows_read))
    table.add_row("accepted", str(report.accepted))
    table.add_row("rejected", str(len(report.rejected)))
    table.add_row("documents in index", str(report.docs_in_index))
    if not no_embed:
        table.add_row("embedded / cached", f"{report.embedded} / {report.embed_cache_hits}")
    table.add_row("retries", str(report.retries))
    table.add_row("time", f"{report.seconds:.1f}s ({report.docs_per_second:.0f} docs/s)")
    table.add_row("size on disk", f"{_human_bytes(report.size_bytes)} "
                  f"({_human_bytes(report.size_bytes / max(report.accepted, 1) * 1000)} per 1k docs)")
    console.print(table)
    if report.rejected and not allow_errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
