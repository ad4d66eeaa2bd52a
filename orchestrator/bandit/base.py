"""The policy lifecycle and the records it produces.

A policy sees a :class:`~orchestrator.bandit.context.Context` (features + eligible arms) and
returns a :class:`Decision`: a budget per eligible arm (0 = not run) and the probabilities an
off-policy estimator needs. Engagement comes back later as per-arm rewards (semi-bandit
feedback: every arm whose candidates held an engaged item is credited).

    decision = policy.select(context)
    ...run the arms with decision.budgets, show results, collect engagement...
    policy.update(context, decision, rewards={"bm25": 1.0, "knn": 0.0}, engaged_ranks={"bm25": [3]})

Every policy keeps its learning in additive :class:`~orchestrator.bandit.stats.PolicyStatistics`,
so several processes can merge what they learned (``orchestrator.bandit.state``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .context import CONTEXT_VERSION, Context
from .stats import PolicyStatistics

DEFAULT_LEVELS = (10, 20, 50, 100)
OUTCOME_CAP = 3.0  # engagement grades that make a search's outcome 1 (three plays, or ten clicks)


def search_outcome(grades: Sequence[float] | Mapping[str, float]) -> float:
    """A search's outcome in [0, 1]: the engagement grades of its distinct engaged items, summed
    and capped at :data:`OUTCOME_CAP`, so a search with two plays beats one with one play."""
    values = grades.values() if isinstance(grades, Mapping) else grades
    return min(float(sum(values)), OUTCOME_CAP) / OUTCOME_CAP


class PolicyConfigError(ValueError):
    """A policy or budget configuration is invalid; the message says which value and why."""


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    """How a decision may spend candidates.

    ``total``: the most candidates one search may request over all arms (Σ n_a ≤ total).
    ``levels``: the budgets an arm may get (ascending); an arm that runs gets one of them.
    ``max_arms``: the most arms one search runs (top-m); ``min_arms``: the fewest (≥ 1).
    ``costs``: relative cost per candidate of each arm (from the plans' ``cost``; default 1).
    """

    total: int = 100
    levels: tuple[int, ...] = (20, 50, 100)
    max_arms: int = 2
    min_arms: int = 1
    costs: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.total, bool) or not isinstance(self.total, int) or not 1 <= self.total <= 10_000:
            raise PolicyConfigError(f"total budget must be an integer in [1, 10000], got {self.total!r}")
        levels = tuple(self.levels)
        if not levels or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in levels):
            raise PolicyConfigError(f"levels must be positive integers, got {self.levels!r}")
        if list(levels) != sorted(set(levels)):
            raise PolicyConfigError(f"levels must be strictly ascending, got {self.levels!r}")
        if levels[0] > self.total:
            raise PolicyConfigError(f"the smallest level {levels[0]} exceeds the total budget {self.total}")
        if not 1 <= self.min_arms <= self.max_arms:
            raise PolicyConfigError(f"need 1 <= min_arms <= max_arms, got {self.min_arms}, {self.max_arms}")
        if self.min_arms * levels[0] > self.total:
            raise PolicyConfigError(f"{self.min_arms} arms at level {levels[0]} exceed the total budget {self.total}")
        for arm, cost in self.costs.items():
            if not isinstance(cost, (int, float)) or isinstance(cost, bool) or not cost > 0:
                raise PolicyConfigError(f"cost of {arm} must be a positive number, got {cost!r}")
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "costs", dict(self.costs))

    def cost(self, arm: str) -> float:
        return float(self.costs.get(arm, 1.0))


@dataclass(frozen=True, slots=True)
class Decision:
    """What a policy chose for one search, with what off-policy evaluation needs.

    ``budgets``: eligible arm -> candidates to draw (0 = not run).
    ``inclusion``: eligible arm -> P(the arm runs | context) under the policy (exploration
    included), each at least the policy's floor.
    ``propensity``: P(exactly this budget vector | context).
    ``snapshot``: id of the statistics the choice was computed from; ``seed``: the draw that made
    it, so the choice can be replayed.
    """

    budgets: Mapping[str, int]
    inclusion: Mapping[str, float]
    propensity: float
    policy: str
    snapshot: str = ""
    seed: int = 0
    total_budget: int = 0
    context_version: str = CONTEXT_VERSION
    explored: bool = False  # the exploration branch made this choice (not the model's best)

    @property
    def arms(self) -> tuple[str, ...]:
        """The arms that run, in the order of ``budgets``."""
        return tuple(a for a, n in self.budgets.items() if n > 0)

    @property
    def requested(self) -> int:
        """Candidates requested over all arms."""
        return sum(self.budgets.values())

    def to_dict(self) -> dict[str, Any]:
        return {"budgets": dict(self.budgets), "inclusion": dict(self.inclusion), "propensity": self.propensity,
                "policy": self.policy, "snapshot": self.snapshot, "seed": self.seed,
                "total_budget": self.total_budget, "context_version": self.context_version,
                "explored": self.explored}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        return cls({k: int(v) for k, v in d["budgets"].items()}, {k: float(v) for k, v in d["inclusion"].items()},
                   float(d["propensity"]), str(d["policy"]), str(d.get("snapshot", "")), int(d.get("seed", 0)),
                   int(d.get("total_budget", 0)), str(d.get("context_version", CONTEXT_VERSION)),
                   bool(d.get("explored", False)))


class Policy(ABC):
    """select -> Decision; update with per-arm rewards; expectations; add_arm (no restart)."""

    name: str = "policy"

    @property
    @abstractmethod
    def arms(self) -> tuple[str, ...]:
        """Every arm the policy knows, in the order they were added."""

    @abstractmethod
    def select(self, context: Context) -> Decision:
        """Choose which of ``context.eligible`` run and with how many candidates each."""

    @abstractmethod
    def update(self, context: Context, decision: Decision, rewards: Mapping[str, float],
               engaged_ranks: Mapping[str, Sequence[int]] | None = None, *, outcome: float | None = None) -> None:
        """Learn from one finished search: ``rewards`` per arm that ran (in [0, 1]; an arm that ran
        and is missing counts 0), ``engaged_ranks`` the within-arm ranks of engaged items (for
        the budget model), ``outcome`` the whole search's engagement in [0, 1] (see
        :func:`search_outcome`; policies over joint actions learn from it)."""

    @abstractmethod
    def expectations(self, context: Context) -> dict[str, float]:
        """The model's expected reward of each eligible arm (no exploration bonus)."""

    @abstractmethod
    def add_arm(self, arm: str) -> None:
        """Start learning about a new arm (a new plan file) at the prior."""

    # Shared state and off-policy evaluation: every policy of ``orchestrator.bandit.policies`` has
    # these; a policy without them says so.

    @property
    def statistics(self) -> PolicyStatistics:
        """A copy of the statistics the policy acts on."""
        raise NotImplementedError(f"{type(self).__name__} keeps no shareable statistics")

    def take_delta(self) -> PolicyStatistics:
        """The updates since the last call (resets them)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no shareable statistics")

    def load_statistics(self, stats: PolicyStatistics, snapshot: str | None = None) -> None:
        """Act on merged global statistics plus the updates since the last :meth:`take_delta`."""
        raise NotImplementedError(f"{type(self).__name__} keeps no shareable statistics")

    def action_probabilities(self, context: Context, *, seed: int | None = None,
                             draws: int | None = None) -> dict[tuple[tuple[str, int], ...], float]:
        """P(budget vector | context), keyed by the sorted (arm, n) pairs of the arms that run."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its action distribution")
