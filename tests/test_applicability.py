"""Arms say whether they apply before they run: empty inputs, long prose, catalogue fields; a
plan whose input is a query vector gets it whatever the parameter's name; popularity only when
the dataset declares it."""

from __future__ import annotations

import json
import shutil
import uuid
from contextlib import contextmanager

import pytest

from orchestrator.catalog import drop, load_dataset
from orchestrator.datasets import Dataset
from orchestrator.datatypes import ArmStatus
from orchestrator.pipeline import SearchPipeline
from orchestrator.strategies import PlanError, load_plan, load_plans, sync_plans


def _dataset(root, *, titles: bool, popularity: bool):
    root.mkdir()
    texts = ["feeling good is a soul song", "so what is a jazz standard song", "blue in green, a ballad"]
    with open(root / "corpus.jsonl", "w") as f:
        for i, text in enumerate(texts):
            row = {"_id": f"d{i}", "title": text.split(",")[0].title() if titles else "", "text": text}
            if popularity:
                row["plays"] = 10 ** i
            f.write(json.dumps(row) + "\n")
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "feeling good"}) + "\n")
    spec = {"name": "t", **({"popularity": "plays"} if popularity else {})}
    (root / "dataset.yaml").write_text(json.dumps(spec))
    return Dataset.open(root)


@contextmanager
def _loaded(os_client, ds):
    """The dataset loaded (without vectors) under a fresh alias, with the shipped plans synced."""
    alias = f"ltrr-test-app-{uuid.uuid4().hex[:8]}"
    report = load_dataset(os_client, ds, alias=alias, embed=False)
    sync_plans(os_client, load_plans())
    try:
        yield alias, report
    finally:
        drop(os_client, alias)


def test_plan_applicability_rules():
    fuzzy = load_plans()["fuzzy"]
    assert fuzzy.applies.max_query_tokens == 6 and fuzzy.applies.needs_fields == ("title",)
    assert fuzzy.why_not_applicable({"query": "tayler love"}, query_tokens=2, catalogue_fields={"title": 3}) is None
    assert "tokens" in fuzzy.why_not_applicable({"query": "x " * 7}, query_tokens=7, catalogue_fields=None)
    assert "characters" in fuzzy.why_not_applicable({"query": "x" * 5000}, query_tokens=1, catalogue_fields=None)
    assert "title" in fuzzy.why_not_applicable({"query": "love"}, query_tokens=1, catalogue_fields={"text": 3})
    assert "no query" in fuzzy.why_not_applicable({"query": "  "}, query_tokens=0, catalogue_fields=None)
    # Unknown catalogue facts (an index loaded before they were recorded): only query rules apply.
    assert fuzzy.why_not_applicable({"query": "love"}, query_tokens=1, catalogue_fields=None) is None


def test_applies_block_is_validated(tmp_path):
    template = '{"query": {"match": {"t": "{{q}}"}}, "timeout": "{{timeout}}"}'
    import yaml

    for applies, message in [({"nonempty": ["nope"]}, "unknown parameter"), ({"max_query_tokens": 0}, ">= 1"),
                             ({"sometimes": True}, "unknown keys"), ({"needs_fields": "title"}, "list")]:
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump({"id": "p", "params": {"q": {"type": "string"}}, "template": template,
                                        "applies": applies}))
        with pytest.raises(PlanError, match=message):
            load_plan(path)


def test_catalogue_without_titles_or_popularity(os_client, tmp_path):
    ds = _dataset(tmp_path / "d", titles=False, popularity=False)
    with _loaded(os_client, ds) as (alias, report):
        meta = next(iter(os_client.indices.get_mapping(index=alias).values()))["mappings"]["_meta"]["ltrr"]
        assert meta["fields_present"]["text"] == 3
        assert "title" not in meta["fields_present"] and "popularity" not in meta["fields_present"]
        doc = os_client.get(index=report.index, id="d0")["_source"]
        assert "popularity" not in doc  # no declared popularity: no field, so no boost at all
        resp = SearchPipeline(os_client, alias, load_plans()).search("feeling good", size=3)
        by = {r.strategy: r for r in resp.strategy_results}
        assert by["fuzzy"].status is ArmStatus.NOT_APPLICABLE and "title" in by["fuzzy"].detail
        assert by["knn"].status is ArmStatus.NOT_APPLICABLE  # no encoder, no vectors
        assert by["bm25_popularity"].ok and by["bm25_popularity"].hits[0].doc_id == "d0"
        assert resp.round_trips == 1 and not resp.errors


def test_popularity_boost_when_declared(os_client, tmp_path):
    ds = _dataset(tmp_path / "d", titles=True, popularity=True)
    with _loaded(os_client, ds) as (alias, _):
        pipe = SearchPipeline(os_client, alias, load_plans())
        # d0 and d1 match "song" equally well (same length after stopwords); the more popular d1
        # (10 plays vs 1) comes first.
        resp = pipe.search("song", strategies=["bm25_popularity"], size=3)
        assert [h.doc_id for h in resp.strategy_results[0].hits] == ["d1", "d0"]


def test_vector_parameter_gets_the_query_vector_whatever_its_name(os_client, tmp_path):
    ds = _dataset(tmp_path / "d", titles=True, popularity=False)
    plans_dir = tmp_path / "plans"
    plans_dir.mkdir()
    for plan in load_plans().values():
        shutil.copy(plan.path, plans_dir)
    (plans_dir / "vec_echo.yaml").write_text(
        "id: vec_echo\ndescription: t\n"
        "params:\n  query_vector: {type: vector, dimension: 3}\n  size: {type: integer, default: 10}\n"
        "applies: {nonempty: [query_vector]}\n"
        "example: {query_vector: zeros}\n"
        'template: \'{"size": {{size}}, "_source": false, "timeout": "{{timeout}}", "query": {"script_score": '
        '{"query": {"match_all": {}}, "script": {"source": "params.v[0] + params.v[2]", '
        '"params": {"v": {{#toJson}}query_vector{{/toJson}}}}}}}\'\n')
    plans = load_plans(plans_dir)
    sync_plans(os_client, plans)

    class Encoder:  # a stand-in encoder: the point is the routing of the vector, not its values
        dim = 3

        def encode_one(self, text):
            return [0.25, 0.0, 0.5]

    with _loaded(os_client, ds) as (alias, _):
        resp = SearchPipeline(os_client, alias, plans, encoder=Encoder()).search("love", strategies=["vec_echo"])
        result = resp.strategy_results[0]
        assert result.ok and result.hits and result.hits[0].score == pytest.approx(0.75)
