"""Off-policy estimators (orchestrator.bandit.ope) and the offline report over logged searches
(orchestrator.bandit.offline), on a synthetic logged bandit problem whose true values are known.

The problem: three arms, six budget vectors (each arm alone at 100, each pair at 50/50), context
x = [1, u1, u2] with u uniform on [0, 1]², Bernoulli rewards with P(R = 1 | x, A) = θ_Aᵀx (linear,
inside (0, 1)), so a target's true value is Σ_A E_x[π(A | x)] θ_Aᵀ[1, ½, ½] for the context-free
targets. The logger is a softmax over β_Aᵀx mixed with ε-uniform exploration: exact propensities.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime

import numpy as np
import pytest

from orchestrator.bandit.base import BudgetConfig, Decision
from orchestrator.bandit.context import Context
from orchestrator.bandit.offline import (
    SKIP_MALFORMED_DECISION,
    SKIP_NO_DECISION,
    SKIP_NO_PROPENSITY,
    SKIP_OTHER_CONTEXT_VERSION,
    STATUS_OK,
    STATUS_UNSUPPORTED,
    LoggedPolicyTarget,
    LoggedSearch,
    PolicyTarget,
    StaticSubsetTarget,
    TargetError,
    UniformRandomTarget,
    budget_vector,
    evaluate_targets,
    expand_targets,
    logged_feedback,
    offline_report,
    parse_target,
    union_reward,
)
from orchestrator.bandit.ope import (
    IPS,
    SNIPS,
    DoublyRobust,
    RidgeRewardModel,
    bootstrap_interval,
    effective_sample_size,
    importance_weights,
)
from orchestrator.feedback.records import SearchRecord

ARMS = ("bm25_popularity", "fuzzy", "knn")
BUDGET = BudgetConfig(total=100, levels=(50, 100), max_arms=2, min_arms=1)
ACTIONS = (*(((a, 100),) for a in ARMS), *(((a, 50), (b, 50)) for a, b in itertools.combinations(ARMS, 2)))
# P(R = 1 | x, A) = THETA[A] · [1, u1, u2]: every value in [0.05, 0.75] for u in [0, 1]².
THETA = np.array([
    [0.30, 0.30, -0.10],  # bm25_popularity=100
    [0.10, -0.05, 0.40],  # fuzzy=100
    [0.20, 0.20, 0.20],  # knn=100
    [0.35, 0.20, 0.20],  # bm25_popularity=50+fuzzy=50
    [0.40, 0.30, 0.00],  # bm25_popularity=50+knn=50
    [0.25, -0.10, 0.45],  # fuzzy=50+knn=50
])
MEAN_CONTEXT = np.array([1.0, 0.5, 0.5])
VERSION = "ctx-test"


def true_value(action_probabilities: np.ndarray) -> float:
    """Value of a context-free target with π(A) = action_probabilities (over ACTIONS)."""
    return float(action_probabilities @ THETA @ MEAN_CONTEXT)


def static_truth(arms: tuple[str, ...]) -> float:
    level = 100 // len(arms)
    return true_value(np.array([1.0 if a == budget_vector({x: level for x in arms}) else 0.0 for a in ACTIONS]))


def random_truth() -> float:
    return true_value(np.array([0.0, 0.0, 0.0, 1 / 3, 1 / 3, 1 / 3]))


def logging_propensities(x: np.ndarray, allowed: np.ndarray | None = None, epsilon: float = 0.2) -> np.ndarray:
    """μ(· | x), shape (n, 6): softmax of β_Aᵀx mixed with ε-uniform over the allowed actions."""
    beta = np.array([[0.5, 1.0, -1.0], [-0.5, 0.0, 1.5], [0.0, 0.5, 0.5], [0.3, -1.0, 1.0], [1.0, 0.5, -0.5], [0.0, -1.0, 1.5]])
    allowed = np.ones(len(ACTIONS), dtype=bool) if allowed is None else allowed
    scores = np.where(allowed, 2.0 * x @ beta.T, -np.inf)
    soft = np.exp(scores - scores.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    return (1 - epsilon) * soft + epsilon * allowed / allowed.sum()


def simulate(n: int, seed: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x (n, 3), action (n,), reward (n,), μ(· | x) (n, 6)) of one logged run."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.ones(n), rng.random((n, 2))])
    mu = logging_propensities(x, allowed)
    action = (rng.random(n)[:, None] > np.cumsum(mu, axis=1)).sum(axis=1)
    action = np.minimum(action, len(ACTIONS) - 1)
    reward = (rng.random(n) < np.sum(x * THETA[action], axis=1)).astype(np.float64)
    return x, action, reward, mu


def record(i: int, x: np.ndarray, decision: Decision | None, *, version: str = VERSION,
           eligible: tuple[str, ...] = ARMS) -> SearchRecord:
    return SearchRecord(f"s{i}", datetime(2025, 1, 1, tzinfo=UTC), "music", "q", "q", "q_k", [float(v) for v in x],
                        version, {}, eligible, decision.to_dict() if decision is not None else None, {}, {}, [])


def logged_searches(n: int, seed: int, allowed: np.ndarray | None = None) -> list[LoggedSearch]:
    x, action, reward, mu = simulate(n, seed, allowed)
    runs = np.array([[arm in dict(a) for arm in ARMS] for a in ACTIONS], dtype=np.float64)  # (6, 3)
    inclusion = mu @ runs  # P(arm runs | x) = Σ_{A ∋ arm} μ(A | x)
    searches = []
    for i in range(n):
        chosen = dict(ACTIONS[action[i]])
        decision = Decision({arm: chosen.get(arm, 0) for arm in ARMS}, dict(zip(ARMS, inclusion[i].tolist(), strict=True)),
                            float(mu[i, action[i]]), "softmax", seed=i, total_budget=100)
        searches.append(LoggedSearch(record(i, x[i], decision), float(reward[i])))
    return searches


def static_dist(n: int, arms: tuple[str, ...]) -> np.ndarray:
    j = ACTIONS.index(budget_vector({a: 100 // len(arms) for a in arms}))
    dist = np.zeros((n, len(ACTIONS)))
    dist[:, j] = 1.0
    return dist


# ---- estimators on arrays ------------------------------------------------------------------------


def test_estimators_match_their_formulas():
    x, action, reward, mu = simulate(500, seed=1)
    pscore = mu[np.arange(500), action]
    pi = logging_propensities(x[:, ::-1].copy())  # some other stochastic policy
    w = pi[np.arange(500), action] / pscore
    rhat = np.clip(x @ THETA.T + 0.05, 0, 1)
    assert IPS().estimate_policy_value(reward, action, pscore, pi) == pytest.approx(np.mean(w * reward))
    assert IPS(max_weight=2.0).estimate_policy_value(reward, action, pscore, pi) == pytest.approx(
        np.mean(np.minimum(w, 2.0) * reward))
    assert SNIPS().estimate_policy_value(reward, action, pscore, pi) == pytest.approx(np.sum(w * reward) / np.sum(w))
    direct = np.sum(pi * rhat, axis=1)
    assert DoublyRobust().estimate_policy_value(reward, action, pscore, pi, rhat) == pytest.approx(
        np.mean(direct + w * (reward - rhat[np.arange(500), action])))
    for estimator in (IPS(), SNIPS(), DoublyRobust()):
        rounds = estimator.round_rewards(reward, action, pscore, pi, rhat)
        assert rounds.shape == (500,)
        assert np.mean(rounds) == pytest.approx(estimator.estimate_policy_value(reward, action, pscore, pi, rhat))
    assert effective_sample_size(w) == pytest.approx(np.sum(w) ** 2 / np.sum(w ** 2))
    assert effective_sample_size(np.ones(7)) == pytest.approx(7)
    np.testing.assert_allclose(importance_weights(action, pscore, pi), w)


@pytest.mark.parametrize("bad, message", [
    ({"reward": np.array([0.0, np.nan, 1.0])}, "non-finite"),
    ({"action": np.array([0, 1])}, "action must have shape"),
    ({"action": np.array([0.0, 1.0, 2.0])}, "integer"),
    ({"action": np.array([0, 1, 6])}, "action indices"),
    ({"pscore": np.array([0.5, 0.0, 0.5])}, "positive propensity"),
    ({"action_dist": np.full((3, 6), 0.5)}, "sum to 1"),
    ({"action_dist": np.full((3, 5), 0.2)[:2]}, "action_dist must have shape"),
])
def test_estimators_reject_bad_arrays(bad, message):
    arrays = {"reward": np.array([0.0, 1.0, 1.0]), "action": np.array([0, 1, 2]), "pscore": np.full(3, 0.5),
              "action_dist": np.full((3, 6), 1 / 6)}
    arrays.update(bad)
    with pytest.raises(ValueError, match=message):
        IPS().estimate_policy_value(**arrays)


def test_estimator_configs_are_validated():
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="max_weight"):
            IPS(max_weight=bad)
    with pytest.raises(ValueError, match="n_folds"):
        RidgeRewardModel(n_folds=1)
    with pytest.raises(ValueError, match="l2"):
        RidgeRewardModel(l2=0.0)
    with pytest.raises(ValueError, match="estimated_rewards"):
        DoublyRobust().estimate_policy_value([1.0], [0], [1.0], [[1.0]])
    with pytest.raises(ValueError, match="alpha"):
        IPS().estimate_interval([1.0], [0], [1.0], [[1.0]], alpha=1.5)
    with pytest.raises(ValueError, match="n_bootstrap"):
        IPS().estimate_interval([1.0], [0], [1.0], [[1.0]], n_bootstrap=0)


def test_cross_fitted_ridge_recovers_a_linear_reward():
    rng = np.random.default_rng(3)
    x = rng.random((4000, 2))
    action = rng.integers(0, 6, 4000)
    mean = np.column_stack([np.ones(4000), x]) @ THETA.T  # E[R | x, A], (n, 6)
    reward = (rng.random(4000) < mean[np.arange(4000), action]).astype(float)
    predicted = RidgeRewardModel(l2=1.0, n_folds=5).cross_fit_predict(x, action, reward, 6)
    assert predicted.shape == (4000, 6)
    assert np.sqrt(np.mean((predicted - mean) ** 2)) < 0.03  # far below the 0.2 spread of E[R | x, A]
    # cross-fitting: a search's own reward does not move its prediction
    flipped = reward.copy()
    flipped[0] = 1 - flipped[0]
    again = RidgeRewardModel(l2=1.0, n_folds=5).cross_fit_predict(x, action, flipped, 6)
    np.testing.assert_array_equal(again[0], predicted[0])
    assert not np.array_equal(again, predicted)


def test_the_shared_term_predicts_an_action_the_log_never_took():
    from orchestrator.bandit.offline import action_features

    rng = np.random.default_rng(6)
    n = 6000
    x = rng.random((n, 2))
    arm_effect = {"bm25_popularity": 0.1 + 0.2 * x[:, 0], "fuzzy": 0.05 + 0.2 * x[:, 1], "knn": 0.15 + 0.1 * x[:, 0]}
    mean = np.column_stack([0.1 + sum(arm_effect[arm] for arm, _ in act) for act in ACTIONS])  # additive in arms
    never = ACTIONS.index((("fuzzy", 50), ("knn", 50)))
    action = rng.choice([j for j in range(len(ACTIONS)) if j != never], size=n)
    reward = (rng.random(n) < mean[np.arange(n), action]).astype(float)
    predicted = RidgeRewardModel().cross_fit_predict(x, action, reward, len(ACTIONS), action_features(ACTIONS))
    assert np.sqrt(np.mean((predicted[:, never] - mean[:, never]) ** 2)) < 0.04
    alone = RidgeRewardModel().cross_fit_predict(x, action, reward, len(ACTIONS))  # per-action terms only
    assert np.allclose(alone[:, never], 0.0)  # nothing to say about it (clipped to the reward range)


def test_bootstrap_shares_resamples_and_matches_the_estimator_interval():
    x, action, reward, mu = simulate(300, seed=2)
    pscore = mu[np.arange(300), action]
    pi = static_dist(300, ("knn",))
    interval = IPS().estimate_interval(reward, action, pscore, pi, n_bootstrap=500, seed=7)
    assert interval.low < interval.mean < interval.high
    a, b = IPS().ratio_terms(reward, action, pscore, pi)
    low, high = bootstrap_interval(np.column_stack([a, a]), np.column_stack([b, b]), n_bootstrap=500, seed=7)
    assert low[0] == low[1] == pytest.approx(interval.low) and high[0] == high[1] == pytest.approx(interval.high)
    other = IPS().estimate_interval(reward, action, pscore, pi, n_bootstrap=500, seed=8)
    assert (other.low, other.high) != (interval.low, interval.high)


# ---- the synthetic problem: bias, variance, coverage ------------------------------------------

MC_ROUNDS, MC_REPETITIONS = 1000, 300
MC_TARGETS = {"static:knn": ("knn",), "static:bm25_popularity+fuzzy": ("bm25_popularity", "fuzzy"), "random": None}


@pytest.fixture(scope="module")
def monte_carlo() -> dict[tuple[str, str], np.ndarray]:
    """IPS, SNIPS and DR estimates of three targets over MC_REPETITIONS independent logs."""
    n = MC_ROUNDS
    uniform_pairs = np.zeros((n, len(ACTIONS)))
    uniform_pairs[:, 3:] = 1 / 3
    dists = {name: uniform_pairs if arms is None else static_dist(n, arms) for name, arms in MC_TARGETS.items()}
    out: dict[tuple[str, str], list[float]] = {}
    for seed in range(MC_REPETITIONS):
        x, action, reward, mu = simulate(n, seed)
        pscore = mu[np.arange(n), action]
        rhat = RidgeRewardModel(seed=seed).cross_fit_predict(x[:, 1:], action, reward, len(ACTIONS))
        for name, dist in dists.items():
            out.setdefault((name, "ips"), []).append(IPS().estimate_policy_value(reward, action, pscore, dist))
            out.setdefault((name, "snips"), []).append(SNIPS().estimate_policy_value(reward, action, pscore, dist))
            out.setdefault((name, "dr"), []).append(DoublyRobust().estimate_policy_value(reward, action, pscore, dist, rhat))
    return {k: np.asarray(v) for k, v in out.items()}


def mc_truth(name: str) -> float:
    arms = MC_TARGETS[name]
    return random_truth() if arms is None else static_truth(arms)


@pytest.mark.parametrize("name", sorted(MC_TARGETS))
def test_ips_and_dr_are_unbiased_and_snips_is_close(monte_carlo, name):
    truth = mc_truth(name)
    for estimator in ("ips", "dr"):
        values = monte_carlo[(name, estimator)]
        standard_error = values.std(ddof=1) / math.sqrt(len(values))
        assert abs(values.mean() - truth) < 4 * standard_error, (estimator, values.mean(), truth, standard_error)
    snips = monte_carlo[(name, "snips")]
    assert abs(snips.mean() - truth) < 0.01  # O(1/n) bias
    assert abs(np.median(snips) - truth) < 0.02


@pytest.mark.parametrize("name", sorted(MC_TARGETS))
def test_dr_has_lower_variance_than_ips_with_a_good_reward_model(monte_carlo, name):
    # The reward model is well specified here (E[R | x, A] is linear per action).
    assert monte_carlo[(name, "dr")].var() < 0.85 * monte_carlo[(name, "ips")].var()


def test_dr_with_a_zero_reward_model_is_ips():
    x, action, reward, mu = simulate(400, seed=4)
    pscore = mu[np.arange(400), action]
    dist = static_dist(400, ("fuzzy",))
    assert DoublyRobust().estimate_policy_value(reward, action, pscore, dist, np.zeros((400, 6))) == pytest.approx(
        IPS().estimate_policy_value(reward, action, pscore, dist))


def test_bootstrap_intervals_cover_the_truth():
    """Coverage of the 95% percentile intervals over 100 independent logs of 1,000 searches (the
    rate measured over 300 logs is in the report of this change; heavy-tailed weights would lower it)."""
    repetitions = 100
    covered: dict[tuple[str, str], list[bool]] = {}
    for rep in range(repetitions):
        report = offline_report(logged_searches(1000, seed=10_000 + rep), ["static:*", "random"], budget=BUDGET,
                                n_bootstrap=1000, seed=rep)
        for row in report.rows:
            truth = random_truth() if row.name == "random" else static_truth(tuple(row.name.removeprefix("static:").split("+")))
            for key in ("ips", "snips", "dr"):
                interval = getattr(row, key)
                covered.setdefault((row.name, key), []).append(interval.low <= truth <= interval.high)
    rates = {k: float(np.mean(v)) for k, v in covered.items()}
    assert len(rates) == 7 * 3
    for key in ("ips", "snips", "dr"):
        per_target = [rate for (_, k), rate in rates.items() if k == key]
        print(f"{key}: coverage {np.mean(per_target):.3f} (per target {min(per_target):.2f}..{max(per_target):.2f})")
        assert np.mean(per_target) >= 0.90, rates
        assert min(per_target) >= 0.85, rates


# ---- the offline report over logged searches --------------------------------------------------


def test_on_policy_estimate_equals_the_mean_reward():
    searches = logged_searches(600, seed=21)
    report = offline_report(searches, ["logged"], n_bootstrap=200)
    row = report.row("logged")
    mean_reward = float(np.mean([s.reward for s in searches]))
    assert report.mean_reward == pytest.approx(mean_reward)
    for interval in (row.ips, row.snips, row.dr):
        assert interval is not None
        assert interval.mean == pytest.approx(mean_reward, abs=1e-12)
        assert interval.low <= mean_reward <= interval.high
    assert row.support == 1.0 and row.logged_share == 1.0 and row.ess == pytest.approx(600)


def test_report_matches_the_estimators_on_the_converted_arrays():
    searches = logged_searches(800, seed=22)
    report = offline_report(searches, ["static:knn", "random"], budget=BUDGET, n_bootstrap=300, seed=5)
    x, action, reward, mu = simulate(800, seed=22)
    pscore = mu[np.arange(800), action]
    dist = static_dist(800, ("knn",))
    row = report.row("static:knn")
    assert row.status == STATUS_OK and row.support == pytest.approx(1.0)
    assert row.ips is not None and row.snips is not None and row.dr is not None
    assert row.ips.mean == pytest.approx(IPS().estimate_policy_value(reward, action, pscore, dist))
    assert row.snips.mean == pytest.approx(SNIPS().estimate_policy_value(reward, action, pscore, dist))
    weights = importance_weights(action, pscore, dist)
    assert row.ess == pytest.approx(effective_sample_size(weights))
    assert row.logged_share == pytest.approx(np.mean(action == ACTIONS.index((("knn", 100),))))
    assert row.max_weight == pytest.approx(weights.max())
    # same resamples as the estimator's own interval with the same seed
    interval = IPS().estimate_interval(reward, action, pscore, dist, n_bootstrap=300, seed=5)
    assert (row.ips.low, row.ips.high) == pytest.approx((interval.low, interval.high))
    assert report.n_read == report.n_evaluated == 800 and not report.skipped
    assert report.n_actions == len(ACTIONS)


def test_searches_without_propensities_are_skipped_and_counted():
    searches = logged_searches(300, seed=23)
    x = np.array([1.0, 0.5, 0.5])
    good = Decision({"knn": 100}, {"knn": 1.0}, 0.5, "p")

    def with_propensity(i: int, propensity: float) -> LoggedSearch:
        return LoggedSearch(record(i, x, Decision({"knn": 100}, {"knn": 1.0}, propensity, "p")), 1.0)

    junk = [LoggedSearch(record(1000, x, None), 1.0), LoggedSearch(record(1001, x, None), 0.0),
            with_propensity(1002, 0.0), with_propensity(1003, -0.2), with_propensity(1004, float("nan")),
            LoggedSearch(SearchRecord("s1005", datetime(2025, 1, 1, tzinfo=UTC), "music", "q", "q", "k", list(x), VERSION,
                                      {}, ARMS, {"propensity": 0.5}, {}, {}, []), 1.0),
            LoggedSearch(record(1006, x, good, version="ctx-old"), 1.0)]
    mixed = searches[:100] + junk + searches[100:]
    report = offline_report(mixed, ["static:knn", "logged"], budget=BUDGET, n_bootstrap=200)
    assert report.n_read == 307 and report.n_evaluated == 300
    assert report.skipped == {SKIP_NO_DECISION: 2, SKIP_NO_PROPENSITY: 3, SKIP_MALFORMED_DECISION: 1,
                              SKIP_OTHER_CONTEXT_VERSION: 1}
    clean = offline_report(searches, ["static:knn", "logged"], budget=BUDGET, n_bootstrap=200)
    assert report.row("static:knn").ips == clean.row("static:knn").ips
    assert report.to_json()["skipped"] == report.skipped


def test_context_versions_are_not_mixed():
    x = [1.0, 0.2, 0.3]
    decision = Decision({"knn": 100}, {"knn": 1.0}, 1.0, "p")
    searches = [LoggedSearch(record(i, np.array(x), decision, version="ctx-a" if i < 3 else "ctx-b"), 1.0) for i in range(5)]
    feedback = logged_feedback(searches)  # the most common version
    assert feedback.context_version == "ctx-a" and feedback.n_rounds == 3
    assert feedback.skipped == {SKIP_OTHER_CONTEXT_VERSION: 2}
    assert logged_feedback(searches, context_version="ctx-b").n_rounds == 2
    odd = LoggedSearch(record(9, np.array([1.0, 0.2]), decision, version="ctx-a"), 1.0)
    with pytest.raises(ValueError, match="different lengths"):
        logged_feedback([*searches, odd])


def test_a_target_outside_the_loggers_support_is_reported_not_estimated():
    no_fuzzy = np.array(["fuzzy" not in dict(a) for a in ACTIONS])
    searches = logged_searches(500, seed=24, allowed=no_fuzzy)
    report = offline_report(searches, ["static:fuzzy", "random", "static:knn"], budget=BUDGET, n_bootstrap=200)
    fuzzy, random_, knn = report.row("static:fuzzy"), report.row("random"), report.row("static:knn")
    assert fuzzy.status == STATUS_UNSUPPORTED and fuzzy.support == 0.0 and fuzzy.ips is None and fuzzy.dr is None
    assert random_.status == STATUS_UNSUPPORTED and random_.support == pytest.approx(1 / 3)  # bm25+knn of three pairs
    assert "not estimated" in random_.note and random_.snips is None
    assert knn.status == STATUS_OK and knn.ips is not None
    table = {r["target"]: r for r in report.table_rows()}
    assert table["static:fuzzy"]["IPS (95%)"] == "—" and "100% of its choices never logged" in table["static:fuzzy"]["note"]
    # lowering the bar estimates it, with its support on the row
    lowered = offline_report(searches, ["random"], budget=BUDGET, n_bootstrap=200, min_support=0.3).row("random")
    assert lowered.status == STATUS_OK and lowered.support == pytest.approx(1 / 3) and lowered.ips is not None


class FakePolicy:
    """Stands in for an orchestrator.bandit.policies policy: half knn alone at 100 (keys with zero
    budgets and in any order), half knn at 20, which the log never holds."""

    name = "fake"

    def __init__(self) -> None:
        self.contexts: list = []

    def action_probabilities(self, context):
        self.contexts.append(context)
        return {(("knn", 100), ("fuzzy", 0)): 0.25, (("fuzzy", 0), ("knn", 100)): 0.25, (("knn", 20),): 0.5}


def test_policy_adapter_canonicalises_vectors_and_counts_unlogged_actions_out_of_support():
    searches = logged_searches(200, seed=25)
    policy = FakePolicy()
    target = PolicyTarget(policy)
    assert target.name == "fake"
    assert dict(target.probabilities(searches[0].record)) == {(("knn", 100),): 0.5, (("knn", 20),): 0.5}
    context = policy.contexts[0]
    np.testing.assert_array_equal(context.features, searches[0].record.context)
    assert context.eligible == ARMS and context.version == VERSION
    report = offline_report(searches, [target, "logged"], n_bootstrap=100)
    assert report.row("fake").support == pytest.approx(0.5) and report.row("fake").status == STATUS_UNSUPPORTED
    assert report.n_actions == len(ACTIONS) + 1


class BrokenTarget:
    name = "broken"

    def probabilities(self, record):
        return {(("knn", 100),): 0.7}


def test_invalid_target_distributions_are_errors():
    searches = logged_searches(50, seed=26)
    with pytest.raises(TargetError, match=r"'broken'.*s0.*sum to 0.7"):
        offline_report(searches, [BrokenTarget()], n_bootstrap=10)


def test_target_specs():
    assert isinstance(parse_target("logged"), LoggedPolicyTarget)
    assert isinstance(parse_target("random", BUDGET), UniformRandomTarget)
    assert parse_target("static:knn+bm25_popularity", BUDGET).name == "static:knn+bm25_popularity"
    for bad in ("linucb", "static:", "static:*", "static:knn+knn", "random:2"):
        with pytest.raises(TargetError):
            parse_target(bad, BUDGET)
    with pytest.raises(TargetError, match="below the smallest level"):
        StaticSubsetTarget(ARMS, BUDGET)  # 100 / 3 < 50
    names = [t.name for t in expand_targets(["static:*", "all"], ARMS, BUDGET)]
    assert names == ["static:bm25_popularity", "static:fuzzy", "static:knn", "static:bm25_popularity+fuzzy",
                     "static:bm25_popularity+knn", "static:fuzzy+knn", "all"]
    with pytest.raises(TargetError, match="more than once"):
        expand_targets(["random", "random"], ARMS, BUDGET)
    # arms that are not eligible are dropped; random draws among the eligible ones
    narrow = record(0, np.array([1.0, 0.0, 0.0]), None, eligible=("knn", "bm25_popularity"))
    assert dict(StaticSubsetTarget(("bm25_popularity", "fuzzy"), BUDGET).probabilities(narrow)) == {
        (("bm25_popularity", 50),): 1.0}
    assert dict(UniformRandomTarget(BUDGET).probabilities(narrow)) == {(("bm25_popularity", 50), ("knn", 50)): 1.0}
    assert budget_vector({"knn": 50, "fuzzy": 0, "bm25_popularity": 50}) == (("bm25_popularity", 50), ("knn", 50))
    with pytest.raises(ValueError, match="twice"):
        budget_vector([("knn", 50), ("knn", 20)])


def test_small_and_empty_logs_give_a_report_not_a_crash():
    empty = offline_report([], ["random", "logged"], n_bootstrap=10)
    assert empty.n_evaluated == 0 and all(r.ips is None for r in empty.rows) and empty.mean_reward is None
    tiny = offline_report(logged_searches(3, seed=27), ["logged"], n_bootstrap=10)
    assert tiny.row("logged").dr is None and tiny.row("logged").ips is not None
    assert any("cross-fitting" in note for note in tiny.notes)


def test_report_json_is_plain_data():
    import json

    report = offline_report(logged_searches(300, seed=28), ["static:*", "random", "logged"], budget=BUDGET,
                            n_bootstrap=100, max_weight=20.0)
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert [t["target"] for t in data["targets"]] == [r.name for r in report.rows]
    assert data["bootstrap"] == {"n_bootstrap": 100, "alpha": 0.05, "seed": 0} and data["max_weight"] == 20.0
    ok = data["targets"][0]
    assert ok["ips"]["low"] <= ok["ips"]["mean"] <= ok["ips"]["high"]
    assert len(report.table_rows()) == len(report.rows)


@pytest.mark.parametrize("spec", ["random", "all", "static:knn", "static:fuzzy+bm25_popularity"])
def test_targets_agree_with_the_bandit_policies_through_the_adapter(spec):
    from orchestrator.bandit.policies import make_policy

    budget = BudgetConfig(total=100, levels=(20, 50, 100), max_arms=2)
    adapted = PolicyTarget(make_policy(spec, ARMS, budget, dim=3))
    ours = parse_target(spec, budget)
    for i, eligible in enumerate([ARMS, ("knn", "fuzzy"), ("knn",), ("bm25_popularity", "fuzzy", "knn")]):
        rec = record(i, np.array([1.0, 0.3, 0.7]), None, eligible=eligible)
        theirs = adapted.probabilities(rec)
        assert set(theirs) == set(ours.probabilities(rec)), (spec, eligible)
        for action, p in ours.probabilities(rec).items():
            assert theirs[action] == pytest.approx(p)


def test_a_learning_policy_is_evaluated_through_the_adapter():
    from orchestrator.bandit.policies import make_policy

    policy = make_policy("linucb", ARMS, BUDGET, dim=3, seed=1)
    searches = logged_searches(1000, seed=29)
    for s in searches[:300]:  # learn from part of the log, evaluate on the rest
        decision = Decision.from_dict(s.record.decision or {})
        context = Context(np.asarray(s.record.context), tuple(s.record.eligible), s.record.context_version)
        policy.update(context, decision, {arm: s.reward for arm in decision.arms})
    held_out = searches[300:]
    target = PolicyTarget(policy, "linucb")
    report = offline_report(held_out, [target], budget=BUDGET, n_bootstrap=500)
    row = report.row("linucb")
    assert row.status == STATUS_OK and row.support == pytest.approx(1.0)  # pairs at 50/50, all in the log
    assert row.dr is not None and row.ips is not None
    # its value on these contexts, from the true reward function
    truth = np.mean([sum(p * THETA[ACTIONS.index(a)] @ np.asarray(s.record.context) for a, p in
                         target.probabilities(s.record).items()) for s in held_out])
    assert abs(row.dr.mean - truth) < row.dr.high - row.dr.low
    assert abs(row.ips.mean - truth) < row.ips.high - row.ips.low


def test_evaluate_targets_validates_its_options_and_clips_weights():
    feedback = logged_feedback(logged_searches(300, seed=30))
    targets = [parse_target("static:fuzzy", BUDGET)]
    with pytest.raises(ValueError, match="min_support"):
        evaluate_targets(feedback, targets, min_support=1.5)
    with pytest.raises(ValueError, match="alpha"):
        evaluate_targets(feedback, targets, alpha=0.0)
    with pytest.raises(ValueError, match="n_bootstrap"):
        evaluate_targets(feedback, targets, n_bootstrap=0)
    with pytest.raises(ValueError, match="max_weight"):
        evaluate_targets(feedback, targets, max_weight=-1.0)
    clipped = evaluate_targets(feedback, targets, n_bootstrap=50, max_weight=3.0).rows[0]
    unclipped = evaluate_targets(feedback, targets, n_bootstrap=50).rows[0]
    assert unclipped.max_weight > 3.0  # so clipping bites
    action = np.array([ACTIONS.index(a) for a in feedback.logged_actions])
    dist = static_dist(300, ("fuzzy",))
    assert clipped.ips is not None and unclipped.ips is not None
    expected = IPS(max_weight=3.0).estimate_policy_value(feedback.reward, action, feedback.pscore, dist)
    assert clipped.ips.mean == pytest.approx(expected)
    assert clipped.ips.mean < unclipped.ips.mean and clipped.snips == unclipped.snips


def test_union_reward_is_the_best_grade_found_by_any_arm():
    rec = SearchRecord("s1", datetime(2025, 1, 1, tzinfo=UTC), "music", "q", "q", "k", [1.0], VERSION, {}, ARMS,
                       None, {"knn": ["d1", "d2"], "fuzzy": ["d3"], "bm25_popularity": ["d9"]},
                       {"knn": "ok", "fuzzy": "ok", "bm25_popularity": "failed"}, ["d1", "d3"])
    assert union_reward(rec, {"d2": 0.3, "d3": 1.0}) == 1.0
    assert union_reward(rec, {"d2": 0.3}) == 0.3
    assert union_reward(rec, {"d9": 1.0, "d7": 1.0}) == 0.0  # a failed arm's candidates and unknown items do not count
    assert union_reward(rec, {}) == 0.0
