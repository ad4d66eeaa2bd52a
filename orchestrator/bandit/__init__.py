"""The retrieval bandit: contexts, policies, budget allocation and their additive statistics."""

from .allocation import ActionKey, action_key, budget_curve
from .base import BudgetConfig, Decision, Policy, PolicyConfigError
from .context import CONTEXT_DIM, CONTEXT_VERSION, Context, RequestContext, context_vector
from .policies import (
    POLICY_SPECS,
    AllEligible,
    EpsilonGreedy,
    EpsilonGreedyConfig,
    LinearPolicy,
    LinearThompson,
    LinUCB,
    LinUCBConfig,
    StaticSubset,
    StaticSubsetConfig,
    ThompsonConfig,
    UniformRandom,
    UniformRandomConfig,
    make_policy,
)
from .stats import ArmStatistics, PolicyStatistics

__all__ = [
    "CONTEXT_DIM", "CONTEXT_VERSION", "POLICY_SPECS", "ActionKey", "AllEligible", "ArmStatistics", "BudgetConfig",
    "Context", "Decision", "EpsilonGreedy", "EpsilonGreedyConfig", "LinUCB", "LinUCBConfig", "LinearPolicy",
    "LinearThompson", "Policy", "PolicyConfigError", "PolicyStatistics", "RequestContext", "StaticSubset",
    "StaticSubsetConfig", "ThompsonConfig", "UniformRandom", "UniformRandomConfig", "action_key", "budget_curve",
    "context_vector", "make_policy",
]
