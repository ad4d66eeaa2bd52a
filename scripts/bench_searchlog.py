"""Benchmark: what ``SearchLog.log()`` costs the search path (goal: far inside the 3 ms own-time budget).

Every call is timed alone (``perf_counter_ns`` around it). The baseline is measured in the same
run, interleaved call by call with the same record objects: a bare ``queue.Queue.put`` (the
cheapest thread-safe hand-off to a writer thread). Scenarios:

* ``live``: a SearchLog writing to the node at ``--rate`` searches per second (its writer thread
  serialises and bulk-writes concurrently, so its share of the GIL shows up in the tail);
* ``sampled 10%``: the same with sample_rate 0.1 (most calls only hash the id);
* ``burst``: live, unpaced (far above any serving rate: the buffer fills and drops);
* ``full buffer``: a writer that never drains: after ``max_pending`` records every call drops;
* ``node down``: paced, every bulk request fails; log() still only enqueues.

Records are search-sized: a 30-dim context, a decision over 5 arms, 5 x 50 candidate ids, a
20-item ranking. The bench index is deleted at the end.

    python scripts/bench_searchlog.py [--calls 10000] [--rate 2000] [--url http://127.0.0.1:9200]
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.client import make_client  # noqa: E402
from orchestrator.config import ConnectionSettings  # noqa: E402
from orchestrator.feedback.records import SearchRecord  # noqa: E402
from orchestrator.feedback.searchlog import SearchLog  # noqa: E402

BUDGET_US = 3000.0  # the orchestrator's own-time budget per search


def make_records(n: int, seed: int = 0) -> list[SearchRecord]:
    rng = np.random.default_rng(seed)
    arms = ("bm25", "qu", "knn", "q2e", "fuzzy")
    out = []
    for i in range(n):
        hits = {a: tuple(f"doc-{int(x)}" for x in rng.integers(0, 100_000, 50)) for a in arms}
        out.append(SearchRecord(
            search_id=uuid.uuid4().hex, time=datetime.now(UTC), catalogue="music", query=f"query number {i}",
            normalized=f"query number {i}", key=f"q_{i:08x}", context=rng.random(30).tolist(), context_version="ctx-v1",
            request={"device": "mobile", "locale": "en-gb", "segment": None, "time": None}, eligible=arms,
            decision={"budgets": {a: 20 for a in arms}, "inclusion": {a: 0.5 for a in arms}, "propensity": 0.1,
                      "policy": "lints", "snapshot": "s-1", "seed": i, "total_budget": 100},
            arm_hits=hits, arm_status={a: "ok" for a in arms}, ranking=hits["bm25"][:20], model="music-abc"))
    return out


def percentiles(ns: list[int]) -> tuple[float, float, float, float]:
    us = np.asarray(ns, dtype=np.float64) / 1000.0
    return float(np.percentile(us, 50)), float(np.percentile(us, 95)), float(np.percentile(us, 99)), float(us.max())


def timed_interleaved(log: SearchLog, records: list[SearchRecord],
                      rate: float | None = None) -> tuple[list[int], list[int], list[bool]]:
    """(baseline ns, log ns, log results) per record, the two calls alternating; ``rate``: calls
    per second (paced like a serving process), None: as fast as possible."""
    q: queue.Queue = queue.Queue()
    base, mine, results = [], [], []
    clock = time.perf_counter_ns
    start = clock()
    for i, r in enumerate(records):
        if rate:
            due = start + int(i * 1e9 / rate)
            while clock() < due:
                time.sleep(0.0002)
        t0 = clock()
        q.put(r)
        t1 = clock()
        ok = log.log(r)
        t2 = clock()
        base.append(t1 - t0)
        mine.append(t2 - t1)
        results.append(ok)
    return base, mine, results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--calls", type=int, default=10_000, help="log() calls per scenario")
    parser.add_argument("--rate", type=float, default=2000.0, help="searches per second in the paced scenarios")
    parser.add_argument("--url", default=os.environ.get("OPENSEARCH_URL", "http://127.0.0.1:9200"))
    args = parser.parse_args()
    console = Console()
    client = make_client(ConnectionSettings(url=args.url))
    index = f"ltrr-bench-searchlog-{uuid.uuid4().hex[:8]}"
    rows = []
    try:
        log = SearchLog(client, queries_index=index)
        log.log(make_records(1, seed=99)[0])  # create the index outside the timed calls
        log.flush(30)
        base, mine, _ = timed_interleaved(log, make_records(args.calls, seed=1), args.rate)
        t0 = time.perf_counter()
        flushed = log.flush(120)
        drain_s = time.perf_counter() - t0
        stats = log.stats
        log.close()
        rows.append(("queue.put (baseline)", percentiles(base), ""))
        rows.append((f"log(): live, {args.rate:.0f}/s", percentiles(mine),
                     f"written {stats.written - 1}, dropped {stats.dropped}, failed {stats.failed}; "
                     f"{'drained' if flushed else 'NOT drained'} {drain_s:.2f} s after the last call"))

        sampled_log = SearchLog(client, queries_index=index, sample_rate=0.1)
        base, mine, results = timed_interleaved(sampled_log, make_records(args.calls, seed=2), args.rate)
        sampled_log.close(60)
        rows.append(("queue.put (baseline)", percentiles(base), ""))
        rows.append((f"log(): sampled 10%, {args.rate:.0f}/s", percentiles(mine), f"kept {sum(results)} of {len(results)}"))

        burst = SearchLog(client, queries_index=index)
        base, mine, results = timed_interleaved(burst, make_records(args.calls, seed=3))
        t0 = time.perf_counter()
        burst.flush(120)
        drain_s = time.perf_counter() - t0
        stats = burst.stats
        burst.close()
        rows.append(("queue.put (baseline)", percentiles(base), ""))
        rows.append(("log(): live, burst (unpaced)", percentiles(mine),
                     f"written {stats.written}, dropped {stats.dropped}; drained {drain_s:.2f} s after the last call"))

        # A writer that never drains (batch larger than the buffer, no timer): after max_pending
        # records every call drops.
        idle = SearchLog(client, queries_index=index, max_pending=1000, batch_size=10_000, flush_interval_s=3600)
        base, mine, results = timed_interleaved(idle, make_records(args.calls, seed=4))
        dropped = idle.stats.dropped
        idle.close(60)
        rows.append(("queue.put (baseline)", percentiles(base), ""))
        rows.append(("log(): full buffer", percentiles(mine), f"buffered {sum(results)}, dropped {dropped}"))

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        down = make_client(ConnectionSettings(url=f"http://127.0.0.1:{port}", timeout_s=1, max_retries=0), retries=False)
        dead = SearchLog(down, queries_index=index, retries=0)
        base, mine, results = timed_interleaved(dead, make_records(args.calls, seed=5), args.rate)
        dead.close(5)
        stats = dead.stats
        rows.append(("queue.put (baseline)", percentiles(base), ""))
        rows.append((f"log(): node down, {args.rate:.0f}/s", percentiles(mine),
                     f"failed {stats.failed}, dropped {stats.dropped}, never raised"))
    finally:
        if client.indices.exists_alias(name=index):
            for name in list(client.indices.get_alias(name=index)):
                client.indices.delete(index=name)

    table = Table(title=f"SearchLog.log() per call, {args.calls} calls per scenario (µs)")
    for col in ("scenario", "p50", "p95", "p99", "max", "p95 / 3 ms", "notes"):
        table.add_column(col, justify="left" if col in ("scenario", "notes") else "right")
    for name, (p50, p95, p99, mx), note in rows:
        table.add_row(name, f"{p50:.2f}", f"{p95:.2f}", f"{p99:.2f}", f"{mx:.0f}", f"{100 * p95 / BUDGET_US:.3f}%", note)
    console.print(table)


if __name__ == "__main__":
    main()
