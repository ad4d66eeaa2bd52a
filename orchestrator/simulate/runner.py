"""The simulation loop and its metrics.

Every policy runs on the same stream (:class:`~.stream.QueryStream`) with the same users: per
search one uniform array drawn from the ``clicks`` random stream decides the clicks of whatever
list a policy shows (common random numbers). Each policy has its own world: its own Q2E memory
(built from the clicks on its own lists) and its own statistics.

One search, for each policy:

1. context: ``ctx-v1`` of the issued text (:meth:`CandidateCache.understanding`), the request's
   noisy ``segment`` tag and simulated time, whether the policy's Q2E memory has the key, and how
   often the key was searched before; eligible arms from the cache;
2. ``decision = policy.select(context)``; each chosen arm's candidates are its cached list cut at
   its budget (the Q2E arm's come from the policy's memory);
3. display: the RRF (k = 60) fused top ``display_size`` of those candidates, or (``display =
   "reranked"``, with a reranker) that fused list's top window reranked by the LTR model, as
   serving shows it (:mod:`.rerank`); with a reranker both lists are measured either way;
4. clicks from the click model; reward = number of clicks;
5. ``policy.update`` with per-arm rewards (1 when the arm's candidates held a clicked item: a click
   is engagement of grade 1, as in ``SearchRecord.arm_rewards``) and the within-arm ranks of the
   clicked items; then the memory learns the impressions and clicks (and a new key its predictions).

Metrics per policy, as series over the stream and as totals:

* reward: clicks (and the share of searches with a click);
* candidate recall of the union of the chosen arms' candidates (before the display cut, at the
  budgets requested): the share of searches whose union holds a relevant item, and the mean share
  of the query's relevant items it holds;
* nDCG@10 of the displayed list (linear gains, as trec_eval), and of the fused and (with a
  reranker) the reranked list separately;
* pseudo-regret: for every search, the expected clicks E[R(a)] of every action a of a small action
  set (:func:`action_set`: each arm alone at the full budget, each pair at an even split, all arms
  at the largest level), displayed as the policy's lists are, evaluated in the policy's own state
  (its Q2E memory at that moment). The comparator is the best fixed action per context in hindsight,
  a*_c = argmax_a Σ_{t: c_t = c} E_t[R(a)], and regret_T = Σ_t (E_t[R(a*_{c_t})] − E_t[R(policy_t)]),
  for two meanings of context: the *true* type (user type, with the query's intent), which a policy
  never sees, so noise in what it does see keeps even a perfect learner's regret linear; and the
  *observed* one (the request's segment tag and the query's frequency bucket), which it does see.
  The ``_within_budget`` variants leave the all-arms action (every arm at the largest level) out;
* cost: documents requested (Σ budgets) and modelled OpenSearch time (:meth:`CandidateCache.took`);
* how discriminating the semi-bandit credit was: the share of the arms that ran in a search with a
  click whose candidates held a clicked item (1.0: all of them were credited).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import combinations
from typing import Any, Protocol

import numpy as np

from ..bandit.base import BudgetConfig, Decision, Policy, search_outcome
from ..bandit.context import (
    CONTEXT_DIM,
    CONTEXT_FEATURES,
    CONTEXT_VERSION,
    FREQUENCY_BUCKETS,
    Context,
    RequestContext,
    context_vector,
    frequency_bucket,
)
from ..datatypes import Hit, StrategyResult
from ..fusion import make_fusion
from .candidates import MEMORY_ARM, CandidateCache
from .clicks import ClickModel, grade_levels
from .q2e import Q2EConfig, Q2EMemory
from .stream import QueryStream, rng, stream_seed

PolicyFactory = Callable[..., Policy]
"""``make_policy(spec, arms, budget, dim, seed=...) -> Policy`` (orchestrator.bandit.policies)."""

_Q2E_FEATURE = CONTEXT_FEATURES.index("q2e_key_exists")
DISPLAYS = ("fused", "reranked")


class SearchReranker(Protocol):
    """The rerank stage of a simulated search (:class:`~.rerank.LocalReranker`)."""

    def rank(self, text: str, query_id: str, selections: Sequence[Sequence[StrategyResult]],
             size: int = 10) -> list[list[str]]: ...


class SimulationError(RuntimeError):
    """The simulation cannot go on (a policy chose something impossible, the cache misses a text...)."""


@dataclass(frozen=True)
class SimulationConfig:
    """Loop parameters. ``budget`` is what the policies are given; ``display_size`` results are
    shown: the fused list, or (``display="reranked"``, needs a reranker) the fused list reranked;
    ``series_points`` bounds the length of the JSON series."""

    budget: BudgetConfig = field(default_factory=BudgetConfig)
    display_size: int = 10
    rrf_k: float = 60.0
    series_points: int = 200
    q2e: Q2EConfig = field(default_factory=Q2EConfig)
    start_time: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    seconds_per_search: float = 30.0
    display: str = "fused"

    def __post_init__(self) -> None:
        if self.display not in DISPLAYS:
            raise SimulationError(f"display must be one of {', '.join(DISPLAYS)}, got {self.display!r}")
        if not isinstance(self.budget, BudgetConfig):
            raise SimulationError(f"budget must be a BudgetConfig, got {type(self.budget).__name__}")
        for name, lo, hi in (("display_size", 1, 1000), ("series_points", 2, 100_000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise SimulationError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
        if isinstance(self.rrf_k, bool) or not isinstance(self.rrf_k, (int, float)) or not (
                math.isfinite(self.rrf_k) and self.rrf_k > 0):
            raise SimulationError(f"rrf_k must be a positive number, got {self.rrf_k!r}")
        if not isinstance(self.seconds_per_search, (int, float)) or not self.seconds_per_search >= 0:
            raise SimulationError(f"seconds_per_search must be >= 0, got {self.seconds_per_search!r}")


@dataclass(frozen=True)
class Action:
    """A fixed action of the regret comparator: arms with their budgets (arms that do not apply to
    a query are skipped there)."""

    name: str
    budgets: Mapping[str, int]

    @property
    def uses_memory(self) -> bool:
        return MEMORY_ARM in self.budgets

    @property
    def within_budget(self) -> bool:
        return self.name != "all"


def action_set(arms: Sequence[str], budget: BudgetConfig, max_level: int) -> list[Action]:
    """Each arm alone at the full budget (min(total, max_level)), each pair at an even split of the
    total, and all arms at ``max_level`` (the ``all`` policy's action)."""
    full = min(budget.total, max_level)
    half = max(1, min(budget.total // 2, max_level))
    actions = [Action(a, {a: full}) for a in arms]
    actions += [Action(f"{a}+{b}", {a: half, b: half}) for a, b in combinations(arms, 2)]
    actions.append(Action("all", dict.fromkeys(arms, max_level)))
    return actions


def build_policies(specs: Sequence[str], arms: Sequence[str], budget: BudgetConfig, seed: int,
                   factory: PolicyFactory) -> dict[str, Policy]:
    """One policy per spec, each seeded from its own named random stream."""
    return {spec: factory(spec, tuple(arms), budget, CONTEXT_DIM, seed=stream_seed(seed, f"policy:{spec}"))
            for spec in dict.fromkeys(specs)}


@dataclass
class PolicyRun:
    """Per-search records of one policy (arrays of length N, the number of searches)."""

    spec: str
    clicks: np.ndarray  # int64: clicks on the displayed list
    expected: np.ndarray  # float64: E[clicks] of the displayed list under the click model
    action_values: np.ndarray  # float64 (N, A): E[clicks] of each comparator action in this state
    hit: np.ndarray  # bool: the candidates' union held a relevant item
    recall: np.ndarray  # float64: share of the query's relevant items in the union
    ndcg: np.ndarray  # float64: nDCG@10 of the displayed list
    requested: np.ndarray  # int64: documents requested (Σ budgets)
    time_ms: np.ndarray  # float64: modelled OpenSearch time
    arms_run: np.ndarray  # int64 (N, K): budget given to each arm (0 = not run)
    explored: np.ndarray  # bool: the decision came from the exploration branch
    credited: np.ndarray  # int64: arms whose reward was 1 (their candidates held a clicked item)
    ndcg_fused: np.ndarray  # float64: nDCG@10 of the fused list of the arms that ran
    ndcg_reranked: np.ndarray  # float64: nDCG@10 of that list reranked (NaN without a reranker)

    @classmethod
    def empty(cls, spec: str, n: int, n_actions: int, n_arms: int) -> PolicyRun:
        return cls(spec, np.zeros(n, np.int64), np.zeros(n), np.zeros((n, n_actions)), np.zeros(n, bool),
                   np.zeros(n), np.zeros(n), np.zeros(n, np.int64), np.zeros(n), np.zeros((n, n_arms), np.int64),
                   np.zeros(n, bool), np.zeros(n, np.int64), np.zeros(n), np.full(n, np.nan))


def _dcg(gains: Sequence[float]) -> float:
    return float(sum(g / math.log2(i + 2) for i, g in enumerate(gains)))


@dataclass
class SimulationResult:
    """Everything a run measured; :meth:`to_json` summarises it."""

    stream: QueryStream
    arms: tuple[str, ...]
    actions: list[Action]
    runs: dict[str, PolicyRun]
    config: SimulationConfig
    click_model: ClickModel
    elapsed_seconds: float = 0.0
    observed: tuple[str, ...] = ()  # per search: the coarsened context a policy sees (segment | frequency)
    memories: dict[str, Q2EMemory] = field(default_factory=dict)  # policy -> its Q2E memory at the end
    logs: dict[str, list[Any]] = field(default_factory=dict)  # policy -> its simulated search log (LoggedSearch)

    # ---- comparator ------------------------------------------------------------------------
    def context_types(self, by: str = "true") -> np.ndarray:
        """Per search, the context the comparator conditions on: ``"true"``, the user type (with the
        intent) a policy never sees; ``"observed"``, the request's segment tag and the frequency
        bucket of the query, which a policy does see."""
        if by == "true":
            return np.array([s.context_type for s in self.stream.searches], dtype=object)
        if by == "observed":
            if len(self.observed) != len(self.stream.searches):
                raise SimulationError("this result has no observed contexts")
            return np.array(self.observed, dtype=object)
        raise ValueError(f"by must be 'true' or 'observed', got {by!r}")

    def comparator(self, spec: str, within_budget: bool = False, by: str = "true") -> tuple[dict[str, str], np.ndarray]:
        """The best fixed action per context (see :meth:`context_types`) in hindsight for ``spec``'s
        run, and its E[clicks] per search (shape (N,))."""
        run = self.runs[spec]
        allowed = np.array([a.within_budget or not within_budget for a in self.actions])
        ctx = self.context_types(by)
        best: dict[str, str] = {}
        values = np.zeros(len(ctx))
        for c in sorted(set(ctx.tolist())):
            rows = ctx == c
            totals = np.where(allowed, run.action_values[rows].sum(axis=0), -np.inf)
            j = int(np.argmax(totals))
            best[c] = self.actions[j].name
            values[rows] = run.action_values[rows, j]
        return best, values

    def regret(self, spec: str, within_budget: bool = False, by: str = "true") -> np.ndarray:
        """Cumulative pseudo-regret after each search, shape (N,)."""
        _best, values = self.comparator(spec, within_budget, by)
        return np.cumsum(values - self.runs[spec].expected)

    # ---- summaries -------------------------------------------------------------------------
    def best_static(self) -> str | None:
        """The single-arm static policy with the most clicks."""
        singles = [s for s in self.runs if s.startswith("static:") and "+" not in s]
        return max(singles, key=lambda s: (int(self.runs[s].clicks.sum()), s)) if singles else None

    def _segment(self, run: PolicyRun, rows: np.ndarray) -> dict[str, Any]:
        n = int(rows.sum())
        if n == 0:
            return {"searches": 0}
        reranked = run.ndcg_reranked[rows]
        return {"searches": n, "reward": int(run.clicks[rows].sum()), "reward_per_search": float(run.clicks[rows].mean()),
                "success_rate": float((run.clicks[rows] > 0).mean()), "expected_reward": float(run.expected[rows].sum()),
                "candidate_hit_rate": float(run.hit[rows].mean()), "candidate_recall": float(run.recall[rows].mean()),
                "ndcg10": float(run.ndcg[rows].mean()), "ndcg10_fused": float(run.ndcg_fused[rows].mean()),
                "ndcg10_reranked": None if np.isnan(reranked).any() else float(reranked.mean()),
                "requested_per_search": float(run.requested[rows].mean())}

    @staticmethod
    def growth(cumulative: np.ndarray) -> dict[str, float | None]:
        """How a cumulative curve grows: the increment over the last quarter of the stream divided by
        the increment over the first quarter (about 1: linear; well below 1: sublinear), and the
        exponent b of a fit R(t) ≈ a·t^b over t ∈ [N/10, N] (None when R is not positive there)."""
        n = len(cumulative)
        if n < 8:
            return {"late_over_early": None, "exponent": None}
        q = n // 4
        early = float(cumulative[q - 1])
        late = float(cumulative[-1] - cumulative[n - q - 1])
        ratio = late / early if early > 1e-9 else None
        t = np.arange(1, n + 1, dtype=np.float64)
        window = slice(max(0, n // 10 - 1), n)
        r = cumulative[window]
        exponent = None
        if np.all(r > 0):
            exponent = float(np.polyfit(np.log(t[window]), np.log(r), 1)[0])
        return {"late_over_early": ratio, "exponent": exponent}

    def summary(self, spec: str) -> dict[str, Any]:
        run = self.runs[spec]
        n = len(run.clicks)
        everything = np.ones(n, dtype=bool)
        tail = np.array([s.tail for s in self.stream.searches], dtype=bool)
        out = self._segment(run, everything)
        out.update({"time_ms": float(run.time_ms.sum()), "time_ms_per_search": float(run.time_ms.mean()),
                    "requested": int(run.requested.sum())})
        for by, suffix in (("true", ""), ("observed", "_observed")):
            for within, tag in ((False, ""), (True, "_within_budget")):
                best, values = self.comparator(spec, within, by)
                regret = np.cumsum(values - run.expected)
                out[f"regret{suffix}{tag}"] = float(regret[-1])
                out[f"regret{suffix}{tag}_growth"] = self.growth(regret)
                out[f"best_action{suffix}{tag}"] = best
                out[f"comparator{suffix}{tag}_expected_reward"] = float(values.sum())
        clicked = run.clicks > 0
        arms_run = (run.arms_run > 0).sum(axis=1)
        out.update({
            "explored_share": float(run.explored.mean()),
            "arms_run_per_search": float(arms_run.mean()),
            # How discriminating the semi-bandit credit is: of the arms that ran in a search with a
            # click, the share credited (1.0: every arm that ran held a clicked item).
            "credited_share_of_arms_run": float((run.credited[clicked] / np.maximum(arms_run[clicked], 1)).mean())
            if clicked.any() else None,
            "arm_share": {a: float((run.arms_run[:, i] > 0).mean()) for i, a in enumerate(self.arms)},
        })
        ctx = self.context_types()
        by_context: dict[str, Any] = {}
        for c in sorted(set(ctx.tolist())):
            rows = ctx == c
            seg = self._segment(run, rows)
            seg["arm_share"] = {a: float((run.arms_run[rows, i] > 0).mean()) for i, a in enumerate(self.arms)}
            by_context[c] = seg
        return {"final": out, "head": self._segment(run, ~tail), "tail": self._segment(run, tail),
                "by_context": by_context, "by_intent": self.arm_choices(spec)}

    def intents(self) -> tuple[str, np.ndarray]:
        """``(what groups searches, label per search)``: the query's intent when the collection has
        intents (the synthetic catalogue), else the simulated user type (typo, vocabulary...)."""
        searches = self.stream.searches
        if any(s.query.intent is not None for s in searches):
            return "intent", np.array([s.query.intent or "none" for s in searches], dtype=object)
        return "user_type", np.array([s.user_type for s in searches], dtype=object)

    def arm_choices(self, spec: str, last_fraction: float = 0.25, windows: int = 20) -> dict[str, Any]:
        """Per intent (:meth:`intents`): how often each arm ran and which arm sets were chosen in the
        last ``last_fraction`` of the stream (what the policy learned), and each arm's share per
        window of the stream (how it got there)."""
        run = self.runs[spec]
        by, labels = self.intents()
        n = len(labels)
        late = np.arange(n) >= n - max(1, int(round(n * last_fraction)))
        edges = np.unique(np.linspace(0, n, min(windows, n) + 1).round().astype(np.int64))
        ran = run.arms_run > 0
        out: dict[str, Any] = {"grouped_by": by, "last_fraction": last_fraction, "groups": {}}
        for label in sorted(set(labels.tolist())):
            rows = labels == label
            rows_late = rows & late
            sets = Counter("+".join(a for i, a in enumerate(self.arms) if ran[t, i]) or "(none)"
                           for t in np.flatnonzero(rows_late))
            total = max(int(rows_late.sum()), 1)
            series: dict[str, list[float | None]] = {a: [] for a in self.arms}
            for lo, hi in zip(edges[:-1], edges[1:]):
                window = np.zeros(n, bool)
                window[lo:hi] = True
                window &= rows
                for i, a in enumerate(self.arms):
                    series[a].append(float(ran[window, i].mean()) if window.any() else None)
            out["groups"][str(label)] = {
                "searches": int(rows.sum()), "searches_last": int(rows_late.sum()),
                "arm_share_last": {a: float(ran[rows_late, i].mean()) if rows_late.any() else 0.0
                                   for i, a in enumerate(self.arms)},
                "action_share_last": {k: v / total for k, v in sets.most_common()},
                "reward_per_search_last": float(run.clicks[rows_late].mean()) if rows_late.any() else None,
                "series": {"window_end": edges[1:].tolist(), "arm_share": series}}
        return out

    def series(self, spec: str) -> dict[str, list[float]]:
        run = self.runs[spec]
        n = len(run.clicks)
        idx = np.unique(np.linspace(0, n - 1, min(n, self.config.series_points)).round().astype(np.int64))
        return {"searches": (idx + 1).tolist(),
                "cumulative_reward": np.cumsum(run.clicks)[idx].tolist(),
                "cumulative_regret": self.regret(spec)[idx].tolist(),
                "cumulative_regret_within_budget": self.regret(spec, within_budget=True)[idx].tolist(),
                "cumulative_regret_observed": self.regret(spec, by="observed")[idx].tolist(),
                "cumulative_requested": np.cumsum(run.requested)[idx].tolist(),
                "cumulative_time_ms": np.cumsum(run.time_ms)[idx].tolist(),
                "candidate_hit_rate": (np.cumsum(run.hit)[idx] / (idx + 1)).tolist()}

    def to_json(self, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The result document: meta, stream, per policy (final, head, tail, by context, series),
        ratios to the best static arm and to the ``all`` policy's cost, and the goals."""
        best_static = self.best_static()
        reference = "all" if "all" in self.runs else None
        policies: dict[str, Any] = {}
        for spec in self.runs:
            entry = self.summary(spec)
            final = entry["final"]
            if best_static is not None:
                base = self.runs[best_static].clicks.sum()
                final["reward_vs_best_static"] = float(final["reward"] / base) if base > 0 else None
            if reference is not None:
                ref = self.runs[reference]
                final["requested_vs_all"] = float(final["requested"] / ref.requested.sum()) if ref.requested.sum() else None
                final["time_vs_all"] = float(final["time_ms"] / ref.time_ms.sum()) if ref.time_ms.sum() > 0 else None
            entry["series"] = self.series(spec)
            policies[spec] = entry
        return {"meta": {**dict(meta or {}), "arms": list(self.arms), "budget": {
                    "total": self.config.budget.total, "levels": list(self.config.budget.levels),
                    "max_arms": self.config.budget.max_arms, "costs": dict(self.config.budget.costs)},
                    "display_size": self.config.display_size, "display": self.config.display,
                    "reranked": bool(np.isfinite(next(iter(self.runs.values())).ndcg_reranked).all()) if self.runs else False,
                    "rrf_k": self.config.rrf_k, "seed": self.stream.config.seed,
                    "click_model": self.click_model.describe(), "q2e": vars(self.config.q2e),
                    "stream": {k: v for k, v in vars(self.stream.config).items()},
                    "elapsed_seconds": round(self.elapsed_seconds, 3)},
                "stream": self.stream.summary(),
                "actions": [{"name": a.name, "budgets": dict(a.budgets)} for a in self.actions],
                "best_static": best_static, "reference_cost": reference,
                "policies": policies, "goals": self.goals(policies, best_static, reference)}

    @staticmethod
    def is_baseline(spec: str) -> bool:
        return spec.startswith("static:") or spec in ("all", "random")

    def goals(self, policies: Mapping[str, Any], best_static: str | None, reference: str | None) -> dict[str, Any]:
        """The issue's goals per learning policy: reward ≥ 1.10x the best static arm's, documents
        requested ≤ 0.6x the all-arms policy's, regret sublinear (the last quarter's increment below
        half the first quarter's) against the comparator on true and on observed contexts, while
        the baselines' stays linear (about 1)."""
        out: dict[str, Any] = {"thresholds": {"reward_vs_best_static": 1.10, "requested_vs_all": 0.6,
                                              "regret_late_over_early_sublinear_below": 0.5}}

        def growth(final: Mapping[str, Any], name: str) -> float | None:
            return final[name]["late_over_early"]

        for spec, entry in policies.items():
            if self.is_baseline(spec):
                continue
            final = entry["final"]
            ratio = final.get("reward_vs_best_static")
            cost = final.get("requested_vs_all")
            true_growth, observed_growth = growth(final, "regret_growth"), growth(final, "regret_observed_growth")
            out[spec] = {"reward_vs_best_static": ratio, "reward_goal": None if ratio is None else ratio >= 1.10,
                         "requested_vs_all": cost, "cost_goal": None if cost is None else cost <= 0.6,
                         "regret_late_over_early": true_growth,
                         "regret_sublinear": None if true_growth is None else true_growth < 0.5,
                         "regret_observed_late_over_early": observed_growth,
                         "regret_observed_sublinear": None if observed_growth is None else observed_growth < 0.5}
        out["baselines_regret_late_over_early"] = {
            spec: {"true": growth(entry["final"], "regret_growth"),
                   "observed": growth(entry["final"], "regret_observed_growth")}
            for spec, entry in policies.items() if self.is_baseline(spec)}
        return out


class _World:
    """One policy's simulated world: the policy, its Q2E memory, its records."""

    def __init__(self, spec: str, policy: Policy, run: PolicyRun, q2e: Q2EConfig, log: list[Any] | None = None):
        self.spec = spec
        self.policy = policy
        self.run = run
        self.memory = Q2EMemory(q2e)
        self.log = log  # the policy's simulated search log (LoggedSearch), for off-policy evaluation


@dataclass
class _Search:
    """What one search is, the same for every policy."""

    t: int
    text: str
    query_id: str
    key: str
    observed: str  # the context a policy can see, coarsened: segment tag | frequency bucket
    base_x: np.ndarray  # ctx-v1 with q2e_key_exists = 0
    fetched_eligible: frozenset[str]
    not_applicable: dict[str, str]
    levels: Mapping[str, int]  # doc -> click level 0..4
    grades: Mapping[str, int]
    ideal_dcg: float
    relevant: frozenset[str]
    uniforms: np.ndarray  # (2, display_size): the user's click draws


def _check_decision(spec: str, decision: Decision, context: Context, max_level: int, t: int) -> None:
    if not isinstance(decision, Decision):
        raise SimulationError(f"policy {spec} returned {type(decision).__name__}, not a Decision (search {t})")
    for arm, n in decision.budgets.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise SimulationError(f"policy {spec} gave {arm} the budget {n!r} (search {t}); budgets are integers >= 0")
        if n > 0 and arm not in context.eligible:
            raise SimulationError(f"policy {spec} chose {arm}, which does not apply to this query "
                                  f"(eligible: {', '.join(context.eligible)}; search {t})")
        if n > max_level:
            raise SimulationError(f"policy {spec} gave {arm} {n} candidates (search {t}); the candidate cache "
                                  f"holds {max_level} per arm: raise its level or lower the budget levels")


class _Simulator:
    def __init__(self, stream: QueryStream, cache: CandidateCache, click_model: ClickModel, config: SimulationConfig,
                 max_grade: float, reranker: SearchReranker | None = None):
        self.stream, self.cache, self.click_model, self.config = stream, cache, click_model, config
        self.reranker = reranker
        self.reranked_display = config.display == "reranked"
        self.max_grade = max_grade
        self.arms = cache.arms
        self.arm_index = {a: i for i, a in enumerate(self.arms)}
        self.actions = action_set(self.arms, config.budget, cache.max_level)
        self.fuser = make_fusion("rrf", k=config.rrf_k)
        self.clicks_rng = rng(stream.config.seed, "clicks")  # the users' click draws: one stream for all policies
        self._levels: dict[str, tuple[dict[str, int], float]] = {}
        self._static_values: dict[tuple[str, str], float] = {}  # (text, action) -> E[clicks] of a fixed list
        self._searched: Counter[str] = Counter()
        self.observed: list[str] = []  # per search, see _Search.observed

    def shared(self, t: int) -> _Search:
        search = self.stream.searches[t]
        q, text, cfg = search.query, search.text, self.config
        if q.id not in self._levels:
            ids = list(q.grades)
            lv = grade_levels([q.grades[d] for d in ids], self.max_grade)
            ideal = _dcg(sorted((float(g) for g in q.grades.values() if g > 0), reverse=True)[: cfg.display_size])
            self._levels[q.id] = ({d: int(v) for d, v in zip(ids, lv)}, ideal)
        levels, ideal = self._levels[q.id]
        u = self.cache.understanding(text)
        request = RequestContext(segment=search.segment,
                                 time=cfg.start_time + timedelta(seconds=cfg.seconds_per_search * t))
        earlier = self._searched[u.key]
        base_x = context_vector(u, request, q2e_key_exists=False, earlier_searches=earlier)
        self._searched[u.key] += 1
        lo, hi = FREQUENCY_BUCKETS[frequency_bucket(earlier)]
        observed = f"{search.segment}|seen {lo}-{hi if hi is not None else 'up'}"
        self.observed.append(observed)
        return _Search(t, text, q.id, u.key, observed, base_x, frozenset(self.cache.eligible(text)),
                       self.cache.not_applicable(text), levels, q.grades, ideal, q.relevant,
                       self.clicks_rng.random((2, cfg.display_size)))

    def _results(self, memory_hits: Sequence[Hit], s: _Search, budgets: Mapping[str, int]) -> list[StrategyResult]:
        return [StrategyResult(MEMORY_ARM, tuple(memory_hits[:b]), b, self.cache.took(s.text, MEMORY_ARM, b))
                if a == MEMORY_ARM else self.cache.result(s.text, a, b) for a, b in budgets.items()]

    def _expected(self, results: Sequence[StrategyResult], s: _Search) -> float:
        if self.reranked_display and self.reranker is not None:
            shown = self.reranker.rank(s.text, s.query_id, [results], self.config.display_size)[0]
        else:
            shown = rrf_top([(r.strategy, [h.doc_id for h in r.hits]) for r in results], self.config.rrf_k,
                            self.config.display_size)
        return self._expected_of(shown, s)

    def _expected_of(self, shown: Sequence[str], s: _Search) -> float:
        return self.click_model.expected_clicks(np.array([s.levels.get(d, 0) for d in shown], dtype=np.int64))

    def _ndcg(self, shown: Sequence[str], s: _Search) -> float:
        gains = [max(float(s.grades.get(d, 0)), 0.0) for d in shown]
        return _dcg(gains) / s.ideal_dcg if s.ideal_dcg > 0 else 0.0

    def step(self, world: _World, s: _Search) -> None:
        memory, run, t = world.memory, world.run, s.t
        known = memory.has_key(s.key)
        x = s.base_x.copy()
        x[_Q2E_FEATURE] = 1.0 if known else 0.0
        # As in the pipeline, the memory arm applies exactly when the memory has the key.
        eligible = tuple(a for a in self.arms if a in s.fetched_eligible or (a == MEMORY_ARM and known))
        skipped = dict(s.not_applicable)
        if MEMORY_ARM in skipped:
            if known:
                del skipped[MEMORY_ARM]
            else:
                skipped[MEMORY_ARM] = f"the Q2E memory has no entries for {s.key}"
        context = Context(x, eligible, CONTEXT_VERSION, skipped)
        try:
            decision = world.policy.select(context)
        except Exception as e:
            raise SimulationError(f"policy {world.spec} failed to select at search {t}: {type(e).__name__}: {e}") from e
        _check_decision(world.spec, decision, context, self.cache.max_level, t)
        chosen = {a: int(b) for a, b in decision.budgets.items() if b > 0}
        memory_hits = memory.hits(s.key, self.cache.max_level, t) if known else ()
        results = self._results(memory_hits, s, chosen)
        fused_shown = [h.doc_id for h in self.fuser.fuse(results, limit=self.config.display_size)]
        comparator = [(j, {a: b for a, b in action.budgets.items() if a in eligible})
                      for j, action in enumerate(self.actions)]
        # Actions with the memory arm depend on this policy's memory: valued per search, reranked in
        # the same model call as the policy's own list.
        with_memory = [(j, budgets) for j, budgets in comparator if MEMORY_ARM in budgets]
        reranked_shown: list[str] | None = None
        memory_lists: list[list[str]] = []
        if self.reranker is not None:
            selections = [results]
            if self.reranked_display:
                selections += [self._results(memory_hits, s, budgets) for _j, budgets in with_memory]
            ranked = self.reranker.rank(s.text, s.query_id, selections, self.config.display_size)
            reranked_shown, memory_lists = ranked[0], ranked[1:]
        shown = reranked_shown if self.reranked_display and reranked_shown is not None else fused_shown
        shown_levels = np.array([s.levels.get(d, 0) for d in shown], dtype=np.int64)
        clicked_mask = self.click_model.simulate(shown_levels, s.uniforms)
        clicked = [shown[i] for i in np.flatnonzero(clicked_mask)]
        rewards, ranks = arm_rewards(results, clicked)
        union = {h.doc_id for r in results for h in r.hits}
        # Every comparator action, in the state the policy chose in (before this search's feedback).
        ranked_memory = dict(zip((j for j, _b in with_memory), memory_lists))
        for j, budgets in comparator:
            action = self.actions[j]
            if MEMORY_ARM in budgets:
                listed = ranked_memory.get(j)
                run.action_values[t, j] = (self._expected_of(listed, s) if listed is not None
                                           else self._expected(self._results(memory_hits, s, budgets), s))
                continue
            key = (s.text, action.name)  # without the memory the list is the same in every state
            value = self._static_values.get(key)
            if value is None:
                value = self._static_values[key] = self._expected(self._results(memory_hits, s, budgets), s)
            run.action_values[t, j] = value
        try:
            world.policy.update(context, decision, rewards, ranks, outcome=search_outcome([1.0] * len(clicked)))
        except Exception as e:
            raise SimulationError(f"policy {world.spec} failed to update at search {t}: {type(e).__name__}: {e}") from e
        memory.observe(s.key, shown, self.click_model.examination_weights(clicked_mask), clicked, t)
        if not known:
            memory.predict(s.key, self.cache.predicted(s.text, self.config.q2e.predicted_top, self.fuser))
        if world.log is not None:
            world.log.append(_logged(world.spec, s, context, decision, results, shown, clicked))
        run.clicks[t] = len(clicked)
        run.expected[t] = self.click_model.expected_clicks(shown_levels)
        run.hit[t] = bool(union & s.relevant)
        run.recall[t] = len(union & s.relevant) / len(s.relevant) if s.relevant else 0.0
        run.ndcg[t] = self._ndcg(shown, s)
        run.ndcg_fused[t] = self._ndcg(fused_shown, s)
        if reranked_shown is not None:
            run.ndcg_reranked[t] = self._ndcg(reranked_shown, s)
        run.requested[t] = sum(chosen.values())
        run.time_ms[t] = sum(self.cache.took(s.text, a, b) for a, b in chosen.items())
        for a, b in chosen.items():
            run.arms_run[t, self.arm_index[a]] = b
        run.explored[t] = bool(decision.explored)
        run.credited[t] = sum(1 for v in rewards.values() if v > 0)


def _logged(spec: str, s: _Search, context: Context, decision: Any, results: Sequence[StrategyResult],
            shown: Sequence[str], clicked: Sequence[str]) -> Any:
    """What the search log would hold for this search, with its reward: 1 when a clicked item was
    among the candidates (``bandit.offline.union_reward`` with clicks as grade 1)."""
    from ..bandit.offline import LoggedSearch, union_reward
    from ..feedback.records import SearchRecord

    record = SearchRecord(
        search_id=f"{spec}-{s.t}", time=datetime.now(UTC), catalogue="simulation", query=s.text,
        normalized=s.text, key=s.key, context=context.features.tolist(), context_version=context.version,
        request={}, eligible=list(context.eligible), decision=decision.to_dict(),
        arm_hits={r.strategy: [h.doc_id for h in r.hits] for r in results},
        arm_status={r.strategy: r.status.value for r in results}, ranking=list(shown))
    return LoggedSearch(record, union_reward(record, dict.fromkeys(clicked, 1.0)))


def rrf_top(lists: Sequence[tuple[str, Sequence[str]]], k: float, limit: int) -> list[str]:
    """The top ``limit`` doc ids of reciprocal rank fusion of ``(strategy, doc ids in rank order)``
    lists with unique ids: the order of :class:`orchestrator.fusion.RRF` (score Σ 1/(k + rank)
    summed in strategy-name order, then best rank, then more strategies, then doc id), without
    building its records; for the comparator's many counterfactual lists."""
    score: dict[str, float] = {}
    best: dict[str, int] = {}
    found: dict[str, int] = {}
    k = float(k)
    for _name, ids in sorted(lists, key=lambda item: item[0]):
        for rank, doc in enumerate(ids, 1):
            value = 1.0 / (k + rank)
            if doc in score:
                score[doc] += value
                found[doc] += 1
                if rank < best[doc]:
                    best[doc] = rank
            else:
                score[doc] = value
                best[doc] = rank
                found[doc] = 1
    return heapq.nsmallest(limit, score, key=lambda d: (-score[d], best[d], -found[d], d))


def arm_rewards(results: Sequence[StrategyResult], clicked: Sequence[str]) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Per arm that ran: reward 1.0 when its candidates held a clicked item (a click is engagement of
    grade 1; the rule of ``SearchRecord.arm_rewards``), and the within-arm ranks of the clicked items."""
    clicked_set = set(clicked)
    rewards: dict[str, float] = {}
    ranks: dict[str, list[int]] = {}
    for r in results:
        found = [h.rank for h in r.hits if h.doc_id in clicked_set]
        rewards[r.strategy] = 1.0 if found else 0.0
        ranks[r.strategy] = found
    return rewards, ranks


def run_simulation(stream: QueryStream, cache: CandidateCache, click_model: ClickModel,
                   policies: Mapping[str, Policy], config: SimulationConfig | None = None, *,
                   max_grade: float | None = None, on_search: Callable[[int], None] | None = None,
                   log_policies: Sequence[str] = (), reranker: SearchReranker | None = None) -> SimulationResult:
    """Run every policy over ``stream`` (see the module docstring). ``max_grade``: the collection's
    largest relevance grade (default: the largest in the stream's queries); ``on_search(t)`` is
    called after each search (for progress); the searches of ``log_policies`` are kept as a
    search log (``SimulationResult.logs``) for off-policy evaluation; ``reranker`` reranks every
    list (shown when ``config.display`` is ``"reranked"``, else only measured)."""
    import time

    config = config or SimulationConfig()
    if not policies:
        raise SimulationError("no policy to simulate")
    if config.display == "reranked" and reranker is None:
        raise SimulationError("display='reranked' needs a reranker")
    missing = cache.covers(s.text for s in stream.searches)
    if missing:
        raise SimulationError(f"the candidate cache lacks {len(missing)} query texts of the stream (first: {missing[0]!r})")
    if max(config.budget.levels) > cache.max_level:
        raise SimulationError(f"budget level {max(config.budget.levels)} exceeds the cache's largest level {cache.max_level}")
    if max_grade is None:
        max_grade = max((g for s in stream.searches for g in s.query.grades.values()), default=1) or 1
    t0 = time.perf_counter()
    sim = _Simulator(stream, cache, click_model, config, float(max_grade), reranker)
    n = len(stream.searches)
    worlds = [_World(spec, p, PolicyRun.empty(spec, n, len(sim.actions), len(sim.arms)), config.q2e,
                     [] if spec in log_policies else None)
              for spec, p in policies.items()]
    for t in range(n):
        shared = sim.shared(t)
        for world in worlds:
            sim.step(world, shared)
        if on_search is not None:
            on_search(t)
    result = SimulationResult(stream, sim.arms, sim.actions, {w.spec: w.run for w in worlds}, config, click_model,
                              time.perf_counter() - t0, tuple(sim.observed), {w.spec: w.memory for w in worlds})
    result.logs = {w.spec: w.log for w in worlds if w.log is not None}
    return result
