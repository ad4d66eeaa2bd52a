"""Query plans: validation, escaping rules, and template safety against the real node."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from orchestrator.catalog import drop, load_dataset
from orchestrator.datasets import Dataset
from orchestrator.datatypes import ArmStatus
from orchestrator.feedback.q2e import Q2EMemory, Q2EUpdate, memory_index
from orchestrator.pipeline import QueryError, SearchPipeline
from orchestrator.strategies import (
    ParamError,
    ParamSpec,
    PlanError,
    StrategyCall,
    StrategyExecutor,
    load_plan,
    load_plans,
    plans_dir,
    sync_plans,
)

NASTY = [
    'taylor "swift"',
    "back\\slash \\\" quote",
    "braces { } [ ] and }} {{ mustache",
    '{"query": {"match_all": {}}}',
    '"}}, "match_all": {"boost": 100}, "x": {"',
    "</script><script>alert(1)</script>",
    "emoji 🎵🔥 love",
    "東京 love Москва مرحبا",
    "a" * 10_000,
    "love " * 1500,
]


def _write_plan(directory: Path, plan_id: str, template: str, params: dict, **extra) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{plan_id}.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"id": plan_id, "description": "t", "params": params, "template": template, **extra}))
    return path


def test_shipped_plans_load_and_are_distinct():
    plans = load_plans()
    assert {"bm25_popularity", "structured", "knn", "q2e_memory", "fuzzy"} <= set(plans)
    assert len({p.script_id for p in plans.values()}) == len(plans)


@pytest.mark.parametrize("template,params,message", [
    ('{"query": {"match": {"t": {{q}} }}, "timeout": "{{timeout}}"}', {"q": {"type": "string"}}, "inside JSON quotes"),
    ('{"query": {"terms": {"t": "{{#toJson}}ids{{/toJson}}"}}, "timeout": "{{timeout}}"}',
     {"ids": {"type": "object_list"}}, "must not be quoted"),
    ('{"query": {"match": {"t": "{{other}}"}}, "timeout": "{{timeout}}"}', {}, "no such parameter"),
    ('{"query": {"match": {"t": "{{q}}"}}, "timeout": "{{timeout}}"}', {"q": {"type": "string"}, "unused": {"type": "string"}},
     "not used"),
    ('{"query": {"match": {"t": "{{q}}"}}}', {"q": {"type": "string"}}, "timeout"),
    ('{"size": "{{n}}", "query": {"match_all": {}}, "timeout": "{{timeout}}"}', {"n": {"type": "integer", "default": 1}},
     "must not be quoted"),
    ('{"query": {{#q}}{"match_all": {}}{{/q}}, "timeout": "{{timeout}}"}', {"q": {"type": "string"}}, "unsupported"),
    # Tags that skip escaping or change parsing: triple mustache, &, delimiters, comments, partials.
    ('{"q": "{{{q}}}", "timeout": "{{timeout}}"}', {"q": {"type": "string"}}, "unsupported"),
    ('{"q": "{{&q}}", "timeout": "{{timeout}}"}', {"q": {"type": "string"}}, "unsupported"),
    ('{{=<% %>=}}{"q": "<%q%>", "timeout": "{{timeout}}"}', {"q": {"type": "string"}}, "unsupported"),
    ('{"q": "{{q}}", "timeout": "{{timeout}}"{{! note }}}', {"q": {"type": "string"}}, "unsupported"),
    ('{"q": "{{q}}", "timeout": "{{timeout}}", "x": {{> other}}}', {"q": {"type": "string"}}, "unsupported"),
])
def test_escaping_rules_are_enforced(tmp_path, template, params, message):
    with pytest.raises(PlanError, match=message):
        load_plan(_write_plan(tmp_path, "bad", template, params))


def test_plan_file_errors(tmp_path):
    path = _write_plan(tmp_path, "ok", '{"query": {"match_all": {}}, "timeout": "{{timeout}}"}', {})
    path.rename(tmp_path / "other.yaml")
    with pytest.raises(PlanError, match="file name"):
        load_plan(tmp_path / "other.yaml")
    with pytest.raises(PlanError, match="type"):
        load_plan(_write_plan(tmp_path, "t2", '{"timeout": "{{timeout}}"}', {"x": {"type": "blob"}}))
    (tmp_path / "broken.yaml").write_text("id: [unclosed")
    with pytest.raises(PlanError, match="YAML"):
        load_plan(tmp_path / "broken.yaml")


def test_param_types():
    assert ParamSpec("s", "string", max_length=6).coerce("abcdef") == "abcdef"
    with pytest.raises(ParamError, match="limit is 3"):  # never cut silently
        ParamSpec("s", "string", max_length=3).coerce("abcdef")
    with pytest.raises(ParamError):
        ParamSpec("n", "integer").coerce(True)
    with pytest.raises(ParamError):
        ParamSpec("n", "number").coerce(float("nan"))
    with pytest.raises(ParamError, match="outside"):
        ParamSpec("n", "integer", min=1, max=10).coerce(11)
    with pytest.raises(ParamError, match="384"):
        ParamSpec("v", "vector", dimension=384).coerce([0.0] * 3)
    with pytest.raises(ParamError, match="query key"):
        ParamSpec("k", "key").coerce('q_1"}')
    with pytest.raises(ParamError, match="list of objects"):
        ParamSpec("f", "object_list").coerce(["x"])
    vector = ParamSpec("v", "vector", dimension=3)
    for bad in (5, {"a": 1}, ["0.2", 1, 2], [True, 1, 2], [[1], [2], [3]], "abc"):
        with pytest.raises(ParamError):
            vector.coerce(bad)
    with pytest.raises(ParamError, match="finite"):
        ParamSpec("n", "integer").coerce(10**400)
    assert vector.coerce(np.array([1, 2, 3], dtype=np.float32)) == [1.0, 2.0, 3.0]
    assert vector.coerce([0.1234567891, 0, 1]) == [0.123457, 0.0, 1.0]  # sent at 6 decimals


# ---------------------------------------------------------------------------------------------
# Against the node
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalogue(os_client, tmp_path_factory):
    """A small catalogue with facets, popularity, vectors and a Q2E entry."""
    root = tmp_path_factory.mktemp("cat")
    rng = np.random.default_rng(1)
    rows = []
    artists = ["Taylor Swift", "Miles Davis", "Nina Simone"]
    for i in range(30):
        artist = artists[i % 3]
        title = ["Love Story", "Blue in Green", "Feeling Good", "Love Song", "Home"][i % 5] + f" {i}"
        rows.append({"_id": f"t{i}", "title": title, "text": f"a song by {artist}", "artist": artist,
                     "genre": ["pop", "jazz", "soul"][i % 3], "popularity": float(i), "embedding": rng.normal(size=384).tolist()})
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "dataset.yaml").write_text(json.dumps({"name": "x", "facets": ["artist", "genre"], "popularity": "popularity"}))
    alias = f"ltrr-test-strat-{uuid.uuid4().hex[:8]}"
    load_dataset(os_client, Dataset.open(root), alias=alias, encoder=None)
    Q2EMemory(os_client, alias).record([Q2EUpdate("q_0123456789abcdef", "t7", grade=1.0)], refresh=True)
    sync_plans(os_client, load_plans())
    yield alias, rows
    drop(os_client, alias, memory=True)


def test_sync_is_idempotent_and_renders(os_client, catalogue):
    results = sync_plans(os_client, load_plans())
    assert all(r.rendered_ok for r in results), results
    assert not any(r.created for r in results)  # the fixture already stored them


def test_each_strategy_runs_in_one_round_trip(os_client, catalogue):
    alias, rows = catalogue
    plans = load_plans()
    executor = StrategyExecutor(os_client, plans)
    vec = rows[4]["embedding"]
    report = executor.run(alias, [
        StrategyCall("bm25_popularity", 5, {"query": "love"}),
        StrategyCall("structured", 5, {"remaining": "love", "slot_clauses": [{"term": {"artist": "Taylor Swift"}}]}),
        StrategyCall("knn", 3, {"vector": vec}),
        StrategyCall("q2e_memory", 5, {"key": "q_0123456789abcdef"}, index=memory_index(alias)),
        StrategyCall("fuzzy", 5, {"query": "tayler"}),
    ])
    assert report.round_trips == 1
    by = {r.strategy: r for r in report.results}
    assert all(r.error is None for r in report.results), {r.strategy: r.error for r in report.results}
    assert all("Love" in rows[int(h.doc_id[1:])]["title"] for h in by["bm25_popularity"].hits)
    assert all(rows[int(h.doc_id[1:])]["artist"] == "Taylor Swift" for h in by["structured"].hits)
    assert by["knn"].hits[0].doc_id == "t4"
    assert [h.doc_id for h in by["q2e_memory"].hits] == ["t7"]
    assert by["fuzzy"].hits and all(rows[int(h.doc_id[1:])]["artist"] == "Taylor Swift" for h in by["fuzzy"].hits)


def test_failing_strategy_is_isolated(os_client, catalogue, tmp_path):
    alias, _ = catalogue
    for plan in load_plans().values():
        shutil.copy(plan.path, tmp_path)
    # rank_feature on a text field fails inside OpenSearch, for this strategy only.
    _write_plan(tmp_path, "broken", '{"size": {{size}}, "timeout": "{{timeout}}", "query": {"rank_feature": {"field": "title"}}}',
                {"size": {"type": "integer", "default": 5}})
    plans = load_plans(tmp_path)
    sync_plans(os_client, plans)
    report = StrategyExecutor(os_client, plans).run(alias, [
        StrategyCall("broken", 5, {}), StrategyCall("bm25_popularity", 5, {"query": "love"}),
        StrategyCall("nope", 5, {})])
    by = {r.strategy: r for r in report.results}
    assert by["broken"].error and not by["broken"].hits
    assert by["nope"].error == "unknown strategy 'nope'"
    assert by["bm25_popularity"].error is None and by["bm25_popularity"].hits
    assert report.round_trips == 1


def test_strategy_response_mapping():
    """How each kind of _msearch answer becomes a StrategyResult (the node's side of a timeout is
    not reproducible on a tiny index, so the mapping is checked on the documented shapes)."""
    from orchestrator.strategies import _to_result

    call = StrategyCall("bm25_popularity", 2, {}, timeout_ms=5)
    timed_out = _to_result(call, {"took": 7, "timed_out": True, "hits": {"hits": [{"_id": "a", "_score": 1.0}]}})
    assert timed_out.error == "timed out after 5 ms" and timed_out.hits == () and timed_out.took_ms == 7
    failed = _to_result(call, {"error": {"root_cause": [{"type": "query_shard_exception", "reason": "boom"}]},
                               "status": 400})
    assert failed.error == "query_shard_exception: boom" and failed.hits == ()
    shard = _to_result(call, {"took": 1, "_shards": {"failed": 1, "failures": [{"reason": {"type": "x", "reason": "y"}}]},
                              "hits": {"hits": []}})
    assert "shard failure" in shard.error
    ok = _to_result(call, {"took": 3, "hits": {"hits": [{"_id": "a", "_score": 2.0}, {"_id": "b", "_score": None},
                                                        {"_id": "c", "_score": 0.5}]}})
    assert [(h.doc_id, h.rank, h.score) for h in ok.hits] == [("a", 1, 2.0), ("b", 2, 0.0)]  # cut to the budget
    assert _to_result(call, {"took": 1}).hits == ()  # filter_path drops empty hit lists


def test_node_side_timeout_param_is_sent(os_client, catalogue):
    alias, _ = catalogue
    bm25 = load_plans()["bm25_popularity"]
    params = bm25.build_params({"query": "love"}, timeout_ms=250)
    rendered = os_client.render_search_template(id=bm25.script_id, body={"params": params})["template_output"]
    assert rendered["timeout"] == "250ms"


@pytest.mark.parametrize("query", NASTY, ids=range(len(NASTY)))
def test_hostile_queries_keep_template_structure(os_client, catalogue, query):
    alias, _ = catalogue
    pipe = SearchPipeline(os_client, alias, load_plans(), encoder=None)
    u = pipe.understander().understand(query)
    bm25 = pipe.plans["bm25_popularity"]
    params = bm25.build_params({"query": u.normalized}, timeout_ms=1000)
    rendered = os_client.render_search_template(id=bm25.script_id, body={"params": params})["template_output"]
    # The structure is the template's, whatever the text: the whole text is one string value.
    assert set(rendered) == {"size", "_source", "track_total_hits", "timeout", "query"}
    assert list(rendered["query"]["bool"]) == ["must", "should", "filter"]
    assert rendered["query"]["bool"]["must"][0]["match"]["content"] == params["query"]
    assert rendered["query"]["bool"]["should"][0]["match"]["title.plain"]["query"] == params["query"]
    assert rendered["query"]["bool"]["filter"] == []
    resp = pipe.search(query, strategies=["bm25_popularity", "fuzzy", "q2e_memory", "structured"])
    ran = [r for r in resp.strategy_results if r.status is not ArmStatus.NOT_APPLICABLE]
    assert resp.round_trips == (1 if ran else 0)  # the memory knows none of these: its arm does not apply
    for r in resp.strategy_results:
        assert r.error is None or "too_many" in r.error, r.error
    fuzzy = next(r for r in resp.strategy_results if r.strategy == "fuzzy")
    if len(u.tokens) > 6:  # prose is not for the fuzzy arm: declared, not run
        assert fuzzy.status is ArmStatus.NOT_APPLICABLE and "tokens" in fuzzy.detail


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_empty_queries_are_client_errors(os_client, catalogue, query):
    alias, _ = catalogue
    pipe = SearchPipeline(os_client, alias, load_plans(), encoder=None)
    with pytest.raises(QueryError, match="empty"):
        pipe.search(query)


def test_unknown_strategy_and_oversized_query_are_client_errors(os_client, catalogue):
    alias, _ = catalogue
    pipe = SearchPipeline(os_client, alias, load_plans(), encoder=None)
    with pytest.raises(QueryError, match="unknown strategies"):
        pipe.search("love", strategies=["nope"])
    with pytest.raises(QueryError, match="limit"):
        pipe.search("x" * 10_001)


def test_pipeline_understands_slots_and_fuses_with_provenance(os_client, catalogue):
    alias, rows = catalogue
    pipe = SearchPipeline(os_client, alias, load_plans(), encoder=None)
    resp = pipe.search("taylor swift love", size=5)
    assert [s.field for s in resp.understanding.slots] == ["artist"]
    by = {r.strategy: r for r in resp.strategy_results}
    assert by["structured"].hits and by["structured"].error is None
    top = resp.hits[0]
    assert rows[int(top.doc_id[1:])]["artist"] == "Taylor Swift" and "Love" in rows[int(top.doc_id[1:])]["title"]
    assert {"bm25_popularity", "structured"} <= set(top.strategies)
    assert by["knn"].status is ArmStatus.NOT_APPLICABLE and by["knn"].error is None  # no encoder here
    assert by["knn"].detail == "no vector for this query"


def test_new_plan_file_is_a_new_strategy(os_client, catalogue, tmp_path):
    alias, rows = catalogue
    for plan in load_plans().values():
        shutil.copy(plan.path, tmp_path)
    _write_plan(tmp_path, "title_prefix",
                '{"size": {{size}}, "_source": false, "timeout": "{{timeout}}", '
                '"query": {"match_phrase_prefix": {"title": "{{query}}"}}}',
                {"query": {"type": "string", "max_length": 100}, "size": {"type": "integer", "default": 10}},
                applies={"nonempty": ["query"]})
    plans = load_plans(tmp_path)
    sync_plans(os_client, plans)
    pipe = SearchPipeline(os_client, alias, plans, encoder=None)
    resp = pipe.search("feeling go", strategies=["title_prefix"])
    assert resp.hits and all(rows[int(h.doc_id[1:])]["title"].startswith("Feeling Good") for h in resp.hits)
    assert plans_dir() != tmp_path
