#!/usr/bin/env python3
"""Benchmark orchestrator.embeddings.SentenceEncoder against the sentence-transformers anchor.

The anchor is sentence-transformers + torch (CPU, 2 threads) measured on this machine kind
(2-core AMD EPYC) for /work/shared/embeddings (see its README): 716 short queries/s and
31.5 product descriptions/s at batch 32, encode() timed with tokenization, median of 3 runs
after a warm-up; 7 ms p50 for one query. Torch is not needed (nor used) here: this script only
measures the numpy encoder and prints the ratios against those numbers.

The workloads follow the anchor's recipe (2,000 queries of 2-6 words, 500 descriptions of 150
words, fixed seeds) but are generated here, since the generators of make_reference.py are not
shipped; their mean token counts are printed next to the anchor's (6.2 and 181.6) so the
comparison can be judged. All texts are distinct, so the encoder's de-duplication gives no
help.

    .venv/bin/python scripts/bench_encoder.py [--runs 3] [--threads N] [--quick]

Results depend on what else runs on the machine (the script prints how busy the CPUs were
before it started): close other work first.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.embeddings import SentenceEncoder  # noqa: E402

ANCHOR = {
    "queries_per_s": 716.39,
    "descriptions_per_s": 31.5,
    "query_p50_ms": 7.0,
    "query_tokens_mean": 6.22,
    "description_tokens_mean": 181.55,
}
GOALS = {"queries": 1.5, "descriptions": 1.15, "query_p50_ms": 4.0}

_QUERY_WORDS = """
love songs taylor swift running playlist podcast history jazz piano dinner sad happy chill
beats study workout rock classic hip hop rap country summer party dance night drive
road trip acoustic guitar live remix radio edit instrumental sleep calm relaxing morning
coffee rain focus blue velvet sofa dining table outdoor king size mattress memory foam
wireless headphones noise cancelling floor lamp modern mid century kids bunk bed storage
gray area rug office chair ergonomic standing desk oak walnut leather sectional couch
kitchen island bar stools patio umbrella garden bench shelf tv stand nightstand
dresser mirror wall art throw pillows blanket curtains bedding cover queen twin
best new old top hits songs album artist band singer 90s 80s 2000s true crime comedy news
sports soccer football basketball yoga meditation kids christmas holiday wedding romantic
""".split()

_DESCRIPTION_WORDS = """
the a an and or with for of in on to from by this that our your its their is are was be has
have will can it as at into over under more most very soft deep warm bright quiet durable
sturdy comfortable elegant modern classic timeless solid wood oak walnut acacia velvet linen
leather cotton wool fabric cushion seat frame legs table sofa chair bed mattress desk lamp rug
room living dining bedroom office outdoor patio space home family friends guests evening
morning weekend summer winter light color gray blue green navy white black natural finish
design style detail craft build support comfort storage drawer shelf surface height width
inches feet pounds easy assemble clean care season song track album artist band singer voice
guitar piano drums bass synth beat rhythm melody chorus verse lyrics story memory journey
night road city ocean heart dream love time life world sound record studio producer mix tempo
upholstered ergonomic adjustable handcrafted breathable moisture scratch resistant stain
cinematic atmospheric shimmering pulsing analog layered harmonies headphones noise
cancellation battery bluetooth microphone
""".split()


def make_queries(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        k = int(rng.integers(2, 7))
        text = " ".join(rng.choice(_QUERY_WORDS, size=k))
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def make_descriptions(n: int, seed: int, words: int = 150) -> list[str]:
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        parts: list[str] = []
        count = 0
        while count < words:
            k = min(int(rng.integers(8, 16)), words - count)
            sentence = list(rng.choice(_DESCRIPTION_WORDS, size=k))
            if k > 6 and rng.random() < 0.6:
                sentence[int(rng.integers(2, k - 2))] += ","
            sentence[0] = sentence[0].capitalize()
            parts.append(" ".join(sentence) + ".")
            count += k
        text = " ".join(parts)
        if text not in out:
            out.append(text)
    return out


def cpu_busy_percent(seconds: float = 1.0) -> float | None:
    """Share of CPU time not idle over a short sample (Linux /proc/stat), else None."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 100.0 * (1 - (idle1 - idle0) / max(1, total1 - total0))


def throughput(encoder: SentenceEncoder, texts: list[str], runs: int) -> tuple[float, list[float]]:
    encoder.encode(texts[:64])  # warm-up, as for the anchor
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        vectors = encoder.encode(texts)
        seconds.append(time.perf_counter() - t0)
        assert vectors.shape == (len(texts), encoder.dim)
    return len(texts) / statistics.median(seconds), seconds


def latency(encoder: SentenceEncoder, queries: list[str]) -> tuple[float, float]:
    for q in queries[:20]:
        encoder.encode_one(q)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        encoder.encode_one(q)
        times.append((time.perf_counter() - t0) * 1e3)
    p50 = float(np.percentile(times, 50))
    p95 = float(np.percentile(times, 95))
    return p50, p95


def print_table(rows: list[tuple[str, str, str, str, str, str]]) -> None:
    header = ("metric", "measured", "anchor", "ratio", "goal", "result")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, tuple("-" * w for w in widths), *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        return
    table = Table(title="numpy MiniLM encoder vs sentence-transformers+torch anchor")
    for name in header:
        table.add_column(name, justify="left" if name == "metric" else "right")
    for r in rows:
        style = "green" if r[5] == "PASS" else ("red" if r[5] == "FAIL" else None)
        table.add_row(*r, style=style)
    Console(width=110).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per workload (median reported)")
    ap.add_argument("--threads", type=int, default=None, help="encoder threads (default: all CPUs)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="smaller workloads (smoke test, noisy)")
    args = ap.parse_args(argv)

    n_queries, n_desc, n_latency = (400, 96, 100) if args.quick else (2000, 500, 300)
    t0 = time.perf_counter()
    encoder = SentenceEncoder(batch_size=args.batch_size, threads=args.threads)
    load_s = time.perf_counter() - t0
    queries = make_queries(n_queries, seed=1)
    descriptions = make_descriptions(n_desc, seed=2)
    q_tokens = float(np.mean([len(t) for t in encoder.tokenize(queries)]))
    d_tokens = float(np.mean([len(t) for t in encoder.tokenize(descriptions)]))

    print(f"python {platform.python_version()}, numpy {np.__version__}, cpus {os.cpu_count()}, "
          f"encoder threads {encoder.threads}, batch {encoder.batch_size}, model load {load_s:.2f}s")
    try:
        from threadpoolctl import threadpool_info

        blas = [f"{i['internal_api']} {i.get('version')} ({i.get('architecture')}, {i['num_threads']} threads)"
                for i in threadpool_info() if i["user_api"] == "blas"]
        print("BLAS:", ", ".join(blas) or "unknown", "- held at 1 thread while the encoder runs")
    except ImportError:
        print("BLAS: threadpoolctl not installed; batches run one at a time")
    print(f"queries: {len(queries)} texts, {q_tokens:.2f} tokens/text (anchor workload {ANCHOR['query_tokens_mean']})")
    print(f"descriptions: {len(descriptions)} texts, {d_tokens:.2f} tokens/text "
          f"(anchor workload {ANCHOR['description_tokens_mean']})")
    busy = cpu_busy_percent()
    if busy is not None:
        print(f"CPU busy before the runs (1 s sample, all processes): {busy:.0f}%"
              + ("  <- other work is running: expect lower numbers" if busy > 10 else ""))

    q_rate, q_runs = throughput(encoder, queries, args.runs)
    print("queries runs (s):", " ".join(f"{s:.3f}" for s in q_runs))
    d_rate, d_runs = throughput(encoder, descriptions, args.runs)
    print("descriptions runs (s):", " ".join(f"{s:.3f}" for s in d_runs))
    p50, p95 = latency(encoder, make_queries(n_latency, seed=3))
    encoder.close()

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    q_ratio = q_rate / ANCHOR["queries_per_s"]
    d_ratio = d_rate / ANCHOR["descriptions_per_s"]
    l_ratio = ANCHOR["query_p50_ms"] / p50
    rows = [
        ("short queries/s (batch 32)", f"{q_rate:.1f}", f"{ANCHOR['queries_per_s']:.1f}", f"{q_ratio:.2f}x",
         f">= {GOALS['queries']}x", verdict(q_ratio >= GOALS["queries"])),
        ("descriptions/s (batch 32)", f"{d_rate:.1f}", f"{ANCHOR['descriptions_per_s']:.1f}", f"{d_ratio:.2f}x",
         f">= {GOALS['descriptions']}x", verdict(d_ratio >= GOALS["descriptions"])),
        ("one query p50 (ms)", f"{p50:.2f}", f"{ANCHOR['query_p50_ms']:.1f}", f"{l_ratio:.2f}x",
         f"<= {GOALS['query_p50_ms']} ms", verdict(p50 <= GOALS["query_p50_ms"])),
        ("one query p95 (ms)", f"{p95:.2f}", "-", "-", "-", "info"),
    ]
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
