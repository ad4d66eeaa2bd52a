"""A contextual bandit over joint actions: which arms run *together*, with their split.

The per-arm policies (``policies.py``) model each arm's chance to hold an engaged item and pick
the top m. That cannot see complementarity: when two arms run, the fused list shows mostly items
both found, every arm that ran gets credit for the click, and the per-arm models cannot tell a
pair that works (fuzzy + structured on a misspelled artist) from one that does not. Here each
action A, a set of at most ``max_arms`` eligible arms with the even split of the total, has its
own ridge model of the whole search's outcome (what the user engaged with, in [0, 1]):

    u_A = θ̂_Aᵀx + α·‖L_A⁻¹x‖,   θ̂_A = (λI + Σ x xᵀ)⁻¹ Σ o·x  over the searches that took A,

the best u_A is taken, and with probability ε (the floor) a uniform random action instead, so

    P(A | x) = (1 − ε)·1[A = argmax] + ε/|𝒜(x)|,
    P(arm a runs | x) = (1 − ε)·1[a ∈ argmax] + ε·|{A ∋ a}|/|𝒜(x)|.

Actions are named ``"a+b"`` (arms in plan order) and their statistics are kept under those names
in a :class:`~orchestrator.bandit.stats.PolicyStatistics`, so the shared state merges them like
any other policy's. |𝒜| grows as C(K, ≤m): fine for the handful of arms a catalogue has.
"""

from __future__ import annotations

import itertools
import math
import numbers
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg.lapack import get_lapack_funcs

from .allocation import ActionKey, action_key
from .base import BudgetConfig, Decision, Policy, PolicyConfigError
from .context import Context
from .policies import check_propensity, check_statistics, context_features
from .stats import PolicyStatistics

SEED_BOUND = 2**63 - 1
REFACTOR_EVERY = 128  # rank-one updates of an action's inverse between exact refactorings (no drift)
_potrf, _potrs = get_lapack_funcs(("potrf", "potrs"), (np.zeros((1, 1)),))


@dataclass(frozen=True)
class JointLinUCBConfig:
    """``alpha``: confidence width α ≥ 0; ``l2``: ridge prior λ > 0; ``floor``: ε in [0, 1]."""

    alpha: float = 0.5
    l2: float = 1.0
    floor: float = 0.05

    def __post_init__(self) -> None:
        for name, value, low, high, low_open in (("alpha", self.alpha, 0.0, math.inf, False),
                                                 ("l2", self.l2, 0.0, math.inf, True),
                                                 ("floor", self.floor, 0.0, 1.0, False)):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < low or value > high or (low_open and value == low):
                raise PolicyConfigError(f"JointLinUCBConfig.{name} must be a number in "
                                        f"{'(' if low_open else '['}{low}, {high}], got {value!r}")


class JointLinUCB(Policy):
    """LinUCB over joint actions (see the module docstring); ``update`` learns from ``outcome``."""

    name = "joint"

    def __init__(self, arms: Sequence[str], budget: BudgetConfig, dim: int, config: JointLinUCBConfig | None = None,
                 *, seed: int = 0) -> None:
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise PolicyConfigError(f"dim must be a positive integer, got {dim!r}")
        self.config = config or JointLinUCBConfig()
        self.budget = budget
        self.dim = int(dim)
        self._arms: list[str] = []
        for arm in arms:
            self.add_arm(arm)
        self._stats = PolicyStatistics(self.dim, budget.levels)
        self._delta = PolicyStatistics(self.dim, budget.levels)
        self._ridge = self.config.l2 * np.eye(self.dim)
        # Per known action (index in _names): (λI + A)⁻¹ and θ̂, stacked so one batched product
        # scores every action; refreshed only for the actions whose statistics changed.
        self._names: list[str] = []
        self._position: dict[str, int] = {}
        self._inverse = np.zeros((0, self.dim, self.dim))
        self._theta = np.zeros((0, self.dim))
        self._dirty: set[int] = set()
        self._updates: dict[int, int] = {}  # rank-one updates per action since the start
        self._selection: dict[tuple[str, ...], np.ndarray] = {}
        self._rng = np.random.default_rng(seed)
        self._snapshot_base = uuid.uuid4().hex[:12]
        self._version = 0
        self._actions: dict[tuple[str, ...], list[tuple[str, dict[str, int]]]] = {}

    # -- arms, actions, statistics --

    @property
    def arms(self) -> tuple[str, ...]:
        return tuple(self._arms)

    @property
    def snapshot(self) -> str:
        return f"{self._snapshot_base}.{self._version}"

    @property
    def statistics(self) -> PolicyStatistics:
        return self._stats.copy()

    def add_arm(self, arm: str) -> None:
        if not isinstance(arm, str) or not arm:
            raise ValueError(f"an arm name must be a non-empty string, got {arm!r}")
        if arm not in self._arms:
            self._arms.append(arm)
            self._actions = {}
            self._selection = {}

    def take_delta(self) -> PolicyStatistics:
        delta, self._delta = self._delta, self._stats.empty_like()
        return delta

    def load_statistics(self, stats: PolicyStatistics, snapshot: str | None = None) -> None:
        check_statistics(stats, self.dim, self.budget.levels)
        merged = stats.copy()
        merged.merge(self._delta)
        self._stats = merged
        for name in merged.arms:
            self._register(name)
        self._dirty = set(range(len(self._names)))
        self._snapshot_base = snapshot or uuid.uuid4().hex[:12]
        self._version = 0

    def actions(self, eligible: Sequence[str]) -> list[tuple[str, dict[str, int]]]:
        """(name, budgets) of every action over ``eligible``: each set of 1..max_arms arms with the
        even split of the total (rounded down to a level; sets whose share is below the smallest
        level are left out)."""
        key = tuple(eligible)
        cached = self._actions.get(key)
        if cached is None:
            levels, total = self.budget.levels, self.budget.total
            order = {a: i for i, a in enumerate(self._arms)}
            ranked = sorted(eligible, key=lambda a: order.get(a, len(order)))
            cached = []
            for size in range(1, min(self.budget.max_arms, len(ranked)) + 1):
                fitting = [n for n in levels if n * size <= total]
                if not fitting:
                    break
                for subset in itertools.combinations(ranked, size):
                    cached.append(("+".join(subset), dict.fromkeys(subset, fitting[-1])))
            self._actions[key] = cached
        return cached

    def _register(self, action: str) -> int:
        """The stack position of ``action``, added at the prior ((λI)⁻¹, θ̂ = 0) when new."""
        i = self._position.get(action)
        if i is None:
            i = self._position[action] = len(self._names)
            self._names.append(action)
            self._inverse = np.concatenate((self._inverse, (np.eye(self.dim) / self.config.l2)[None]))
            self._theta = np.concatenate((self._theta, np.zeros((1, self.dim))))
            if action in self._stats.arms:
                self._dirty.add(i)
        return i

    def _refresh(self) -> None:
        """(λI + A)⁻¹ by Cholesky (jitter if needed) and θ̂ for the actions that changed: O(d³) each."""
        for i in self._dirty:
            stats = self._stats.arms.get(self._names[i])
            if stats is None:
                continue
            a = stats.gram + self._ridge
            chol, info = _potrf(a, lower=1, clean=1)
            if info != 0:
                chol = np.linalg.cholesky(a + 1e-8 * max(1.0, float(np.trace(a)) / self.dim) * np.eye(self.dim))
            inverse = _potrs(chol, np.eye(self.dim), lower=1)[0]
            self._inverse[i] = inverse
            self._theta[i] = inverse @ stats.moment
        self._dirty.clear()

    def _positions(self, actions: list[tuple[str, dict[str, int]]], eligible: tuple[str, ...]) -> np.ndarray:
        positions = self._selection.get(eligible)
        if positions is None:
            positions = self._selection[eligible] = np.array([self._register(n) for n, _ in actions], dtype=np.intp)
        return positions

    def theta(self, action: str) -> np.ndarray:
        """θ̂ of ``action`` ("a+b"), (d,): the ridge estimate the policy acts on."""
        if action not in self._position:
            raise KeyError(f"unknown action {action!r}; known: {self._names}")
        if self._dirty:
            self._refresh()
        return self._theta[self._position[action]].copy()

    def _features(self, context: Context) -> np.ndarray:
        return context_features(context, self.dim)

    def _scores(self, x: np.ndarray, actions: list[tuple[str, dict[str, int]]], eligible: tuple[str, ...],
                bonus: bool = True) -> np.ndarray:
        """u_A of ``actions`` (in order): one batched product over the stacked models."""
        positions = self._positions(actions, eligible)
        if self._dirty:
            self._refresh()
        means = self._theta @ x
        if not bonus:
            return means[positions]
        widths = np.sqrt(np.maximum((self._inverse @ x) @ x, 0.0))
        return (means + self.config.alpha * widths)[positions]

    # -- the lifecycle --

    def select(self, context: Context) -> Decision:
        x = self._features(context)
        eligible = tuple(context.eligible)
        seed = int(self._rng.integers(SEED_BOUND))
        actions = self.actions(eligible)
        if not actions:
            return Decision({}, {}, 1.0, self.name, self.snapshot, seed, self.budget.total, context.version)
        best = int(np.argmax(self._scores(x, actions, eligible)))
        eps, n = self.config.floor, len(actions)
        choice, explored = best, False
        if eps > 0:
            rng = np.random.default_rng(seed)
            if rng.random() < eps:
                choice, explored = int(rng.integers(n)), True
        propensity = (1 - eps) * (choice == best) + eps / n
        containing = {a: sum(a in budgets for _, budgets in actions) for a in eligible}
        inclusion = {a: (1 - eps) * (a in actions[best][1]) + eps * containing[a] / n for a in eligible}
        budgets = {a: actions[choice][1].get(a, 0) for a in eligible}
        return Decision(budgets, inclusion, propensity, self.name, self.snapshot, seed, self.budget.total,
                        context.version, explored)

    def action_probabilities(self, context: Context, *, seed: int | None = None,
                             draws: int | None = None) -> dict[ActionKey, float]:
        x = self._features(context)
        eligible = tuple(context.eligible)
        actions = self.actions(eligible)
        if not actions:
            return {(): 1.0}
        best = int(np.argmax(self._scores(x, actions, eligible)))
        eps, n = self.config.floor, len(actions)
        return {action_key(budgets): (1 - eps) * (i == best) + eps / n for i, (_, budgets) in enumerate(actions)}

    def expectations(self, context: Context) -> dict[str, float]:
        """Per eligible arm, the best expected outcome of an action that runs it."""
        x = self._features(context)
        eligible = tuple(context.eligible)
        actions = self.actions(eligible)
        scores = np.clip(self._scores(x, actions, eligible, bonus=False), 0.0, 1.0) if actions else np.zeros(0)
        return {a: max((float(s) for s, (_, b) in zip(scores, actions) if a in b), default=0.0)
                for a in context.eligible}

    def update(self, context: Context, decision: Decision, rewards: Mapping[str, float],
               engaged_ranks: Mapping[str, Sequence[int]] | None = None, *, outcome: float | None = None) -> None:
        """Learn the taken action's outcome (default: the largest arm reward, i.e. whether anything
        engaged was among the candidates)."""
        x = self._features(context)
        check_propensity(decision)
        ran = decision.arms
        if not ran:
            return
        value = max((float(v) for v in rewards.values()), default=0.0) if outcome is None else float(outcome)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"outcome must be in [0, 1], got {value!r}")
        order = {a: i for i, a in enumerate(self._arms)}
        for arm in ran:
            self.add_arm(arm)
        name = "+".join(sorted(ran, key=lambda a: order.get(a, len(order))))
        outer = np.outer(x, x)
        self._stats.arm(name).add(x, value, (), outer=outer)
        self._delta.arm(name).add(x, value, (), outer=outer)
        i = self._register(name)
        self._updates[i] = self._updates.get(i, 0) + 1
        if i in self._dirty or self._updates[i] % REFACTOR_EVERY == 0:
            self._dirty.add(i)  # refactored from the sums at the next use
        else:  # Sherman–Morrison, O(d²): (M + xxᵀ)⁻¹ = M⁻¹ − (M⁻¹x)(M⁻¹x)ᵀ / (1 + xᵀM⁻¹x)
            inverse = self._inverse[i]
            v = inverse @ x
            inverse -= np.outer(v, v) / (1.0 + x @ v)
            self._theta[i] = inverse @ self._stats.arms[name].moment
        self._version += 1
