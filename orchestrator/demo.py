"""``ltrr demo``: the main job end to end on the synthetic music catalogue, needing no data files.

Start (or reuse) the node, generate and load the catalogue with embeddings, store the query
plans, show a few searches with provenance, and evaluate every strategy and the fused union.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from .catalog import load_dataset
from .client import make_client
from .config import ConnectionSettings, ltrr_home
from .datasets import Dataset, RowError
from .evaluate import evaluate_pipeline, judged_queries
from .pipeline import SearchPipeline
from .reporting import anchor_ratios, best_system, evaluation_table
from .strategies import load_plans, sync_plans
from .synthetic import write_synthetic


def run_demo(console: Console, *, docs: int = 20_000, queries: int = 300, seed: int = 1,
             ensure_node: Callable[[], None] | None = None) -> dict:
    settings = ConnectionSettings.from_env()
    if ensure_node is not None and settings.is_local:
        ensure_node()
    # No client retries: the loader's BulkWriter retries itself and a search holds its deadline.
    client = make_client(settings, retries=False)
    root = ltrr_home() / "datasets" / f"synthetic_music-{docs}-{seed}"
    if not (root / "corpus.jsonl").exists():
        console.print(f"[bold]1. generating[/] a synthetic music catalogue: {docs} documents, {queries} queries")
        write_synthetic(root, docs, queries, seed)
    else:
        console.print(f"[bold]1. reusing[/] {root}")
    dataset = Dataset.open(root)

    console.print("[bold]2. loading[/] it with all-MiniLM-L6-v2 embeddings (cached on disk after the first run)")
    from .embeddings import EmbeddingCache, SentenceEncoder

    encoder = SentenceEncoder()
    cache = EmbeddingCache.for_encoder(encoder)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as bar:
        task = bar.add_task("loading", total=None)
        report = load_dataset(client, dataset, alias="synthetic_music", encoder=encoder, embedding_cache=cache,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"   {report.accepted} documents in {report.index} ({report.docs_per_second:.0f} docs/s; "
                  f"{report.embedded} embedded, {report.embed_cache_hits} from cache)")

    console.print("[bold]3. storing[/] the query plans as search templates")
    plans = load_plans()
    for r in sync_plans(client, plans):
        console.print(f"   {r.plan:16} {r.script_id:32} {'ok' if r.rendered_ok else r.error}")

    pipe = SearchPipeline(client, report.alias, plans, encoder=encoder)
    understander = pipe.understander()
    all_queries = [q for q in dataset.iter_queries() if not isinstance(q, RowError)]
    qrels = dataset.qrels("test")
    console.print("[bold]4. searching[/]: one query per intent, all strategies in one round trip")
    shown: set[str] = set()
    for q in all_queries:
        intent = str(q.fields.get("intent", ""))
        if intent in shown:
            continue
        shown.add(intent)
        resp = pipe.search(q.text, size=5, understander=understander)
        sources = pipe.fetch_sources([h.doc_id for h in resp.hits])
        table = Table("#", "title", "type", "found by", "relevant", title=escape(f"{q.text!r}  ({intent})"), title_justify="left")
        for i, h in enumerate(resp.hits, 1):
            src = sources.get(h.doc_id, {})
            table.add_row(str(i), escape(str(src.get("title", h.doc_id))[:50]), escape(str(src.get("entity_type", ""))),
                          " ".join(f"{p.strategy}#{p.rank}" for p in h.provenance),
                          "✓" if qrels.get(q.id, {}).get(h.doc_id, 0) > 0 else "")
        console.print(table)
        slots = ", ".join(f"{s.field}={s.value}" for s in resp.understanding.slots) or "none"
        console.print(f"   slots: {slots}; {len(resp.candidates)} candidates; OpenSearch "
                      f"{resp.timings.opensearch_took_ms:.0f} ms, total {resp.timings.total_ms:.0f} ms")

    judged, skipped = judged_queries(all_queries, qrels)
    console.print(f"[bold]5. evaluating[/] every strategy alone, the fused union and the textbook anchors on "
                  f"{len(judged)} queries")
    budgets = dict.fromkeys(plans, 100)
    evaluation = evaluate_pipeline(pipe, dataset, judged, qrels, budgets=budgets, depth=100,
                                   embedding_cache=cache, group_by="intent", skipped=skipped)
    best_arm = best_system(evaluation, list(plans))
    console.print(evaluation_table(evaluation, "all queries", [best_arm]))
    table = Table("intent", *plans, pipe.fuser.label,
                  title="nDCG@10 by query intent: the best strategy depends on the query")
    for intent, ids in sorted(evaluation.groups.items()):
        by_name = {x["system"]: x for x in evaluation.summaries(ids)}
        table.add_row(f"{intent} ({len(ids)})", *(f"{by_name[n]['nDCG@10']:.3f}" for n in (*plans, pipe.fuser.label)))
    console.print(table)
    for system, anchor, measure, ratio in anchor_ratios(evaluation, pipe.fuser.label):
        console.print(f"  {escape(system)} / {escape(anchor)} ({measure}): [bold]{ratio:.3f}x[/]")
    result = evaluation.to_json({"index": report.index, "docs": report.accepted, "best_arm": best_arm})
    out = root / "demo_results.json"
    out.write_text(json.dumps(result, indent=2, default=float))
    console.print(f"results: {out}")
    return result
