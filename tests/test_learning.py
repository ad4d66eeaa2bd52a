"""The learning loop end to end on the real node: a policy chooses the arms of a search, the search
is logged, a user plays a result, and one learning step rewards the arms that found it, teaches
the Q2E memory (whose arm then finds the item for the repeated query) and merges the policy's
statistics into the shared state, where a restarted process finds them."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import numpy as np
import pytest

from orchestrator.bandit.base import BudgetConfig
from orchestrator.bandit.context import CONTEXT_DIM, CONTEXT_FEATURES, RequestContext
from orchestrator.bandit.policies import make_policy
from orchestrator.bandit.state import SharedStatistics, policy_key
from orchestrator.catalog import drop, load_dataset
from orchestrator.datasets import Dataset
from orchestrator.feedback.events import FeedbackStore
from orchestrator.feedback.q2e import Q2EMemory
from orchestrator.feedback.rewards import RewardJoiner
from orchestrator.feedback.searchlog import SearchLog
from orchestrator.learning import LearningLoop
from orchestrator.pipeline import SearchPipeline
from orchestrator.strategies import load_plans, sync_plans

SONGS = ["feeling good soul song", "feeling good again", "good times roll", "so what jazz standard",
         "blue in green ballad", "feeling blue tonight", "good vibrations", "what a feeling",
         "feel it still", "good day sunshine", "feeling alright", "the good life"]


@pytest.fixture
def catalogue(os_client, tmp_path):
    root = tmp_path / "songs"
    root.mkdir()
    with open(root / "corpus.jsonl", "w") as f:
        for i, text in enumerate(SONGS):
            f.write(json.dumps({"_id": f"s{i:02d}", "title": text.title(), "text": f"{text}, a track"}) + "\n")
    (root / "dataset.yaml").write_text(json.dumps({"name": "songs"}))
    alias = f"ltrr-test-learn-{uuid.uuid4().hex[:8]}"
    load_dataset(os_client, Dataset.open(root), alias=alias, embed=False)
    sync_plans(os_client, load_plans())
    prefix = f"ltrr-test-learn-{uuid.uuid4().hex[:8]}"
    names = {"queries": f"{prefix}-q", "events": f"{prefix}-e", "state": f"{prefix}-s"}
    yield alias, names
    drop(os_client, alias, memory=True)
    for name in names.values():
        os_client.indices.delete(index=f"{name}*", ignore_unavailable=True)


def test_a_played_result_rewards_its_arms_teaches_the_memory_and_is_shared(os_client, catalogue):
    alias, names = catalogue
    plans = load_plans()
    budget = BudgetConfig(total=100, levels=(20, 50, 100), max_arms=2, costs={n: p.cost for n, p in plans.items()})
    policy = make_policy("linucb", list(plans), budget, CONTEXT_DIM, seed=3)
    log = SearchLog(os_client, queries_index=names["queries"])
    memory = Q2EMemory(os_client, alias)
    pipe = SearchPipeline(os_client, alias, plans, encoder=None, policy=policy, search_log=log, memory=memory)
    store = FeedbackStore(os_client, log, events_index=names["events"])
    shared = SharedStatistics(os_client, index=names["state"])
    key = policy_key(alias, policy.name)
    try:
        first = pipe.search("feeling good", request=RequestContext(device="mobile"))
        decision, context = first.decision, first.context
        assert decision is not None and context is not None
        # The policy only chose among the arms that apply: no memory yet, no vector without an encoder.
        assert "q2e_memory" not in context.eligible and "knn" not in context.eligible
        assert "q2e_memory" in context.not_applicable and "knn" in context.not_applicable
        assert set(decision.arms) <= set(context.eligible) and 1 <= len(decision.arms) <= 2
        assert context.features[CONTEXT_FEATURES.index("device_mobile")] == 1.0
        assert context.features[CONTEXT_FEATURES.index("q2e_key_exists")] == 0.0
        ran = {r.strategy for r in first.strategy_results if r.ok}
        assert ran == set(decision.arms)
        target = first.hits[2].doc_id
        finders = {r.strategy for r in first.strategy_results if target in {h.doc_id for h in r.hits}}
        assert finders
        store.record(first.search_id, [{"event_id": f"{first.search_id}-1", "type": "play", "doc_id": target,
                                        "position": 3}])
        log.flush()

        loop = LearningLoop(RewardJoiner(log, store, window_s=60), policy, memory, shared, key)
        report = loop.step(now=first_time(log, first.search_id) + timedelta(seconds=61))
        assert (report.finalized, report.engaged, report.policy_updates) == (1, 1, 1)
        assert report.memory_updates == min(10, len(first.hits)) and report.synced
        stats = policy.statistics
        for arm in decision.arms:  # every arm that ran learned; those that found the item with reward 1
            assert stats.arms[arm].pulls == 1
            assert stats.arms[arm].reward_sum == (1.0 if arm in finders else 0.0)
        assert all(stats.arms[a].pulls == 0 for a in plans if a not in decision.arms)

        # A second step finds nothing left to finalize.
        again = loop.step(now=first_time(log, first.search_id) + timedelta(seconds=120))
        assert again.finalized == 0

        # The memory now ranks the played item first for the query; its arm is eligible and finds it.
        memory.refresh()
        entries = memory.entries(first.understanding.key)
        actual = {d: a for d, (a, _) in entries.items() if a is not None}
        assert max(actual, key=lambda d: actual[d]) == target
        second = pipe.search("Feeling  GOOD", strategies=["q2e_memory"])
        assert second.hits[0].doc_id == target
        later = pipe.search("feeling good")
        assert later.context is not None and "q2e_memory" in later.context.eligible
        assert later.context.features[CONTEXT_FEATURES.index("q2e_key_exists")] == 1.0

        # A restarted process acts on what was learned.
        restarted = make_policy("linucb", list(plans), budget, CONTEXT_DIM, seed=4)
        stored = shared.read(key)
        assert stored is not None
        restarted.load_statistics(stored.statistics, snapshot=stored.snapshot_id)
        for arm in decision.arms:
            np.testing.assert_allclose(restarted.statistics.arms[arm].gram, stats.arms[arm].gram)
            assert restarted.statistics.arms[arm].reward_sum == stats.arms[arm].reward_sum
    finally:
        log.close()


def first_time(log: SearchLog, search_id: str):
    record = log.get(search_id)
    assert record is not None
    return record.time


def test_searches_whose_arms_the_caller_fixed_never_update_the_policy(os_client, catalogue):
    alias, names = catalogue
    plans = load_plans()
    policy = make_policy("linucb", list(plans), BudgetConfig(), CONTEXT_DIM, seed=0)
    log = SearchLog(os_client, queries_index=names["queries"])
    pipe = SearchPipeline(os_client, alias, plans, encoder=None, policy=policy, search_log=log)
    store = FeedbackStore(os_client, log, events_index=names["events"])
    try:
        fixed = pipe.search("good times", strategies=["bm25_popularity"])
        assert fixed.decision is None
        store.record(fixed.search_id, [{"event_id": "f-1", "type": "click", "doc_id": fixed.hits[0].doc_id}])
        log.flush()
        report = LearningLoop(RewardJoiner(log, store, window_s=60), policy).step(
            now=first_time(log, fixed.search_id) + timedelta(seconds=61))
        assert (report.finalized, report.skipped_without_decision, report.policy_updates) == (1, 1, 0)
        assert policy.statistics.total_pulls == 0
    finally:
        log.close()


def test_the_joint_policy_learns_the_whole_searchs_outcome(os_client, catalogue):
    alias, names = catalogue
    plans = load_plans()
    policy = make_policy("joint", list(plans), BudgetConfig(), CONTEXT_DIM, seed=2)
    log = SearchLog(os_client, queries_index=names["queries"])
    pipe = SearchPipeline(os_client, alias, plans, encoder=None, policy=policy, search_log=log)
    store = FeedbackStore(os_client, log, events_index=names["events"])
    try:
        resp = pipe.search("good day")
        assert resp.decision is not None and resp.decision.policy == "joint"
        shown = [h.doc_id for h in resp.hits]
        store.record(resp.search_id, [{"event_id": "j-1", "type": "play", "doc_id": shown[0]},
                                      {"event_id": "j-2", "type": "click", "doc_id": shown[1]}])
        log.flush()
        report = LearningLoop(RewardJoiner(log, store, window_s=60), policy).step(
            now=first_time(log, resp.search_id) + timedelta(seconds=61))
        assert report.policy_updates == 1
        action = "+".join(a for a in plans if a in resp.decision.arms)
        stats = policy.statistics.arms[action]
        assert stats.pulls == 1 and stats.reward_sum == pytest.approx((1.0 + 0.3) / 3)  # play + click, capped at 3
    finally:
        log.close()


def test_a_new_plan_file_becomes_a_new_arm_without_a_restart(os_client, catalogue, tmp_path):
    import shutil

    from orchestrator.strategies import load_plan, plans_dir

    alias, names = catalogue
    plans = load_plans()
    policy = make_policy("joint", list(plans), BudgetConfig(), CONTEXT_DIM, seed=5)
    pipe = SearchPipeline(os_client, alias, plans, encoder=None, policy=policy)
    directory = tmp_path / "plans"
    shutil.copytree(plans_dir(), directory, ignore=shutil.ignore_patterns("__*"))
    text = (directory / "fuzzy.yaml").read_text().replace("id: fuzzy", "id: fuzzy_titles", 1)
    (directory / "fuzzy_titles.yaml").write_text(text)
    new_plan = load_plan(directory / "fuzzy_titles.yaml")
    sync_plans(os_client, {"fuzzy_titles": new_plan})
    assert "fuzzy_titles" not in pipe.eligible_arms(pipe.understander().understand("good times"))[0]

    assert pipe.reload_plans(load_plans(directory)) == ["fuzzy_titles"]
    assert "fuzzy_titles" in policy.arms
    resp = pipe.search("good times")
    assert resp.context is not None and "fuzzy_titles" in resp.context.eligible
    assert resp.decision is not None and set(resp.decision.budgets) == set(resp.context.eligible)
    fixed = pipe.search("good times", strategies=["fuzzy_titles"])
    assert fixed.strategy_results[0].ok and fixed.hits


def test_a_learning_step_finalizes_only_its_own_catalogues_searches(os_client, catalogue):
    from dataclasses import replace

    alias, names = catalogue
    plans = load_plans()
    policy = make_policy("joint", list(plans), BudgetConfig(), CONTEXT_DIM, seed=6)
    log = SearchLog(os_client, queries_index=names["queries"])
    pipe = SearchPipeline(os_client, alias, plans, encoder=None, policy=policy, search_log=log)
    store = FeedbackStore(os_client, log, events_index=names["events"])
    try:
        mine = pipe.search("good life")
        record = log.get(mine.search_id)
        assert record is not None
        log.log(replace(record, search_id="other-catalogue-search", catalogue="someone-elses"))
        log.flush()
        later = first_time(log, mine.search_id) + timedelta(seconds=61)
        report = LearningLoop(RewardJoiner(log, store, window_s=60), policy, catalogue=alias).step(now=later)
        assert report.finalized == 1
        log.refresh()
        entry = log.get_entry("other-catalogue-search")
        assert entry is not None and entry.finalized_at is None
    finally:
        log.close()
