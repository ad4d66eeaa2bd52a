"""The joint-action policy (orchestrator/bandit/joint.py): actions, propensities, complementarity,
mergeable statistics. No OpenSearch needed."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from orchestrator.bandit import BudgetConfig, Context, Decision, PolicyConfigError, PolicyStatistics, make_policy
from orchestrator.bandit.allocation import action_key
from orchestrator.bandit.base import search_outcome
from orchestrator.bandit.joint import JointLinUCB, JointLinUCBConfig

ARMS = ("a", "b", "c")
BUDGET = BudgetConfig(total=100, levels=(20, 50, 100), max_arms=2)


def test_actions_are_every_set_up_to_max_arms_with_the_even_split():
    policy = JointLinUCB(ARMS, BUDGET, 2)
    assert policy.actions(("c", "a")) == [("a", {"a": 100}), ("c", {"c": 100}), ("a+c", {"a": 50, "c": 50})]
    assert len(policy.actions(ARMS)) == 6
    assert policy.actions(()) == []
    decision = policy.select(Context(np.ones(2), ()))
    assert decision.budgets == {} and decision.propensity == 1.0


def _warmed(seed: int = 0, rounds: int = 200) -> JointLinUCB:
    policy = JointLinUCB(ARMS, BUDGET, 3, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        context = Context(np.array([1.0, *rng.random(2)]), ARMS)
        decision = policy.select(context)
        policy.update(context, decision, dict.fromkeys(decision.arms, 1.0), outcome=float(rng.random()))
    return policy


def test_reported_probabilities_match_empirical_frequencies():
    policy = JointLinUCB(ARMS, BUDGET, 3, JointLinUCBConfig(floor=0.3), seed=1)
    context = Context(np.array([1.0, 0.4, 0.7]), ARMS)
    n = 4000
    counts: Counter = Counter()
    runs: Counter = Counter()
    for _ in range(n):
        decision = policy.select(context)
        counts[action_key(decision.budgets)] += 1
        runs.update(decision.arms)
    probabilities = policy.action_probabilities(context)
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert min(probabilities.values()) == pytest.approx(0.3 / 6)  # the floor spreads over the 6 actions
    for key, p in probabilities.items():
        assert counts[key] / n == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / n) + 1e-3), key
    for arm, p in decision.inclusion.items():
        assert runs[arm] / n == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / n) + 1e-3), arm
        marginal = sum(q for key, q in probabilities.items() if any(a == arm for a, _ in key))
        assert marginal == pytest.approx(p)
    assert probabilities[action_key(decision.budgets)] == pytest.approx(decision.propensity)


def test_it_learns_which_arms_work_together_where_per_arm_credit_cannot():
    """Context 1: only a+b together satisfy users; context 2: c alone. Any click credits every arm
    that ran (the saturated per-arm reward of fused lists), so per-arm LinUCB cannot tell a+b from
    a+c; the joint policy learns the outcome of each set."""
    rng = np.random.default_rng(5)
    value = {0: {"a+b": 0.9, "a": 0.35, "b": 0.35, "c": 0.1, "a+c": 0.4, "b+c": 0.4},
             1: {"c": 0.8, "a+c": 0.6, "b+c": 0.6, "a": 0.2, "b": 0.2, "a+b": 0.3}}
    policies = {"joint": make_policy("joint", ARMS, BUDGET, 3, seed=1), "linucb": make_policy("linucb", ARMS, BUDGET, 3, seed=1)}
    earned = dict.fromkeys(policies, 0.0)
    late_choices: Counter = Counter()
    rounds = 3000
    for t in range(rounds):
        kind = int(rng.integers(2))
        x = np.array([1.0, 1.0 - kind, float(kind)])
        uniforms = rng.random(3)
        for name, policy in policies.items():
            context = Context(x, ARMS)
            decision = policy.select(context)
            taken = "+".join(a for a in ARMS if decision.budgets.get(a, 0) > 0)
            clicks = int((uniforms < value[kind][taken]).sum())  # common random numbers
            earned[name] += clicks
            policy.update(context, decision, dict.fromkeys(decision.arms, float(clicks > 0)),
                          outcome=search_outcome([1.0] * clicks))
            if name == "joint" and t >= rounds - 500:
                late_choices[(kind, taken)] += 1
    assert earned["joint"] > 1.08 * earned["linucb"], earned  # the best per-context actions earn 1.13x its pairs
    assert late_choices[(0, "a+b")] > 0.8 * sum(v for (k, _), v in late_choices.items() if k == 0)
    assert late_choices[(1, "c")] > 0.8 * sum(v for (k, _), v in late_choices.items() if k == 1)


def test_merged_deltas_equal_one_policy_that_saw_everything():
    rng = np.random.default_rng(2)
    a, b, single = (JointLinUCB(ARMS, BUDGET, 3, seed=s) for s in (1, 2, 3))
    for t in range(300):
        context = Context(np.array([1.0, *rng.random(2)]), ARMS)
        decision = single.select(context)
        outcome = float(rng.random())
        (a if t % 2 else b).update(context, decision, {}, outcome=outcome)
        single.update(context, decision, {}, outcome=outcome)
    merged = PolicyStatistics(3, BUDGET.levels)
    merged.merge(a.take_delta())
    merged.merge(b.take_delta())
    a.load_statistics(merged, snapshot="global-1")
    assert a.snapshot.startswith("global-1")
    context = Context(np.array([1.0, 0.3, 0.6]), ARMS)
    assert a.action_probabilities(context) == pytest.approx(single.action_probabilities(context))
    for name, stats in single.statistics.arms.items():
        np.testing.assert_allclose(a.statistics.arms[name].gram, stats.gram)
        assert a.statistics.arms[name].reward_sum == pytest.approx(stats.reward_sum)


def test_outcome_defaults_to_the_largest_arm_reward_and_bad_input_is_rejected():
    policy = _warmed(rounds=0)
    context = Context(np.array([1.0, 0.5, 0.5]), ARMS)
    decision = policy.select(context)
    policy.update(context, decision, dict.fromkeys(decision.arms, 1.0))
    name = "+".join(a for a in ARMS if a in decision.arms)
    assert policy.statistics.arms[name].reward_sum == 1.0
    with pytest.raises(ValueError, match="outcome"):
        policy.update(context, decision, {}, outcome=1.5)
    with pytest.raises(ValueError, match="propensity"):
        policy.update(context, Decision(dict(decision.budgets), {}, 0.0, "joint"), {})
    with pytest.raises(ValueError, match="shape"):
        policy.select(Context(np.ones(4), ARMS))
    with pytest.raises(PolicyConfigError, match="alpha"):
        JointLinUCBConfig(alpha=-1)
    with pytest.raises(PolicyConfigError, match="floor"):
        make_policy("joint:floor=2", ARMS, BUDGET, 3)
    assert make_policy("joint:alpha=0.2", ARMS, BUDGET, 3).config.alpha == 0.2  # type: ignore[attr-defined]


def test_search_outcome_sums_grades_and_caps():
    assert search_outcome([]) == 0.0
    assert search_outcome({"d1": 1.0}) == pytest.approx(1 / 3)
    assert search_outcome([1.0, 1.0, 1.0, 1.0]) == 1.0
    assert search_outcome([0.3, 0.3]) < search_outcome([1.0])


def test_rank_one_updates_track_the_exact_ridge_solution():
    """Between exact refactorings the inverse follows Sherman–Morrison; it must stay on the ridge
    estimate (λI + Σxxᵀ)⁻¹Σox computed from the sums."""
    policy = JointLinUCB(ARMS, BUDGET, 4, JointLinUCBConfig(l2=0.5), seed=3)
    rng = np.random.default_rng(8)
    for _ in range(700):
        context = Context(np.array([1.0, *rng.random(3)]), ARMS)
        decision = policy.select(context)
        policy.update(context, decision, {}, outcome=float(rng.random()))
    stats = policy.statistics
    assert max(s.pulls for s in stats.arms.values()) > 128  # some action went through an exact refactoring
    for name, s in stats.arms.items():
        exact = np.linalg.solve(0.5 * np.eye(4) + s.gram, s.moment)
        np.testing.assert_allclose(policy.theta(name), exact, rtol=1e-8, atol=1e-10)
