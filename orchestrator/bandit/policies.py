"""Bandit policies over retrieval arms: which arms run for a search, and with how many candidates.

Every learning policy keeps per-arm ridge regressions of the semi-bandit reward on the context
(``x`` of shape (d,), one model per arm a, statistics in :class:`PolicyStatistics`):

    A_a = λI + Σ x xᵀ  (d, d),   b_a = Σ r·x  (d,),   θ̂_a = A_a⁻¹ b_a,   A_a = L_a L_aᵀ (Cholesky).

A decision (section 1 of the design note) scores each eligible arm (K of them),

* :class:`LinUCB`:         u_a = θ̂_aᵀx + α·‖L_a⁻¹x‖             (‖L⁻¹x‖² = xᵀA⁻¹x),
* :class:`LinearThompson`: u_a = θ̃_aᵀx, θ̃_a ~ N(θ̂_a, v²A_a⁻¹),
* :class:`EpsilonGreedy`:  u_a = θ̂_aᵀx,

runs the m = min(max_arms, K, ⌊total/levels[0]⌋) arms with the largest u_a − λ·c_a, and splits the
total budget greedily by marginal gain (:mod:`orchestrator.bandit.allocation`). With probability
ε the choice is replaced by a uniform random m-subset with the even split (ε = ``floor`` for
LinUCB and Thompson, ``epsilon`` for ε-greedy), which keeps every eligible arm's inclusion
probability at least ε·m/K and gives the propensities in closed form:

    inclusion[a] = (1−ε)·1[a ∈ G] + ε·m/K
    propensity   = (1−ε)·1[(S, n) = (G, n_G)] + ε/C(K, m)·1[n is the even split of S].

Thompson sampling has no closed form: the greedy terms are Monte Carlo frequencies over posterior
draws that rerun the same selection code (see :class:`LinearThompson`).

Baselines: :class:`UniformRandom` (a uniform m-subset, even split; exact propensities),
:class:`StaticSubset` (fixed arms and budgets) and :class:`AllEligible` (every eligible arm at the
largest level ≤ total: the behaviour before the bandit). They keep statistics too (so their logs
can warm-start a learner), but never act on them.

Shared state: ``statistics`` (a copy of what the policy acts on), ``take_delta()`` (updates since
the last call) and ``load_statistics(merged)`` (act on merged global statistics; updates after the
last ``take_delta`` are re-applied on top) let processes pool what they learn
(``orchestrator.bandit.state``).

Numerics: float64; the sums are the truth. Each arm's Cholesky factor L_a and θ̂_a are cached
and recomputed only for the arms whose statistics changed (LAPACK ``potrf``/``potrs``, O(d³/3),
with jitter if the factorization fails); a width ‖L_a⁻¹x‖ is one triangular solve per eligible
arm at select time (``trtrs``, O(d²)), cheaper than refreshing an explicit inverse on every update.

Policies are not thread-safe: a process that selects, updates and syncs from several threads holds
one lock around those calls.

Randomness: every decision draws a ``seed`` from the policy's generator; everything random in
that decision comes from ``default_rng(seed)`` (the decision stream) and, for Thompson's Monte
Carlo, ``default_rng([seed, 1])`` (a separate stream), so a logged decision can be replayed from
the context, the statistics of its snapshot and its seed.
"""

from __future__ import annotations

import itertools
import math
import numbers
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
from scipy.linalg.lapack import get_lapack_funcs

from .allocation import (
    ActionKey,
    action_key,
    arms_to_run,
    budget_curve,
    budgets_of,
    curve_prior,
    even_split_level,
    greedy_split,
    greedy_split_one,
    n_subsets,
    split_gains,
    top_m,
    top_m_one,
)
from .base import BudgetConfig, Decision, Policy, PolicyConfigError
from .context import Context
from .stats import PolicyStatistics

MAX_MC_DRAWS = 1_000_000
MC_STREAM = 1  # spawn key of Thompson's Monte Carlo stream, separate from the decision's
SEED_BOUND = 2**63 - 1
JITTER_TRIES = 12
_potrf, _potrs, _trtrs = get_lapack_funcs(("potrf", "potrs", "trtrs"), dtype=np.float64)  # LAPACK, no input checks


# --- configurations -------------------------------------------------------------------------------


def _real(owner: str, name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise PolicyConfigError(f"{owner}.{name} must be a finite number, got {value!r}")
    number = float(value)
    if (number <= low if low_open else number < low) or number > high:
        bound = f"{'(' if low_open else '['}{low:g}, {high:g}]" if math.isfinite(high) else \
            (f"> {low:g}" if low_open else f">= {low:g}")
        raise PolicyConfigError(f"{owner}.{name} must be {'in ' if math.isfinite(high) else ''}{bound}, got {value!r}")


def _integer(owner: str, name: str, value: Any, *, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= high:
        raise PolicyConfigError(f"{owner}.{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class LinUCBConfig:
    """LinUCB [Li et al. 2010] with top-m selection.

    ``alpha``: width of the confidence bonus α ≥ 0 (theory: 1 + √(ln(2/δ)/2); tune in 0.1-1).
    ``l2``: ridge prior λ > 0. ``cost_penalty``: λ_c ≥ 0 in the selection key u_a − λ_c·c_a.
    ``floor``: ε in [0, 1] of ε-mixing with uniform random subsets (inclusion ≥ ε·m/K).
    """

    alpha: float = 0.5
    l2: float = 1.0
    cost_penalty: float = 0.0
    floor: float = 0.05

    def __post_init__(self) -> None:
        _real("LinUCBConfig", "alpha", self.alpha, low=0.0)
        _real("LinUCBConfig", "l2", self.l2, low=0.0, low_open=True)
        _real("LinUCBConfig", "cost_penalty", self.cost_penalty, low=0.0)
        _real("LinUCBConfig", "floor", self.floor, low=0.0, high=1.0)


@dataclass(frozen=True)
class ThompsonConfig:
    """Linear Thompson sampling [Agrawal & Goyal 2013] with top-m selection.

    ``scale``: v > 0, the posterior draw θ̃ ~ N(θ̂, v²A⁻¹). ``l2``: ridge prior λ > 0.
    ``mc_draws``: posterior draws M ≥ 1 for the Monte Carlo propensities (standard error ≤ 0.5/√M).
    ``cost_penalty`` and ``floor`` as in :class:`LinUCBConfig`.
    """

    scale: float = 0.5
    l2: float = 1.0
    mc_draws: int = 64
    cost_penalty: float = 0.0
    floor: float = 0.05

    def __post_init__(self) -> None:
        _real("ThompsonConfig", "scale", self.scale, low=0.0, low_open=True)
        _real("ThompsonConfig", "l2", self.l2, low=0.0, low_open=True)
        _integer("ThompsonConfig", "mc_draws", self.mc_draws, low=1, high=MAX_MC_DRAWS)
        _real("ThompsonConfig", "cost_penalty", self.cost_penalty, low=0.0)
        _real("ThompsonConfig", "floor", self.floor, low=0.0, high=1.0)


@dataclass(frozen=True)
class EpsilonGreedyConfig:
    """ε-greedy: the top-m arms by θ̂ᵀx, replaced with probability ``epsilon`` in [0, 1] by a
    uniform random m-subset. ``l2``: ridge prior λ > 0."""

    epsilon: float = 0.1
    l2: float = 1.0

    def __post_init__(self) -> None:
        _real("EpsilonGreedyConfig", "epsilon", self.epsilon, low=0.0, high=1.0)
        _real("EpsilonGreedyConfig", "l2", self.l2, low=0.0, low_open=True)


@dataclass(frozen=True)
class UniformRandomConfig:
    """A uniform random m-subset with the even split. ``l2``: ridge prior of the statistics it keeps."""

    l2: float = 1.0

    def __post_init__(self) -> None:
        _real("UniformRandomConfig", "l2", self.l2, low=0.0, low_open=True)


@dataclass(frozen=True)
class StaticSubsetConfig:
    """Fixed arms and budgets: ``budgets`` arm -> candidates (each a budget level; their sum within
    the total is checked against the :class:`BudgetConfig` when the policy is built)."""

    budgets: Mapping[str, int] = field(default_factory=dict)
    l2: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.budgets, Mapping) or not self.budgets:
            raise PolicyConfigError(f"StaticSubsetConfig.budgets must name at least one arm, got {self.budgets!r}")
        for arm, n in self.budgets.items():
            if not isinstance(arm, str) or not arm:
                raise PolicyConfigError(f"StaticSubsetConfig.budgets: arm names must be non-empty strings, got {arm!r}")
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
                raise PolicyConfigError(f"StaticSubsetConfig.budgets[{arm!r}] must be a positive integer, got {n!r}")
        _real("StaticSubsetConfig", "l2", self.l2, low=0.0, low_open=True)
        object.__setattr__(self, "budgets", {arm: int(n) for arm, n in self.budgets.items()})


# --- the shared machinery -------------------------------------------------------------------------


def context_features(context: Context, dim: int) -> np.ndarray:
    """The context's feature vector as float64 (dim,); a clear ValueError for another shape or
    non-finite values (a context of another schema version, a broken feature)."""
    try:
        x = np.asarray(context.features, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"context features are not numeric: {e}") from None
    if x.shape != (dim,):
        raise ValueError(f"context has shape {x.shape}; this policy expects ({dim},) "
                         f"(context version {context.version!r})")
    if not np.isfinite(x).all():
        raise ValueError(f"context has non-finite values at {np.flatnonzero(~np.isfinite(x)).tolist()}")
    return x


def check_propensity(decision: Decision) -> None:
    """Only decisions with a logged propensity in (0, 1] may update a model."""
    propensity = decision.propensity
    if isinstance(propensity, bool) or not isinstance(propensity, numbers.Real) or not 0 < propensity <= 1 + 1e-9:
        raise ValueError(f"decision propensity must be in (0, 1], got {propensity!r}: "
                         "a decision without a propensity cannot update the model")


def check_statistics(stats: PolicyStatistics, dim: int, levels: Sequence[int]) -> None:
    """Statistics a policy may act on: its dimension and levels, every entry's shapes, finite values."""
    if not isinstance(stats, PolicyStatistics):
        raise TypeError(f"load_statistics needs PolicyStatistics, got {type(stats).__name__}")
    if stats.dim != dim or tuple(stats.levels) != tuple(levels):
        raise ValueError(f"statistics of shape (d={stats.dim}, levels={tuple(stats.levels)}) do not fit this policy "
                         f"(d={dim}, levels={tuple(levels)})")
    for name, arm_stats in stats.arms.items():
        shapes = (arm_stats.gram.shape, arm_stats.moment.shape, arm_stats.rank_counts.shape)
        if shapes != ((dim, dim), (dim,), (len(levels) + 1,)):
            raise ValueError(f"statistics of arm {name!r} have shapes {shapes}")
        if not (np.isfinite(arm_stats.gram).all() and np.isfinite(arm_stats.moment).all()
                and np.isfinite(arm_stats.rank_counts).all() and math.isfinite(arm_stats.reward_sum)):
            raise ValueError(f"statistics of arm {name!r} have non-finite values")


class LinearPolicy(Policy):
    """Per-arm ridge statistics, cached factorizations, validation, update and the shared-state hooks.

    Subclasses implement :meth:`_decide` (for a non-empty eligible set) and :meth:`_action_distribution`.
    Caches over the known arms (``n`` of them, in :attr:`arms` order), refreshed per arm when its
    statistics change: ``_factors`` n × (d, d) lower Cholesky factors L_a of λI + A_a (Fortran
    order, as LAPACK takes them), ``_theta`` (n, d) = θ̂, ``_curves`` (n, L) = G_a(levels),
    ``_gains`` (n, L − 1) split gains per candidate, ``_costs`` (n,) cost per candidate.
    """

    name = "linear"
    uses_model: ClassVar[bool] = True  # its decisions read the statistics (refactor them eagerly)

    def __init__(self, arms: Sequence[str], budget: BudgetConfig, dim: int, *, l2: float, seed: int = 0) -> None:
        if not isinstance(budget, BudgetConfig):
            raise PolicyConfigError(f"budget must be a BudgetConfig, got {type(budget).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise PolicyConfigError(f"dim must be a positive integer, got {dim!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise PolicyConfigError(f"seed must be a non-negative integer, got {seed!r}")
        if isinstance(arms, str) or not isinstance(arms, Sequence):
            raise PolicyConfigError(f"arms must be a sequence of arm names, got {arms!r}")
        if len(set(arms)) != len(arms):
            raise PolicyConfigError(f"arms must be unique, got {list(arms)}")
        self.budget = budget
        self.dim = int(dim)
        self.l2 = float(l2)
        self.seed = int(seed)
        self._levels = budget.levels
        self._stats = PolicyStatistics(self.dim, self._levels)
        self._delta = PolicyStatistics(self.dim, self._levels)
        self._arm_names: list[str] = []
        self._index: dict[str, int] = {}
        self._factors: list[np.ndarray] = []
        self._theta = np.zeros((0, self.dim))
        self._curves = np.zeros((0, len(self._levels)))
        self._gains = np.zeros((0, len(self._levels) - 1))
        self._gain_rows: list[list[float]] = []
        self._costs = np.zeros(0)
        self._ridge = self.l2 * np.eye(self.dim)
        self._curve_prior = curve_prior(self._levels)
        self._dirty_models: set[int] = set()
        self._dirty_curves: set[int] = set()
        self._eligible_index: dict[tuple[str, ...], tuple[np.ndarray, list[int]]] = {}
        self._rng = np.random.default_rng(self.seed)  # draws each decision's seed
        self._aux_rng = np.random.default_rng([self.seed, 2])  # seeds of action_probabilities() without one
        self._snapshot_base = uuid.uuid4().hex[:12]
        self._version = 0
        for arm in arms:
            self.add_arm(arm)

    # -- arms and statistics --

    @property
    def arms(self) -> tuple[str, ...]:
        return tuple(self._arm_names)

    @property
    def snapshot(self) -> str:
        """Id of the statistics the next decision acts on; changes whenever they change."""
        return f"{self._snapshot_base}.{self._version}"

    @property
    def statistics(self) -> PolicyStatistics:
        """A copy of the statistics the policy acts on."""
        return self._stats.copy()

    def add_arm(self, arm: str) -> None:
        """Start learning about ``arm`` at the prior (no-op when known). The arm enters the delta at
        zero, so merged statistics carry it to other processes."""
        if not isinstance(arm, str) or not arm:
            raise ValueError(f"an arm name must be a non-empty string, got {arm!r}")
        if arm in self._index:
            return
        self._stats.arm(arm)
        self._delta.arm(arm)
        self._register(arm)
        self._version += 1

    def _register(self, arm: str) -> None:
        """Grow the caches by one arm at the prior; refreshed later if the arm already has data."""
        i = len(self._arm_names)
        self._arm_names.append(arm)
        self._index[arm] = i
        cost = self.budget.cost(arm)
        curve = budget_curve(np.zeros(len(self._levels) + 1), self._curve_prior)
        gains = split_gains(curve, cost, self._levels)
        self._factors.append(np.asfortranarray(math.sqrt(self.l2) * np.eye(self.dim)))  # chol(λI)
        self._theta = np.concatenate((self._theta, np.zeros((1, self.dim))))
        self._curves = np.concatenate((self._curves, curve[None]))
        self._gains = np.concatenate((self._gains, gains[None]))
        self._gain_rows.append(gains.tolist())
        self._costs = np.append(self._costs, cost)
        self._dirty_models.add(i)
        self._dirty_curves.add(i)

    def take_delta(self) -> PolicyStatistics:
        """The updates since the last call (additive; merge them into the global statistics)."""
        delta, self._delta = self._delta, self._stats.empty_like()
        return delta

    def load_statistics(self, stats: PolicyStatistics, snapshot: str | None = None) -> None:
        """Act on ``stats`` (merged global statistics) plus the updates made since the last
        :meth:`take_delta`, which the global ones cannot contain yet. ``snapshot``: the id the
        shared state gives these statistics (default: a fresh one)."""
        check_statistics(stats, self.dim, self._levels)
        merged = stats.copy()
        merged.merge(self._delta)
        for arm in self._arm_names:
            merged.arm(arm)
        self._stats = merged
        for arm in merged.arms:
            if arm not in self._index:
                self._register(arm)
        self._dirty_models = set(range(len(self._arm_names)))
        self._dirty_curves = set(range(len(self._arm_names)))
        local = "" if self._delta.total_pulls == 0 else "+" + uuid.uuid4().hex[:8]
        self._snapshot_base = (snapshot or uuid.uuid4().hex[:12]) + local
        self._version = 0
        if self.uses_model:
            self._refresh()

    def theta(self, arm: str) -> np.ndarray:
        """θ̂ of ``arm`` (d,): the ridge estimate (λI + Σ x xᵀ)⁻¹ Σ r·x."""
        if arm not in self._index:
            raise KeyError(f"unknown arm {arm!r}; known: {self._arm_names}")
        self._refresh()
        return self._theta[self._index[arm]].copy()

    def _refresh(self) -> None:
        """Refactor the arms whose statistics changed: L = chol(λI + A), θ̂ = A⁻¹b; G and split gains."""
        for i in self._dirty_models:
            arm_stats = self._stats.arms[self._arm_names[i]]
            chol, info = _potrf(arm_stats.gram + self._ridge, lower=1, clean=1, overwrite_a=1)
            if info != 0:
                chol = self._jittered_cholesky(arm_stats.gram, self._arm_names[i])
            self._factors[i] = chol
            self._theta[i] = _potrs(chol, arm_stats.moment, lower=1)[0]
        for i in self._dirty_curves:
            self._curves[i] = budget_curve(self._stats.arms[self._arm_names[i]].rank_counts, self._curve_prior)
            self._gains[i] = split_gains(self._curves[i], float(self._costs[i]), self._levels)
            self._gain_rows[i] = self._gains[i].tolist()
        self._dirty_models.clear()
        self._dirty_curves.clear()

    def _jittered_cholesky(self, gram: np.ndarray, arm: str) -> np.ndarray:
        """Cholesky of λI + gram + jitter·I, the jitter growing tenfold from 1e-10·(mean diagonal)."""
        a = gram + self._ridge
        jitter = 1e-10 * max(1.0, float(np.trace(a)) / self.dim)
        for _ in range(JITTER_TRIES):
            chol, info = _potrf(a + jitter * np.eye(self.dim), lower=1, clean=1)
            if info == 0:
                return chol
            jitter *= 10.0
        raise np.linalg.LinAlgError(f"cannot factor the Gram matrix of arm {arm!r}, even with jitter {jitter:g}")

    def _widths(self, x: np.ndarray, arm_indices: list[int]) -> np.ndarray:
        """‖L_a⁻¹x‖ = √(xᵀA_a⁻¹x) per listed arm, shape (K,): one O(d²) triangular solve each (cheaper
        than refactoring an inverse on every update)."""
        squares = np.empty(len(arm_indices))
        for k, i in enumerate(arm_indices):
            whitened = _trtrs(self._factors[i], x, lower=1)[0]
            squares[k] = whitened @ whitened
        return np.sqrt(squares)

    # -- validation --

    def _features(self, context: Context) -> np.ndarray:
        return context_features(context, self.dim)

    def _eligible(self, context: Context) -> tuple[tuple[str, ...], np.ndarray, list[int]]:
        """The eligible arms (unknown ones are added at the prior) and their cache indices."""
        eligible = tuple(context.eligible)
        cached = self._eligible_index.get(eligible)
        if cached is None:
            if len(set(eligible)) != len(eligible):
                raise ValueError(f"eligible arms repeat: {list(eligible)}")
            for arm in eligible:
                self.add_arm(arm)
            indices = [self._index[a] for a in eligible]
            cached = self._eligible_index[eligible] = (np.array(indices, dtype=np.intp), indices)
        return eligible, cached[0], cached[1]

    # -- the Policy interface --

    def select(self, context: Context) -> Decision:
        x = self._features(context)
        eligible, index, indices = self._eligible(context)
        seed = int(self._rng.integers(SEED_BOUND))
        if not eligible:
            return Decision({}, {}, 1.0, self.name, self.snapshot, seed, self.budget.total, context.version)
        if self.uses_model and (self._dirty_models or self._dirty_curves):
            self._refresh()
        return self._decide(x, eligible, index, indices, seed, context.version)

    def _decide(self, x: np.ndarray, eligible: tuple[str, ...], index: np.ndarray, indices: list[int], seed: int,
                context_version: str) -> Decision:
        raise NotImplementedError

    def action_probabilities(self, context: Context, *, seed: int | None = None,
                             draws: int | None = None) -> dict[ActionKey, float]:
        """P(budget vector | context) over every action with positive probability, keyed by
        :func:`~orchestrator.bandit.allocation.action_key`; sums to 1. Exact for closed-form
        policies; ``seed`` and ``draws`` matter only to Monte Carlo (Thompson)."""
        x = self._features(context)
        eligible, index, indices = self._eligible(context)
        if not eligible:
            return {(): 1.0}
        if self.uses_model:
            self._refresh()
        return self._action_distribution(x, eligible, index, indices, seed, draws)

    def _action_distribution(self, x: np.ndarray, eligible: tuple[str, ...], index: np.ndarray, indices: list[int],
                             seed: int | None, draws: int | None) -> dict[ActionKey, float]:
        raise NotImplementedError

    def expectations(self, context: Context) -> dict[str, float]:
        """clip(θ̂_aᵀx, 0, 1) per eligible arm: the model's expected reward, no exploration bonus."""
        x = self._features(context)
        eligible, index, _ = self._eligible(context)
        self._refresh()
        return dict(zip(eligible, np.clip(self._theta[index] @ x, 0.0, 1.0).tolist()))

    def update(self, context: Context, decision: Decision, rewards: Mapping[str, float],
               engaged_ranks: Mapping[str, Sequence[int]] | None = None, *, outcome: float | None = None) -> None:
        """Rank-one update of every arm that ran: A_a += x xᵀ, b_a += r_a·x (a missing reward is 0);
        ``engaged_ranks`` (1-based within-arm ranks) feed the arm's budget curve. Arms the policy
        does not know yet are added first. ``outcome`` is not used: these models learn per arm."""
        x = self._features(context)
        check_propensity(decision)
        ran = decision.arms
        checked = self._checked_rewards(ran, rewards)
        buckets = self._checked_buckets(ran, engaged_ranks or {})
        if not ran:
            return
        for arm in ran:
            if arm not in self._index:
                self.add_arm(arm)
        outer = np.outer(x, x)  # shared by every arm that ran
        for arm in ran:
            reward, arm_buckets = checked.get(arm, 0.0), buckets.get(arm, ())
            self._stats.arms[arm].add(x, reward, arm_buckets, outer=outer)
            self._delta.arm(arm).add(x, reward, arm_buckets, outer=outer)
            self._dirty_models.add(self._index[arm])
            if arm_buckets:
                self._dirty_curves.add(self._index[arm])
        self._version += 1
        if self.uses_model:
            self._refresh()

    @staticmethod
    def _checked_rewards(ran: Sequence[str], rewards: Mapping[str, float]) -> dict[str, float]:
        checked: dict[str, float] = {}
        for arm, value in rewards.items():
            if arm not in ran:
                raise ValueError(f"reward for arm {arm!r}, which did not run (ran: {list(ran)})")
            try:
                reward = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"reward of arm {arm!r} must be a number in [0, 1], got {value!r}") from None
            if not 0.0 <= reward <= 1.0:  # also rejects NaN
                raise ValueError(f"reward of arm {arm!r} must be in [0, 1], got {value!r}")
            checked[arm] = reward
        return checked

    def _checked_buckets(self, ran: Sequence[str], engaged_ranks: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
        buckets: dict[str, list[int]] = {}
        for arm, ranks in engaged_ranks.items():
            if arm not in ran:
                raise ValueError(f"engaged ranks for arm {arm!r}, which did not run (ran: {list(ran)})")
            if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
                raise ValueError(f"engaged ranks of arm {arm!r} must be a sequence of ranks, got {ranks!r}")
            for rank in ranks:
                if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
                    raise ValueError(f"engaged ranks of arm {arm!r} must be integers >= 1, got {rank!r}")
            buckets[arm] = [self._stats.rank_bucket(int(rank)) for rank in ranks]
        return buckets

    # -- helpers shared by the subclasses --

    def _m(self, n_eligible: int) -> int:
        return arms_to_run(n_eligible, self.budget.total, self._levels, self.budget.max_arms)

    def _even_level(self, m: int) -> int:
        return even_split_level(self.budget.total, self._levels, m)

    def _decision(self, eligible: tuple[str, ...], action: Sequence[int] | np.ndarray, inclusion: Sequence[float],
                  propensity: float, seed: int, context_version: str, explored: bool) -> Decision:
        return Decision(budgets_of(action, eligible, self._levels), dict(zip(eligible, inclusion)),
                        float(propensity), self.name, self.snapshot, seed, self.budget.total, context_version, explored)

    def _random_subset(self, rng: np.random.Generator, n_eligible: int, m: int) -> list[int]:
        """A uniform random m-subset with the even split, as level indices (K,)."""
        action = [-1] * n_eligible
        level = self._even_level(m)
        for a in rng.random(n_eligible).argsort()[:m].tolist():
            action[a] = level
        return action

    def _is_even_split(self, action: Sequence[int], m: int) -> bool:
        level = self._even_level(m)
        run = [j for j in action if j >= 0]
        return len(run) == m and all(j == level for j in run)

    def _uniform_distribution(self, eligible: tuple[str, ...], m: int, mass: float) -> dict[ActionKey, float]:
        """``mass`` spread evenly over the even splits of every m-subset of ``eligible``."""
        level = self._levels[self._even_level(m)]
        share = mass / n_subsets(len(eligible), m)
        return {tuple(sorted((arm, level) for arm in subset)): share for subset in itertools.combinations(eligible, m)}


class _EpsilonMixed(LinearPolicy):
    """Top-m by a deterministic score, ε-mixed with uniform random subsets (closed-form propensities)."""

    exploration: float
    cost_penalty: float

    def _scores(self, x: np.ndarray, index: np.ndarray, indices: list[int]) -> np.ndarray:
        """u_a for the eligible arms, shape (K,)."""
        raise NotImplementedError

    def _greedy(self, x: np.ndarray, index: np.ndarray, indices: list[int], m: int) -> list[int]:
        """The policy's own action (level index per eligible arm), by the one-row selection code."""
        scores = self._scores(x, index, indices)
        keys = scores - self.cost_penalty * self._costs[index]
        chosen = top_m_one(keys.tolist(), m)
        return greedy_split_one(scores.tolist(), chosen, [self._gain_rows[i] for i in indices], self._levels,
                                self.budget.total)

    def _decide(self, x: np.ndarray, eligible: tuple[str, ...], index: np.ndarray, indices: list[int], seed: int,
                context_version: str) -> Decision:
        k, m, eps = len(eligible), self._m(len(eligible)), self.exploration
        greedy = self._greedy(x, index, indices, m)
        action, explored = greedy, False
        if eps > 0:
            rng = np.random.default_rng(seed)
            if rng.random() < eps:
                action, explored = self._random_subset(rng, k, m), True
        propensity = (1 - eps) * (action == greedy) + eps / n_subsets(k, m) * self._is_even_split(action, m)
        inclusion = [(1 - eps) * (j >= 0) + eps * m / k for j in greedy]
        return self._decision(eligible, action, inclusion, propensity, seed, context_version, explored)

    def _action_distribution(self, x: np.ndarray, eligible: tuple[str, ...], index: np.ndarray, indices: list[int],
                             seed: int | None, draws: int | None) -> dict[ActionKey, float]:
        m, eps = self._m(len(eligible)), self.exploration
        probabilities = self._uniform_distribution(eligible, m, eps) if eps > 0 else {}
        key = action_key(budgets_of(self._greedy(x, index, indices, m), eligible, self._levels))
        probabilities[key] = probabilities.get(key, 0.0) + (1 - eps)
        return {k: p for k, p in probabilities.items() if p > 0}


class LinUCB(_EpsilonMixed):
    """LinUCB: u_a = θ̂_aᵀx + α·‖L_a⁻¹x‖, top-m by u_a − λ_c·c_a, greedy split, ε-mixed (ε = floor).

    ``select`` costs one triangular solve per eligible arm (O(K·d²)) plus the split; ``update``
    refactors the arms that ran (O(d³/3) each).
    """

    name = "linucb"

    def __init__(self, arms: Sequence[str], budget: BudgetConfig, dim: int, config: LinUCBConfig | None = None,
                 *, seed: int = 0) -> None:
        self.config = config or LinUCBConfig()
        self.exploration = self.config.floor
        self.cost_penalty = self.config.cost_penalty
        super().__init__(arms, budget, dim, l2=self.config.l2, seed=seed)

    def _scores(self, x: np.ndarray, index: np.ndarray, indices: list[int]) -> np.ndarray:
        return (self._theta @ x)[index] + self.config.alpha * self._widths(x, indices)


class EpsilonGreedy(_EpsilonMixed):
    """ε-greedy: u_a = θ̂_aᵀx, top-m, greedy split, replaced with probability ε by a random m-subset."""

    name = "epsilon"

    def __init__(self, arms: Sequence[str], budget: BudgetConfig, dim: int,
                 config: EpsilonGreedyConfig | None = None, *, seed: int = 0) -> None:
        self.config = config or EpsilonGreedyConfig()
        self.exploration = self.config.epsilon
        self.cost_penalty = 0.0
        super().__init__(arms, budget, dim, l2=self.config.l2, seed=seed)

    def _scores(self, x: np.ndarray, index: np.ndarray, indices: list[int]) -> np.ndarray:
        return (self._theta @ x)[index]


class LinearThompson(LinearPolicy):
    """Linear Thompson sampling: u_a = θ̃_aᵀx with θ̃_a ~ N(θ̂_a, v²A_a⁻¹), top-m, greedy split, ε-mixed.

    The decision only reads θ̃_aᵀx, whose law is N(θ̂_aᵀx, v²‖L_a⁻¹x‖²) (θ̃ = θ̂ + v·L⁻ᵀz gives
    θ̃ᵀx = θ̂ᵀx + v·zᵀL⁻¹x), so a draw is one standard normal per arm: u = μ + v·s·z, shape (K,).

    Propensities: the decision's own draw (row 0, decision stream) and ``mc_draws`` = M further
    draws (Monte Carlo stream) go through the same vectorised selection and split, (M + 1, K).
    p̂_a and p̂(A) are the fractions of rows that run a / take action A. Counting the decision's
    own draw keeps the logged propensity positive (≥ (1−ε)/(M + 1)); p̂_a stays unbiased (row 0 is
    a posterior draw like the others), the chosen action's p̂(A) is high by at most 1/(M + 1). Then

        inclusion[a] = (1−ε)·p̂_a + ε·m/K,   propensity = (1−ε)·p̂(A) + ε/C(K, m)·1[A is an even split].

    ``action_probabilities(context, seed=decision.seed)`` reproduces those numbers; offline, pass
    ``draws`` ≈ 10⁴ for a sharper estimate (the first M Monte Carlo draws are the logged ones).
    """

    name = "thompson"

    def __init__(self, arms: Sequence[str], budget: BudgetConfig, dim: int, config: ThompsonConfig | None = None,
                 *, seed: int = 0) -> None:
        self.config = config or ThompsonConfig()
        super().__init__(arms, budget, dim, l2=self.config.l2, seed=seed)

    def _draw_actions(self, x: np.ndarray, index: np.ndarray, indices: list[int], m: int, first_draw: np.ndarray,
                      seed: int, draws: int) -> np.ndarray:
        """Level indices (draws + 1, K): the selection rerun for the decision's draw and ``draws`` more."""
        means = (self._theta @ x)[index]
        spreads = self.config.scale * self._widths(x, indices)
        normals = np.empty((draws + 1, len(indices)))
        normals[0] = first_draw
        normals[1:] = np.random.default_rng([seed, MC_STREAM]).standard_normal((draws, len(indices)))
        scores = means + spreads * normals
        chosen = top_m(scores - self.config.cost_penalty * self._costs[index], m)
        return greedy_split(scores, chosen, self._gains[index], self._levels, self.budget.total)

    def _decide(self, x: np.ndarray, eligible: tuple[str, ...], index: np.ndarray, indices: list[int], seed: int,
                context_version: str) -> Decision:
        k, m, eps = len(eligible), self._m(len(eligible)), self.config.floor
        rng = np.random.default_rng(seed)
        first_draw = rng.standard_normal(k)
        explored = eps > 0 and rng.random() < eps
        actions = self._draw_actions(x, index, indices, m, first_draw, seed, self.config.mc_draws)
        action = np.asarray(self._random_subset(rng, k, m)) if explored else actions[0]
        n_rows = len(actions)
        frequency = np.count_nonzero((actions == action).all(axis=1)) / n_rows
        propensity = (1 - eps) * frequency + eps / n_subsets(k, m) * self._is_even_split(action.tolist(), m)
        inclusion = ((1 - eps) / n_rows * np.count_nonzero(actions >= 0, axis=0) + eps * m / k).tolist()
        return self._decision(eligible, action, inclusion, propensity, seed, context_version, explored)

    def _action_distribution(self, x: np.ndarray, eligible: tuple[str, ...], index: np.ndarray, indices: list[int],
                             seed: int | None, draws: int | None) -> dict[ActionKey, float]:
        k, m, eps = len(eligible), self._m(len(eligible)), self.config.floor
        seed = int(self._aux_rng.integers(SEED_BOUND)) if seed is None else int(seed)
        draws = self.config.mc_draws if draws is None else draws
        if isinstance(draws, bool) or not isinstance(draws, numbers.Integral) or not 1 <= draws <= MAX_MC_DRAWS:
            raise ValueError(f"draws must be an integer in [1, {MAX_MC_DRAWS}], got {draws!r}")
        first_draw = np.random.default_rng(seed).standard_normal(k)
        actions = self._draw_actions(x, index, indices, m, first_draw, seed, int(draws))
        rows, counts = np.unique(actions, axis=0, return_counts=True)
        probabilities = self._uniform_distribution(eligible, m, eps) if eps > 0 else {}
        for row, count in zip(rows, counts.tolist()):
            key = action_key(budgets_of(row, eligible, self._levels))
            probabilities[key] = probabilities.get(key, 0.0) + (1 - eps) * count / len(actions)
        return {key: p for key, p in probabilities.items() if p > 0}


class UniformRandom(LinearPolicy):
    """A uniform random m-subset of the eligible arms with the even split: inclusion m/K and
    propensity 1/C(K, m), exactly. Every decision is exploration (``explored`` is set)."""

    name = "random"
    uses_model = False

    def __init__(self, arms: Sequence[str], budget: BudgetConfig, dim: int,
                 config: UniformRandomConfig | None = None, *, seed: int = 0) -> None:
        self.config = config or UniformRandomConfig()
        super().__init__(arms, budget, dim, l2=self.config.l2, seed=seed)

    def _decide(self, x: np.ndarray, eligible: tuple[str, ...], index: np.ndarray, indices: list[int], seed: int,
                context_version: str) -> Decision:
        k, m = len(eligible), self._m(len(eligible))
        action = self._random_subset(np.random.default_rng(seed), k, m)
        return self._decision(eligible, action, [m / k] * k, 1.0 / n_subsets(k, m), seed, context_version, True)

    def _action_distribution(self, x: np.ndarray, eligible: tuple[str, ...], index: np.ndarray, indices: list[int],
                             seed: int | None, draws: int | None) -> dict[ActionKey, float]:
        return self._uniform_distribution(eligible, self._m(len(eligible)), 1.0)


class _FixedAction(LinearPolicy):
    """A deterministic baseline: the action depends only on the eligible arms; propensity 1."""

    uses_model = False

    def _fixed_action(self, eligible: tuple[str, ...]) -> list[int]:
        """Level index per eligible arm (K,), -1 for arms that do not run."""
        raise NotImplementedError

    def _decide(self, x: np.ndarray, eligible: tuple[str, ...], index: np.ndarray, indices: list[int], seed: int,
                context_version: str) -> Decision:
        action = self._fixed_action(eligible)
        return self._decision(eligible, action, [float(j >= 0) for j in action], 1.0, seed, context_version, False)

    def _action_distribution(self, x: np.ndarray, eligible: tuple[str, ...], index: np.ndarray, indices: list[int],
                             seed: int | None, draws: int | None) -> dict[ActionKey, float]:
        return {action_key(budgets_of(self._fixed_action(eligible), eligible, self._levels)): 1.0}


class StaticSubset(_FixedAction):
    """Fixed arms and budgets: every eligible arm of the set runs with its budget, the rest never
    (arms that are not eligible are dropped, not replaced; none eligible: nothing runs).
    ``max_arms`` does not apply (a baseline outside the bandit's constraints); the total does."""

    def __init__(self, arms: Sequence[str], budget: BudgetConfig, dim: int, config: StaticSubsetConfig,
                 *, seed: int = 0) -> None:
        for arm, n in config.budgets.items():
            if n not in budget.levels:
                raise PolicyConfigError(f"static budget of {arm!r} is {n}, not one of the levels {budget.levels}")
        if sum(config.budgets.values()) > budget.total:
            raise PolicyConfigError(f"static budgets {dict(config.budgets)} exceed the total budget {budget.total}")
        self.config = config
        self.name = "static:" + "+".join(config.budgets)
        self._static_levels = {arm: budget.levels.index(n) for arm, n in config.budgets.items()}
        super().__init__([*arms, *(a for a in config.budgets if a not in arms)], budget, dim, l2=config.l2, seed=seed)

    def _fixed_action(self, eligible: tuple[str, ...]) -> list[int]:
        return [self._static_levels.get(arm, -1) for arm in eligible]


class AllEligible(_FixedAction):
    """Every eligible arm at the largest level ≤ total (the behaviour before the bandit; the sum
    may exceed the total and the number of arms ``max_arms``)."""

    name = "all"

    def __init__(self, arms: Sequence[str], budget: BudgetConfig, dim: int, config: UniformRandomConfig | None = None,
                 *, seed: int = 0) -> None:
        self.config = config or UniformRandomConfig()
        self._top_level = max(i for i, n in enumerate(budget.levels) if n <= budget.total)
        super().__init__(arms, budget, dim, l2=self.config.l2, seed=seed)

    def _fixed_action(self, eligible: tuple[str, ...]) -> list[int]:
        return [self._top_level] * len(eligible)


# --- the factory ----------------------------------------------------------------------------------

POLICY_SPECS = ("linucb", "thompson", "epsilon", "joint", "random", "static:<arm>+<arm>[...]", "all")
_LEARNERS: dict[str, tuple[Callable[..., LinearPolicy], type]] = {
    "linucb": (LinUCB, LinUCBConfig),
    "thompson": (LinearThompson, ThompsonConfig),
    "epsilon": (EpsilonGreedy, EpsilonGreedyConfig),
    "random": (UniformRandom, UniformRandomConfig),
}


def _parse_overrides(kind: str, text: str, config_type: type) -> dict[str, Any]:
    """``key=value,key=value`` -> config fields, typed like their defaults."""
    known = {f.name: f for f in fields(config_type)}
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise PolicyConfigError(f"policy {kind!r}: cannot set {item!r}; settable: {', '.join(known)} (as key=value)")
        try:
            values[key] = int(raw) if isinstance(known[key].default, int) else float(raw)
        except ValueError:
            raise PolicyConfigError(f"policy {kind!r}: {key} must be a number, got {raw.strip()!r}") from None
    return values


def make_policy(spec: str, arms: Sequence[str], budget: BudgetConfig, dim: int, seed: int = 0) -> Policy:
    """Build a policy from its spec.

    * ``linucb``, ``thompson``, ``epsilon``, ``random``: optionally with settings of their config,
      e.g. ``linucb:alpha=1.0,floor=0.1`` or ``thompson:mc_draws=256``;
    * ``static:<arm>+<arm>[...]``: those arms with an even split of the total, rounded down to a level;
    * ``all``: every eligible arm at the largest level ≤ total.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PolicyConfigError(f"policy spec must be a non-empty string; valid: {', '.join(POLICY_SPECS)}")
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "joint":
        from .joint import JointLinUCB, JointLinUCBConfig

        return JointLinUCB(arms, budget, dim, JointLinUCBConfig(**_parse_overrides(kind, rest, JointLinUCBConfig)),
                           seed=seed)
    if kind in _LEARNERS:
        policy_type, config_type = _LEARNERS[kind]
        return policy_type(arms, budget, dim, config_type(**_parse_overrides(kind, rest, config_type)), seed=seed)
    if kind == "static":
        chosen = [a.strip() for a in rest.split("+")]
        if not rest.strip() or not all(chosen):
            raise PolicyConfigError(f"static spec needs arms joined by '+', e.g. static:bm25_popularity+knn; got {spec!r}")
        if len(set(chosen)) != len(chosen):
            raise PolicyConfigError(f"static spec repeats an arm: {spec!r}")
        unknown = [a for a in chosen if a not in arms]
        if unknown:
            raise PolicyConfigError(f"static spec names unknown arms {unknown}; known: {list(arms)}")
        share = budget.total // len(chosen)
        fitting = [n for n in budget.levels if n <= share]
        if not fitting:
            raise PolicyConfigError(f"{len(chosen)} static arms cannot each get the smallest level {budget.levels[0]} "
                                    f"out of the total {budget.total}")
        return StaticSubset(arms, budget, dim, StaticSubsetConfig({a: fitting[-1] for a in chosen}), seed=seed)
    if kind == "all" and not rest.strip():
        return AllEligible(arms, budget, dim, seed=seed)
    raise PolicyConfigError(f"unknown policy spec {spec!r}; valid: {', '.join(POLICY_SPECS)}")
