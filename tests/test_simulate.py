"""The offline simulator: click models, the query stream, the Q2E memory, the candidate cache, the
runner on an in-memory cache, and `ltrr simulate` end to end on a small real index."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest

from orchestrator.bandit.base import BudgetConfig, Decision, Policy
from orchestrator.bandit.context import HASH_BUCKETS, Context, _bucket
from orchestrator.datasets import QueryRow
from orchestrator.datatypes import Hit, StrategyResult
from orchestrator.feedback.records import SearchRecord
from orchestrator.fusion import make_fusion
from orchestrator.simulate.candidates import MEMORY_ARM, CandidateCache, CandidateCacheError
from orchestrator.simulate.clicks import CascadeModel, ClickModelError, PositionBasedModel, grade_levels
from orchestrator.simulate.q2e import Q2EConfig, Q2EConfigError, Q2EMemory
from orchestrator.simulate.runner import (
    SimulationConfig,
    SimulationError,
    SimulationResult,
    arm_rewards,
    build_policies,
    rrf_top,
    run_simulation,
)
from orchestrator.simulate.stream import (
    GENERIC_MIX,
    INTENT_MIX,
    USER_TYPES,
    SimQuery,
    StreamConfig,
    StreamConfigError,
    build_stream,
    typo_variants,
    vocabulary_variants,
    zipf_probabilities,
)
from orchestrator.synthetic import edit_distance

from .conftest import cli_env

ARMS = ("bm25_popularity", "fuzzy", "knn", "q2e_memory", "structured")

# ------------------------------------------------------------------------------------------------
# click models


@pytest.mark.parametrize("model", [PositionBasedModel(eta=1.0), PositionBasedModel(eta=2.0, table="informational"),
                                   CascadeModel("navigational"), CascadeModel("informational"), CascadeModel("perfect")])
def test_click_rates_match_simulated_frequencies(model):
    levels = np.array([4, 0, 2, 3, 0, 1, 4, 0, 0, 2])
    gen = np.random.default_rng(7)
    draws = 40_000
    counts = np.zeros(len(levels))
    for _ in range(draws):
        counts += model.simulate(levels, gen.random((2, len(levels))))
    rates = model.click_rates(levels)
    se = np.sqrt(rates * (1 - rates) / draws) + 1e-9
    assert np.all(np.abs(counts / draws - rates) <= 4.5 * se + 1e-4), (counts / draws, rates)
    assert model.expected_clicks(levels) == pytest.approx(rates.sum())


def test_click_model_formulas_by_hand():
    pbm = PositionBasedModel(eta=1.0, table="navigational")
    # θ_k = 1/k; a(level 4) = 0.95, a(level 0) = 0.05
    assert pbm.click_rates(np.array([4, 0, 4])) == pytest.approx([0.95, 0.05 / 2, 0.95 / 3])
    cascade = CascadeModel("navigational")
    # e_1 = 1, e_2 = 1 - 0.95·0.9, e_3 = e_2·(1 - 0.3·0.3)
    e2 = 1 - 0.95 * 0.9
    assert cascade.click_rates(np.array([4, 1, 2])) == pytest.approx([0.95, e2 * 0.3, e2 * (1 - 0.09) * 0.5])
    # Perfect users never stop: every relevant document of the list is examined.
    assert CascadeModel("perfect").click_rates(np.array([4, 4])) == pytest.approx([1.0, 1.0])
    # Skip-above: examined down to the last click; the whole list when nothing was clicked.
    assert cascade.examination_weights(np.array([False, True, False])).tolist() == [1.0, 1.0, 0.0]
    assert cascade.examination_weights(np.array([False, False])).tolist() == [1.0, 1.0]
    assert pbm.examination_weights(np.array([False, True])) == pytest.approx([1.0, 0.5])
    with pytest.raises(ClickModelError, match="levels must lie in 0..4"):
        pbm.click_rates(np.array([5]))
    with pytest.raises(ClickModelError, match="unknown click table"):
        CascadeModel("bored")
    with pytest.raises(ClickModelError, match="eta"):
        PositionBasedModel(eta=-1)


def test_grade_levels_use_endpoints_for_binary_and_scale_graded():
    assert grade_levels([0, 1], 1).tolist() == [0, 4]
    assert grade_levels([-1, 1, 2, 3, 4], 4).tolist() == [0, 1, 2, 3, 4]
    assert grade_levels([1, 2, 3], 3).tolist() == [1, 3, 4]
    with pytest.raises(ClickModelError, match="max_grade"):
        grade_levels([1], 0)


# ------------------------------------------------------------------------------------------------
# the stream


def _queries(n: int, intent: str | None = None) -> list[SimQuery]:
    return [SimQuery(f"q{i}", f"query about topic{i} with rareword{i}", {f"rel{i}": 2}, intent) for i in range(n)]


def test_zipf_stream_frequencies_and_held_out_tail():
    queries = _queries(40)
    config = StreamConfig(60_000, seed=3, zipf_s=1.0, tail_fraction=0.25, tail_share=0.1, user_mix={"plain": 1.0})
    stream = build_stream(queries, config)
    assert len(stream.head) == 30 and len(stream.tail) == 10 and not set(stream.head) & set(stream.tail)
    tail_share = np.mean([s.tail for s in stream.searches])
    assert tail_share == pytest.approx(0.1, abs=0.006)
    head = Counter(s.query.id for s in stream.searches if not s.tail)
    observed = np.array([head[qid] for qid in stream.head], dtype=np.float64) / sum(head.values())
    expected = zipf_probabilities(30, 1.0)
    assert np.max(np.abs(observed - expected)) < 0.006, (observed[:5], expected[:5])
    assert observed[0] / observed[1] == pytest.approx(2.0, rel=0.08)  # rank^-1
    assert all(s.query.id in stream.tail for s in stream.searches if s.tail)


def test_user_types_noisy_segments_and_variants():
    queries = _queries(30)
    df = {f"rareword{i}": 1 for i in range(30)} | {"query": 100, "about": 100, "with": 100}
    config = StreamConfig(20_000, seed=5, segment_accuracy=0.7, repeat_pool=5)
    stream = build_stream(queries, config, doc_frequency=df)
    types = Counter(s.user_type for s in stream.searches)
    for name, share in GENERIC_MIX.items():
        assert types[name] / 20_000 == pytest.approx(share, abs=0.015)
    # the tag is the true type's with probability acc + (1 - acc)/K (a random tag may be right too)
    honest = np.mean([s.segment == USER_TYPES[s.user_type].segment for s in stream.searches])
    assert honest == pytest.approx(0.7 + 0.3 / 4, abs=0.015)
    repeat_queries = {s.query.id for s in stream.searches if s.user_type == "repeat"}
    assert repeat_queries <= set(stream.head[:5])
    for s in stream.searches:
        if s.user_type == "typo":
            assert s.text in stream.variants[s.query.id]["typo"]
        elif s.user_type == "vocabulary":
            assert s.text in stream.variants[s.query.id]["vocabulary"]
        else:
            assert s.text == s.query.text
    assert len(stream.texts) <= 30 * (1 + 3 + 3)  # a fixed pool of variants: the cache stays small
    # every user type's tag lands in its own ctx-v1 bucket, so the policy can tell them apart
    assert len({_bucket(u.segment) for u in USER_TYPES.values()}) == len(USER_TYPES) <= HASH_BUCKETS
    assert set(INTENT_MIX) == {"plain", "repeat"}
    assert build_stream(_queries(5, "artist"), StreamConfig(10)).mix == dict(INTENT_MIX)


def test_variant_generators():
    gen = np.random.default_rng(1)
    text = "pressure distribution over slender wings at supersonic speeds"
    typos = typo_variants(text, 3, gen)
    assert len(typos) == 3 and len(set(typos)) == 3
    for v in typos:
        words, original = v.split(), text.split()
        assert len(words) == len(original) and v != text
        assert all(edit_distance(a, b) <= 2 for a, b in zip(words, original))
    assert typo_variants("a of in", 3, gen) == ()  # nothing long enough to misspell
    df = {"pressure": 50, "distribution": 40, "slender": 3, "wings": 20, "supersonic": 5, "speeds": 30}
    reduced = vocabulary_variants(text, 3, gen, df)
    assert reduced and all(set(v.split()) < set(text.split()) for v in reduced)
    rarest = {"slender", "supersonic", "wings", "speeds"}
    assert all(set(text.split()) - set(v.split()) <= rarest for v in reduced)  # only rare terms are dropped
    assert vocabulary_variants("wings", 3, gen, df) == ()


def test_stream_is_seeded_and_validated():
    queries = _queries(20)
    df = {"query": 20}
    a = build_stream(queries, StreamConfig(500, seed=11), df)
    b = build_stream(queries, StreamConfig(500, seed=11), df)
    c = build_stream(queries, StreamConfig(500, seed=12), df)
    assert [(s.text, s.user_type, s.segment) for s in a.searches] == [(s.text, s.user_type, s.segment) for s in b.searches]
    assert [s.text for s in a.searches] != [s.text for s in c.searches]
    longer = build_stream(queries, StreamConfig(900, seed=11), df)
    assert longer.variants == a.variants  # the number of searches never changes the variant pools
    with pytest.raises(StreamConfigError, match="tail_share"):
        StreamConfig(10, tail_share=1.5)
    with pytest.raises(StreamConfigError, match="unknown user type"):
        StreamConfig(10, user_mix={"robot": 1.0})
    with pytest.raises(StreamConfigError, match="document frequencies"):
        build_stream(queries, StreamConfig(10))
    with pytest.raises(StreamConfigError, match="not unique"):
        build_stream(queries + queries[:1], StreamConfig(10, user_mix={"plain": 1}))


# ------------------------------------------------------------------------------------------------
# the Q2E memory


def test_q2e_score_formula_decay_and_ranking():
    cfg = Q2EConfig(prior_mean=0.1, prior_strength=5.0, half_life=10.0)
    memory = Q2EMemory(cfg)
    memory.observe("k", ["a", "b", "c"], np.array([1.0, 0.5, 0.25]), ["b"], now=0)
    scores = memory.scores("k", now=0)
    assert scores["a"] == pytest.approx((0 + 5 * 0.1) / (1.0 + 5))
    assert scores["b"] == pytest.approx((1 + 5 * 0.1) / (0.5 + 5))
    assert scores["c"] == pytest.approx((0 + 0.5) / (0.25 + 5))
    assert [h.doc_id for h in memory.hits("k", 2, now=0)] == ["b", "c"]
    # one half-life later c and n are halved (stale pairs drift back to the prior)
    assert memory.scores("k", now=10)["b"] == pytest.approx((0.5 + 0.5) / (0.25 + 5))
    memory.observe("k", ["b"], np.array([1.0]), [], now=10)
    assert memory.counts("k")["b"] == pytest.approx((0.5, 1.25))
    with pytest.raises(Q2EConfigError, match="prior_mean"):
        Q2EConfig(prior_mean=1.5)


def test_q2e_predictions_seed_new_keys_and_never_count_as_engagement():
    cfg = Q2EConfig(predicted_prior=0.3, predicted_weight=0.3, predicted_top=3)
    memory = Q2EMemory(cfg)
    assert not memory.has_key("k")
    memory.predict("k", ["x", "y", "z", "w"])
    assert memory.has_key("k") and memory.counts("k") == {}
    assert memory.scores("k") == pytest.approx({"x": 0.3 * 0.3, "y": 0.3 * 0.15, "z": 0.3 * 0.1})
    memory.observe("k", ["y"], np.array([1.0]), ["y"], now=1)
    scores = memory.scores("k")
    assert scores["y"] == pytest.approx(cfg.learned_score(1, 1))  # the actual score replaces the prediction
    assert memory.export("k")["predicted"] == pytest.approx({"x": 0.3, "z": 0.1})
    memory.predict("k", ["y"])  # a pair with an actual score is never predicted again
    assert "y" not in memory.export("k")["predicted"]
    assert memory.counts("k") == {"y": (1.0, 1.0)}


# ------------------------------------------------------------------------------------------------
# the candidate cache and the runner's pieces


def test_candidate_cache_slices_models_time_and_round_trips(tmp_path):
    lists = {"t one": {"bm25_popularity": [f"d{i}" for i in range(100)], "knn": ["d5", "d1"]},
             "t two": {"bm25_popularity": ["d9"]}}
    cache = CandidateCache.from_lists(ARMS, 100, lists, took_ms={"bm25_popularity": 10.0, "knn": 4.0})
    assert cache.eligible("t one") == ("bm25_popularity", "knn") and cache.eligible("t two") == ("bm25_popularity",)
    sliced = cache.result("t one", "bm25_popularity", 20)
    assert [h.doc_id for h in sliced.hits] == [f"d{i}" for i in range(20)] and sliced.budget == 20
    cache.level_time = {"bm25_popularity": {20: 0.3, 50: 0.5}}
    assert cache.took("t one", "bm25_popularity", 20) == pytest.approx(3.0)
    assert cache.took("t one", "bm25_popularity", 75) == pytest.approx(10.0 * 0.75)  # interpolated
    assert cache.took("t one", "knn", 20) == pytest.approx(4.0)  # not measured: time at the largest level
    assert cache.took("t two", "knn", 20) == 0.0  # not applicable: nothing ran
    path = tmp_path / "cache.json"
    cache.save(path)
    again = CandidateCache.load(path)
    assert again.result("t one", "knn", 50).hits == cache.result("t one", "knn", 50).hits
    assert again.understanding("t one") == cache.understanding("t one")
    with pytest.raises(CandidateCacheError, match="no cached candidates"):
        cache.result("t three", "knn", 10)
    with pytest.raises(CandidateCacheError, match="simulated in memory"):
        cache.result("t one", MEMORY_ARM, 10)
    path.write_text("{}")
    with pytest.raises(CandidateCacheError, match="not a candidate cache"):
        CandidateCache.load(path)


def test_rrf_top_is_the_fusion_order_and_rewards_follow_the_search_record():
    gen = np.random.default_rng(2)
    fuser = make_fusion("rrf", k=60)
    for _ in range(200):
        lists = [(name, [f"d{int(i)}" for i in gen.choice(60, size=int(gen.integers(1, 40)), replace=False)])
                 for name in gen.permutation(["b", "a", "c"])[: int(gen.integers(1, 4))]]
        results = [StrategyResult(name, tuple(Hit(d, r, 0.0) for r, d in enumerate(ids, 1)), len(ids)) for name, ids in lists]
        assert rrf_top(lists, 60, 10) == [h.doc_id for h in fuser.fuse(results, limit=10)]
    results = [StrategyResult("a", (Hit("x", 1, 1.0), Hit("y", 2, 1.0)), 2), StrategyResult("b", (Hit("z", 1, 1.0),), 1)]
    rewards, ranks = arm_rewards(results, ["y"])
    record = SearchRecord("s", datetime.now(UTC), "c", "q", "q", "q_0", [1.0], "ctx-v1", {}, ["a", "b"], None,
                          {"a": ["x", "y"], "b": ["z"]}, {"a": "ok", "b": "ok"}, ["x", "y", "z"])
    assert (rewards, ranks) == record.arm_rewards({"y": 1.0})


def test_growth_tells_linear_from_sublinear():
    t = np.arange(1, 4001, dtype=np.float64)
    linear = SimulationResult.growth(0.2 * t)
    sqrt = SimulationResult.growth(np.sqrt(t))
    assert linear["late_over_early"] == pytest.approx(1.0, abs=0.01) and linear["exponent"] == pytest.approx(1.0, abs=0.01)
    assert sqrt["late_over_early"] == pytest.approx(0.27, abs=0.01) and sqrt["exponent"] == pytest.approx(0.5, abs=0.01)


# ------------------------------------------------------------------------------------------------
# the runner on an in-memory cache


def _world(n_queries: int = 24, searches: int = 1500, seed: int = 4, arms: tuple[str, ...] = ARMS):
    """Queries whose relevant documents only the arm of the user's type finds at the top: plain users
    need bm25_popularity, typo users fuzzy, vocabulary users knn; the other arms return noise.
    Without the memory arm in ``arms`` the world is stationary."""
    queries = [SimQuery(f"q{i}", f"query number {i} about rareterm{i} wings", {f"r{i}_{j}": 3 - j for j in range(3)})
               for i in range(n_queries)]
    df = {"query": 100, "number": 100, "about": 100, "wings": 50}
    config = StreamConfig(searches, seed=seed, user_mix={"plain": 0.4, "typo": 0.3, "vocabulary": 0.3})
    stream = build_stream(queries, config, doc_frequency=df)
    best = {"plain": "bm25_popularity", "typo": "fuzzy", "vocabulary": "knn"}
    gen = np.random.default_rng(seed)
    lists: dict[str, dict[str, list[str] | None]] = {}
    for s in stream.searches:
        if s.text in lists:
            continue
        relevant = sorted(s.query.relevant)
        per: dict[str, list[str] | None] = {}
        for arm in (a for a in arms if a != MEMORY_ARM):
            noise = [f"n{int(i)}" for i in gen.choice(5000, size=100, replace=False)]
            per[arm] = (relevant + noise)[:100] if arm == best[s.user_type] else noise
        lists[s.text] = per
    return stream, CandidateCache.from_lists(arms, 100, lists)


class _Stub(Policy):
    """Runs one fixed arm (or an arm that does not apply, to test the runner's checks)."""

    name = "stub"

    def __init__(self, arm: str, budget: int = 100):
        self.arm, self.budget = arm, budget

    @property
    def arms(self) -> tuple[str, ...]:
        return ARMS

    def select(self, context: Context) -> Decision:
        return Decision({self.arm: self.budget}, {self.arm: 1.0}, 1.0, "stub")

    def update(self, context, decision, rewards, engaged_ranks=None, *, outcome=None) -> None:
        pass

    def expectations(self, context: Context) -> dict[str, float]:
        return {}

    def add_arm(self, arm: str) -> None:
        pass


def test_runner_learning_policy_beats_random_with_common_random_numbers():
    from orchestrator.bandit.policies import make_policy

    stream, cache = _world()
    budget = BudgetConfig()
    specs = ["linucb", "random", "static:bm25_popularity", "all"]
    policies = build_policies(specs, ARMS, budget, 4, make_policy)
    result = run_simulation(stream, cache, CascadeModel(), policies, SimulationConfig(budget=budget))
    doc = result.to_json({"dataset": "toy"})
    final = {spec: doc["policies"][spec]["final"] for spec in specs}
    assert final["linucb"]["reward"] > 1.15 * final["random"]["reward"], {s: f["reward"] for s, f in final.items()}
    assert final["linucb"]["regret"] < 0.6 * final["random"]["regret"]
    assert final["linucb"]["candidate_hit_rate"] > final["random"]["candidate_hit_rate"]
    assert final["linucb"]["requested_per_search"] == 100  # the total budget, every search
    assert final["linucb"]["requested_vs_all"] == pytest.approx(100 / final["all"]["requested_per_search"])
    assert doc["best_static"] == "static:bm25_popularity"
    # the best fixed action per true context holds the arm that finds the relevant documents, or the
    # memory, which learns them from the clicks
    best = final["linucb"]["best_action"]
    for context, arm in (("plain", "bm25_popularity"), ("typo", "fuzzy"), ("vocabulary", "knn")):
        assert arm in best[context].split("+") or MEMORY_ARM in best[context].split("+"), best
    for key in ("head", "tail", "by_context", "series"):
        assert key in doc["policies"]["linucb"]
    assert doc["policies"]["linucb"]["series"]["cumulative_reward"][-1] == final["linucb"]["reward"]
    # common random numbers: a policy's run does not depend on which other policies run beside it
    alone = run_simulation(stream, cache, CascadeModel(), {"static:bm25_popularity": make_policy(
        "static:bm25_popularity", ARMS, budget, 30, seed=1)}, SimulationConfig(budget=budget))
    assert np.array_equal(alone.runs["static:bm25_popularity"].clicks, result.runs["static:bm25_popularity"].clicks)


def test_regret_of_learners_is_sublinear_and_of_static_arms_linear_in_a_stationary_world():
    from orchestrator.bandit.policies import make_policy

    arms = tuple(a for a in ARMS if a != MEMORY_ARM)  # the memory learns over time: the best actions move
    stream, cache = _world(searches=3000, arms=arms)
    budget = BudgetConfig()
    specs = ["linucb", "thompson", "static:bm25_popularity", "all"]
    result = run_simulation(stream, cache, CascadeModel(), build_policies(specs, arms, budget, 4, make_policy),
                            SimulationConfig(budget=budget))
    growth = {spec: result.summary(spec)["final"]["regret_growth"]["late_over_early"] for spec in specs}
    for spec in ("static:bm25_popularity", "all"):
        assert growth[spec] == pytest.approx(1.0, abs=0.15), growth
    for spec in ("linucb", "thompson"):
        assert growth[spec] < 0.8, growth
    # against the best action per observed context (segment tag, frequency) the learners lose little
    observed = {spec: result.summary(spec)["final"]["regret_observed"] for spec in specs}
    assert max(observed["linucb"], observed["thompson"]) < 0.2 * observed["static:bm25_popularity"], observed


def test_runner_is_deterministic_for_a_seed():
    from orchestrator.bandit.policies import make_policy

    stream, cache = _world(searches=400)
    budget = BudgetConfig()

    def run(seed: int) -> dict:
        policies = build_policies(["thompson", "epsilon"], ARMS, budget, seed, make_policy)
        doc = run_simulation(stream, cache, PositionBasedModel(), policies, SimulationConfig(budget=budget)).to_json()
        doc["meta"].pop("elapsed_seconds")
        return doc

    first = run(9)
    assert json.dumps(first, sort_keys=True) == json.dumps(run(9), sort_keys=True)
    assert json.dumps(first, sort_keys=True) != json.dumps(run(10), sort_keys=True)


def test_runner_memory_arm_applies_once_the_key_is_known():
    stream, cache = _world(n_queries=3, searches=60)
    seen: list[tuple[str, ...]] = []

    class Recording(_Stub):
        def select(self, context: Context) -> Decision:
            seen.append(context.eligible)
            arm = MEMORY_ARM if MEMORY_ARM in context.eligible else "bm25_popularity"
            return Decision({arm: 100}, {arm: 1.0}, 1.0, "stub")

    result = run_simulation(stream, cache, CascadeModel(), {"memory": Recording("x")}, SimulationConfig())
    first_of_text: dict[str, int] = {}
    for t, s in enumerate(stream.searches):
        first_of_text.setdefault(s.text, t)
        assert (MEMORY_ARM in seen[t]) == (first_of_text[s.text] < t)  # the first search of a key has no memory
    run = result.runs["memory"]
    memory_searches = run.arms_run[:, ARMS.index(MEMORY_ARM)] > 0
    assert memory_searches.any() and run.clicks[memory_searches].sum() > 0  # predictions and clicks serve it


def test_runner_rejects_impossible_decisions():
    stream, cache = _world(n_queries=3, searches=20)
    with pytest.raises(SimulationError, match="does not apply"):
        run_simulation(stream, cache, CascadeModel(), {"bad": _Stub("nonexistent")}, SimulationConfig())
    with pytest.raises(SimulationError, match="candidate cache holds 100"):
        run_simulation(stream, cache, CascadeModel(), {"bad": _Stub("bm25_popularity", 500)}, SimulationConfig())
    with pytest.raises(SimulationError, match="no policy"):
        run_simulation(stream, cache, CascadeModel(), {}, SimulationConfig())
    small = CandidateCache.from_lists(ARMS, 100, {})
    with pytest.raises(SimulationError, match="lacks"):
        run_simulation(stream, small, CascadeModel(), {"s": _Stub("bm25_popularity")}, SimulationConfig())


# ------------------------------------------------------------------------------------------------
# end to end on a small real index


def test_cli_simulate_end_to_end_and_q2e_check(os_client, opensearch_url, tmp_path):
    from orchestrator.catalog import drop, load_dataset
    from orchestrator.datasets import Dataset
    from orchestrator.simulate.q2e import check_against_index
    from orchestrator.strategies import load_plans, sync_plans
    from orchestrator.synthetic import write_synthetic

    root = tmp_path / "syn"
    write_synthetic(root, 3000, 40, seed=2)
    alias = f"ltrr-test-sim-{uuid.uuid4().hex[:8]}"
    load_dataset(os_client, Dataset.open(root), alias=alias, embed=False)
    sync_plans(os_client, load_plans())
    try:
        out = tmp_path / "result" / "sim.json"
        env = cli_env(opensearch_url, HOME=str(tmp_path))
        proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "simulate", "--dataset", str(root), "--index", alias,
                               "--searches", "150", "--policy", "linucb", "--policy", "thompson", "--out", str(out),
                               "--cache", str(tmp_path / "cache.json")],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        doc = json.loads(out.read_text())
        specs = set(doc["policies"])
        assert {"linucb", "thompson", "all", *(f"static:{a}" for a in ARMS)} <= specs
        assert doc["reference_cost"] == "all" and doc["best_static"].startswith("static:")
        for spec, entry in doc["policies"].items():
            final = entry["final"]
            for key in ("reward", "candidate_hit_rate", "candidate_recall", "regret", "regret_observed", "requested",
                        "time_ms", "reward_vs_best_static", "requested_vs_all"):
                assert key in final, (spec, key)
            assert len(entry["series"]["cumulative_reward"]) == len(entry["series"]["searches"]) <= 150
            assert entry["head"]["searches"] + entry["tail"].get("searches", 0) == 150
        assert doc["policies"]["all"]["final"]["requested_vs_all"] == 1.0
        assert doc["policies"]["static:knn"]["final"]["requested"] == 0  # loaded without vectors: knn never applies
        assert doc["stream"]["context_types"] and set(doc["goals"]) >= {"linucb", "thompson", "thresholds"}
        assert doc["meta"]["cache"]["texts"] == doc["stream"]["distinct_texts"]
        for png in ("sim.reward.png", "sim.regret.png"):
            data = (out.parent / png).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert "linucb" in proc.stdout and "best static" in proc.stdout

        # the simulated Q2E memory against the real one, on the keys a short simulation warmed up
        from orchestrator.bandit.policies import make_policy

        cache = CandidateCache.load(tmp_path / "cache.json")
        ds = Dataset.open(root)
        qrels = ds.qrels("test")
        queries = [SimQuery(q.id, q.text, dict(qrels[q.id])) for q in ds.iter_queries()
                   if isinstance(q, QueryRow) and q.id in qrels and q.text in cache]
        stream = build_stream(queries, StreamConfig(300, seed=1, user_mix={"plain": 1.0}, tail_fraction=0.0))
        policy = make_policy("all", ARMS, BudgetConfig(), 30)
        result = run_simulation(stream, cache, CascadeModel(), {"all": policy}, SimulationConfig())
        memory = result.memories["all"]
        texts = {}
        for s in stream.searches:
            texts.setdefault(cache.understanding(s.text).key, s.text)
        sample = dict(list(texts.items())[:8])
        check = check_against_index(os_client, alias, memory, sample, size=10)
        assert check["keys"] == len(sample) and check["mean_took_ms"] is not None
        assert check["mean_overlap"] >= 0.9, check
        print("q2e check:", {k: check[k] for k in ("keys", "mean_overlap", "exact_order_share", "mean_took_ms")})
        assert all(v["status"] == "ok" for v in check["per_key"].values())
        assert os_client.cat.indices(index="ltrr-sim-check-*", format="json") == []  # the throwaway memory is gone
    finally:
        drop(os_client, alias)


def test_a_simulated_search_log_gives_off_policy_estimates_near_the_simulated_truth():
    """The logger's simulated searches, as the search log would hold them, estimate what uniform
    random and a static pair earn on the same stream; the on-policy estimate is the logger's mean."""
    from orchestrator.bandit.policies import make_policy
    from orchestrator.simulate.command import simulated_ope

    arms = tuple(a for a in ARMS if a != MEMORY_ARM)  # stationary: the targets' truth does not depend on a memory
    stream, cache = _world(searches=2000, arms=arms)
    budget = BudgetConfig()
    specs = ["random", "static:bm25_popularity+knn"]
    policies = build_policies(["epsilon:epsilon=0.5", *specs], arms, budget, 4, make_policy)
    result = run_simulation(stream, cache, CascadeModel(), policies, SimulationConfig(budget=budget),
                            log_policies=("epsilon:epsilon=0.5",))
    assert set(result.logs) == {"epsilon:epsilon=0.5"} and len(result.logs["epsilon:epsilon=0.5"]) == 2000
    record = result.logs["epsilon:epsilon=0.5"][0].record
    assert record.decision is not None and record.context_version == "ctx-v1" and set(record.arm_hits) <= set(arms)
    ope = simulated_ope(result, "epsilon:epsilon=0.5", specs, budget)
    rows = {row["target"]: row for row in ope["targets"]}
    logged = rows["logged"]
    assert logged["ips"]["mean"] == pytest.approx(logged["truth"])
    for spec in specs:
        row = rows[spec]
        assert row["status"] == "ok", row
        assert row["ips"]["low"] <= row["truth"] <= row["ips"]["high"], row
        assert abs(row["dr"]["mean"] - row["truth"]) < 0.05, row
