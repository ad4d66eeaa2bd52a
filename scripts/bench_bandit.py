"""Benchmark: the latency of the bandit policies' ``select`` and ``update`` (pure numpy, no OpenSearch).

Per context dimension d (default 30 and 64) and K arms (default 6), each policy first learns from
``--warmup`` searches, then runs ``--rounds`` more; every ``select`` and every ``update`` is timed
on its own (perf_counter_ns, garbage collector paused). Contexts and rewards are drawn beforehand,
so only the policy is timed. An ``update`` of a learning policy includes refactoring the arms that
ran (their Cholesky factors are ready for the next ``select``).

The baseline, measured in the same run on the same stream: a naive LinUCB that inverts every arm's
A = λI + Σ x xᵀ with ``np.linalg.inv`` on every select (as MABWiser's LinUCB does) and takes the
top-m arms with an even split; its update adds x xᵀ and r·x. ``ratio`` = policy p50 / baseline p50.
Goal: select and update each ≤ 100 µs (p50) at K = 6, d = 64.

    python scripts/bench_bandit.py [--dims 30 64] [--arms 6] [--rounds 3000] [--warmup 500]
                                   [--policies linucb thompson epsilon random] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.bandit.base import DEFAULT_LEVELS, BudgetConfig, Decision  # noqa: E402
from orchestrator.bandit.context import Context  # noqa: E402
from orchestrator.bandit.policies import make_policy  # noqa: E402

GOAL_US = 100.0
BASELINE = "naive-inv"  # the baseline's row name


class NaiveLinUCB:
    """The baseline: A⁻¹ from np.linalg.inv for every arm on every select; top-m, even split."""

    def __init__(self, arms: Sequence[str], budget: BudgetConfig, dim: int, alpha: float = 0.5, l2: float = 1.0):
        self.budget, self.alpha = budget, alpha
        self.gram = {a: l2 * np.eye(dim) for a in arms}
        self.moment = {a: np.zeros(dim) for a in arms}

    def select(self, context: Context) -> Decision:
        x = context.features
        scores = []
        for arm in context.eligible:
            inverse = np.linalg.inv(self.gram[arm])
            scores.append((inverse @ self.moment[arm]) @ x + self.alpha * math.sqrt(x @ inverse @ x))
        m = min(self.budget.max_arms, len(scores))
        chosen = set(np.argsort(-np.asarray(scores), kind="stable")[:m].tolist())
        level = max(n for n in self.budget.levels if n <= self.budget.total // m)
        budgets = {a: (level if i in chosen else 0) for i, a in enumerate(context.eligible)}
        return Decision(budgets, {a: float(n > 0) for a, n in budgets.items()}, 1.0, "naive")

    def update(self, context: Context, decision: Decision, rewards: Mapping[str, float],
               engaged_ranks: Mapping[str, Sequence[int]] | None = None) -> None:
        x = context.features
        for arm in decision.arms:
            self.gram[arm] += np.outer(x, x)
            self.moment[arm] += rewards.get(arm, 0.0) * x


def stream(dim: int, arms: Sequence[str], n: int, seed: int) -> tuple[list[Context], np.ndarray, np.ndarray]:
    """Contexts (a bias, then sparse features in [0, 1] like ctx-v1), per-arm click draws and ranks."""
    rng = np.random.default_rng(seed)
    features = rng.random((n, dim)) * (rng.random((n, dim)) < 0.3)
    features[:, 0] = 1.0
    weights = rng.normal(0, 0.3, (len(arms), dim))
    p = 1 / (1 + np.exp(-(features @ weights.T) + 1.0))  # (n, K) click probability per arm
    clicks = rng.random(p.shape) < p
    ranks = rng.integers(1, 100, p.shape)
    return [Context(f, tuple(arms)) for f in features], clicks, ranks


def measure(policy: Any, contexts: Sequence[Context], clicks: np.ndarray, ranks: np.ndarray, warmup: int,
            arms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Select and update latencies (µs) over the rounds after the warm-up."""
    column = {a: i for i, a in enumerate(arms)}
    select_ns, update_ns = [], []
    gc.collect()
    gc.disable()
    try:
        for t, context in enumerate(contexts):
            start = time.perf_counter_ns()
            decision = policy.select(context)
            chosen = time.perf_counter_ns()
            rewards = {a: float(clicks[t, column[a]]) for a in decision.arms}
            engaged = {a: [int(ranks[t, column[a]])] for a in decision.arms if rewards[a]}
            before = time.perf_counter_ns()
            policy.update(context, decision, rewards, engaged)
            done = time.perf_counter_ns()
            if t >= warmup:
                select_ns.append(chosen - start)
                update_ns.append(done - before)
    finally:
        gc.enable()
    return np.asarray(select_ns) / 1e3, np.asarray(update_ns) / 1e3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[30, 64])
    parser.add_argument("--arms", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--policies", nargs="+", default=["joint", "linucb", "thompson", "epsilon", "random"])
    parser.add_argument("--total", type=int, default=100)
    parser.add_argument("--max-arms", type=int, default=2)
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads (1: no thread start-up per call)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    console = Console(width=None if sys.stdout.isatty() else 110)
    arms = [f"arm{i}" for i in range(args.arms)]
    budget = BudgetConfig(total=args.total, levels=DEFAULT_LEVELS, max_arms=args.max_arms)
    rows: list[dict[str, Any]] = []
    with threadpool_limits(limits=args.blas_threads):
        for dim in args.dims:
            contexts, clicks, ranks = stream(dim, arms, args.warmup + args.rounds, args.seed)
            results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for name in [BASELINE, *args.policies]:
                policy = (NaiveLinUCB(arms, budget, dim) if name == BASELINE
                          else make_policy(name, arms, budget, dim, seed=args.seed))
                with console.status(f"d={dim}: {name}"):
                    results[name] = measure(policy, contexts, clicks, ranks, args.warmup, arms)
            base_select, base_update = (float(np.percentile(v, 50)) for v in results[BASELINE])
            for name, (select_us, update_us) in results.items():
                row = {"policy": name, "dim": dim, "arms": args.arms, "rounds": args.rounds,
                       "select_p50_us": float(np.percentile(select_us, 50)),
                       "select_p95_us": float(np.percentile(select_us, 95)),
                       "update_p50_us": float(np.percentile(update_us, 50)),
                       "update_p95_us": float(np.percentile(update_us, 95))}
                row["select_ratio"] = row["select_p50_us"] / base_select
                row["update_ratio"] = row["update_p50_us"] / base_update
                rows.append(row)

    table = Table(title=f"bandit policies: µs per call (K={args.arms}, total {args.total}, levels "
                        f"{list(DEFAULT_LEVELS)}, max_arms={args.max_arms}, {args.rounds} rounds)",
                  caption=f"÷ base: p50 over the p50 of {BASELINE} (np.linalg.inv per arm per select); "
                          f"≤ {GOAL_US:g}: both p50 within the goal")
    for column in ("policy", "d", "select p50", "p95", "÷ base", "update p50", "p95", "÷ base", f"≤ {GOAL_US:g}"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for row in rows:
        baseline = row["policy"] == BASELINE
        ok = row["select_p50_us"] <= GOAL_US and row["update_p50_us"] <= GOAL_US
        table.add_row(row["policy"], str(row["dim"]), f"{row['select_p50_us']:.1f}", f"{row['select_p95_us']:.1f}",
                      "" if baseline else f"{row['select_ratio']:.2f}", f"{row['update_p50_us']:.1f}",
                      f"{row['update_p95_us']:.1f}", "" if baseline else f"{row['update_ratio']:.2f}",
                      "" if baseline else ("yes" if ok else "no"))
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"goal_us": GOAL_US, "rows": rows}, indent=2))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
