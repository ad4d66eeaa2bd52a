"""The reranker on the real node with the LTR plugin: parity between the plugin and the local
booster, the rerank stage in the pipeline (and its fallback), out-of-sample evaluation, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import numpy as np
import pytest

from orchestrator.catalog import drop, load_dataset
from orchestrator.datasets import Dataset
from orchestrator.evaluate import evaluate_pipeline, judged_queries
from orchestrator.ltr.feature_log import log_features
from orchestrator.ltr.features import init_feature_set, load_feature_set, request_params
from orchestrator.ltr.model import ModelError, ModelRegistry, delete_model, plugin_scores, to_plugin_definition, upload_model
from orchestrator.ltr.rerank import Reranker
from orchestrator.ltr.training import QrelsLabels, collect, train
from orchestrator.pipeline import SearchPipeline
from orchestrator.strategies import load_plans, sync_plans
from orchestrator.synthetic import write_synthetic

from .conftest import cli_env


@pytest.fixture(scope="module")
def catalogue(ltr_client, tmp_path_factory):
    """A 3,000-item synthetic catalogue (no vectors: fast), its plans, feature set and queries."""
    root = tmp_path_factory.mktemp("ltr") / "music"
    write_synthetic(root, 3000, 120, seed=5)
    ds = Dataset.open(root)
    alias = f"ltrr-test-ltr-{uuid.uuid4().hex[:8]}"
    load_dataset(ltr_client, ds, alias=alias, embed=False)
    plans = load_plans()
    sync_plans(ltr_client, plans)
    feature_set = load_feature_set(list(plans))
    init_feature_set(ltr_client, feature_set)
    qrels = ds.qrels("test")
    queries, _ = judged_queries(ds.iter_queries(), qrels)
    yield {"alias": alias, "root": root, "plans": plans, "fs": feature_set, "qrels": qrels, "queries": queries}
    drop(ltr_client, alias)


@pytest.fixture(scope="module")
def model(ltr_client, catalogue):
    """A model trained on the first 80 queries' logged candidates, uploaded to the plugin."""
    pipe = SearchPipeline(ltr_client, catalogue["alias"], catalogue["plans"])
    data = collect(pipe, catalogue["fs"], catalogue["queries"][:80], QrelsLabels(catalogue["qrels"]),
                   budgets=dict.fromkeys(catalogue["plans"], 50), window=100)
    booster = train(data, rounds=40)
    definition, shift = to_plugin_definition(booster)
    name = f"ltrr-test-{uuid.uuid4().hex[:8]}"
    upload_model(ltr_client, catalogue["fs"], name, definition)
    yield {"name": name, "booster": booster, "shift": shift, "card": {"feature_set": catalogue["fs"].name}}
    delete_model(ltr_client, name)


def test_plugin_scores_equal_the_booster_on_500_pairs(ltr_client, catalogue, model):
    """sltr's score = booster margin - base_score + shift (the documented constant), to 1e-4, and
    the plugin orders candidates as the booster does."""
    pipe = SearchPipeline(ltr_client, catalogue["alias"], catalogue["plans"])
    names = catalogue["fs"].names
    reranker = Reranker(ltr_client, catalogue["alias"], model["name"], timeout_ms=5000)
    pairs = 0
    for q in catalogue["queries"][80:]:  # queries the model never saw
        resp = pipe.search(q.text, budgets=dict.fromkeys(catalogue["plans"], 50), size=100)
        params = request_params(resp.understanding, None, resp.strategy_results, resp.hits)
        (logged,) = log_features(ltr_client, catalogue["alias"], catalogue["fs"], [(q.id, params, [h.doc_id for h in resp.hits])])
        local = plugin_scores(model["booster"], logged.features, model["shift"], names)
        outcome = reranker.rerank(params, logged.doc_ids)
        assert outcome.applied, outcome.error
        served = np.array([outcome.scores[d] for d in logged.doc_ids])
        np.testing.assert_allclose(served, local, atol=1e-4)
        assert served.min() >= 0  # the shift keeps Lucene's scores non-negative
        order = sorted(outcome.scores, key=lambda d: -outcome.scores[d])
        by_local = dict(zip(logged.doc_ids, local))
        assert all(by_local[a] >= by_local[b] - 1e-4 for a, b in zip(order, order[1:]))
        pairs += len(logged.doc_ids)
        if pairs >= 500:
            break
    assert pairs >= 500


def test_pipeline_reranks_with_the_active_model_and_falls_back(ltr_client, catalogue, model):
    alias = catalogue["alias"]
    registry = ModelRegistry(ltr_client)
    budgets = dict.fromkeys(catalogue["plans"], 50)
    query = catalogue["queries"][100].text
    plain = SearchPipeline(ltr_client, alias, catalogue["plans"]).search(query, budgets=budgets, size=20)
    assert plain.model is None and plain.rerank is None and plain.round_trips == 1

    registry.activate(alias, model["name"], model["card"])
    pipe = SearchPipeline(ltr_client, alias, catalogue["plans"])
    assert pipe.with_active_model(registry) == model["name"]
    resp = pipe.search(query, budgets=budgets, size=20, explain=True)
    assert resp.model == model["name"] and resp.round_trips == 2
    scores = [h.model_score for h in resp.hits]
    assert all(s is not None for s in scores) and scores == sorted(scores, reverse=True)
    assert set(resp.hits[0].features) == set(catalogue["fs"].names)  # explain: what the model saw
    assert resp.timings.rerank_wall_ms > 0

    # A model that the plugin does not have: the fused order stands, flagged.
    registry.activate(alias, "no-such-model", {"feature_set": catalogue["fs"].name})
    assert pipe.with_active_model(registry) == "no-such-model"
    broken = pipe.search(query, budgets=budgets, size=20)
    assert broken.model is None and broken.rerank is not None and "rerank failed" in broken.rerank.error
    assert [h.doc_id for h in broken.hits] == [h.doc_id for h in plain.hits]
    assert registry.rollback(alias)["active"] == model["name"]  # atomic switch back
    state = registry.state(alias)
    assert state["previous"][-1] == "no-such-model"


def test_registry_rollback_without_previous_is_an_error(ltr_client):
    registry = ModelRegistry(ltr_client)
    catalogue = f"ltrr-test-none-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ModelError, match="no previous model"):
        registry.rollback(catalogue)
    with pytest.raises(ModelError, match="no model"):
        registry.activate(catalogue, "never-trained")


def test_hostile_text_reaches_features_only_as_values(ltr_client, catalogue):
    ids = ["trk_000001", "trk_000002", "art_000001"]
    hostile = ['"}}, {"match_all": {}}]}}', 'taylor "swift"', "back\\slash {{keywords}}", "}}{{#x}}"]
    requests = [(f"h{i}", {"keywords": text, "key": "q_0123456789abcdef", "slot_values": [text], "query_vector": [],
                           "query_info": {"n_tokens": 1.0, "n_chars": 1.0, "has_slots": 0.0}, "arm_ranks": {}, "fused": {},
                           "q2e_scores": {}},
                 ids) for i, text in enumerate(hostile)]
    logged = log_features(ltr_client, catalogue["alias"], catalogue["fs"], requests)
    assert [q.doc_ids for q in logged] == [tuple(ids)] * len(hostile)  # no match_all leak: same 3 rows
    assert all(np.isfinite(q.features).all() for q in logged)


def test_evaluate_rerank_cv_is_out_of_sample_and_cleans_up(ltr_client, catalogue):
    pipe = SearchPipeline(ltr_client, catalogue["alias"], catalogue["plans"])
    queries = catalogue["queries"][:60]
    evaluation = evaluate_pipeline(pipe, Dataset.open(catalogue["root"]), queries, catalogue["qrels"],
                                   budgets=dict.fromkeys(catalogue["plans"], 50), depth=50, baselines=False,
                                   rerank_folds=3, feature_set=catalogue["fs"])
    summaries = {s["system"]: s for s in evaluation.summaries()}
    reranked = summaries["union (rrf k=60) + rerank (cv:3)"]
    union = summaries["union (rrf k=60)"]
    assert not reranked["failed"] and reranked["queries"] == 60
    assert reranked["candidate_recall"] == union["candidate_recall"]  # same candidates, another order
    ltr_client.indices.refresh(index=".ltrstore")  # the store's search is near-real-time
    left = ltr_client.transport.perform_request("GET", "/_ltr/_model", params={"prefix": "ltrr-cv-"})
    assert left["hits"]["hits"] == []  # the fold models are deleted


def test_cli_ltr_train_list_rollback(ltr_client, catalogue, opensearch_url, tmp_path):
    env = cli_env(opensearch_url, HOME=str(tmp_path), LTRR_MODEL_CARDS=str(tmp_path / "cards"))
    alias = catalogue["alias"]

    def ltrr(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True,
                              text=True, timeout=600)

    first = ltrr("ltr", "train", str(catalogue["root"]), "--index", alias, "--folds", "2", "--rounds", "20",
                 "--budget", "30")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "2-fold cross-validation" in first.stdout
    (card_path,) = (tmp_path / "cards").glob("*.json")
    card = json.loads(card_path.read_text())
    assert card["features"] == list(catalogue["fs"].names) and len(card["cross_validation"]["folds"]) == 2
    assert card["data"]["queries"] > 100 and card["objective"] == "rank:ndcg" and card["shift"] >= 0
    registry = ModelRegistry(ltr_client)
    assert registry.active(alias)[0] == card["name"]
    listed = ltrr("ltr", "list", "--index", alias)
    assert listed.returncode == 0 and card["name"] in listed.stdout
    searched = ltrr("search", "love", "--index", alias, "--strategies", "bm25_popularity,fuzzy", "--json")
    assert searched.returncode == 0, searched.stderr[-2000:]
    assert json.loads(searched.stdout)["model"] == card["name"]
    for name in [card["name"], *registry.state(alias)["previous"]]:
        delete_model(ltr_client, name)
