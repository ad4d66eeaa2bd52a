"""Offline evaluation of retrieval policies from the search log (``ltrr evaluate --offline``).

Each logged search becomes one round of a contextual bandit (section 3 of the design note):

* the action is the decision's *budget vector* (:data:`Action`: the arms that ran with their
  candidate counts, sorted by arm; arms at 0 are left out, so ``{"bm25": 50, "knn": 0}`` and
  ``{"bm25": 50}`` are one action);
* the propensity is the decision's joint ``propensity`` of exactly that vector;
* the reward is the system reward R given with the record (:class:`LoggedSearch`;
  :func:`union_reward` computes it from the engaged items' grades).

Searches without a decision (fixed searches), with a propensity that is missing or ≤ 0, with a
decision that does not parse, or with another context schema version than the one evaluated are
skipped and counted by reason (:attr:`LoggedFeedback.skipped`).

A target policy (:class:`TargetPolicy`) gives π(A | search) for every search. Provided here:
the logged policy itself (:class:`LoggedPolicyTarget`, the on-policy check: every estimate equals
the mean reward), a static subset (:class:`StaticSubsetTarget`), every eligible arm
(:class:`AllArmsTarget`), uniform random (:class:`UniformRandomTarget`), and any policy with
``action_probabilities(context)`` (:class:`PolicyTarget`, e.g. those of
``orchestrator.bandit.policies``). :func:`offline_report` estimates each target's value by IPS,
SNIPS and doubly robust (:mod:`orchestrator.bandit.ope`) with bootstrap intervals.

*Support.* A target is estimated only where the log can speak for it: the probability it puts
on actions the logger could have taken in that search (every arm eligible with a logged
inclusion probability > 0, and the action taken at least once in the log; an action the log
never holds contributes exactly 0 to IPS whatever its true propensity). Below ``min_support``
(default: all of it) the target is reported with its support share and no estimate.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from ..feedback.records import SearchRecord
from .base import BudgetConfig, Decision
from .context import Context
from .ope import (
    IPS,
    SNIPS,
    DoublyRobust,
    Interval,
    OffPolicyEstimator,
    RidgeRewardModel,
    bootstrap_interval,
    check_bootstrap_options,
    effective_sample_size,
)

Action = tuple[tuple[str, int], ...]
"""A budget vector: (arm, candidates) for each arm that runs, sorted by arm name (the key of
``orchestrator.bandit.allocation.action_key``)."""

SKIP_NO_DECISION = "no decision (a fixed search)"
SKIP_NO_PROPENSITY = "propensity missing or <= 0"
SKIP_MALFORMED_DECISION = "malformed decision"
SKIP_OTHER_CONTEXT_VERSION = "other context version"

PROBABILITY_TOLERANCE = 1e-6  # a target's probabilities for one search must sum to 1 within this
TARGET_SPECS = "logged, random, all, static:<arm>+<arm>[...], static:*"


class TargetError(ValueError):
    """A target policy is misspecified or returned an invalid distribution."""


def budget_vector(budgets: Mapping[str, int] | Iterable[tuple[str, int]]) -> Action:
    """The canonical :data:`Action` of a budget mapping or of (arm, n) pairs: arms with n > 0,
    sorted by name. Raises ValueError on a repeated arm or a budget that is not an integer ≥ 0."""
    items = budgets.items() if isinstance(budgets, Mapping) else budgets
    running: dict[str, int] = {}
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise ValueError(f"a budget vector holds (arm, n) pairs, got {item!r}")
        arm, n = item
        if not isinstance(arm, str) or not arm:
            raise ValueError(f"arm names must be non-empty strings, got {arm!r}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"the budget of {arm} must be an integer >= 0, got {n!r}")
        if arm in seen:
            raise ValueError(f"arm {arm} appears twice in one budget vector")
        seen.add(arm)
        if n > 0:
            running[arm] = int(n)
    return tuple(sorted(running.items()))


def format_action(action: Action) -> str:
    """``bm25_popularity=50+knn=50``; ``(no arm)`` for the empty vector."""
    return "+".join(f"{arm}={n}" for arm, n in action) or "(no arm)"


def union_reward(record: SearchRecord, engaged: Mapping[str, float]) -> float:
    """The system reward R of a search: the largest grade (doc id -> grade, e.g. from the reward
    joiner's ``FinalizedSearch.engaged``) among engaged items in the union of the arms' candidates
    (arms that ran ok), 0 when none is; the same grades as the per-arm rewards, so R = max_a r_a."""
    rewards, _ = record.arm_rewards(engaged)
    return max(rewards.values(), default=0.0)


@dataclass(frozen=True)
class LoggedSearch:
    """One logged search and its system reward R (e.g. 1 if an engaged item was in the union)."""

    record: SearchRecord
    reward: float

    def __post_init__(self) -> None:
        if not isinstance(self.record, SearchRecord):
            raise TypeError(f"record must be a SearchRecord, got {type(self.record).__name__}")
        if isinstance(self.reward, bool) or not isinstance(self.reward, (int, float)) or not math.isfinite(self.reward):
            raise ValueError(f"reward of search {self.record.search_id} must be a finite number, got {self.reward!r}")


@dataclass(frozen=True, eq=False)
class LoggedFeedback:
    """The evaluable searches as the estimators' arrays (n = ``n_rounds``).

    ``context``: (n, d) float64; ``reward``, ``pscore``: (n,) float64; ``logged_actions``: n
    budget vectors; ``records``/``decisions``: the searches and their parsed decisions.
    ``n_read`` counts every search read, ``skipped`` the ones left out, by reason.
    """

    records: tuple[SearchRecord, ...]
    decisions: tuple[Decision, ...]
    logged_actions: tuple[Action, ...]
    context: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    context_version: str | None
    n_read: int
    skipped: Mapping[str, int] = field(default_factory=dict)

    @property
    def n_rounds(self) -> int:
        return len(self.records)

    @property
    def arms(self) -> tuple[str, ...]:
        """Every arm eligible in, or run by, some evaluable search (sorted)."""
        names = {a for r in self.records for a in r.eligible} | {a for act in self.logged_actions for a, _ in act}
        return tuple(sorted(names))


def _parse_decision(record: SearchRecord) -> tuple[Decision | None, str | None]:
    if record.decision is None:
        return None, SKIP_NO_DECISION
    try:
        decision = Decision.from_dict(record.decision)
        budget_vector(decision.budgets)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None, SKIP_MALFORMED_DECISION
    if not math.isfinite(decision.propensity) or decision.propensity <= 0:
        return None, SKIP_NO_PROPENSITY
    if decision.propensity > 1 + PROBABILITY_TOLERANCE:
        return None, SKIP_MALFORMED_DECISION
    return decision, None


def logged_feedback(logged: Iterable[LoggedSearch], *, context_version: str | None = None) -> LoggedFeedback:
    """Turn logged searches into :class:`LoggedFeedback`.

    ``context_version``: the schema to evaluate; None takes the most common one among the
    searches with a usable decision (the first seen on a tie). Searches of other versions are
    skipped and counted, as vectors of different schemas mean different things. Contexts of one
    version with different lengths are corrupt input: ValueError.
    """
    usable: list[tuple[SearchRecord, Decision, float]] = []
    skipped: Counter[str] = Counter()
    n_read = 0
    for item in logged:
        if not isinstance(item, LoggedSearch):
            raise TypeError(f"expected LoggedSearch items, got {type(item).__name__}")
        n_read += 1
        decision, reason = _parse_decision(item.record)
        if reason is not None:
            skipped[reason] += 1
        elif decision is not None:
            usable.append((item.record, decision, float(item.reward)))
    if context_version is None and usable:
        versions = Counter(r.context_version for r, _, _ in usable)
        top = max(versions.values())
        context_version = next(r.context_version for r, _, _ in usable if versions[r.context_version] == top)
    kept = [u for u in usable if u[0].context_version == context_version]
    if len(kept) < len(usable):
        skipped[SKIP_OTHER_CONTEXT_VERSION] += len(usable) - len(kept)
    dims = {len(r.context) for r, _, _ in kept}
    if len(dims) > 1:
        first = kept[0][0]
        odd = next(r for r, _, _ in kept if len(r.context) != len(first.context))
        raise ValueError(f"context version {context_version} has vectors of different lengths: search "
                         f"{first.search_id} has {len(first.context)}, search {odd.search_id} has {len(odd.context)}")
    dim = dims.pop() if dims else 0
    context = np.asarray([r.context for r, _, _ in kept], dtype=np.float64).reshape(len(kept), dim)
    return LoggedFeedback(
        records=tuple(r for r, _, _ in kept), decisions=tuple(d for _, d, _ in kept),
        logged_actions=tuple(budget_vector(d.budgets) for _, d, _ in kept), context=context,
        reward=np.asarray([x for _, _, x in kept], dtype=np.float64),
        pscore=np.asarray([d.propensity for _, d, _ in kept], dtype=np.float64),
        context_version=context_version, n_read=n_read, skipped=dict(skipped))


# ---- target policies ---------------------------------------------------------------------------


class TargetPolicy(Protocol):
    """A policy to evaluate: π(A | search) as {budget vector: probability}, summing to 1.
    Actions with probability 0 may be left out."""

    @property
    def name(self) -> str: ...

    def probabilities(self, record: SearchRecord) -> Mapping[Action, float]: ...


class SupportsActionProbabilities(Protocol):
    """A bandit policy (``orchestrator.bandit.policies``) that can state its distribution."""

    def action_probabilities(self, context: Context) -> Mapping[Any, float]: ...


def even_split_level(budget: BudgetConfig, n_arms: int) -> int | None:
    """The largest level ≤ total / n_arms (the even split rounded down to a level); None when
    even the smallest level does not fit."""
    share = budget.total // max(1, n_arms)
    fitting = [level for level in budget.levels if level <= share]
    return fitting[-1] if fitting else None


def _eligible(record: SearchRecord) -> tuple[str, ...]:
    return tuple(dict.fromkeys(record.eligible))


@dataclass(frozen=True)
class LoggedPolicyTarget:
    """The policy that logged the searches: π(A_i | x_i) = μ(A_i | x_i), the logged propensity.

    Evaluated on-policy (w_i = 1, and the direct term of DR at the logged action), so IPS, SNIPS
    and DR all equal the mean logged reward: a check that the data and the estimators agree."""

    on_policy: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return "logged"

    def probabilities(self, record: SearchRecord) -> Mapping[Action, float]:
        decision, reason = _parse_decision(record)
        if decision is None:
            raise TargetError(f"search {record.search_id} has no usable decision ({reason})")
        return {budget_vector(decision.budgets): decision.propensity}


@dataclass(frozen=True)
class StaticSubsetTarget:
    """Always run ``arms`` (those eligible in the search), each with the even split of the total
    rounded down to a level: deterministic, π = 1 on that budget vector. No eligible arm of the
    subset: the empty vector (nothing runs)."""

    arms: tuple[str, ...]
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def __post_init__(self) -> None:
        arms = tuple(self.arms)
        if not arms or any(not isinstance(a, str) or not a for a in arms):
            raise TargetError(f"a static subset needs non-empty arm names, got {self.arms!r}")
        if len(set(arms)) != len(arms):
            raise TargetError(f"a static subset names an arm twice: {'+'.join(arms)}")
        if even_split_level(self.budget, len(arms)) is None:
            raise TargetError(f"static:{'+'.join(arms)}: the total {self.budget.total} split over {len(arms)} arms "
                              f"is below the smallest level {self.budget.levels[0]}")
        object.__setattr__(self, "arms", arms)

    @property
    def name(self) -> str:
        return "static:" + "+".join(self.arms)

    @property
    def level(self) -> int:
        level = even_split_level(self.budget, len(self.arms))
        assert level is not None  # checked in __post_init__
        return level

    def probabilities(self, record: SearchRecord) -> Mapping[Action, float]:
        return {_static_action(self.arms, self.level, frozenset(record.eligible)): 1.0}


@dataclass(frozen=True)
class AllArmsTarget:
    """Run every eligible arm at the largest level ≤ total (the behaviour before the bandit)."""

    budget: BudgetConfig = field(default_factory=BudgetConfig)

    @property
    def name(self) -> str:
        return "all"

    def probabilities(self, record: SearchRecord) -> Mapping[Action, float]:
        level = max(v for v in self.budget.levels if v <= self.budget.total)
        eligible = _eligible(record)
        return {_static_action(eligible, level, frozenset(eligible)): 1.0}


@dataclass(frozen=True)
class UniformRandomTarget:
    """A uniformly random m-subset of the K eligible arms, m = min(max_arms, K), each arm at the
    even split of the total rounded down to a level (fewer arms when even the smallest level does
    not fit m times): π(A) = 1 / C(K, m) for each such vector, the exploration branch of the
    learning policies. No eligible arm: the empty vector."""

    budget: BudgetConfig = field(default_factory=BudgetConfig)

    @property
    def name(self) -> str:
        return "random"

    def probabilities(self, record: SearchRecord) -> Mapping[Action, float]:
        return dict(_uniform_actions(_eligible(record), self.budget.max_arms, self.budget.total, self.budget.levels))


@functools.lru_cache(maxsize=4096)
def _static_action(arms: tuple[str, ...], level: int, eligible: frozenset[str]) -> Action:
    return budget_vector({a: level for a in arms if a in eligible})


@functools.lru_cache(maxsize=4096)
def _uniform_actions(eligible: tuple[str, ...], max_arms: int, total: int,
                     levels: tuple[int, ...]) -> tuple[tuple[Action, float], ...]:
    if not eligible:
        return (((), 1.0),)

    def split(m: int) -> int | None:
        fitting = [v for v in levels if v <= total // m]
        return fitting[-1] if fitting else None

    m = min(max_arms, len(eligible))
    while m > 1 and split(m) is None:
        m -= 1
    level = split(m)
    assert level is not None  # one arm at levels[0] <= total always fits (BudgetConfig checks it)
    subsets = list(itertools.combinations(eligible, m))
    return tuple((budget_vector({a: level for a in subset}), 1.0 / len(subsets)) for subset in subsets)


@dataclass(frozen=True)
class PolicyTarget:
    """Adapter: a bandit policy with ``action_probabilities(context)`` (keys: budget vectors as
    (arm, n) pairs in any order, zeros allowed) as a :class:`TargetPolicy`. The context is rebuilt
    from the logged vector, eligible arms and schema version. The policy is evaluated as it is
    now (its current statistics), not as it was when the search was logged."""

    policy: SupportsActionProbabilities
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or str(getattr(self.policy, "name", type(self.policy).__name__))

    def probabilities(self, record: SearchRecord) -> Mapping[Action, float]:
        context = Context(np.asarray(record.context, dtype=np.float64), _eligible(record), record.context_version)
        merged: dict[Action, float] = {}
        for key, p in self.policy.action_probabilities(context).items():
            action = budget_vector(key)
            merged[action] = merged.get(action, 0.0) + float(p)
        return merged


def parse_target(spec: str, budget: BudgetConfig | None = None) -> TargetPolicy:
    """One target from its spec: ``logged``, ``random``, ``all`` or ``static:<arm>+<arm>[...]``."""
    budget = budget or BudgetConfig()
    if not isinstance(spec, str):
        raise TargetError(f"a target spec is a string, got {spec!r}")
    kind, sep, rest = spec.strip().partition(":")
    if not sep and kind == "logged":
        return LoggedPolicyTarget()
    if not sep and kind == "random":
        return UniformRandomTarget(budget)
    if not sep and kind == "all":
        return AllArmsTarget(budget)
    if sep and kind == "static" and rest and rest != "*":
        return StaticSubsetTarget(tuple(a.strip() for a in rest.split("+")), budget)
    raise TargetError(f"unknown target {spec!r}; valid: {TARGET_SPECS}")


def expand_targets(targets: Sequence[str | TargetPolicy], arms: Sequence[str],
                   budget: BudgetConfig | None = None) -> list[TargetPolicy]:
    """Specs and policies -> target policies. ``static:*`` becomes every subset of ``arms`` with
    min_arms..max_arms arms whose even split fits a level. Two targets with one name: TargetError."""
    budget = budget or BudgetConfig()
    out: list[TargetPolicy] = []
    for target in targets:
        if isinstance(target, str) and target.strip() == "static:*":
            for m in range(budget.min_arms, budget.max_arms + 1):
                if even_split_level(budget, m) is None:
                    continue
                out.extend(StaticSubsetTarget(subset, budget) for subset in itertools.combinations(sorted(arms), m))
        elif isinstance(target, str):
            out.append(parse_target(target, budget))
        else:
            out.append(target)
    names = Counter(t.name for t in out)
    repeated = sorted(n for n, c in names.items() if c > 1)
    if repeated:
        raise TargetError(f"targets named more than once: {', '.join(repeated)}")
    return out


def _target_distributions(feedback: LoggedFeedback, target: TargetPolicy) -> list[dict[Action, float]]:
    """π(· | search) per round, validated and renormalised to sum exactly 1."""
    rows: list[dict[Action, float]] = []
    canonical: dict[Any, Action] = {}  # the same few vectors recur in every search
    for record in feedback.records:
        try:
            raw = target.probabilities(record)
            row: dict[Action, float] = {}
            for key, p in raw.items():
                action = canonical.get(key)
                if action is None:
                    action = canonical[key] = budget_vector(key)
                row[action] = float(p)
        except TargetError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise TargetError(f"target {target.name!r} failed on search {record.search_id}: {e}") from e
        if len(row) != len(raw):
            raise TargetError(f"target {target.name!r} lists one budget vector twice for search {record.search_id}")
        if any(not math.isfinite(p) or p < 0 or p > 1 + PROBABILITY_TOLERANCE for p in row.values()):
            raise TargetError(f"target {target.name!r} gives probabilities outside [0, 1] for search {record.search_id}")
        total = sum(row.values())
        if abs(total - 1) > PROBABILITY_TOLERANCE:
            raise TargetError(f"target {target.name!r}: probabilities for search {record.search_id} sum to {total:.6g}, not 1")
        rows.append({a: p / total for a, p in row.items() if p > 0})
    return rows


def _covered_arms(record: SearchRecord, decision: Decision) -> set[str] | None:
    """Arms the logger could run in this search (eligible, inclusion > 0); None when the decision
    logged no inclusion probabilities (then only the log's action set bounds the support)."""
    if not decision.inclusion:
        return None
    eligible = set(record.eligible)
    return {a for a, p in decision.inclusion.items() if p > 0 and a in eligible}


def action_features(actions: Sequence[Action]) -> np.ndarray:
    """f(A) for the reward model's shared term, shape (n_actions, 1 + 2·n_arms): a constant,
    which arms run, and each arm's budget over the largest budget of any action. Actions running
    the same arms share strength through it, and an action the log never took is predicted from
    its arms."""
    arms = sorted({a for act in actions for a, _ in act})
    index = {a: j for j, a in enumerate(arms)}
    scale = max((n for act in actions for _, n in act), default=1)
    features = np.zeros((len(actions), 1 + 2 * len(arms)), dtype=np.float64)
    features[:, 0] = 1.0
    for i, act in enumerate(actions):
        for arm, n in act:
            features[i, 1 + index[arm]] = 1.0
            features[i, 1 + len(arms) + index[arm]] = n / scale
    return features


# ---- the report ------------------------------------------------------------------------------


STATUS_OK = "ok"
STATUS_UNSUPPORTED = "unsupported"
STATUS_NO_DATA = "no searches"


@dataclass(frozen=True)
class TargetEstimate:
    """One target's row. ``support``: mean over searches of the target's probability on actions
    the logger could take (see the module docstring); ``logged_share``: share of searches whose
    logged action the target takes with π > 0; ``ess``: (Σw)²/Σw² of the importance weights;
    ``max_weight``: the largest w_i. Estimates are None unless ``status`` is ``ok``."""

    name: str
    status: str
    support: float
    logged_share: float
    ess: float
    max_weight: float
    ips: Interval | None = None
    snips: Interval | None = None
    dr: Interval | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        def interval(v: Interval | None) -> dict[str, float | None] | None:
            return None if v is None else {k: (x if math.isfinite(x) else None) for k, x in v._asdict().items()}

        return {"target": self.name, "status": self.status, "support": self.support, "logged_share": self.logged_share,
                "ess": self.ess, "max_weight": self.max_weight, "ips": interval(self.ips), "snips": interval(self.snips),
                "dr": interval(self.dr), "note": self.note}


@dataclass(frozen=True)
class OfflineReport:
    """Off-policy estimates of several targets from one log, with what they rest on."""

    rows: tuple[TargetEstimate, ...]
    n_read: int
    n_evaluated: int
    skipped: Mapping[str, int]
    mean_reward: float | None
    context_version: str | None
    n_actions: int
    n_bootstrap: int
    alpha: float
    seed: int
    reward_model: str | None
    max_weight: float | None
    min_support: float
    notes: tuple[str, ...] = ()

    def row(self, name: str) -> TargetEstimate:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no target {name!r}; targets: {', '.join(r.name for r in self.rows)}")

    def table_rows(self) -> list[dict[str, str]]:
        """One dict per target, columns in display order, values formatted for a table."""
        level = f"{100 * (1 - self.alpha):g}%"

        def fmt(v: Interval | None) -> str:
            if v is None:
                return "—"
            return f"{v.mean:.4f} [{v.low:.4f}, {v.high:.4f}]" if math.isfinite(v.mean) else "n/a"

        return [{"target": r.name, "support": f"{r.support:.3f}", "π>0 on logged": f"{r.logged_share:.3f}",
                 "ESS": f"{r.ess:.0f}", f"IPS ({level})": fmt(r.ips), f"SNIPS ({level})": fmt(r.snips),
                 f"DR ({level})": fmt(r.dr), "note": r.note or r.status} for r in self.rows]

    def to_json(self) -> dict[str, Any]:
        return {"n_read": self.n_read, "n_evaluated": self.n_evaluated, "skipped": dict(self.skipped),
                "mean_reward": self.mean_reward, "context_version": self.context_version, "n_actions": self.n_actions,
                "bootstrap": {"n_bootstrap": self.n_bootstrap, "alpha": self.alpha, "seed": self.seed},
                "reward_model": self.reward_model, "max_weight": self.max_weight, "min_support": self.min_support,
                "notes": list(self.notes), "targets": [r.to_json() for r in self.rows]}


def evaluate_targets(feedback: LoggedFeedback, targets: Sequence[TargetPolicy], *, n_bootstrap: int = 2000,
                     alpha: float = 0.05, seed: int = 0, reward_model: RidgeRewardModel | None = None,
                     max_weight: float | None = None, min_support: float = 1.0) -> OfflineReport:
    """IPS, SNIPS and DR estimates with percentile bootstrap intervals of each target.

    All targets and estimators share one set of ``n_bootstrap`` resamples of the searches (seeded),
    so their intervals are comparable. ``max_weight`` clips the weights of IPS and DR (None: no
    clipping). ``reward_model``: DR's R̂, fitted once over the action space (every logged budget
    vector plus the targets'); default :class:`RidgeRewardModel` with the same seed. Targets whose
    support is below ``min_support`` get no estimate.
    """
    check_bootstrap_options(n_bootstrap, alpha)
    if not isinstance(min_support, (int, float)) or not 0 <= min_support <= 1:
        raise ValueError(f"min_support must be in [0, 1], got {min_support!r}")
    ips, snips, dr = IPS(max_weight), SNIPS(), DoublyRobust(max_weight)  # validates max_weight
    model = reward_model or RidgeRewardModel(seed=seed)
    n = feedback.n_rounds
    common = {"n_read": feedback.n_read, "n_evaluated": n, "skipped": dict(feedback.skipped),
              "context_version": feedback.context_version, "n_bootstrap": n_bootstrap, "alpha": alpha, "seed": seed,
              "max_weight": max_weight, "min_support": float(min_support)}
    if n == 0:
        rows = tuple(TargetEstimate(t.name, STATUS_NO_DATA, 0.0, 0.0, 0.0, 0.0, note="no evaluable search in the log")
                     for t in targets)
        return OfflineReport(rows, mean_reward=None, n_actions=0, reward_model=None, **common)

    distributions = {t.name: _target_distributions(feedback, t) for t in targets if not isinstance(t, LoggedPolicyTarget)}
    logged_set = sorted(set(feedback.logged_actions))
    extra = sorted({a for rows in distributions.values() for row in rows for a in row} - set(logged_set))
    actions = [*logged_set, *extra]
    index = {a: j for j, a in enumerate(actions)}
    logged_index = np.asarray([index[a] for a in feedback.logged_actions], dtype=np.int64)
    rounds = np.arange(n)

    notes: list[str] = []
    estimated: np.ndarray | None = None
    if n >= model.n_folds:
        estimated = model.cross_fit_predict(feedback.context, logged_index, feedback.reward, len(actions),
                                            action_features(actions))
    else:
        notes.append(f"DR needs at least {model.n_folds} searches for cross-fitting; got {n}")

    covered_arms = [_covered_arms(r, d) for r, d in zip(feedback.records, feedback.decisions, strict=True)]
    logged_lookup = set(logged_set)

    def covered(i: int, action: Action) -> bool:
        arms = covered_arms[i]
        return action in logged_lookup and (arms is None or all(a in arms for a, _ in action))

    numerators: list[np.ndarray] = []
    denominators: list[np.ndarray] = []
    slots: list[tuple[int, str]] = []  # (row, estimator) of each bootstrap column
    partial: list[dict[str, Any]] = []
    estimators: tuple[tuple[str, OffPolicyEstimator], ...] = (("ips", ips), ("snips", snips), ("dr", dr))
    for target in targets:
        if isinstance(target, LoggedPolicyTarget):
            # π = μ: each logged action with weight 1; the direct term is R̂ at the logged action.
            dist = np.zeros((n, len(actions)))
            dist[rounds, logged_index] = 1.0
            pscore = np.ones(n)
            support = 1.0
        else:
            rows = distributions[target.name]
            dist = np.zeros((n, len(actions)))
            for i, row in enumerate(rows):
                for a, p in row.items():
                    dist[i, index[a]] = p
            pscore = feedback.pscore
            support = float(np.mean([sum(p for a, p in row.items() if covered(i, a)) for i, row in enumerate(rows)]))
        weights = dist[rounds, logged_index] / pscore
        row_fields: dict[str, Any] = {"name": target.name, "support": support,
                                  "logged_share": float(np.mean(weights > 0)), "ess": effective_sample_size(weights),
                                  "max_weight": float(weights.max())}
        if support < min_support - 1e-9:
            row_fields.update(status=STATUS_UNSUPPORTED,
                          note=f"not estimated: {100 * (1 - support):.0f}% of its choices never logged")
        else:
            row_fields.update(status=STATUS_OK, note="")
            for key, estimator in estimators:
                if key == "dr" and estimated is None:
                    continue
                a, b = estimator.ratio_terms(feedback.reward, logged_index, pscore, dist, estimated)
                numerators.append(a)
                denominators.append(b)
                slots.append((len(partial), key))
        partial.append(row_fields)

    if numerators:
        num, den = np.column_stack(numerators), np.column_stack(denominators)
        low, high = bootstrap_interval(num, den, n_bootstrap=n_bootstrap, alpha=alpha, seed=seed)
        totals_a, totals_b = num.sum(axis=0), den.sum(axis=0)
        for j, (row, key) in enumerate(slots):
            point = float(totals_a[j] / totals_b[j]) if totals_b[j] != 0 else float("nan")
            partial[row][key] = Interval(float(low[j]), point, float(high[j]))
    return OfflineReport(tuple(TargetEstimate(**f) for f in partial), mean_reward=float(np.mean(feedback.reward)),
                         n_actions=len(actions), reward_model=model.describe() if estimated is not None else None,
                         notes=tuple(notes), **common)


def offline_report(logged: Iterable[LoggedSearch], targets: Sequence[str | TargetPolicy], *, n_bootstrap: int = 2000,
                   alpha: float = 0.05, seed: int = 0, budget: BudgetConfig | None = None,
                   reward_model: RidgeRewardModel | None = None, max_weight: float | None = None,
                   min_support: float = 1.0, context_version: str | None = None) -> OfflineReport:
    """The ``ltrr evaluate --offline`` report: read the log (:func:`logged_feedback`), expand the
    target specs (:func:`expand_targets`; ``budget`` defines the static and random targets'
    vectors, default :class:`BudgetConfig`), and estimate each (:func:`evaluate_targets`)."""
    feedback = logged_feedback(logged, context_version=context_version)
    expanded = expand_targets(targets, feedback.arms, budget)
    return evaluate_targets(feedback, expanded, n_bootstrap=n_bootstrap, alpha=alpha, seed=seed,
                            reward_model=reward_model, max_weight=max_weight, min_support=min_support)
