"""Bandit policies (orchestrator/bandit/policies.py, allocation.py): no OpenSearch needed.

Oracles: scikit-learn's Ridge for the per-arm estimate, a naive LinUCB (np.linalg.inv per arm)
for the scores, empirical frequencies over many draws for every reported probability.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from orchestrator.bandit import (
    AllEligible,
    BudgetConfig,
    Context,
    Decision,
    EpsilonGreedy,
    EpsilonGreedyConfig,
    LinearThompson,
    LinUCB,
    LinUCBConfig,
    PolicyConfigError,
    PolicyStatistics,
    StaticSubset,
    StaticSubsetConfig,
    ThompsonConfig,
    UniformRandom,
    UniformRandomConfig,
    action_key,
    make_policy,
)
from orchestrator.bandit.allocation import (
    arms_to_run,
    budget_curve,
    curve_prior,
    even_split_level,
    greedy_split,
    greedy_split_one,
    split_gains,
    top_m,
    top_m_one,
)

ARMS: tuple[str, ...] = ("bm25_popularity", "structured", "knn", "q2e_memory", "fuzzy")
LEARNERS = ("linucb", "thompson", "epsilon")
EXPLORERS = ("linucb", "thompson", "epsilon", "random")  # policies with an exploration floor
ALL_SPECS = (*EXPLORERS, "static:knn+fuzzy", "all")
# Levels of unequal spacing and a total that the even split cannot use up: the greedy split and
# the even split differ, so both branches of every propensity formula are exercised.
BUDGET = BudgetConfig(total=80, levels=(10, 20, 50), max_arms=2, costs={"knn": 1.5})


# --- a synthetic linear contextual problem -------------------------------------------------------


class LinearProblem:
    """x = [1, x1, x2] with x1, x2 ~ U(0, 1); arm a pays Bernoulli(clip(θ_aᵀx)); the best arm
    changes with the region of (x1, x2)."""

    THETA = np.array([
        [0.10, 0.70, 0.00],   # good for large x1
        [0.80, -0.70, 0.00],  # good for small x1
        [0.10, 0.00, 0.70],   # good for large x2
        [0.45, 0.00, 0.00],   # a middling constant
        [0.20, 0.10, 0.10],   # never best
    ])
    DIM = 3

    def __init__(self, n_arms: int, seed: int) -> None:
        self.theta = self.THETA[:n_arms]
        self.arms = ARMS[:n_arms]
        self.rng = np.random.default_rng(seed)

    def context(self) -> Context:
        return Context(np.array([1.0, *self.rng.random(2)]), self.arms)

    def means(self, context: Context) -> np.ndarray:
        return np.clip(self.theta @ context.features, 0.0, 1.0)

    def rewards(self, context: Context, decision: Decision) -> dict[str, float]:
        p = dict(zip(self.arms, self.means(context)))
        return {a: float(self.rng.random() < p[a]) for a in decision.arms}


def run_regret(spec: str, n_arms: int, max_arms: int, rounds: int, seed: int = 3) -> np.ndarray:
    """Per-round pseudo-regret (best m arms' expected reward minus the chosen arms')."""
    problem = LinearProblem(n_arms, seed)
    budget = BudgetConfig(total=10 * max_arms, levels=(10,), max_arms=max_arms)
    policy = make_policy(spec, problem.arms, budget, problem.DIM, seed=seed)
    regret = np.empty(rounds)
    for t in range(rounds):
        context = problem.context()
        decision = policy.select(context)
        means = dict(zip(problem.arms, problem.means(context)))
        best = sum(sorted(means.values(), reverse=True)[:max_arms])
        regret[t] = best - sum(means[a] for a in decision.arms)
        policy.update(context, decision, problem.rewards(context, decision))
    return regret


@pytest.mark.parametrize("spec", ["linucb", "thompson"])
@pytest.mark.parametrize(("n_arms", "max_arms"), [(4, 1), (5, 2)])
def test_learners_regret_is_far_below_random_and_sublinear(spec, n_arms, max_arms):
    rounds = 3000
    learner = run_regret(spec, n_arms, max_arms, rounds)
    random = run_regret("random", n_arms, max_arms, rounds)
    assert learner.sum() < 0.25 * random.sum(), (learner.sum(), random.sum())
    first, second = learner[: rounds // 2].sum(), learner[rounds // 2:].sum()
    assert second < 0.7 * first, (first, second)


# --- the estimate against oracles ----------------------------------------------------------------


def one_arm_decision(arm: str) -> Decision:
    return Decision({arm: 10}, {arm: 1.0}, 1.0, "logged")


def test_ridge_estimate_equals_sklearn_ridge():
    rng = np.random.default_rng(0)
    dim, l2 = 6, 2.5
    policy = LinUCB(["a", "b"], BudgetConfig(total=10, levels=(10,), max_arms=1), dim, LinUCBConfig(l2=l2))
    data: dict[str, list[tuple[np.ndarray, float]]] = {"a": [], "b": []}
    for t in range(300):
        arm = "a" if t % 3 else "b"
        x = rng.normal(size=dim)
        r = float(rng.random() < 0.3 + 0.1 * np.tanh(x[0]))
        policy.update(Context(x, ("a", "b")), one_arm_decision(arm), {arm: r})
        data[arm].append((x, r))
    for arm, rows in data.items():
        X = np.array([x for x, _ in rows])
        y = np.array([r for _, r in rows])
        oracle = Ridge(alpha=l2, fit_intercept=False).fit(X, y).coef_
        np.testing.assert_allclose(policy.theta(arm), oracle, rtol=1e-9, atol=1e-12)


def test_linucb_choice_equals_a_naive_inverse_implementation():
    """The cached-Cholesky scores pick the same arm as u = θ̂ᵀx + α√(xᵀA⁻¹x) with A⁻¹ from np.linalg.inv."""
    rng = np.random.default_rng(1)
    dim, alpha, l2 = 5, 0.8, 1.0
    arms = ("a", "b", "c", "d")
    budget = BudgetConfig(total=10, levels=(10,), max_arms=1)
    policy = LinUCB(arms, budget, dim, LinUCBConfig(alpha=alpha, l2=l2, floor=0.0))
    gram = {a: l2 * np.eye(dim) for a in arms}
    moment = {a: np.zeros(dim) for a in arms}
    for _ in range(400):
        context = Context(rng.normal(size=dim), arms)
        x = context.features
        scores = []
        for a in arms:
            inverse = np.linalg.inv(gram[a])
            scores.append((inverse @ moment[a]) @ x + alpha * math.sqrt(x @ inverse @ x))
        decision = policy.select(context)
        (chosen,) = decision.arms
        assert chosen == arms[int(np.argmax(scores))]
        r = float(rng.random() < 0.2 + 0.15 * arms.index(chosen))
        policy.update(context, decision, {chosen: r})
        gram[chosen] += np.outer(x, x)
        moment[chosen] += r * x


# --- probabilities ------------------------------------------------------------------------------


def warmed_policy(spec: str, seed: int = 5, rounds: int = 150):
    """A policy that has learned for a while on a fixed-region stream, so its choice is not uniform."""
    problem = LinearProblem(len(ARMS), seed)
    policy = make_policy(spec, ARMS, BUDGET, problem.DIM, seed=seed)
    for _ in range(rounds):
        context = problem.context()
        decision = policy.select(context)
        policy.update(context, decision, problem.rewards(context, decision),
                      {a: [int(problem.rng.integers(1, 30))] for a in decision.arms})
    return policy


def tolerance(p: float, n: int, draws: int | None = None) -> float:
    """4.5 standard errors of a frequency over n draws (plus the Monte Carlo error of ``draws``)."""
    variance = max(p * (1 - p), 1e-4) * (1 / n + (1 / draws if draws else 0.0))
    return 4.5 * math.sqrt(variance) + 0.002


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_empirical_inclusion_matches_reported_and_the_floor_holds(spec):
    policy = warmed_policy(spec)
    context = Context(np.array([1.0, 0.8, 0.3]), ARMS)
    n = 3000
    runs: Counter[str] = Counter()
    reported: dict[str, float] = dict.fromkeys(ARMS, 0.0)
    for _ in range(n):
        decision = policy.select(context)
        runs.update(decision.arms)
        for a, p in decision.inclusion.items():
            reported[a] += p / n
    for a in ARMS:
        assert runs[a] / n == pytest.approx(reported[a], abs=tolerance(reported[a], n)), (a, runs[a] / n, reported[a])
    if spec in EXPLORERS:
        m, k = BUDGET.max_arms, len(ARMS)
        floor = {"linucb": LinUCBConfig().floor, "thompson": ThompsonConfig().floor,
                 "epsilon": EpsilonGreedyConfig().epsilon, "random": 1.0}[spec]
        decision = policy.select(context)
        assert min(decision.inclusion.values()) >= floor * m / k - 1e-12
        assert min(runs[a] for a in ARMS) / n >= floor * m / k - 0.02


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_action_probabilities_sum_to_one_and_hold_the_logged_propensity(spec):
    policy = warmed_policy(spec, rounds=60)
    rng = np.random.default_rng(11)
    for _ in range(40):
        context = Context(np.array([1.0, *rng.random(2)]), ARMS)
        decision = policy.select(context)
        seed = decision.seed if spec == "thompson" else None
        probabilities = policy.action_probabilities(context, seed=seed)
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-12)
        assert all(p > 0 for p in probabilities.values())
        assert probabilities[action_key(decision.budgets)] == pytest.approx(decision.propensity, rel=1e-12)
        # marginals of the joint distribution are the reported inclusion probabilities
        for arm, p in decision.inclusion.items():
            marginal = sum(q for key, q in probabilities.items() if any(a == arm for a, _ in key))
            assert marginal == pytest.approx(p, abs=1e-9)


@pytest.mark.parametrize("spec", ["linucb", "epsilon", "random", "thompson"])
def test_empirical_action_frequencies_match_action_probabilities(spec):
    policy = warmed_policy(spec)
    context = Context(np.array([1.0, 0.2, 0.9]), ARMS)
    n = 3000
    counts = Counter(action_key(policy.select(context).budgets) for _ in range(n))
    draws = 20_000 if spec == "thompson" else None  # a sharper Monte Carlo estimate than the logged one
    probabilities = policy.action_probabilities(context, seed=7, draws=draws)
    for key in set(counts) | set(probabilities):
        p = probabilities.get(key, 0.0)
        assert counts[key] / n == pytest.approx(p, abs=tolerance(p, n, draws)), (key, counts[key] / n, p)


def test_closed_form_propensity_of_greedy_and_explored_decisions():
    policy = warmed_policy("epsilon")
    eps, k, m = EpsilonGreedyConfig().epsilon, len(ARMS), BUDGET.max_arms
    context = Context(np.array([1.0, 0.9, 0.1]), ARMS)
    even = BUDGET.levels[even_split_level(BUDGET.total, BUDGET.levels, m)]
    seen_explored = seen_greedy = False
    for _ in range(400):
        decision = policy.select(context)
        is_even = sorted(n for n in decision.budgets.values() if n) == [even] * m
        if decision.explored:
            seen_explored = True
            assert is_even
        else:
            seen_greedy = True
            assert decision.propensity >= 1 - eps
        expected_uniform = eps / math.comb(k, m) if is_even else 0.0
        greedy_part = decision.propensity - expected_uniform
        assert greedy_part == pytest.approx(0.0, abs=1e-12) or greedy_part == pytest.approx(1 - eps)
    assert seen_explored and seen_greedy


# --- budgets, eligibility, arms ------------------------------------------------------------------


@pytest.mark.parametrize("spec", [*EXPLORERS, "static:knn+fuzzy"])
@pytest.mark.parametrize("budget", [
    BUDGET,
    BudgetConfig(total=100, levels=(20, 50, 100), max_arms=3, min_arms=2),
    BudgetConfig(total=45, levels=(10, 20, 50), max_arms=5, min_arms=1),
])
def test_budgets_respect_total_levels_arm_counts_and_eligibility(spec, budget):
    rng = np.random.default_rng(2)
    policy = make_policy(spec, ARMS, budget, 3, seed=1)
    for _ in range(150):
        eligible = tuple(a for a in ARMS if rng.random() < 0.7) or ("bm25_popularity",)
        context = Context(np.array([1.0, *rng.random(2)]), eligible)
        decision = policy.select(context)
        assert tuple(decision.budgets) == eligible and tuple(decision.inclusion) == eligible
        ran = decision.arms
        assert set(ran) <= set(eligible)
        assert all(decision.budgets[a] in budget.levels for a in ran)
        if spec.startswith("static"):
            assert set(ran) == {"knn", "fuzzy"} & set(eligible)
        else:
            assert decision.requested <= budget.total
            assert min(budget.min_arms, len(eligible)) <= len(ran) <= budget.max_arms
            assert len(ran) == arms_to_run(len(eligible), budget.total, budget.levels, budget.max_arms)
        policy.update(context, decision, {a: float(rng.random() < 0.4) for a in ran})


def test_all_runs_every_eligible_arm_at_the_largest_affordable_level():
    budget = BudgetConfig(total=80, levels=(10, 20, 50, 100), max_arms=2)
    policy = make_policy("all", ARMS, budget, 3)
    decision = policy.select(Context(np.ones(3), ("knn", "fuzzy", "structured")))
    assert decision.budgets == {"knn": 50, "fuzzy": 50, "structured": 50}
    assert decision.propensity == 1.0 and not decision.explored


def test_static_even_split_and_dropped_arms():
    policy = make_policy("static:knn+fuzzy+structured", ARMS, BudgetConfig(total=100, levels=(20, 30, 50)), 3)
    assert policy.name == "static:knn+fuzzy+structured"
    decision = policy.select(Context(np.ones(3), ("bm25_popularity", "knn", "fuzzy")))
    assert decision.budgets == {"bm25_popularity": 0, "knn": 30, "fuzzy": 30}  # 100 / 3 rounded down to a level
    assert decision.inclusion == {"bm25_popularity": 0.0, "knn": 1.0, "fuzzy": 1.0}
    assert decision.propensity == 1.0
    nothing = policy.select(Context(np.ones(3), ("bm25_popularity",)))
    assert nothing.arms == () and nothing.propensity == 1.0


def test_add_arm_mid_stream_and_unknown_arms_in_updates():
    problem = LinearProblem(3, seed=4)
    budget = BudgetConfig(total=10, levels=(10,), max_arms=1)
    policy = make_policy("linucb", problem.arms, budget, problem.DIM, seed=4)
    for _ in range(300):
        context = problem.context()
        decision = policy.select(context)
        policy.update(context, decision, problem.rewards(context, decision))
    policy.add_arm("new_arm")
    assert policy.arms == (*problem.arms, "new_arm")
    picks = 0
    for _ in range(40):
        context = Context(problem.context().features, (*problem.arms, "new_arm"))
        decision = policy.select(context)
        picks += decision.arms == ("new_arm",)
        policy.update(context, decision, {a: 1.0 for a in decision.arms})
    assert picks >= 1  # at the prior, its confidence width makes LinUCB try it
    assert policy.statistics.arms["new_arm"].pulls == picks
    # an update naming an arm the policy never saw adds it (a new plan file), without losing the update
    context = Context(np.array([1.0, 0.5, 0.5]), ("later",))
    policy.update(context, Decision({"later": 10}, {"later": 1.0}, 1.0, "logged"), {"later": 1.0}, {"later": [2]})
    assert "later" in policy.arms
    stats = policy.statistics.arms["later"]
    assert stats.pulls == 1 and stats.reward_sum == 1.0 and stats.rank_counts[0] == 1
    # and an eligible arm nobody announced is learnt from the prior
    assert "surprise" in policy.select(Context(np.ones(3), ("surprise",))).budgets


# --- shared statistics --------------------------------------------------------------------------


def logged_stream(n: int, seed: int = 8):
    """(context, decision, rewards, ranks) from a random policy on the linear problem."""
    problem = LinearProblem(len(ARMS), seed)
    logger = make_policy("random", ARMS, BUDGET, problem.DIM, seed=seed)
    out = []
    for _ in range(n):
        context = problem.context()
        decision = logger.select(context)
        out.append((context, decision, problem.rewards(context, decision),
                    {a: [int(problem.rng.integers(1, 60))] for a in decision.arms}))
    return out


def assert_same_statistics(a: PolicyStatistics, b: PolicyStatistics) -> None:
    assert set(a.arms) == set(b.arms)
    for name in a.arms:
        x, y = a.arms[name], b.arms[name]
        np.testing.assert_allclose(x.gram, y.gram, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(x.moment, y.moment, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(x.rank_counts, y.rank_counts)
        assert x.pulls == y.pulls
        assert x.reward_sum == pytest.approx(y.reward_sum)


@pytest.mark.parametrize("spec", ["linucb", "thompson"])
def test_merged_deltas_equal_one_policy_that_saw_everything(spec):
    stream = logged_stream(200)
    worker_a, worker_b, single = (make_policy(spec, ARMS, BUDGET, 3, seed=s) for s in (1, 2, 3))
    for t, (context, decision, rewards, ranks) in enumerate(stream):
        (worker_a if t % 2 else worker_b).update(context, decision, rewards, ranks)
        single.update(context, decision, rewards, ranks)
    merged = PolicyStatistics(3, BUDGET.levels)
    merged.merge(worker_a.take_delta())
    merged.merge(worker_b.take_delta())
    assert_same_statistics(merged, single.statistics)
    assert worker_a.take_delta().total_pulls == 0  # the delta was reset

    # worker A learns more before it loads the merged state: those updates are re-applied, not lost
    extra = logged_stream(20, seed=9)
    for context, decision, rewards, ranks in extra:
        worker_a.update(context, decision, rewards, ranks)
        single.update(context, decision, rewards, ranks)
    snapshot = worker_a.snapshot
    worker_a.load_statistics(merged, snapshot="global-7")
    assert worker_a.snapshot != snapshot and worker_a.snapshot.startswith("global-7")
    assert_same_statistics(worker_a.statistics, single.statistics)
    for arm in ARMS:  # it acts on the merged model
        np.testing.assert_allclose(worker_a.theta(arm), single.theta(arm), rtol=1e-9, atol=1e-12)
    # ... and the pending updates are still its delta, so the next push carries them exactly once
    assert worker_a.take_delta().total_pulls == sum(len(d.arms) for _, d, _, _ in extra)
    # loading a copy does not alias it: updating the policy leaves the loaded object alone
    pulls = merged.total_pulls
    worker_b.load_statistics(merged)
    context, decision, rewards, ranks = stream[0]
    worker_b.update(context, decision, rewards, ranks)
    assert merged.total_pulls == pulls


def test_load_statistics_rejects_statistics_that_do_not_fit():
    policy = make_policy("linucb", ARMS, BUDGET, 3)
    with pytest.raises(ValueError, match="d=4"):
        policy.load_statistics(PolicyStatistics(4, BUDGET.levels))
    with pytest.raises(ValueError, match="levels"):
        policy.load_statistics(PolicyStatistics(3, (10, 20)))
    bad = PolicyStatistics(3, BUDGET.levels)
    bad.arm("knn").gram[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        policy.load_statistics(bad)
    with pytest.raises(TypeError):
        policy.load_statistics(bad.to_dict())  # type: ignore[arg-type]


def test_statistics_survive_serialisation_and_carry_new_arms():
    stream = logged_stream(50)
    source, target = make_policy("linucb", ARMS, BUDGET, 3, seed=1), make_policy("linucb", ARMS[:2], BUDGET, 3)
    for context, decision, rewards, ranks in stream:
        source.update(context, decision, rewards, ranks)
    target.load_statistics(PolicyStatistics.from_dict(source.take_delta().to_dict()))
    assert target.arms == (*ARMS[:2], *[a for a in ARMS if a not in ARMS[:2]])
    assert_same_statistics(target.statistics, source.statistics)


# --- determinism, snapshots, records ------------------------------------------------------------


def trace(spec: str, seed: int) -> list[tuple]:
    problem = LinearProblem(len(ARMS), seed=21)
    policy = make_policy(spec, ARMS, BUDGET, problem.DIM, seed=seed)
    out = []
    for _ in range(120):
        context = problem.context()
        d = policy.select(context)
        out.append((tuple(d.budgets.items()), tuple(d.inclusion.items()), d.propensity, d.seed, d.explored))
        policy.update(context, d, problem.rewards(context, d))
    return out


@pytest.mark.parametrize("spec", EXPLORERS)
def test_a_fixed_seed_makes_the_same_decisions(spec):
    assert trace(spec, 5) == trace(spec, 5)
    assert trace(spec, 5) != trace(spec, 6)


def test_decision_records_name_policy_snapshot_seed_and_budget():
    policy = make_policy("thompson", ARMS, BUDGET, 3, seed=2)
    context = Context(np.array([1.0, 0.1, 0.2]), ARMS)
    first = policy.select(context)
    assert first.policy == "thompson" and first.total_budget == BUDGET.total
    assert first.snapshot == policy.snapshot
    assert policy.select(context).snapshot == first.snapshot  # nothing learnt in between
    policy.update(context, first, {})
    second = policy.select(context)
    assert second.snapshot != first.snapshot
    assert second.seed != first.seed
    assert Decision.from_dict(second.to_dict()) == second


def test_empty_eligible_set_runs_nothing():
    for spec in ALL_SPECS:
        decision = make_policy(spec, ARMS, BUDGET, 3).select(Context(np.ones(3), ()))
        assert decision.budgets == {} and decision.propensity == 1.0


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("factory", "field"), [
    (lambda: LinUCBConfig(alpha=-0.1), "alpha"),
    (lambda: LinUCBConfig(alpha=float("nan")), "alpha"),
    (lambda: LinUCBConfig(l2=0.0), "l2"),
    (lambda: LinUCBConfig(cost_penalty=-1), "cost_penalty"),
    (lambda: LinUCBConfig(floor=1.5), "floor"),
    (lambda: LinUCBConfig(floor=True), "floor"),
    (lambda: ThompsonConfig(scale=0.0), "scale"),
    (lambda: ThompsonConfig(mc_draws=0), "mc_draws"),
    (lambda: ThompsonConfig(mc_draws=2.5), "mc_draws"),  # type: ignore[arg-type]
    (lambda: ThompsonConfig(floor=-0.01), "floor"),
    (lambda: EpsilonGreedyConfig(epsilon=1.01), "epsilon"),
    (lambda: EpsilonGreedyConfig(l2=-1.0), "l2"),
    (lambda: UniformRandomConfig(l2=float("inf")), "l2"),
    (lambda: StaticSubsetConfig({}), "budgets"),
    (lambda: StaticSubsetConfig({"knn": 0}), "knn"),
    (lambda: StaticSubsetConfig({"": 10}), "arm names"),
])
def test_config_validation_names_the_bad_value(factory, field):
    with pytest.raises(PolicyConfigError, match=field):
        factory()


def test_make_policy_parses_specs_and_rejects_unknown_ones():
    linucb = make_policy("linucb:alpha=1.5,floor=0.2", ARMS, BUDGET, 3)
    assert isinstance(linucb, LinUCB) and linucb.config == LinUCBConfig(alpha=1.5, floor=0.2)
    thompson = make_policy(" Thompson:mc_draws=16 ", ARMS, BUDGET, 3)
    assert isinstance(thompson, LinearThompson) and thompson.config.mc_draws == 16
    for spec, policy_type in (("epsilon", EpsilonGreedy), ("random", UniformRandom), ("all", AllEligible),
                              ("static:knn", StaticSubset)):
        policy = make_policy(spec, ARMS, BUDGET, 3)
        assert isinstance(policy, policy_type) and policy.name == spec
    with pytest.raises(PolicyConfigError, match="linucb, thompson, epsilon, joint, random, static"):
        make_policy("ucb1", ARMS, BUDGET, 3)
    with pytest.raises(PolicyConfigError, match="settable: alpha"):
        make_policy("linucb:beta=1", ARMS, BUDGET, 3)
    with pytest.raises(PolicyConfigError, match="alpha must be a number"):
        make_policy("linucb:alpha=big", ARMS, BUDGET, 3)
    with pytest.raises(PolicyConfigError, match="unknown arms"):
        make_policy("static:knn+vector", ARMS, BUDGET, 3)
    with pytest.raises(PolicyConfigError, match="repeats"):
        make_policy("static:knn+knn", ARMS, BUDGET, 3)
    with pytest.raises(PolicyConfigError, match="smallest level"):
        make_policy("static:" + "+".join(ARMS), ARMS, BudgetConfig(total=40, levels=(10, 20)), 3)
    with pytest.raises(PolicyConfigError, match="dim"):
        make_policy("linucb", ARMS, BUDGET, 0)
    with pytest.raises(PolicyConfigError, match="unique"):
        make_policy("linucb", ["knn", "knn"], BUDGET, 3)


def test_bad_inputs_get_clear_errors():
    policy = make_policy("linucb", ARMS, BUDGET, 3)
    context = Context(np.array([1.0, 0.5, 0.5]), ARMS)
    decision = policy.select(context)
    ran = decision.arms
    with pytest.raises(ValueError, match=r"shape \(4,\); this policy expects \(3,\)"):
        policy.select(Context(np.ones(4), ARMS))
    with pytest.raises(ValueError, match="non-finite"):
        policy.select(Context(np.array([1.0, np.nan, 0.0]), ARMS))
    with pytest.raises(ValueError, match="non-finite"):
        policy.update(Context(np.array([1.0, np.inf, 0.0]), ARMS), decision, {})
    with pytest.raises(ValueError, match="repeat"):
        policy.select(Context(np.ones(3), ("knn", "knn")))
    for propensity in (0.0, -0.5, float("nan")):
        logged = Decision(decision.budgets, decision.inclusion, propensity, "linucb")
        with pytest.raises(ValueError, match="propensity"):
            policy.update(context, logged, {})
    not_run = next(a for a in ARMS if a not in ran)
    with pytest.raises(ValueError, match="did not run"):
        policy.update(context, decision, {not_run: 1.0})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        policy.update(context, decision, {ran[0]: 1.5})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        policy.update(context, decision, {ran[0]: float("nan")})
    with pytest.raises(ValueError, match="integers >= 1"):
        policy.update(context, decision, {}, {ran[0]: [0]})
    with pytest.raises(ValueError, match="did not run"):
        policy.update(context, decision, {}, {not_run: [1]})
    assert policy.statistics.total_pulls == 0  # nothing half-applied


# --- allocation -----------------------------------------------------------------------------------


def test_budget_curve_prior_is_increasing_and_data_moves_it():
    levels = (10, 20, 50, 100)
    prior = curve_prior(levels)
    empty = budget_curve(np.zeros(len(levels) + 1), prior)
    assert np.all(np.diff(empty) > 0) and 0 < empty[0] and empty[-1] < 1
    deep = budget_curve(np.array([0.0, 0.0, 0.0, 40.0, 0.0]), prior)  # everything found between 50 and 100
    assert deep[2] < 0.1 and deep[3] > 0.9


def test_greedy_split_gives_budget_where_the_marginal_gain_is():
    levels = (10, 20, 50)
    prior = curve_prior(levels)
    shallow = budget_curve(np.array([50.0, 0.0, 0.0, 0.0]), prior)  # finds its hits in the top 10
    deep = budget_curve(np.array([0.0, 5.0, 45.0, 0.0]), prior)  # needs 50
    gains = np.array([split_gains(shallow, 1.0, levels), split_gains(deep, 1.0, levels)])
    for total, expected in ((60, [0, 2]), (80, [1, 2]), (30, [0, 1])):
        # 60: the deep arm gets 50, the shallow one keeps 10; 80: the spare 10 still goes out
        row = greedy_split_one([0.5, 0.5], [0, 1], gains.tolist(), levels, total)
        assert row == expected, total
        assert greedy_split(np.array([[0.5, 0.5]]), np.array([[True, True]]), gains, levels, total).tolist() == [row]
    # a much better score outweighs a flatter curve: the shallow arm's estimate is 50 times larger
    assert greedy_split_one([25.0, 0.5], [0, 1], gains.tolist(), levels, 60) == [2, 0]


def test_vectorised_and_single_row_selection_agree():
    rng = np.random.default_rng(0)
    for _ in range(400):
        k, n_levels = int(rng.integers(1, 7)), int(rng.integers(1, 5))
        levels = tuple(sorted(rng.choice(np.arange(5, 200, 5), n_levels, replace=False).tolist()))
        total = int(rng.integers(levels[0], levels[0] * k * 3 + 50))
        m = arms_to_run(k, total, levels, int(rng.integers(1, k + 1)))
        weights = rng.normal(size=(6, k)).round(1)  # rounded: ties happen
        curves = [budget_curve(rng.integers(0, 5, n_levels + 1), curve_prior(levels)) for _ in range(k)]
        gains = np.array([split_gains(c, float(rng.choice([1.0, 1.5])), levels) for c in curves]).reshape(k, -1)
        chosen = top_m(weights, m)
        rows = greedy_split(weights, chosen, gains, levels, total)
        for b in range(len(weights)):
            one = top_m_one(weights[b].tolist(), m)
            assert one == np.flatnonzero(chosen[b]).tolist()
            assert greedy_split_one(weights[b].tolist(), one, gains.tolist(), levels, total) == rows[b].tolist()
            assert sum(levels[j] for j in rows[b] if j >= 0) <= total
