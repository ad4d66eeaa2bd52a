"""Benchmark: Q2E memory updates in their own index vs the same updates in place in the catalogue.

Why the memory has its own index (``<alias>-q2e``, orchestrator/feedback/q2e.py). Lucene has no
in-place update: changing one item's ``q2e`` map in the catalogue re-indexes the whole document,
384-d vector included (HNSW insertion now, graph rebuilds at merges). And the catalogue keeps
vectors out of ``_source`` (``_source.excludes: [embedding]``), so a partial ``_update`` re-indexes
the document *without* its vector: the item silently drops out of the k-NN arm. A correct
in-place update must resend the whole document with its vector. Measured on one node, in the
same run, alternating rounds (a new query key per round; median per round):

* **memory**: ``Q2EMemory.record`` of new evidence for N items (one bulk of scripted updates: the
  real write path, which also decays, rescores and caps), then the refresh that makes it visible;
* **catalogue, full re-index** (the correct in-place baseline): the N documents re-sent whole,
  vector and q2e map included, then the refresh;
* **catalogue, partial update**: ``{"doc": {"q2e": {key: v}}}`` per item, then the refresh,
  run last, and how many vectors it destroyed.

Then the q2e arm's latency: the plan through ``StrategyExecutor`` against the memory index vs the
same query against the catalogue's old fields, and the uncached ``has_key`` check.

The catalogue is ``ltrr dataset synth --docs D`` with random unit vectors (the cost of indexing a
vector does not depend on its meaning), loaded under a unique alias and deleted at the end.

    python scripts/bench_q2e.py [--docs 5000] [--items 1000] [--rounds 5] [--searches 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.catalog import drop, load_dataset, to_document  # noqa: E402
from orchestrator.client import make_client  # noqa: E402
from orchestrator.datasets import CorpusRow, Dataset  # noqa: E402
from orchestrator.feedback.q2e import Q2EConfig, Q2EMemory, Q2EUpdate  # noqa: E402
from orchestrator.strategies import StrategyCall, StrategyExecutor, load_plans, sync_plans  # noqa: E402
from orchestrator.synthetic import write_synthetic  # noqa: E402
from orchestrator.understanding import query_key  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def synth_with_vectors(root: Path, docs: int, seed: int) -> Dataset:
    """The synthetic catalogue with a random unit vector per row (no encoder needed)."""
    write_synthetic(root, docs, 50, seed)
    rng = np.random.default_rng(seed)
    corpus = root / "corpus.jsonl"
    lines = corpus.read_text().splitlines()
    with open(corpus, "w") as f:
        for line in lines:
            row = json.loads(line)
            v = rng.normal(size=384)
            row["embedding"] = np.round(v / np.linalg.norm(v), 6).tolist()
            f.write(json.dumps(row) + "\n")
    return Dataset.open(root)


def _bulk(client, body: list[dict]) -> None:
    resp = client.bulk(body=body, params={"request_timeout": 300})
    if resp.get("errors"):
        sys.exit(f"catalogue write failed: {next(i for i in resp['items'] if 'error' in next(iter(i.values())))}")


def _vectors(client, index: str) -> int:
    return int(client.count(index=index, body={"query": {"exists": {"field": "embedding"}}})["count"])


def _size(client, index: str) -> int:
    shards = client.indices.segments(index=index)["indices"][index]["shards"]
    return sum(seg.get("size_in_bytes", 0) for copies in shards.values() for c in copies
               for seg in c.get("segments", {}).values())


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--items", type=int, default=1000, help="items whose Q2E entries are updated per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--searches", type=int, default=300, help="q2e arm searches timed per index")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", dest="json_out", default=None, help="also write the numbers to this file")
    args = ap.parse_args()
    if not 1 <= args.items <= args.docs:
        sys.exit("--items must be between 1 and --docs")
    console = Console(width=140)
    client = make_client()
    alias = f"ltrr-bench-q2e-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(args.seed)
    out: dict = {"docs": args.docs, "items": args.items, "rounds": args.rounds}
    try:
        with tempfile.TemporaryDirectory(prefix="q2ebench") as tmp:
            ds = synth_with_vectors(Path(tmp) / "music", args.docs, args.seed)
            rows = {row.id: row for row in ds.iter_corpus() if isinstance(row, CorpusRow)}
            spec = ds.spec
            t = time.perf_counter()
            report = load_dataset(client, ds, alias=alias, embed=True, encoder=None)
            console.print(f"loaded {report.accepted} documents with vectors into {report.index} "
                          f"in {time.perf_counter() - t:.1f}s")
        version = report.index
        # The baseline layout: the q2e fields in the catalogue, as before the memory had its own index.
        client.indices.put_mapping(index=version, body={"properties": {"q2e": {"type": "rank_features"},
                                                                        "q2e_pred": {"type": "rank_features"}}})
        memory = Q2EMemory(client, alias, Q2EConfig(key_cache_ttl_s=0))
        memory.ensure()
        cfg = memory.config
        ids = list(rows)
        catalogue_q2e: dict[str, dict[str, float]] = {}  # what a full re-index must resend
        mem_s: list[tuple[float, float]] = []
        full_s: list[tuple[float, float]] = []
        keys: list[str] = []
        now = time.time()
        loaded_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        def new_round(r: int) -> tuple[str, list[Q2EUpdate], dict[str, float]]:
            key = query_key(f"bench query {r}")
            items = [ids[i] for i in rng.choice(len(ids), size=args.items, replace=False)]
            grades = rng.choice([0.0, 0.3, 1.0], size=args.items)
            updates = [Q2EUpdate(key, d, float(g), 1.0, now) for d, g in zip(items, grades)]
            return key, updates, {d: cfg.value(cfg.score(float(g), 1.0)) for d, g in zip(items, grades)}

        for r in range(args.rounds):
            key, updates, values = new_round(r)
            keys.append(key)
            for which in (("memory", "full") if r % 2 == 0 else ("full", "memory")):
                t0 = time.perf_counter()
                if which == "memory":
                    memory.record(updates, now=now)
                else:
                    body: list[dict] = []
                    for d, v in values.items():
                        catalogue_q2e.setdefault(d, {})[key] = v
                        doc = {**to_document(rows[d], spec, loaded_at), "q2e": catalogue_q2e[d],
                               "embedding": np.asarray(rows[d].fields["embedding"]).tolist()}
                        body += [{"index": {"_index": version, "_id": d}}, doc]
                    _bulk(client, body)
                t1 = time.perf_counter()
                client.indices.refresh(index=memory.index if which == "memory" else version)
                t2 = time.perf_counter()
                (mem_s if which == "memory" else full_s).append((t1 - t0, t2 - t1))
            console.print(f"round {r + 1}: memory {sum(mem_s[-1]):.2f}s, catalogue full re-index {sum(full_s[-1]):.2f}s")
        vectors_before = _vectors(client, version)
        partial_s: list[tuple[float, float]] = []
        for r in range(args.rounds):  # last: it destroys vectors
            key, _, values = new_round(args.rounds + r)
            t0 = time.perf_counter()
            _bulk(client, [line for d, v in values.items()
                           for line in ({"update": {"_index": version, "_id": d}}, {"doc": {"q2e": {key: v}}})])
            t1 = time.perf_counter()
            client.indices.refresh(index=version)
            partial_s.append((t1 - t0, time.perf_counter() - t1))
        vectors_lost = vectors_before - _vectors(client, version)

        def med(rows_: list[tuple[float, float]], i: int | None) -> float:
            return statistics.median(sum(x) if i is None else x[i] for x in rows_)

        table = Table(title=f"{args.items} items' Q2E entries per round, median of {args.rounds} rounds "
                            f"({args.docs}-document catalogue, 384-d vectors)")
        for col in ("write", "bulk s", "refresh s", "total s", "items/s", "vs memory"):
            table.add_column(col, justify="right" if col != "write" else "left")
        for name, rows_ in (("memory index (scripted update)", mem_s), ("catalogue, full re-index with vector", full_s),
                            (f"catalogue, partial update ({vectors_lost} vectors lost)", partial_s)):
            table.add_row(name, f"{med(rows_, 0):.3f}", f"{med(rows_, 1):.3f}", f"{med(rows_, None):.3f}",
                          f"{args.items / med(rows_, None):,.0f}", f"{med(rows_, None) / med(mem_s, None):.1f}x")
        console.print(table)
        sizes = {name: _size(client, index) for name, index in (("memory", memory.index), ("catalogue", version))}
        console.print(f"live size now: memory {sizes['memory'] / 1e6:.1f} MB, catalogue {sizes['catalogue'] / 1e6:.1f} MB")
        out["update"] = {name: {"bulk_s": med(r_, 0), "refresh_s": med(r_, 1), "total_s": med(r_, None),
                                "ratio_over_memory": med(r_, None) / med(mem_s, None)}
                         for name, r_ in (("memory", mem_s), ("catalogue_full_reindex", full_s),
                                          ("catalogue_partial_update", partial_s))}
        out["update"]["catalogue_partial_update"]["vectors_lost"] = vectors_lost
        out["size_bytes"] = sizes

        # ---- the arm's latency ---------------------------------------------------------------
        plans = load_plans()
        sync_plans(client, {"q2e_memory": plans["q2e_memory"]})
        executor = StrategyExecutor(client, plans)
        latency: dict[str, dict[str, float]] = {}
        for name, index in (("memory index", memory.index), ("catalogue fields", version)):
            walls, tooks = [], []
            for i in range(args.searches + 20):
                call = StrategyCall("q2e_memory", 50, {"key": keys[i % len(keys)]}, index=index)
                t0 = time.perf_counter()
                rep = executor.run(alias, [call])
                wall = (time.perf_counter() - t0) * 1000
                res = rep.results[0]
                if res.error or len(res.hits) != 50:
                    sys.exit(f"the arm failed on {name}: {res.error or len(res.hits)}")
                if i >= 20:  # warm-up excluded
                    walls.append(wall)
                    tooks.append(rep.took_ms)
            latency[name] = {"wall_p50_ms": pct(walls, 50), "wall_p95_ms": pct(walls, 95),
                             "took_p50_ms": pct(tooks, 50), "took_p95_ms": pct(tooks, 95)}
        checks = []
        for i in range(args.searches):
            t0 = time.perf_counter()
            memory.has_key(keys[i % len(keys)] if i % 2 else query_key(f"unseen {i}"))
            checks.append((time.perf_counter() - t0) * 1000)
        latency["has_key (uncached)"] = {"wall_p50_ms": pct(checks, 50), "wall_p95_ms": pct(checks, 95)}
        table = Table(title=f"q2e arm, top 50 of {args.items} entries per key, {args.searches} searches")
        for col in ("against", "wall p50 ms", "wall p95 ms", "took p50 ms", "took p95 ms"):
            table.add_column(col, justify="right" if col != "against" else "left")
        for name, row in latency.items():
            table.add_row(name, *(f"{row[k]:.2f}" if k in row else "-"
                                  for k in ("wall_p50_ms", "wall_p95_ms", "took_p50_ms", "took_p95_ms")))
        console.print(table)
        out["search"] = latency
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(out, indent=2))
    finally:
        drop(client, alias, memory=True)
        console.print(f"deleted {alias} and its memory")


if __name__ == "__main__":
    main()
