"""Request filters: a whitelist of fields and shapes, never raw query DSL."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid

import pytest

from orchestrator.catalog import drop, load_dataset
from orchestrator.datasets import Dataset
from orchestrator.filters import MAX_FIELDS, MAX_VALUES, FilterError, FilterFields, build_filter_clauses, parse_cli_filters
from orchestrator.pipeline import QueryError, SearchPipeline
from orchestrator.strategies import load_plans, sync_plans

from .conftest import cli_env

FIELDS = FilterFields.of(["genre", "artist"], ["year", "duration_ms"])


def test_values_lists_and_ranges_become_term_terms_and_range():
    clauses = build_filter_clauses({"genre": "pop", "artist": ["ABBA", "Queen", "ABBA"], "year": {"gte": 1990, "lt": "2000"},
                                    "entity_type": "track", "duration_ms": 200000}, FIELDS)
    assert clauses == [
        {"term": {"genre": "pop"}},
        {"terms": {"artist": ["ABBA", "Queen"]}},
        {"range": {"year": {"gte": 1990.0, "lt": 2000.0}}},
        {"term": {"entity_type": "track"}},
        {"term": {"duration_ms": 200000.0}},
    ]
    assert build_filter_clauses(None, FIELDS) == [] and build_filter_clauses({}, FIELDS) == []
    assert build_filter_clauses({"genre": ["pop"]}, FIELDS) == [{"term": {"genre": "pop"}}]
    assert build_filter_clauses({"year": [1999, "2001"]}, FIELDS) == [{"terms": {"year": [1999.0, 2001.0]}}]


def test_fields_come_from_the_mapping_meta():
    fields = FilterFields.from_meta({"facets": ["genre", 3], "numeric": ["year"], "template": "catalog"})
    assert fields.keyword == {"genre", "entity_type"} and fields.numeric == {"year"}
    assert FilterFields.from_meta({}).names == ["entity_type"]


@pytest.mark.parametrize("filters, message", [
    ({"script": {"script": {"source": "doc['x'].value > 1"}}}, "cannot filter on 'script'"),
    ({"genre": {"script": {"source": "1"}}}, "ranges are for numeric"),
    ({"year": {"script": "1"}}, "gt, gte, lt and lte only"),
    ({"bool": {"should": [{"match_all": {}}]}}, "cannot filter on 'bool'"),
    ({"genre": {"bool": {"must_not": []}}}, "ranges are for numeric"),
    ({"genre": [{"term": {"genre": "pop"}}]}, "values must be strings"),
    ({"genre": [["pop"]]}, "values must be strings"),
    ({"genre": None}, "values must be strings"),
    ({"genre": True}, "values must be strings"),
    ({"genre": 1.5}, "values must be strings"),
    ({"genre": ""}, "1 to 1024 characters"),
    ({"genre": "x" * 2000}, "1 to 1024 characters"),
    ({"genre": []}, "empty list"),
    ({"genre": ["v"] * (MAX_VALUES + 1)}, f"at most {MAX_VALUES} values"),
    ({"genre": list(range(10**5))}, f"at most {MAX_VALUES} values"),
    ({f"f{i}": "x" for i in range(MAX_FIELDS + 1)}, f"at most {MAX_FIELDS} filter fields"),
    ({1: "pop"}, "field names must be strings"),
    ({("genre",): "pop"}, "field names must be strings"),
    ({None: "pop"}, "field names must be strings"),
    ({"title": "love"}, "cannot filter on 'title'"),
    ({"embedding": [0.1]}, "cannot filter on 'embedding'"),
    ({"genre.text": "pop"}, "cannot filter on 'genre.text'"),
    ({"year": "nineteen"}, "expected a number"),
    ({"year": float("nan")}, "finite"),
    ({"year": "inf"}, "finite"),
    ({"year": 10**400}, "out of range"),
    ({"year": True}, "expected a number"),
    ({"year": {}}, "gt, gte, lt and lte only"),
    ({"year": {"gte": 1, "gt": 0}}, "one lower bound"),
    ({"year": {"gte": 2000, "lte": 1990}}, "above the upper bound"),
    ({"year": {"gte": [1990]}}, "expected a number"),
    ({"year": {"gte": {"script": "1"}}}, "expected a number"),
    ([{"term": {"genre": "pop"}}], "must be an object"),
    ("genre:pop", "must be an object"),
])
def test_anything_outside_the_whitelist_is_a_client_error(filters, message):
    with pytest.raises(FilterError, match=re.escape(message)):
        build_filter_clauses(filters, FIELDS)
    assert issubclass(FilterError, ValueError)


def test_cli_forms():
    assert parse_cli_filters([]) == {}
    assert parse_cli_filters(["genre=pop"]) == {"genre": "pop"}
    assert parse_cli_filters(["genre=pop,soul", "genre=jazz"]) == {"genre": ["pop", "soul", "jazz"]}
    assert parse_cli_filters(["year>=1990", "year<2000"]) == {"year": {"gte": "1990", "lt": "2000"}}
    assert parse_cli_filters(["year>1990", "year<=2000"]) == {"year": {"gt": "1990", "lte": "2000"}}
    assert parse_cli_filters(["artist=AC/DC"]) == {"artist": "AC/DC"}
    assert parse_cli_filters(['{"artist": "Crosby, Stills & Nash", "year": {"gte": 1970}}', "genre=rock"]) == {
        "artist": "Crosby, Stills & Nash", "year": {"gte": 1970}, "genre": "rock"}
    # Parsed forms still go through the whitelist.
    assert build_filter_clauses(parse_cli_filters(["year>=1990", "genre=pop,rock"]), FIELDS) == [
        {"range": {"year": {"gte": 1990.0}}}, {"terms": {"genre": ["pop", "rock"]}}]


@pytest.mark.parametrize("items, message", [
    (["genre"], "use field=value"),
    (["=pop"], "use field=value"),
    (["genre="], "has no value"),
    (["year>=1", "year>=2"], "given twice"),
    (["year>=1", "year=2"], "not both"),
    (["year=2", "year<3"], "not both"),
    (["{not json"], "not valid JSON"),
    (['["genre", "pop"]'], "use field=value"),
    (['{"genre": "pop"}', '{"genre": "rock"}'], "more than once"),
])
def test_bad_cli_forms(items, message):
    with pytest.raises(FilterError, match=message):
        parse_cli_filters(items)


# ------------------------------------------------------------------------------------------------
# On the node
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalogue(os_client, tmp_path_factory):
    root = tmp_path_factory.mktemp("filters") / "tiny"
    root.mkdir()
    docs = [("d1", "Love Story", "Pop", 2008), ("d2", "Love in Vain", "Blues", 1937), ("d3", "Love Me Do", "Pop", 1962),
            ("d4", "Love for Sale", "Jazz", 1956), ("d5", "Crazy Love", "Soul", 1970)]
    with open(root / "corpus.jsonl", "w") as f:
        for i, title, genre, year in docs:
            f.write(json.dumps({"_id": i, "title": title, "text": f"a {genre} song", "genre": genre, "year": year}) + "\n")
    (root / "dataset.yaml").write_text(json.dumps({"name": "f", "facets": ["genre"], "numeric": ["year"]}))
    alias = f"ltrr-test-filters-{uuid.uuid4().hex[:8]}"
    load_dataset(os_client, Dataset.open(root), alias=alias, embed=False)
    sync_plans(os_client, load_plans())
    yield alias, root
    drop(os_client, alias)


def test_filters_restrict_results_on_the_node(os_client, catalogue):
    alias, _ = catalogue
    pipe = SearchPipeline(os_client, alias, load_plans(), encoder=None)
    strategies = ["bm25_popularity", "fuzzy"]
    everything = pipe.search("love", strategies=strategies, size=10)
    assert {h.doc_id for h in everything.hits} == {"d1", "d2", "d3", "d4", "d5"}
    pop = pipe.search("love", strategies=strategies, size=10, filters={"genre": "pop"})  # normalized keyword
    assert {h.doc_id for h in pop.hits} == {"d1", "d3"} and pop.errors == {}
    old = pipe.search("love", strategies=strategies, size=10, filters={"year": {"lt": 1960}, "genre": ["Jazz", "Blues"]})
    assert {h.doc_id for h in old.hits} == {"d2", "d4"}
    with pytest.raises(QueryError, match="cannot filter on 'script'"):
        pipe.search("love", strategies=strategies, filters={"script": {"script": {"source": "true"}}})
    with pytest.raises(QueryError, match="must be an object"):
        pipe.search("love", strategies=strategies, filters=[{"match_all": {}}])


def test_cli_search_filters(catalogue, opensearch_url, tmp_path):
    alias, _ = catalogue
    env = cli_env(opensearch_url, HOME=str(tmp_path))
    base = [sys.executable, "-m", "orchestrator.cli", "search", "love", "--index", alias,
            "--strategies", "bm25_popularity", "--json"]
    proc = subprocess.run([*base, "--filter", "year>=1960", "--filter", "genre=Pop,Soul"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {h["id"] for h in json.loads(proc.stdout)["hits"]} == {"d1", "d3", "d5"}
    bad = subprocess.run([*base, "--filter", '{"script": {"source": "true"}}'], env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "cannot filter on 'script'" in bad.stderr
