"""Benchmark: the orchestrator's own time per search, five strategies, one round trip.

For each query: understanding, parameter building, one _msearch/template, parsing and RRF
fusion. "Own time" = wall time - OpenSearch's ``took`` (the slowest strategy) - the encoder
(query vectors are computed up front and reported separately, as in a gateway that embeds in
parallel). The baseline, measured in the same run, sends the *same* _msearch/template bodies with
the bare client and reports its own wall - took: the HTTP and JSON cost no orchestrator can avoid.
Goal: own time <= 3 ms p50.

    python scripts/bench_search.py [--index synthetic_music] [--queries 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.client import make_client  # noqa: E402
from orchestrator.pipeline import SearchPipeline  # noqa: E402
from orchestrator.strategies import load_plans, sync_plans  # noqa: E402
from orchestrator.synthetic import generate_queries  # noqa: E402


def pct(values, q):
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default="synthetic_music", help="a loaded catalogue alias (ltrr demo creates synthetic_music)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--policy", default="linucb",
                    help="also time searches whose arms a policy chooses, logged to a scratch search log ('' to skip)")
    args = ap.parse_args()
    console = Console(width=150)
    client = make_client()
    if not client.indices.exists(index=args.index):
        sys.exit(f"no index {args.index!r}: run `ltrr demo` (or ltrr load) first")
    plans = load_plans()
    sync_plans(client, plans)
    from orchestrator.embeddings import SentenceEncoder

    encoder = SentenceEncoder()
    texts = [q.text for q in generate_queries(20_000, args.queries, seed=7)]
    t0 = time.perf_counter()
    vectors = encoder.encode(texts)
    embed_ms_per_query = (time.perf_counter() - t0) * 1000 / len(texts)
    single = []
    for text in texts[:50]:
        t = time.perf_counter()
        encoder.encode_one(text)
        single.append((time.perf_counter() - t) * 1000)

    pipe = SearchPipeline(client, args.index, plans, encoder=None)
    understander = pipe.understander()
    budgets = {name: args.budget for name in plans}
    for text, vec in zip(texts[:20], vectors[:20]):  # warm-up: JIT, caches, connections
        pipe.search(text, budgets=budgets, understander=understander, vector=vec)

    own, took, wall, understand, fusion, trips, bodies = [], [], [], [], [], [], []
    for text, vec in zip(texts, vectors):
        resp = pipe.search(text, budgets=budgets, understander=understander, vector=vec)
        t = resp.timings
        own.append(t.total_ms - t.opensearch_took_ms)
        took.append(t.opensearch_took_ms)
        wall.append(t.total_ms)
        understand.append(t.understand_ms)
        fusion.append(t.fusion_ms)
        trips.append(resp.round_trips)
        calls, _not_applicable = pipe.calls_for(resp.understanding, vec, budgets)
        bodies.append(pipe.executor.msearch_body(args.index, calls))

    base_own, base_took = [], []
    for body in bodies:
        t = time.perf_counter()
        resp = client.msearch_template(body=body)
        w = (time.perf_counter() - t) * 1000
        k = float(resp["took"])
        base_own.append(w - k)
        base_took.append(k)

    learned: dict[str, list[float]] = {"own": [], "decide": [], "log": []}
    if args.policy:
        import uuid

        from orchestrator.bandit.base import BudgetConfig
        from orchestrator.bandit.context import CONTEXT_DIM
        from orchestrator.bandit.policies import make_policy
        from orchestrator.feedback.q2e import Q2EMemory
        from orchestrator.feedback.searchlog import SearchLog

        scratch = f"ltrr-bench-log-{uuid.uuid4().hex[:8]}"
        log = SearchLog(client, queries_index=scratch)
        policy = make_policy(args.policy, list(plans), BudgetConfig(costs={n: p.cost for n, p in plans.items()}),
                             CONTEXT_DIM, seed=1)
        learning = SearchPipeline(client, args.index, plans, encoder=None, policy=policy, search_log=log,
                                  memory=Q2EMemory(client, args.index))
        try:
            for text, vec in zip(texts[:20], vectors[:20]):
                learning.search(text, understander=understander, vector=vec)
            for text, vec in zip(texts, vectors):
                resp = learning.search(text, understander=understander, vector=vec)
                t = resp.timings
                learned["own"].append(t.total_ms - t.opensearch_took_ms)
                learned["decide"].append(t.decide_ms)
        finally:
            log.close()
            client.indices.delete(index=f"{scratch}*", ignore_unavailable=True)

    table = Table("measure (ms)", "p50", "p95", title=f"{len(texts)} queries, {len(plans)} strategies x {args.budget}, "
                  f"index {args.index}")
    for name, values in [("orchestrator own time (wall - took)", own), ("  of which understanding", understand),
                         ("  of which fusion", fusion), ("OpenSearch took (whole _msearch)", took),
                         ("wall time per search", wall),
                         ("baseline: bare msearch_template (no filter_path) wall - took", base_own),
                         ("baseline: took", base_took),
                         ("query encoder, single query", single),
                         (f"with --policy {args.policy}: own time (wall - took), logged", learned["own"]),
                         ("  of which context + policy choice", learned["decide"])]:
        if values:
            table.add_row(name, f"{pct(values, 50):.2f}", f"{pct(values, 95):.2f}")
    console.print(table)
    p50 = pct(own, 50)
    console.print(f"round trips per search: {set(trips)}; encoder in batch: {embed_ms_per_query:.2f} ms/query")
    console.print(f"own time p50 {p50:.2f} ms vs goal 3 ms: " + ("[green]met[/]" if p50 <= 3 else "[red]missed[/]")
                  + f"; ratio to bare-client overhead: {p50 / max(pct(base_own, 50), 1e-9):.2f}x")
    if learned["own"]:
        p50 = pct(learned["own"], 50)
        console.print(f"with the policy and the search log: own time p50 {p50:.2f} ms vs goal 3 ms: "
                      + ("[green]met[/]" if p50 <= 3 else "[red]missed[/]")
                      + f"; ratio to fixed arms: {p50 / max(pct(own, 50), 1e-9):.2f}x")


if __name__ == "__main__":
    main()
