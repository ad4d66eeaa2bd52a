"""``ltrr demo``: the local rerank inside the simulation, the goals, and a small demo end to end on the real node."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest

from orchestrator.datatypes import Hit, StrategyResult
from orchestrator.demo import DemoConfig, DemoError, measure_goals
from orchestrator.fusion import make_fusion
from orchestrator.ltr.features import load_feature_set
from orchestrator.simulate.rerank import (
    LocalReranker,
    LocalRerankError,
    UnionFeatures,
    load_union_features,
    retrieval_columns,
    save_union_features,
)

from .conftest import cli_env

ARMS = ("bm25_popularity", "fuzzy", "knn", "q2e_memory", "structured")


def _result(arm: str, ids: list[str], scores: list[float] | None = None) -> StrategyResult:
    scores = scores or [float(len(ids) - i) for i in range(len(ids))]
    return StrategyResult(arm, tuple(Hit(d, r, s) for r, (d, s) in enumerate(zip(ids, scores), 1)), len(ids), 1.0)


def _union(feature_set, n_docs: int = 60, seed: int = 0) -> UnionFeatures:
    rng = np.random.default_rng(seed)
    ids = tuple(f"d{i:03d}" for i in range(n_docs))
    return UnionFeatures("a query", ids, rng.random((n_docs, len(feature_set.names))).astype(np.float32))


class _Sum:
    """A stand-in booster: the sum of the features (so the order is easy to predict)."""

    def set_param(self, params):
        pass

    def inplace_predict(self, x):
        return np.asarray(x, dtype=np.float64).sum(axis=1)


def test_local_fusion_is_the_pipelines_rrf_order_and_retrieval_features_are_recomputed():
    feature_set = load_feature_set(list(ARMS))
    union = _union(feature_set)
    rng = np.random.default_rng(1)
    for _ in range(30):
        results = []
        for arm in rng.choice(["bm25_popularity", "fuzzy", "knn", "q2e_memory"], size=rng.integers(1, 4), replace=False):
            ids = [union.doc_ids[i] for i in rng.choice(60, size=int(rng.integers(1, 40)), replace=False)]
            results.append(_result(str(arm), ids, list(rng.random(len(ids)))))
        reranker = LocalReranker(feature_set, ARMS, {"a query": union}, {"m": _Sum()}, window=1000)
        order, score, found, ranks, q2e = reranker._fuse(union, results)
        expected = make_fusion("rrf").fuse(results, limit=None)
        assert [union.doc_ids[i] for i in order] == [h.doc_id for h in expected]
        assert np.allclose(score[order], [h.score for h in expected], rtol=0, atol=0)
        x = reranker._matrix(union, order, score, found, ranks, q2e)
        names = feature_set.names
        for row, hit in zip(x, expected):
            by_arm = {p.strategy: p.rank for p in hit.provenance}
            assert row[names.index("n_arms")] == len(by_arm)
            assert row[names.index("fused_score")] == np.float32(hit.score)
            for arm in ARMS:
                assert row[names.index(f"rrank_{arm}")] == np.float32(1.0 / by_arm[arm] if arm in by_arm else 0.0)
            memory = [h.score for r in results if r.strategy == "q2e_memory" for h in r.hits if h.doc_id == hit.doc_id]
            assert row[names.index("q2e_memory")] == np.float32(max(memory) if memory else 0.0)
            # the query-document features are the logged ones
            assert row[names.index("title_bm25")] == union.matrix[union.doc_ids.index(hit.doc_id), names.index("title_bm25")]


def test_local_rerank_orders_the_window_by_the_model_and_keeps_the_rest_in_fused_order():
    feature_set = load_feature_set(list(ARMS))
    union = _union(feature_set)
    results = [_result("bm25_popularity", list(union.doc_ids[:30])), _result("fuzzy", list(union.doc_ids[20:50]))]
    reranker = LocalReranker(feature_set, ARMS, {"a query": union}, {"m": _Sum()}, window=10)
    top, fused_only = reranker.rank("a query", "q1", [results, results[:1]], size=25)
    fused = [h.doc_id for h in make_fusion("rrf").fuse(results, limit=None)]
    order, score, found, ranks, q2e = reranker._fuse(union, results)
    x = reranker._matrix(union, order[:10], score, found, ranks, q2e)
    assert top[:10] == [fused[i] for i in np.argsort(-x.sum(axis=1), kind="stable")]
    assert top[10:] == fused[10:25]
    assert len(fused_only) == 25 and set(fused_only) <= set(union.doc_ids[:30])
    assert reranker.calls == 1  # both selections in one model call
    # an unknown document is scored with zeros, not dropped
    extra = [_result("knn", ["zz-unknown", *union.doc_ids[:3]])]
    assert "zz-unknown" in reranker.rank("a query", "q1", [extra], size=4)[0]
    assert reranker.unknown_documents == 1
    with pytest.raises(LocalRerankError, match="no logged features"):
        reranker.rank("another query", "q2", [results])


def test_the_query_vector_reaches_the_model_only_when_an_arm_that_takes_it_ran():
    feature_set = load_feature_set(list(ARMS))
    union = _union(feature_set)
    dense = feature_set.names.index("dense_cosine")
    union.matrix[:, dense] = 100.0  # dominates the stand-in model's sum

    def top(results, vector_from):
        reranker = LocalReranker(feature_set, ARMS, {"a query": union}, {"m": _Sum()}, query_vector_from=vector_from)
        order, score, found, ranks, q2e = reranker._fuse(union, results)
        x = reranker._matrix(union, order, score, found, ranks, q2e)
        return x, reranker.rank("a query", "q", [results], size=5)[0]

    lexical = [_result("bm25_popularity", list(union.doc_ids[:20]))]
    x, _ = top(lexical, ["knn"])
    assert (x[:, dense] == 100.0).all()  # _matrix alone leaves it; rank() applies what serving sends
    union.matrix[:, dense] = np.linspace(0, 1000, len(union.doc_ids)).astype(np.float32)
    _, always = top(lexical, None)
    _, served = top(lexical, ["knn"])
    assert always == [union.doc_ids[i] for i in (19, 18, 17, 16, 15)]  # the vector feature decides
    assert served != always
    _, with_knn = top([*lexical, _result("knn", list(union.doc_ids[:5]))], ["knn"])
    assert with_knn[0] == union.doc_ids[19]


def test_a_feature_without_local_formula_is_refused_and_features_round_trip(tmp_path):
    from orchestrator.ltr.features import Feature, FeatureSet

    feature_set = load_feature_set(list(ARMS))
    assert set(retrieval_columns(feature_set, ARMS)) == {"n_arms", "fused_score", "q2e_memory",
                                                         *(f"rrank_{a}" for a in ARMS)}
    odd = FeatureSet("x", "", (*feature_set.features, Feature("best_rank", ("arm_ranks",), script="return 1;")))
    with pytest.raises(LocalRerankError, match="best_rank"):
        LocalReranker(odd, ARMS, {}, {"m": _Sum()})
    union = _union(feature_set, 7)
    path = tmp_path / "f.npz"
    save_union_features(path, feature_set.names, {"a query": union, "empty": UnionFeatures(
        "empty", (), np.zeros((0, len(feature_set.names)), np.float32))}, {"index": "i"})
    names, loaded, meta = load_union_features(path)
    assert tuple(names) == feature_set.names and meta == {"index": "i"}
    assert loaded["a query"].doc_ids == union.doc_ids and np.array_equal(loaded["a query"].matrix, union.matrix)
    assert loaded["empty"].doc_ids == ()
    path.write_bytes(b"not an npz")
    with pytest.raises(LocalRerankError):
        load_union_features(path)


def test_users_see_the_reranked_list_when_asked_and_both_lists_are_measured():
    from orchestrator.bandit.base import BudgetConfig
    from orchestrator.bandit.policies import make_policy
    from orchestrator.simulate.candidates import CandidateCache
    from orchestrator.simulate.clicks import CascadeModel
    from orchestrator.simulate.runner import SimulationConfig, SimulationError, build_policies, run_simulation
    from orchestrator.simulate.stream import SimQuery, StreamConfig, build_stream

    arms = ("bm25_popularity", "fuzzy")
    queries = [SimQuery(f"q{i}", f"song {i} about lovebirds{i}", {f"r{i}": 3}, intent="artist" if i % 2 else "genre")
               for i in range(10)]
    stream = build_stream(queries, StreamConfig(200, seed=1))
    lists = {s.text: {a: [f"n{j}" for j in range(30)] + [f"r{s.query.id[1:]}"] for a in arms} for s in stream.searches}
    cache = CandidateCache.from_lists(arms, 100, lists)

    class Oracle:  # knows the relevant document: puts it first
        def rank(self, text, query_id, selections, size=10):
            out = []
            for results in selections:
                ids = list(dict.fromkeys(h.doc_id for r in results for h in r.hits))
                out.append(sorted(ids, key=lambda d: not d.startswith("r"))[:size])
            return out

    budget = BudgetConfig()
    runs = {}
    for display in ("fused", "reranked"):
        policies = build_policies(["joint", "static:fuzzy"], arms, budget, 1, make_policy)
        result = run_simulation(stream, cache, CascadeModel(), policies, SimulationConfig(budget=budget, display=display),
                                reranker=Oracle())
        runs[display] = result
    fused, reranked = runs["fused"].runs["static:fuzzy"], runs["reranked"].runs["static:fuzzy"]
    # the relevant item sits at rank 31 of the fused list (its clicks are on noise, at 5%) and first once reranked
    assert reranked.clicks.sum() > 1.5 * fused.clicks.sum()
    assert np.allclose(fused.ndcg_fused, 0) and np.allclose(fused.ndcg_reranked, 1)  # measured either way
    assert np.array_equal(reranked.ndcg, reranked.ndcg_reranked)
    doc = runs["reranked"].to_json()
    assert doc["meta"]["display"] == "reranked" and doc["meta"]["reranked"]
    final = doc["policies"]["joint"]["final"]
    assert final["ndcg10_reranked"] == pytest.approx(1.0) and final["ndcg10_fused"] == pytest.approx(0.0)
    by_intent = doc["policies"]["joint"]["by_intent"]
    assert by_intent["grouped_by"] == "intent" and set(by_intent["groups"]) == {"artist", "genre"}
    group = by_intent["groups"]["artist"]
    assert sum(g["searches"] for g in by_intent["groups"].values()) == 200
    assert set(group["arm_share_last"]) == set(arms) and len(group["series"]["window_end"]) == 20
    assert sum(group["action_share_last"].values()) == pytest.approx(1.0)
    with pytest.raises(SimulationError, match="needs a reranker"):
        run_simulation(stream, cache, CascadeModel(), build_policies(["random"], arms, budget, 1, make_policy),
                       SimulationConfig(budget=budget, display="reranked"))
    with pytest.raises(SimulationError, match="display"):
        SimulationConfig(display="sorted")


def test_goals_are_ratios_of_the_same_run():
    rows = [{"policy": "joint", "reward_vs_best_static": 1.12, "requested_vs_all": 0.25, "time_vs_all": 0.3,
             "ndcg10_reranked": 0.90, "ndcg10_fused": 0.70},
            {"policy": "static:fuzzy", "reward_vs_best_static": 1.0, "requested_vs_all": 0.25, "ndcg10_reranked": 0.9,
             "ndcg10_fused": 0.75},
            {"policy": "static:knn", "reward_vs_best_static": 0.9, "requested_vs_all": 0.25, "ndcg10_reranked": 0.8,
             "ndcg10_fused": 0.80},
            {"policy": "all", "reward_vs_best_static": 1.05, "requested_vs_all": 1.0, "ndcg10_reranked": 0.95,
             "ndcg10_fused": 0.9}]
    reward, cost, ndcg = measure_goals(rows, "static:fuzzy")
    assert reward["measured"] == 1.12 and reward["passed"]
    assert cost["measured"] == 0.25 and cost["passed"] and "0.300x" in cost["detail"]
    # against the best single arm in its own order (knn 0.80, not "all"), not reranked
    assert ndcg["measured"] == pytest.approx(0.90 / 0.80) and not ndcg["passed"] and "static:knn" in ndcg["detail"]
    rows[0]["ndcg10_reranked"] = None
    assert measure_goals(rows, "static:fuzzy")[2]["passed"] is None


def test_queries_split_into_training_and_test_reproducibly():
    from orchestrator.datasets import QueryRow
    from orchestrator.evaluate import LearningSpec, split_queries

    queries = [QueryRow(f"q{i}", f"text {i}", {}, i + 1) for i in range(10)]
    train, test = split_queries(queries, 0.3, seed=1)
    assert len(train) == 3 and len(test) == 7 and not {q.id for q in train} & {q.id for q in test}
    assert [q.id for q in test] == sorted((q.id for q in test), key=lambda x: int(x[1:]))  # input order kept
    assert split_queries(queries, 0.3, seed=1) == (train, test) and split_queries(queries, 0.3, seed=2) != (train, test)
    assert len(split_queries(queries[:2], 0.99)[1]) == 1  # both sides keep a query
    with pytest.raises(ValueError):
        split_queries(queries, 1.0)
    with pytest.raises(ValueError, match="nothing to learn"):
        LearningSpec(tuple(train))


def test_demo_config_is_validated():
    with pytest.raises(DemoError, match="searches"):
        DemoConfig(searches=0)
    with pytest.raises(DemoError, match="first policy"):
        DemoConfig(policies=("linucb",))
    with pytest.raises(DemoError, match="index name"):
        DemoConfig(alias="Bad Name")
    with pytest.raises(DemoError, match="rerank_vector"):
        DemoConfig(rerank_vector="sometimes")
    with pytest.raises(DemoError, match="not found"):
        DemoConfig(dataset_dir="/nonexistent/dataset")  # type: ignore[arg-type]


def _embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def _cleanup(client, alias: str) -> None:
    from orchestrator.catalog import drop
    from orchestrator.ltr.model import REGISTRY_ALIAS, ModelRegistry, delete_model

    state = ModelRegistry(client).state(alias)
    for name in [state.get("active"), *(state.get("previous") or [])]:
        if name:
            delete_model(client, name)
    client.delete(index=REGISTRY_ALIAS, id=alias, params={"ignore": 404, "refresh": "true"})
    drop(client, alias, memory=True)


def test_small_demo_end_to_end_and_a_second_run_reuses_its_work(ltr_client, opensearch_url, tmp_path):
    alias = f"ltrr-test-demo-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "demo"
    args = [sys.executable, "-m", "orchestrator.cli", "demo", "--docs", "2000", "--queries", "60", "--searches", "300",
            "--real-searches", "30", "--index", alias, "--out", str(out)]
    env = cli_env(opensearch_url, LTRR_MODEL_CARDS=str(tmp_path / "cards"))
    try:
        first = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        doc = json.loads((out / "results.json").read_text())
        meta = doc["meta"]
        assert meta["alias"] == alias and meta["documents"] == 2000 and meta["searches"] == 300
        assert meta["display"] == "fused" and meta["reused"]["index"] is False
        # the table: every policy with its reward, recall, nDCG@10 after the rerank and cost
        policies = {p["policy"]: p for p in doc["policies"]}
        assert list(policies)[:3] == ["joint", "linucb", "random"] and "all" in policies
        assert {f"static:{a}" for a in meta["arms"]} <= set(policies)
        assert policies["all"]["requested_vs_all"] == pytest.approx(1.0)
        for p in policies.values():
            assert 0 <= p["ndcg10_reranked"] <= 1 and 0 <= p["candidate_recall"] <= 1
            low, high = p["ndcg10_reranked_interval"]
            assert low <= p["ndcg10_reranked"] + 1e-9 and p["ndcg10_reranked"] <= high + 1e-9
        assert policies[meta["best_static"]]["reward_vs_best_static"] == pytest.approx(1.0)
        # the goals, measured in this run, and what the bandit learned per intent
        goals = doc["goals"]
        assert [g["threshold"] for g in goals] == [1.10, 0.60, 1.15]
        assert goals[0]["measured"] == pytest.approx(policies["joint"]["reward_vs_best_static"])
        assert goals[1]["measured"] == pytest.approx(policies["joint"]["requested_vs_all"])
        assert all(isinstance(g["passed"], bool) for g in goals)
        assert doc["intents"]["grouped_by"] == "intent" and doc["intents"]["groups"]
        # the first ranker is the catalogue's active model; the local rerank agrees with the plugin
        from orchestrator.ltr.model import ModelRegistry

        assert ModelRegistry(ltr_client).active(alias)[0] == doc["training"]["model"]
        assert doc["training"]["cv"]["reranked_ndcg10"] > doc["training"]["cv"]["union_ndcg10"]
        check = doc["rerank_check"]
        assert check["searches"] >= 20 and check["identical_top10"] >= 0.9 and check["plugin_failed"] == 0
        assert doc["latency"]["searches"] == 30 and doc["latency"]["stages"]["rerank"]["p50"] > 0
        # printed: the comparison and the goals; the report written, with its plots embedded
        for text in ("per policy", "goals (measured in this run)", "what joint learned", "report:"):
            assert text in first.stdout, text
        html = (out / "report.html").read_text()
        assert len(_embedded_pngs(html)) == 5 and ("PASS" in html or "FAIL" in html)
        md = (out / "report.md").read_text()
        for name in ("reward", "regret", "arm_share", "ndcg", "latency"):
            assert (out / f"report-{name}.png").exists() and f"(report-{name}.png)" in md
        # a second run reuses the loaded index, the candidates, the features and the model
        second = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        again = json.loads((out / "results.json").read_text())
        reused = again["meta"]["reused"]
        assert reused["index"] is True and reused["model"] is True
        for what in ("candidates", "features"):  # "N of N query texts cached"
            cached, _, total = reused[what].partition(" of ")
            assert cached == total.split()[0], reused
        assert again["meta"]["index"] == meta["index"] and again["training"]["model"] == doc["training"]["model"]
        assert [p["reward_per_search"] for p in again["policies"]] == [p["reward_per_search"] for p in doc["policies"]]
        assert not (tmp_path / "cards").exists()  # the model card sits beside the results, not in the checkout
        # the full offline report on the same catalogue: arms, union and bandit, with and without the rerank
        evaluation = subprocess.run([sys.executable, "-m", "orchestrator.cli", "evaluate", meta["dataset_dir"],
                                     "--index", alias, "--full", "--warmup", "200", "--out", str(tmp_path / "e.json")],
                                    capture_output=True, text=True, timeout=900, env=env)
        assert evaluation.returncode == 0, evaluation.stdout[-3000:] + evaluation.stderr[-3000:]
        result = json.loads((tmp_path / "e.json").read_text())
        systems = {s["system"]: s for s in result["systems"]}
        union = "union (rrf k=60)"
        for name in (*meta["arms"], union, "bandit joint", "ref BM25 (rank_bm25 k1=1.2 b=0.75)"):
            assert name in systems and (name.startswith("ref ") or f"{name} + rerank" in systems), name
        learning = result["meta"]["learning"]
        assert learning["train_queries"] + learning["test_queries"] == meta["queries"]
        assert systems["bandit joint"]["queries"] == learning["test_queries"] == result["meta"]["queries"]
        assert not set(learning["train_query_ids"]) & set(result["per_query"]["bandit joint"])  # measured on test only
        assert learning["warmup"]["searches"] == 200 and learning["warmup"]["display"] == "reranked"
        assert systems["bandit joint"]["candidate_recall"] <= systems[union]["candidate_recall"] + 1e-9
        model = learning["reranker"]["model"]  # temporary: deleted after the run
        found = ltr_client.transport.perform_request("GET", f"/_ltr/_model/{model}", params={"ignore": 404})
        assert not found.get("found")
        assert "bandit joint + rerank / " in evaluation.stdout
    finally:
        _cleanup(ltr_client, alias)
    assert not ltr_client.indices.exists_alias(name=alias)
