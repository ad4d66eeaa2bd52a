"""The ``ltrr`` command line."""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import DEFAULT_URL, ConfigError, ConnectionSettings, ltrr_home, node_heap_mb
from .node import LocalNode, NodeAlreadyRunning, NodeError, default_version, install

# Piped output (CI logs, files) gets a wide console so tables are not truncated at 80 columns.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _settings() -> ConnectionSettings:
    try:
        return ConnectionSettings.from_env()
    except ConfigError as e:
        _fail(str(e), 2)
        raise  # unreachable


def _connection_reason(e: Exception) -> str:
    """The useful part of a client connection error, on one line."""
    text = str(getattr(e, "error", "") or e)
    text = re.sub(r"^\w+\([^)]*\):\s*", "", text)  # "HTTPConnection(host=..., port=...): "
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


class _Commands(click.Group):
    """The command group: a cluster that is down or unreachable is one line on stderr (exit 1) for
    every command that talks to it, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as e:
            from opensearchpy.exceptions import ConnectionError as OSConnectionError  # ConnectionTimeout too

            if not isinstance(e, OSConnectionError):
                raise
            try:
                url = ConnectionSettings.from_env().url
            except ConfigError:
                url = DEFAULT_URL
            err.print(f"[bold red]error:[/] cannot reach OpenSearch at {escape(url)}: {escape(_connection_reason(e))}",
                      highlight=False, soft_wrap=True)
            sys.exit(1)


@click.group(cls=_Commands)
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
    try:
        heap = heap or node_heap_mb()
        return LocalNode(port=port, heap_mb=heap, version=default_version())
    except (ConfigError, NodeError) as e:
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
        info = local.start(timeout_s=timeout, log=lambda s: err.print(f"[dim]{escape(s)}[/]", highlight=False))
    except NodeAlreadyRunning as e:
        console.print(f"[yellow]{escape(str(e))}[/]")
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
    dead = local.dead_pid()
    if local.stop():
        console.print("stopped")
    elif dead is not None:
        console.print(f"the local node had died (pid {dead} was not running); cleared its pid file. "
                      f"Its logs: {local.log_dir}")
    else:
        console.print("no local node is running")


@node.command("status")
def node_status() -> None:
    """Up or down, version, plugins, heap, data path."""
    local = _local_node(None, None)
    dead = local.dead_pid()
    if dead is not None:  # exit 1 as LSB's "dead and pid file exists"; start or stop clears the file
        _fail(f"the local node died: pid {dead} is not running (killed, or crashed: see the logs in "
              f"{local.log_dir}, `ltrr node logs`); `ltrr node start` starts it again", 1)
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
        report = install(default_version(),
                         log=lambda s: err.print(f"[dim]{escape(s)}[/]", highlight=False))
    except NodeError as e:
        _fail(str(e))
        return
    console.print(f"installed at {report.home}; plugins: {', '.join(report.plugins)}")
    for name, why in report.missing_optional.items():
        err.print(f"[yellow]warning:[/] {name}: {escape(why)}")


@node.command("reinstall")
def node_reinstall() -> None:
    """Rebuild the distribution folder (e.g. after setting LTRR_LTR_PLUGIN_ZIP). Data is kept."""
    local = _local_node(None, None)
    if local.running_pid():
        _fail("stop the node first: ltrr node stop")
    try:
        # Built aside and swapped in only when complete: a failed download keeps the old install.
        report = install(local.version, force=True, log=lambda s: err.print(f"[dim]{escape(s)}[/]", highlight=False))
    except NodeError as e:
        _fail(str(e))
        return
    console.print(f"reinstalled at {report.home}; plugins: {', '.join(report.plugins)}")
    for name, why in report.missing_optional.items():
        err.print(f"[yellow]warning:[/] {name}: {escape(why)}")


# ------------------------------------------------------------------------------------------------
# ltrr index ... / ltrr load
# ------------------------------------------------------------------------------------------------


def _client(retries: bool = True):
    """A client for the environment's cluster. ``retries=False`` for searches (a search has a
    deadline) and loads (BulkWriter is the one retry layer): see ``client.make_client``."""
    from .client import make_client

    return make_client(_settings(), retries=retries)


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
    """Create the search log, events and bandit-state indices when missing (idempotent; searches
    and feedback also create them on first use)."""
    from .bandit.state import SharedStatistics
    from .feedback.events import EVENTS_TEMPLATE
    from .feedback.searchlog import QUERIES_TEMPLATE, ensure_ubi_index

    client = _client()
    ensure_ubi_index(client, "ubi_queries", QUERIES_TEMPLATE)
    ensure_ubi_index(client, "ubi_events", EVENTS_TEMPLATE)
    shared = SharedStatistics(client)
    shared.ensure()
    console.print(f"ready: ubi_queries, ubi_events, {shared.index}")


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
@click.option("--with-memory", is_flag=True,
              help="Also delete the catalogue's Q2E memory (NAME-q2e), which survives drops and loads otherwise.")
def index_drop(name: str, version: int | None, yes: bool, with_memory: bool) -> None:
    """Delete one version, or every version of NAME (its Q2E memory stays unless --with-memory)."""
    from .catalog import CatalogError, drop

    if version is None and not yes:
        click.confirm(f"delete every version of {name}{' and its Q2E memory' if with_memory else ''}?", abort=True)
    try:
        dropped = drop(_client(), name, version, memory=with_memory)
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
@click.option("--no-merge", is_flag=True, help="Skip the force-merge to one segment before serving.")
def load(dataset_dir: str, alias: str | None, limit: int | None, no_embed: bool, allow_errors: bool,
         chunk_size: int, threads: int, no_merge: bool) -> None:
    """Load a BEIR-layout DATASET_DIR into a new index version and swap the alias to it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from .catalog import BulkOptions, CatalogError, load_dataset
    from .datasets import Dataset, DatasetSpecError

    try:
        dataset = Dataset.open(dataset_dir)
        options = BulkOptions(chunk_size=chunk_size, threads=threads)
    except (DatasetSpecError, FileNotFoundError, ValueError) as e:
        _fail(str(e), 2)
        return
    encoder = cache = None
    if not no_embed:
        from .embeddings import EmbeddingCache, ModelNotFoundError, SentenceEncoder

        try:
            encoder = SentenceEncoder()
        except ModelNotFoundError as e:
            _fail(f"{e}; or load without embeddings: ltrr load --no-embed", 2)
        cache = EmbeddingCache.for_encoder(encoder)
    client = _client(retries=False)  # BulkWriter retries 429/5xx/no answer itself, with backoff
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, transient=False) as bar:
        task = bar.add_task(f"loading {dataset.spec.name}", total=None)
        try:
            report = load_dataset(client, dataset, alias=alias, limit=limit, embed=not no_embed, encoder=encoder,
                                  embedding_cache=cache, options=options,
                                  swap_on_errors=allow_errors, force_merge=not no_merge,
                                  progress=lambda done, total: bar.update(task, completed=done, total=total))
        except CatalogError as e:
            _fail(str(e))
            return
    for error in report.rejected[:20]:
        err.print(f"[red]rejected[/] {escape(str(error))}", highlight=False)
    if len(report.rejected) > 20:
        err.print(f"... and {len(report.rejected) - 20} more rejected rows")
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
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


# ------------------------------------------------------------------------------------------------
# ltrr plans / search / evaluate
# ------------------------------------------------------------------------------------------------


def _plans():
    from .strategies import PlanError, load_plans

    try:
        return load_plans()
    except PlanError as e:
        _fail(str(e), 2)
        raise


@main.group()
def plans() -> None:
    """Retrieval strategies: one YAML file each in query_plans/."""


@plans.command("list")
def plans_list() -> None:
    """The plans, their stored script ids, costs and parameters."""
    table = Table("strategy", "script id", "cost", "parameters", "description")
    for plan in _plans().values():
        table.add_row(plan.id, plan.script_id, f"{plan.cost:g}", ", ".join(f"{p.name}:{p.type}" for p in plan.params),
                      plan.description[:80])
    console.print(table)


@plans.command("sync")
def plans_sync() -> None:
    """Store every plan as a mustache script (idempotent) and validate it with _render/template."""
    from .strategies import sync_plans

    results = sync_plans(_client(), _plans())
    table = Table("strategy", "script id", "stored", "renders")
    for r in results:
        table.add_row(r.plan, r.script_id, "new" if r.created else "already",
                      "ok" if r.rendered_ok else f"[red]{escape(str(r.error))}[/]")
    console.print(table)
    if not all(r.rendered_ok for r in results):
        sys.exit(1)


def _missing_scripts(client, plans_) -> list[str]:
    from .strategies import missing_scripts

    return missing_scripts(client, plans_)


def _pipeline(index: str, with_encoder: bool = True, fusion: str = "rrf", strategies=None,
              fusion_options: dict | None = None):
    """A search pipeline for a read command. Read commands never write: the scripts of the plans
    used (``strategies``, default all) must have been stored by `ltrr plans sync` (the commands
    that write are plans sync, index init/create and load)."""
    from .pipeline import SearchPipeline

    client = _client(retries=False)  # a search holds its deadline: no client retries
    if not client.indices.exists(index=index):
        _fail(f"no index or alias {index!r}; load a dataset first (ltrr load DATASET --index {index})")
    plans_ = _plans()
    missing = _missing_scripts(client, [p for name, p in plans_.items() if strategies is None or name in strategies])
    if missing:
        _fail(f"the query plans are not stored in the cluster: run `ltrr plans sync` first "
              f"(missing script{'s' if len(missing) > 1 else ''} {', '.join(missing)})")
    encoder = None
    if with_encoder:
        from .embeddings import ModelNotFoundError, SentenceEncoder

        try:
            encoder = SentenceEncoder()
        except ModelNotFoundError as e:
            _fail(f"{e}; the knn strategy needs it (ltrr search runs without it given --strategies without knn)", 2)
    return SearchPipeline(client, index, plans_, encoder=encoder, fusion=fusion, fusion_options=fusion_options or {})


@main.command("search")
@click.argument("query")
@click.option("--index", default="synthetic_music", show_default=True, help="Catalogue alias.")
@click.option("--strategies", default=None, help="Comma-separated strategies (default: all).")
@click.option("--budget", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="Candidates per strategy (1..1000).")
@click.option("--size", type=click.IntRange(1, 1000), default=10, show_default=True, help="Results shown (1..1000).")
@click.option("--fusion", type=click.Choice(["rrf", "weighted"]), default="rrf", show_default=True)
@click.option("--explain", is_flag=True, help="Show understanding, per-strategy results, timings and "
              "the reranker's feature values.")
@click.option("--rerank/--no-rerank", default=True, show_default=True,
              help="Rerank with the catalogue's active LTR model, when it has one (ltrr ltr train).")
@click.option("--json", "as_json", is_flag=True, help="Print the response as JSON.")
@click.option("--filter", "filter_items", multiple=True, metavar="FILTER",
              help="Restrict results (repeatable): field=value, field=a,b (any of), field>=x / field>x / "
                   "field<=y / field<y (numeric fields), or a JSON object {\"field\": value | [values] | "
                   "{\"gte\": x}}. Fields: the catalogue's facet and numeric fields and entity_type.")
@click.option("--policy", "policy_spec", default=None, metavar="POLICY",
              help="Let a bandit policy choose the arms and budgets (joint, linucb, thompson, epsilon, random, "
                   "static:a+b, all), acting on what it learned (ltrr learn); the search is logged for feedback.")
@click.option("--device", default=None, help="Request context for the policy: desktop, mobile, tv...")
@click.option("--locale", default=None, help="Request context for the policy, e.g. en-GB.")
@click.option("--segment", default=None, help="Request context for the policy: a user segment.")
def search(query: str, index: str, strategies: str | None, budget: int, size: int, fusion: str, explain: bool,
           rerank: bool, as_json: bool, filter_items: tuple[str, ...], policy_spec: str | None,
           device: str | None, locale: str | None, segment: str | None) -> None:
    """Run QUERY through the chosen strategies in one round trip and print the fused list.

    With --policy the bandit chooses among the arms that apply, the search is logged (its id
    takes feedback: ltrr feedback) and the decision is printed.

    Exits 1 when every strategy that ran failed (the errors are printed), 2 for a bad request."""
    import json as jsonlib

    from .datatypes import ArmStatus
    from .filters import FilterError, parse_cli_filters
    from .pipeline import QueryError

    try:
        filters = parse_cli_filters(filter_items)
    except FilterError as e:
        _fail(str(e), 2)
        return
    chosen = [s.strip() for s in strategies.split(",") if s.strip()] if strategies else None
    if policy_spec and chosen:
        _fail("--policy chooses the strategies: give --policy or --strategies, not both", 2)
    pipe = _pipeline(index, with_encoder=chosen is None or "knn" in chosen, fusion=fusion, strategies=chosen)
    names = chosen or list(pipe.plans)
    if rerank:
        from .ltr.model import ModelRegistry

        pipe.with_active_model(ModelRegistry(pipe.client))
    learning = _learning(pipe, policy_spec) if policy_spec else None
    request = None
    if policy_spec:
        from .bandit.context import ContextError, RequestContext

        try:
            request = RequestContext(device=device, locale=locale, segment=segment)
        except ContextError as e:
            _fail(str(e), 2)
    try:
        resp = pipe.search(query, budgets=None if policy_spec else {s: budget for s in names}, size=size,
                           filters=filters or None, explain=explain, request=request)
    except QueryError as e:
        _fail(str(e), 2)
        return
    finally:
        if learning is not None:
            learning.close()
    if resp.decision is not None and not as_json:
        d = resp.decision
        console.print(f"[bold]search id[/] {resp.search_id}  [bold]policy[/] {d.policy} (snapshot {d.snapshot}"
                      f"{', exploring' if d.explored else ''})  propensity {d.propensity:.3f}")
        dt = Table("arm", "budget", "P(run)", "expected reward", title="decision", title_justify="left")
        expected = learning.policy.expectations(resp.context) if learning is not None and resp.context else {}
        for arm, n in d.budgets.items():
            dt.add_row(arm, str(n), f"{d.inclusion.get(arm, 0.0):.3f}", f"{expected.get(arm, 0.0):.3f}")
        console.print(dt)
    ran = [r for r in resp.strategy_results if r.status is not ArmStatus.NOT_APPLICABLE]
    all_failed = resp.all_failed
    sources = pipe.fetch_sources([h.doc_id for h in resp.hits])
    if as_json:
        click.echo(jsonlib.dumps({
            "search_id": resp.search_id, "query": query,
            "hits": [{"id": h.doc_id, "score": h.score, "fused_score": h.fused_score, "model_score": h.model_score,
                      "title": sources.get(h.doc_id, {}).get("title"),
                      "provenance": [{"strategy": p.strategy, "rank": p.rank, "score": p.score} for p in h.provenance],
                      **({"features": h.features} if h.features else {})}
                     for h in resp.hits],
            "model": resp.model, "rerank_error": resp.rerank.error if resp.rerank else None,
            "decision": resp.decision.to_dict() if resp.decision else None,
            "errors": resp.errors, "timings_ms": resp.timings.__dict__}, indent=2))
        if all_failed:
            for r in ran:
                err.print(f"[yellow]{r.strategy}:[/] {escape(str(r.error))}", highlight=False, soft_wrap=True)
            _fail(f"every strategy failed ({len(ran)} ran)")
        return
    if explain:
        u = resp.understanding
        console.print(f"[bold]query[/] {escape(repr(u.normalized))}  key {u.key}  tokens {escape(str(list(u.tokens)))}")
        slots = ", ".join(f"{s.field}={s.value!r} ({s.confidence:.2f})" for s in u.slots) or "-"
        console.print(f"[bold]slots[/] {escape(slots)}  remaining {escape(repr(u.remaining_text))}")
        st = Table("strategy", "budget", "hits", "took ms", "status")
        for r in resp.strategy_results:
            status = r.status.value + (f": {r.detail}" if r.detail else "")
            st.add_row(r.strategy, str(r.budget), str(len(r.hits)), f"{r.took_ms:.0f}" if r.took_ms is not None else "-",
                       f"[yellow]{escape(status)}[/]" if r.error else escape(status))
        console.print(st)
    table = Table("#", "id", "title", "type", "score", "fused", "found by (strategy#rank)",
                  title=f"reranked by {resp.model}" if resp.model else None, title_justify="left")
    for i, h in enumerate(resp.hits, start=1):
        src = sources.get(h.doc_id, {})
        table.add_row(str(i), escape(h.doc_id), escape(str(src.get("title", ""))[:60]), escape(str(src.get("entity_type", ""))),
                      f"{h.score:.4f}", f"{h.fused_score:.4f}", " ".join(f"{p.strategy}#{p.rank}" for p in h.provenance))
    console.print(table)
    if explain and any(h.features for h in resp.hits):
        shown = resp.hits[:10]
        names = sorted({n for h in shown if h.features for n in h.features})
        ft = Table("feature", *(f"#{i}" for i in range(1, len(shown) + 1)),
                   title="feature values the model saw (results as columns)", title_justify="left")
        for n in names:
            ft.add_row(n, *(f"{(h.features or {}).get(n, 0.0):.3g}" for h in shown))
        console.print(ft)
    if resp.rerank is not None and resp.rerank.error:
        err.print(f"[yellow]rerank:[/] {escape(resp.rerank.error)}; the fused order is shown")
    t = resp.timings
    trips = "round trip" if resp.round_trips == 1 else "round trips"
    console.print(f"[dim]{len(resp.candidates)} candidates, {resp.round_trips} {trips}; total {t.total_ms:.1f} ms "
                  f"(OpenSearch {t.opensearch_took_ms:.0f} ms + rerank {t.rerank_took_ms:.0f} ms, encoder "
                  f"{t.embed_ms:.1f} ms, orchestrator {t.orchestrator_ms:.1f} ms)[/]")
    for name, error in resp.errors.items():
        err.print(f"[yellow]{name}:[/] {escape(error)}")
    if all_failed:
        _fail(f"every strategy failed ({len(ran)} ran)")


@dataclass
class _Learning:
    """What a command needs to search with a learning policy and to learn: the policy acting on
    the shared statistics, the search log, the Q2E memory."""

    policy: Any
    shared: Any
    shared_key: str
    search_log: Any
    memory: Any

    def close(self) -> None:
        self.search_log.close()


def _bandit_budget(pipe):
    """The budget the service uses by default (OrchestratorSettings): the CLI and the service share
    one policy's statistics, which only merge with the same levels."""
    from .api import OrchestratorSettings, budget_config

    return budget_config(OrchestratorSettings.model_construct(), pipe.plans)


def _learning(pipe, policy_spec: str, *, seed: int | None = None) -> _Learning:
    """Policy (with what the shared state holds for this catalogue), search log and Q2E memory,
    attached to ``pipe``."""
    import secrets

    from .bandit.base import PolicyConfigError
    from .bandit.context import CONTEXT_DIM
    from .bandit.policies import make_policy
    from .bandit.state import SharedStatistics, policy_key
    from .feedback.q2e import Q2EMemory
    from .feedback.searchlog import SearchLog

    try:
        # A fresh seed per process: two short-lived CLI searches must not share exploration draws.
        policy = make_policy(policy_spec, list(pipe.plans), _bandit_budget(pipe), CONTEXT_DIM,
                             seed=secrets.randbits(31) if seed is None else seed)
    except (PolicyConfigError, ValueError) as e:
        _fail(str(e), 2)
        raise
    client = _client()
    shared = SharedStatistics(client)
    key = policy_key(pipe.index, policy.name)
    shared.load(key, policy)
    search_log = SearchLog(client)
    memory = Q2EMemory(client, pipe.index)
    pipe.policy, pipe.search_log, pipe.memory = policy, search_log, memory
    return _Learning(policy, shared, key, search_log, memory)


@main.command("feedback")
@click.argument("search_id")
@click.argument("events", nargs=-1, required=True, metavar="TYPE:DOC_ID[@POSITION]...")
def feedback_command(search_id: str, events: tuple[str, ...]) -> None:
    """Record engagement with the results of a logged search (ltrr search --policy prints its id).

    Each EVENT is TYPE:DOC_ID with an optional @POSITION (1-based), e.g. click:trk_000123@2; types:
    click, add_to_cart, play, favourite. Sending the same events again changes nothing (each gets
    the id SEARCH_ID:TYPE:DOC_ID)."""
    from .feedback.events import FeedbackStore
    from .feedback.records import FeedbackError
    from .feedback.searchlog import SearchLog

    parsed = []
    for i, text in enumerate(events):
        kind, sep, rest = text.partition(":")
        doc_id, _, position = rest.partition("@")
        if not sep or not doc_id:
            _fail(f"event {i + 1} {text!r}: expected TYPE:DOC_ID[@POSITION]", 2)
        if position and not position.isdigit():
            _fail(f"event {i + 1} {text!r}: the position must be a positive integer", 2)
        parsed.append({"event_id": f"{search_id}:{kind}:{doc_id}", "type": kind, "doc_id": doc_id,
                       **({"position": int(position)} if position else {})})
    client = _client()
    log = SearchLog(client)
    try:
        receipt = FeedbackStore(client, log).record(search_id, parsed)
    except FeedbackError as e:
        _fail(str(e), 2)
        return
    finally:
        log.close()
    console.print(f"{search_id}: {receipt.accepted_count} accepted, {receipt.duplicate_count} already recorded"
                  + (f", {len(receipt.late)} late (after the reward window)" if receipt.late else ""))


@main.command("learn")
@click.option("--index", default="synthetic_music", show_default=True, help="Catalogue alias.")
@click.option("--policy", "policy_spec", default="joint", show_default=True,
              help="The policy whose shared statistics learn (as given to ltrr search --policy).")
@click.option("--window", type=click.FloatRange(0, 30 * 86_400, min_open=True), default=1800.0, show_default=True,
              help="Seconds after a search before its engagement is final (no engagement: reward 0).")
@click.option("--max-searches", type=click.IntRange(1, 10_000_000), default=None,
              help="Finalize at most this many searches in this step.")
def learn(index: str, policy_spec: str, window: float, max_searches: int | None) -> None:
    """One learning step: searches whose reward window closed reward the arms that found what
    users engaged with (policy update, merged into the shared statistics) and teach the Q2E memory."""
    from .feedback.events import FeedbackStore
    from .feedback.rewards import RewardJoiner
    from .learning import LearningLoop

    pipe = _pipeline(index, with_encoder=False)
    parts = _learning(pipe, policy_spec, seed=0)
    try:
        joiner = RewardJoiner(parts.search_log, FeedbackStore(pipe.client, parts.search_log), window_s=window)
        loop = LearningLoop(joiner, parts.policy, parts.memory, parts.shared, parts.shared_key, catalogue=index)
        report = loop.step(max_searches=max_searches)
    finally:
        parts.close()
    console.print(f"{report.finalized} searches finalized ({report.engaged} with engagement): "
                  f"{report.policy_updates} policy updates, {report.skipped_without_decision} without a decision, "
                  f"{report.memory_updates} Q2E impressions, {report.predicted_keys} keys given predictions"
                  + ("; statistics merged" if report.synced else ""))
    for error in report.errors[:10]:
        err.print(f"[yellow]{escape(error)}[/]")


def _evaluate_offline(alias: str, targets: tuple[str, ...], n_bootstrap: int, out: str | None) -> None:
    import json as jsonlib

    from .bandit.offline import LoggedSearch, offline_report, union_reward
    from .feedback.searchlog import SearchLog

    client = _client()
    log = SearchLog(client)
    try:
        logged = [LoggedSearch(entry.record, union_reward(entry.record, dict((entry.outcome or {}).get("engaged", {}))))
                  for entry in log.finalized(alias)]
    finally:
        log.close()
    if not logged:
        _fail(f"no finalized search of {alias!r} in the search log: search with --policy, send feedback, "
              f"then run ltrr learn", 2)
    pipe = _pipeline(alias, with_encoder=False)
    try:
        report = offline_report(logged, list(targets) or ["logged", "random", "all", "static:*"],
                                n_bootstrap=n_bootstrap, budget=_bandit_budget(pipe))
    except ValueError as e:
        _fail(str(e), 2)
        return
    rows = report.table_rows()
    table = Table(*rows[0].keys(), title=f"{report.n_evaluated} logged searches of {alias} "
                  f"(mean reward {report.mean_reward:.4f}; skipped {dict(report.skipped) or 0})", title_justify="left")
    for row in rows:
        table.add_row(*(escape(v) for v in row.values()))
    console.print(table)
    if out:
        with open(out, "w") as f:
            jsonlib.dump(report.to_json(), f, indent=2)
        console.print(f"[dim]wrote {out}[/]")


def _feature_set(pipe):
    """The LTR feature set for the pipeline's plans, stored in the plugin (idempotent); a clear
    error when the cluster has no LTR plugin."""
    from .ltr.features import FeatureSetError, init_feature_set, load_feature_set

    installed = {row["component"] for row in pipe.client.cat.plugins(params={"format": "json"})}
    if "opensearch-ltr" not in installed:
        _fail("the cluster has no opensearch-ltr plugin: see the README (LTRR_LTR_PLUGIN_ZIP, ltrr node reinstall)")
    try:
        feature_set = load_feature_set(list(pipe.plans))
    except FeatureSetError as e:
        _fail(str(e), 2)
    init_feature_set(pipe.client, feature_set)
    return feature_set


def _judged_dataset(dataset_dir: str, alias: str | None, split: str | None):
    """``(dataset, alias, split, qrels, judged queries, skipped)`` for a command that measures or
    trains on a dataset's judgments: the alias defaults to the dataset's name, the split to test
    (else the first); rejected query rows are printed; usage errors exit 2."""
    from .catalog import default_alias
    from .datasets import Dataset, DatasetSpecError, RowError
    from .evaluate import judged_queries

    try:
        dataset = Dataset.open(dataset_dir)
    except (DatasetSpecError, FileNotFoundError) as e:
        _fail(str(e), 2)
    alias = alias or default_alias(dataset.spec.name)
    splits = dataset.splits()
    split = split or ("test" if "test" in splits else (splits[0] if splits else None))
    if split is None:
        _fail(f"{dataset_dir} has no qrels/", 2)
    if split not in splits:
        _fail(f"no qrels split {split!r} in {dataset_dir} (have: {', '.join(splits)})", 2)
    qrels = dataset.qrels(split)
    rows = list(dataset.iter_queries())
    for bad in (r for r in rows if isinstance(r, RowError)):
        err.print(f"[yellow]query row skipped:[/] {escape(str(bad))}", highlight=False)
    queries, skipped = judged_queries([r for r in rows if not isinstance(r, RowError)], qrels)
    return dataset, alias, split, qrels, queries, skipped


def _parse_budgets(spec: str | None, names: list[str], default: int) -> dict[str, int]:
    """``arm=N,arm=N`` over the plan names (others keep ``default``); a usage error otherwise."""
    budgets = dict.fromkeys(names, default)
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in budgets:
            raise click.BadParameter(f"unknown strategy {name!r}; known: {', '.join(names)}", param_hint="--budgets")
        try:
            budgets[name] = int(value)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not arm=N", param_hint="--budgets") from None
        if not 1 <= budgets[name] <= 1000:
            raise click.BadParameter(f"{name}: budget must be 1..1000", param_hint="--budgets")
    return budgets


@main.command("evaluate")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False), required=False)
@click.option("--offline", is_flag=True,
              help="Off-policy evaluation from the search log instead of qrels: IPS, SNIPS and doubly robust "
                   "estimates (bootstrap intervals) of the logged policy, static subsets and uniform random.")
@click.option("--target", "targets", multiple=True, metavar="POLICY",
              help="With --offline: targets to estimate (logged, random, all, static:a+b, static:*); "
                   "default logged, random, all and every static subset.")
@click.option("--bootstrap", type=click.IntRange(100, 100_000), default=2000, show_default=True,
              help="With --offline: bootstrap resamples of the searches.")
@click.option("--index", "alias", default=None, help="Catalogue alias (default: the dataset's name).")
@click.option("--split", default=None, help="qrels split (default: test, else the first one).")
@click.option("--budget", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Candidates per strategy (and the depth of every ranking).")
@click.option("--budgets", "budget_spec", default=None, help="Per-strategy budgets, e.g. knn=200,fuzzy=20.")
@click.option("--fusion", type=click.Choice(["rrf", "weighted"]), default="rrf", show_default=True)
@click.option("--rrf-k", type=float, default=60.0, show_default=True, help="k of reciprocal rank fusion.")
@click.option("--normalization", type=click.Choice(["minmax", "zscore", "max", "none"]), default="minmax",
              show_default=True, help="Score normalisation of weighted fusion.")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Add the textbook anchors (rank_bm25 BM25, exact cosine, their RRF) to the table.")
@click.option("--group-by", default=None, help="A query field (e.g. intent) to break results down by.")
@click.option("--rerank", "rerank_spec", default=None, metavar="cv:K|train",
              help="cv:K: add the union reranked by the LTR plugin, out of sample (K folds of queries, each "
                   "reranked by a model trained on the others). train: train a model on the training queries and "
                   "add every arm, the union and each --policy reranked by it, on the test queries (needs the LTR "
                   "plugin).")
@click.option("--policy", "policies", multiple=True, metavar="SPEC",
              help="Add a bandit policy (joint, linucb, ...; repeatable), warmed up on simulated searches of the "
                   "training queries, measured on the test queries.")
@click.option("--full", is_flag=True, help="The full offline report: --policy joint --rerank train.")
@click.option("--train-fraction", type=click.FloatRange(0.05, 0.95), default=0.5, show_default=True,
              help="With --policy or --rerank train: the share of judged queries to learn on (the rest are measured).")
@click.option("--warmup", type=click.IntRange(1, 1_000_000), default=2000, show_default=True,
              help="With --policy: simulated searches of the training queries before the policy is measured.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="With --policy or --rerank train: seed of the split, the simulated users and the policies.")
@click.option("--limit-queries", type=click.IntRange(1), default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write results as JSON here (with per-query values) and TREC run files beside it.")
def evaluate(dataset_dir: str | None, offline: bool, targets: tuple[str, ...], bootstrap: int, alias: str | None,
             split: str | None, budget: int, budget_spec: str | None,
             fusion: str, rrf_k: float, normalization: str, baselines: bool, group_by: str | None,
             rerank_spec: str | None, policies: tuple[str, ...], full: bool, train_fraction: float, warmup: int,
             seed: int, limit_queries: int | None, out: str | None) -> None:
    """nDCG@10, R@100 and RR@10 (trec_eval's) of each strategy alone, of their fused union and of
    the textbook anchors, on the qrels of DATASET_DIR, with a paired t-test against the best
    strategy. With --full (or --policy / --rerank train): the judged queries are split, a bandit is
    warmed up and a reranker trained on the training part, and every arm, the union and the bandit
    are measured on the test part with and without the rerank. With --offline (no DATASET_DIR):
    what other retrieval policies would have earned on the searches logged for the catalogue
    --index, estimated from the logged propensities."""
    import json as jsonlib
    from pathlib import Path

    from rich.progress import Progress

    from .evaluate import evaluate_pipeline
    from .reporting import anchor_ratios, best_system, evaluation_table

    if offline:
        if dataset_dir is not None:
            _fail("--offline reads the search log, not a dataset: give --index ALIAS and no DATASET_DIR", 2)
        _evaluate_offline(alias or "synthetic_music", targets, bootstrap, out)
        return
    if dataset_dir is None:
        _fail("give DATASET_DIR (a dataset with qrels), or --offline to evaluate from the search log", 2)
        return
    dataset, alias, split, qrels, queries, skipped = _judged_dataset(dataset_dir, alias, split)
    if limit_queries:
        for q in queries[limit_queries:]:
            skipped[q.id] = "--limit-queries"
        queries = queries[:limit_queries]
    not_limit = {k: v for k, v in skipped.items() if v != "--limit-queries"}
    if not_limit:
        err.print(f"[yellow]{len(not_limit)} judged queries are not evaluated[/] (first: "
                  f"{escape(', '.join(f'{k}: {v}' for k, v in list(not_limit.items())[:3]))}); see --out for all")
    if not queries:
        _fail("no query to evaluate (no judged query with text and a positive judgment)", 2)
    if full:
        policies = policies or ("joint",)
        rerank_spec = rerank_spec or "train"
    rerank_folds = None
    rerank_train = rerank_spec == "train"
    if rerank_spec is not None and not rerank_train:
        kind, _, k = rerank_spec.partition(":")
        if kind != "cv" or not k.isdigit() or not 2 <= int(k) <= len(queries):
            _fail(f"--rerank {rerank_spec!r}: use train, or cv:K with 2 <= K <= {len(queries)} (the number of "
                  "queries)", 2)
        rerank_folds = int(k)
    learning = None
    if policies or rerank_train:
        from .evaluate import LearningSpec, split_queries

        if rerank_folds:
            _fail("--rerank cv:K measures on every query; with --policy use --rerank train (or --full)", 2)
        try:
            train_queries, queries = split_queries(queries, train_fraction, seed)
            learning = LearningSpec(tuple(train_queries), tuple(policies), rerank_train, warmup, seed)
        except ValueError as e:
            _fail(str(e), 2)
            return
        for q in train_queries:
            skipped[q.id] = "training query (--train-fraction): learned on, not measured"
        err.print(f"{len(train_queries)} training queries, {len(queries)} test queries (seed {seed})")
    fusion_options = {"k": rrf_k} if fusion == "rrf" else {"normalization": normalization}
    try:
        pipe = _pipeline(alias, fusion=fusion, fusion_options=fusion_options)
        budgets = _parse_budgets(budget_spec, list(pipe.plans), budget)
    except ValueError as e:
        _fail(str(e), 2)
        return
    feature_set = _feature_set(pipe) if rerank_folds or rerank_train else None
    if learning is not None and learning.policies:
        from .bandit.base import BudgetConfig, PolicyConfigError
        from .bandit.policies import make_policy

        for spec in learning.policies:  # a bad spec is a usage error before any work
            try:
                make_policy(spec, tuple(pipe.plans), BudgetConfig(), 30)
            except PolicyConfigError as e:
                _fail(f"--policy {spec}: {e}", 2)
    cache = None
    if baselines and pipe.encoder is not None:
        from .embeddings import EmbeddingCache

        cache = EmbeddingCache.for_encoder(pipe.encoder)
    learned: dict = {}
    with Progress(console=err) as bar:
        task = bar.add_task(f"evaluating {len(queries)} queries", total=len(queries))
        evaluation = evaluate_pipeline(pipe, dataset, queries, qrels, budgets=budgets, depth=budget,
                                       baselines=baselines, embedding_cache=cache, group_by=group_by,
                                       skipped=skipped, rerank_folds=rerank_folds, feature_set=feature_set,
                                       on_query=lambda: bar.advance(task), learning=learning,
                                       on_stage=lambda what: err.print(f"[dim]{escape(what)}[/]"),
                                       learned_info=learned)
    union = pipe.fuser.label
    reranked = f"{union} + rerank (cv:{rerank_folds})" if rerank_folds else (f"{union} + rerank" if rerank_train else None)
    best_arm = best_system(evaluation, list(budgets))
    title = (f"{dataset.spec.name}: {split}, {len(queries)} queries, budgets "
             f"{', '.join(f'{k}={v}' for k, v in budgets.items())}")
    console.print(evaluation_table(evaluation, title, [best_arm, union] if reranked else [best_arm]))
    for group, ids in sorted(evaluation.groups.items()):
        console.print(evaluation_table(evaluation, f"{group_by} = {group} ({len(ids)} queries)", (), ids))
    for system, anchor, measure, ratio in anchor_ratios(evaluation, union):
        console.print(f"  {escape(system)} / {escape(anchor)} ({measure}): [bold]{ratio:.3f}x[/]")
    if reranked:
        from .reporting import rerank_ratios

        for system, reference, measure, ratio in rerank_ratios(evaluation, reranked, union, best_arm):
            console.print(f"  {escape(system)} / {escape(reference)} ({measure}): [bold]{ratio:.3f}x[/]")
    if learning is not None:
        from .reporting import rerank_ratios

        for name in learning.policies:
            bandit = f"bandit {name}"
            for system in (bandit, f"{bandit} + rerank"):
                for sys_, reference, measure, ratio in rerank_ratios(evaluation, system, union, best_arm):
                    console.print(f"  {escape(sys_)} / {escape(reference)} ({measure}): [bold]{ratio:.3f}x[/]")
        warm = learned.get("warmup")
        if warm:
            for name, w in warm["policies"].items():
                shares = ", ".join(f"{a} {v:.0%}" for a, v in sorted(w["arm_share"].items(), key=lambda kv: -kv[1]))
                console.print(f"  [dim]{escape(name)} warm-up: {w['reward_per_search']:.3f} clicks/search over "
                              f"{warm['searches']} searches of the training queries; arms run: {escape(shares)}[/]")
    if out:
        meta = {"dataset": dataset.spec.name, "split": split, "index": alias, "budgets": budgets,
                "fusion": union, "queries": len(queries), "best_arm": best_arm}
        if learning is not None:
            meta["learning"] = {**learned, "policies": list(learning.policies), "rerank": learning.rerank,
                                "train_fraction": train_fraction, "seed": seed, "test_queries": len(queries)}
        Path(out).write_text(jsonlib.dumps(evaluation.to_json(meta), indent=1, default=float))
        runs = evaluation.write_runs(Path(out).with_suffix(".runs"))
        console.print(f"wrote {out} and {len(runs)} TREC run files in {Path(out).with_suffix('.runs')}")
    failed = [s["system"] for s in evaluation.summaries() if s["failed"]]
    if failed:
        _fail(f"{', '.join(failed)} failed on some queries: their numbers are not reported")


# ------------------------------------------------------------------------------------------------
# ltrr ltr ...
# ------------------------------------------------------------------------------------------------


@main.group()
def ltr() -> None:
    """The reranker: features in the LTR plugin, training, the active model per catalogue."""


@ltr.command("init")
@click.option("--index", default="synthetic_music", show_default=True, help="Catalogue alias.")
def ltr_init(index: str) -> None:
    """Store the feature set of ltr_models/features.yaml (expanded for the query plans) in the LTR
    plugin; idempotent, and a changed file or plan set gets a new versioned name."""
    pipe = _pipeline(index, with_encoder=False)
    feature_set = _feature_set(pipe)
    console.print(f"feature set {feature_set.name}: {len(feature_set.names)} features "
                  f"({', '.join(feature_set.names)})")


@ltr.command("train")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--index", "alias", default=None, help="Catalogue alias (default: the dataset's name).")
@click.option("--split", default=None, help="qrels split to train on (default: test, else the first one).")
@click.option("--budget", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Candidates per strategy.")
@click.option("--window", type=click.IntRange(1, 10_000), default=200, show_default=True,
              help="How many of the fused union the model learns to order (and reranks when serving).")
@click.option("--folds", type=click.IntRange(0, 100), default=5, show_default=True,
              help="Cross-validation folds of queries for the per-fold table (0: none).")
@click.option("--rounds", type=click.IntRange(1, 5000), default=100, show_default=True, help="Boosting rounds.")
@click.option("--no-activate", is_flag=True, help="Upload the model without making it the active one.")
def ltr_train(dataset_dir: str, alias: str | None, split: str | None, budget: int, window: int, folds: int,
              rounds: int, no_activate: bool) -> None:
    """Train the reranker on DATASET_DIR's judged queries: log the features of each query's fused
    union, cross-validate by query, train on all, upload and make it the catalogue's active model."""
    import time as timelib

    from rich.progress import Progress

    from .ltr.model import ModelRegistry
    from .ltr.training import QrelsLabels, collect, train_and_upload, write_card

    _dataset, alias, _split, qrels, queries, _skipped = _judged_dataset(dataset_dir, alias, split)
    if len(queries) < max(folds, 2):
        _fail(f"{len(queries)} judged queries: too few to train (and to make {folds} folds)", 2)
    pipe = _pipeline(alias)
    feature_set = _feature_set(pipe)
    t0 = timelib.monotonic()
    vectors = pipe.encode_queries([q.text for q in queries])
    with Progress(console=err) as bar:
        task = bar.add_task(f"logging features of {len(queries)} queries", total=len(queries))
        data = collect(pipe, feature_set, queries, QrelsLabels(qrels), budgets=dict.fromkeys(pipe.plans, budget),
                       window=window, vectors=vectors, on_query=lambda: bar.advance(task))
    err.print(f"logged {data.matrix()[0].shape[0]} candidates of {len(data.queries)} queries "
              f"({timelib.monotonic() - t0:.1f}s); training")
    trained = train_and_upload(pipe, feature_set, data, qrels, catalogue=alias, folds_k=folds, rounds=rounds,
                               window=window)
    if trained.folds:
        table = Table("fold", "train queries", "test queries", "union nDCG@10", "reranked nDCG@10", "ratio",
                      title=f"{folds}-fold cross-validation by query (held-out nDCG@10 of the same candidates)")
        for f in trained.folds:
            table.add_row(str(f.fold), str(f.train_queries), str(f.test_queries), f"{f.union_ndcg10:.4f}",
                          f"{f.reranked_ndcg10:.4f}", f"{f.reranked_ndcg10 / f.union_ndcg10:.3f}x" if f.union_ndcg10 else "")
        cv = trained.card["cross_validation"]
        table.add_row("mean", "", "", f"{cv['union_ndcg10']:.4f}", f"{cv['reranked_ndcg10']:.4f}",
                      f"{cv['reranked_ndcg10'] / cv['union_ndcg10']:.3f}x" if cv["union_ndcg10"] else "")
        console.print(table)
    card_path = write_card(trained.card)
    registry = ModelRegistry(pipe.client)
    if not no_activate:
        registry.activate(alias, trained.name, trained.card)
    console.print(f"model {trained.name} ({trained.card['definition_bytes'] / 1024:.0f} KiB, "
                  f"{trained.card['training_seconds']:.1f}s) uploaded"
                  + ("" if no_activate else f" and active for {alias}") + f"; card: {card_path}")


@ltr.command("list")
@click.option("--index", default="synthetic_music", show_default=True, help="Catalogue alias.")
def ltr_list(index: str) -> None:
    """The catalogue's models: the active one first, then the ones a rollback returns to."""
    from .ltr.model import ModelRegistry

    state = ModelRegistry(_client()).state(index)
    if not state.get("active"):
        console.print(f"no model for {index}: ltrr ltr train DATASET --index {index}")
        return
    table = Table("model", "state", "feature set", "trained on", "cv nDCG@10 union -> reranked")
    for i, name in enumerate([state["active"], *state.get("previous", [])]):
        card = state.get("cards", {}).get(name, {})
        cv = card.get("cross_validation", {})
        shown = (f"{cv['union_ndcg10']:.4f} -> {cv['reranked_ndcg10']:.4f}"
                 if cv.get("union_ndcg10") is not None else "")
        table.add_row(name, "active" if i == 0 else "previous", str(card.get("feature_set", "")),
                      f"{card.get('data', {}).get('queries', '?')} queries", shown)
    console.print(table)


@ltr.command("rollback")
@click.option("--index", default="synthetic_music", show_default=True, help="Catalogue alias.")
def ltr_rollback(index: str) -> None:
    """Make the previously active model active again."""
    from .ltr.model import ModelError, ModelRegistry

    try:
        state = ModelRegistry(_client()).rollback(index)
    except ModelError as e:
        _fail(str(e))
    console.print(f"{index}: active model {state['active']}")


@main.group()
def dataset() -> None:
    """BEIR-layout datasets: generate the synthetic catalogue, check a directory.
    Converters for Cranfield, Spotify and Icecat are in scripts/convert_*.py."""


@dataset.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--docs", type=int, default=100_000, show_default=True)
@click.option("--queries", type=int, default=2_000, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
def dataset_synth(out: str, docs: int, queries: int, seed: int) -> None:
    """Write the deterministic synthetic music catalogue (BEIR layout) to OUT."""
    from pathlib import Path

    from .synthetic import write_synthetic

    if docs < 1 or queries < 0:
        _fail("--docs must be >= 1 and --queries >= 0", 2)
    summary = write_synthetic(Path(out), docs, queries, seed)
    console.print(f"wrote {out}: {summary.get('docs', docs)} documents, {summary.get('queries', queries)} queries, "
                  f"{summary.get('qrels', '?')} qrels")


@dataset.command("check")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
def dataset_check(root: str) -> None:
    """Read a dataset once and report counts and bad rows (file:line: reason)."""
    import json as jsonlib

    from .datasets import Dataset, DatasetSpecError

    try:
        report = Dataset.open(root).check()
    except DatasetSpecError as e:
        _fail(str(e), 2)
        return
    click.echo(jsonlib.dumps(report, indent=2, default=str))
    splits = report.get("splits", {}).values()
    if report.get("corpus_errors") or report.get("query_errors") or any(s["errors"] or s["dangling"] for s in splits):
        sys.exit(1)


@main.command("demo")
@click.option("--docs", type=int, default=20_000, show_default=True, help="Synthetic catalogue size.")
@click.option("--queries", type=int, default=300, show_default=True,
              help="Judged queries of the synthetic catalogue.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the synthetic catalogue.")
@click.option("--searches", type=int, default=5000, show_default=True,
              help="Simulated searches per policy.")
@click.option("--sim-seed", type=int, default=0, show_default=True, help="Seed of the simulated users and policies.")
@click.option("--dataset", "dataset_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A BEIR-layout dataset with qrels to use instead of the synthetic catalogue (e.g. converted Cranfield).")
@click.option("--index", "alias", default=None,
              help="Catalogue alias (default: synthetic_music, or the dataset's name with --dataset).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where caches, results.json and the report go (default: $LTRR_HOME/demo/<alias>).")
@click.option("--real-searches", type=int, default=200, show_default=True,
              help="Searches of the stream also run through the real pipeline (latency per stage, rerank check).")
@click.option("--rerank-vector", type=click.Choice(["always", "vector-arms-only"]), default="always", show_default=True,
              help="Whether the reranker sees the query vector always (as the pipeline serves with a reranker) or "
                   "only when an arm that takes it ran (how ltrr served before; for comparison).")
@click.option("--display", type=click.Choice(["fused", "reranked"]), default="fused", show_default=True,
              help="What simulated users see: the fused top 10 (as ltrr simulate) or the reranked top 10 (as "
                   "serving shows); every policy's candidates are reranked and measured either way.")
def demo(docs: int, queries: int, seed: int, searches: int, sim_seed: int, dataset_dir: str | None, alias: str | None,
         out_dir: str | None, real_searches: int, rerank_vector: str, display: str) -> None:
    """Learning to rank and retrieve, end to end: load the catalogue, train the first ranker, run
    simulated searches with the bandit beside static baselines, print the comparison and the goals,
    and write a report (HTML + Markdown with plots)."""
    from pathlib import Path

    from .demo import DemoConfig, DemoError, run_demo
    from .embeddings import ModelNotFoundError, packaged_model_dir

    try:
        packaged_model_dir()  # before starting a node and generating the catalogue
    except ModelNotFoundError as e:
        _fail(str(e), 2)
    try:
        config = DemoConfig(docs=docs, queries=queries, seed=seed, searches=searches, sim_seed=sim_seed,
                            alias=alias, dataset_dir=Path(dataset_dir) if dataset_dir else None,
                            out_dir=Path(out_dir) if out_dir else None, real_searches=real_searches,
                            rerank_vector=rerank_vector, display=display)
    except DemoError as e:
        _fail(str(e), 2)
        return

    def ensure_node() -> None:
        from .node import cluster_answers

        settings = _settings()
        if cluster_answers(settings.url):
            return  # an OpenSearch already answers there (ours or not): use it
        local = _local_node(None, None)
        try:
            info = local.start(log=lambda s: err.print(f"[dim]{escape(s)}[/]", highlight=False))
        except NodeError as e:
            _fail(str(e))
        else:
            console.print(f"OpenSearch {info.version} is up at {info.url}")

    try:
        run_demo(console, config, ensure_node=ensure_node)
    except DemoError as e:
        _fail(str(e))


@main.command("report")
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Directory for report.html, report.md and the plots (default: beside RESULTS).")
def report_command(results: str, out_dir: str | None) -> None:
    """Write RESULTS (from ltrr demo, ltrr simulate --out or ltrr evaluate --out) as a
    self-contained HTML page and as Markdown, with tables and plots."""
    from pathlib import Path

    from .report import ReportError, load_result, write_report

    try:
        doc = load_result(results)
    except ReportError as e:
        _fail(str(e), 2)
        return
    files = write_report(doc, Path(out_dir) if out_dir else Path(results).resolve().parent)
    console.print(f"wrote {files.html}, {files.markdown} and {len(files.images)} plots")


from .simulate.command import simulate  # noqa: E402  (the command module imports this one lazily)

main.add_command(simulate)

from .service.command import serve  # noqa: E402

main.add_command(serve)


if __name__ == "__main__":
    main()
