"""Benchmark: `ltrr load` with precomputed vectors vs a bare opensearch-py parallel_bulk.

All index the same documents (synthetic catalogue rows with a precomputed 384-d embedding) into
a fresh index built from the same template, with the same chunk size and thread count. Two
baselines: parallel_bulk streaming the same JSONL file (what a bare loading script does), and
parallel_bulk of documents already parsed in memory (no reading cost at all), with ltrr's
client (orjson serializer) and with the stock opensearch-py client. ltrr reads,
validates and converts every row and checks the count at the end, so the ratios show what that
safety costs. Goal: >= 0.8x.

    python scripts/bench_load.py [--docs 20000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from opensearchpy import helpers
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.catalog import BulkOptions, IndexTemplate, drop, load_dataset, to_document  # noqa: E402
from orchestrator.client import make_client  # noqa: E402
from orchestrator.datasets import Dataset  # noqa: E402
from orchestrator.synthetic import write_synthetic  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    console = Console(width=150)
    client = make_client(timeout_s=120)
    rng = np.random.default_rng(0)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bench"
        write_synthetic(root, args.docs, 10, seed=3)
        # Attach precomputed unit vectors so neither side encodes.
        rows = [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines() if line.strip()]
        vectors = rng.normal(size=(len(rows), 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with open(root / "corpus.jsonl", "w") as f:
            for row, vec in zip(rows, vectors):
                row["embedding"] = [round(float(x), 6) for x in vec]
                f.write(json.dumps(row) + "\n")
        dataset = Dataset.open(root)
        template = IndexTemplate.load("catalog")
        prepared = []
        for item in dataset.iter_corpus():
            doc = to_document(item, dataset.spec, "2026-01-01T00:00:00Z")
            doc["embedding"] = list(item.fields["embedding"])
            prepared.append((item.id, doc))

        mapped = set(template.body(dataset.spec)["mappings"]["properties"])

        def stream_actions(index):
            # What a bare script does: read the JSONL, keep the mapped fields, hand it to parallel_bulk.
            with open(root / "corpus.jsonl") as f:
                for line in f:
                    row = json.loads(line)
                    yield {"_index": index, "_id": row["_id"], "_source": {k: v for k, v in row.items() if k in mapped}}

        from opensearchpy import OpenSearch

        from orchestrator.config import ConnectionSettings

        stock = OpenSearch(hosts=[ConnectionSettings.from_env().url], timeout=120)  # stdlib json serializer
        baseline_rates, stream_rates, ltrr_rates, stock_rates = [], [], [], []
        def bulk_rate(cl, prefix, make_actions):
            """docs/s of one parallel_bulk run into a fresh index from the same template."""
            index = f"{prefix}-{uuid.uuid4().hex[:6]}"
            body = template.body(dataset.spec)
            body["settings"].setdefault("index", {})["refresh_interval"] = "-1"
            cl.indices.create(index=index, body=body)
            t0 = time.perf_counter()
            ok = sum(1 for success, _ in helpers.parallel_bulk(cl, make_actions(index), thread_count=args.threads,
                                                              chunk_size=args.chunk_size, request_timeout=120,
                                                              raise_on_error=False) if success)
            cl.indices.refresh(index=index)
            rate = ok / (time.perf_counter() - t0)
            cl.indices.delete(index=index)
            assert ok == len(prepared), f"{prefix}: {ok} of {len(prepared)} indexed"
            return rate

        def in_memory(index):
            return ({"_index": index, "_id": i, "_source": d} for i, d in prepared)

        for _ in range(args.repeat):
            stock_rates.append(bulk_rate(stock, "bench-stock", in_memory))
            stream_rates.append(bulk_rate(client, "bench-stream", stream_actions))
            baseline_rates.append(bulk_rate(client, "bench-baseline", in_memory))
            alias = f"bench-ltrr-{uuid.uuid4().hex[:6]}"
            t0 = time.perf_counter()
            report = load_dataset(client, dataset, alias=alias, embed=False, force_merge=False,
                                  options=BulkOptions(chunk_size=args.chunk_size, threads=args.threads))
            ltrr_rates.append(report.accepted / (time.perf_counter() - t0))
            assert report.accepted == len(prepared) == report.docs_in_index
            drop(client, alias)

    b, st, o, sk = (float(np.median(r)) for r in (baseline_rates, stream_rates, ltrr_rates, stock_rates))
    table = Table("loader", f"docs/s (median of {args.repeat})", "ltrr / this", "goal",
                  title=f"{args.docs} docs with precomputed vectors")
    verdict = lambda r: "[green]>= 0.80 ok[/]" if r >= 0.8 else "[red]>= 0.80 missed[/]"  # noqa: E731
    table.add_row("parallel_bulk streaming the JSONL file (mapped fields)", f"{st:.0f}", f"{o / st:.2f}", verdict(o / st))
    table.add_row("parallel_bulk of documents already in memory (no reading)", f"{b:.0f}", f"{o / b:.2f}", verdict(o / b))
    table.add_row("parallel_bulk of documents in memory, stock client (stdlib json)", f"{sk:.0f}", f"{o / sk:.2f}",
                  verdict(o / sk))
    table.add_row("ltrr load (read + validate + convert + bulk + count check)", f"{o:.0f}", "", "")
    console.print(table)


if __name__ == "__main__":
    main()
