"""Query understanding: normalisation, Q2E keys, tokens, facet slots, features, dictionaries."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest

from orchestrator.understanding import (
    FEATURE_NAMES,
    MAX_QUERY_CHARS,
    STOPWORDS,
    DictionaryCache,
    FacetDictionary,
    QueryUnderstander,
    QueryUnderstanding,
    Slot,
    normalize_query,
    query_key,
    tokenize,
)

FURNITURE = {"colour": {"blue": 10}, "material": {"velvet": 3}, "category": {"sofa": 50, "sofa bed": 5}}
MUSIC = {"artist": {"Taylor Swift": 20}, "genre": {"pop": 100}}

ODD_INPUTS = [
    "",
    "   \t\n  ",
    "x" * 10_000,
    "love " * 2_000,
    "東京 love 🎵",
    "👨‍👩‍👧 🎵🎵",
    'he said "hi" \\ {a} }} {{ ]] \'',
    '{"query": {"match_all": {}}}',
    "q2e.q_0123 OR 1=1; DROP TABLE --",
    "a\x00b\x07c\u200bd\ufeff",
    "lone \ud800 surrogate",
    "مرحبا بالعالم",
    "हिन्दी गाने",
    "ｆｕｌｌ　ｗｉｄｔｈ",
    "e\u0301te\u0301",
    "'''",
    "ﷺ" * 600,  # one character that NFKC expands to 18
]


# -- normalisation and keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Taylor  Swift", "taylor swift"),
        ("  ＴＡＹＬＯＲ swift ", "taylor swift"),
        ("STRASSE Straße", "strasse strasse"),
        ("tab\there\nnew\r\nline", "tab here new line"),
        ("zero\u200bwidth\x00nul\x7fdel", "zerowidthnuldel"),
        ("ﬁne ①", "fine 1"),
        ("", ""),
        (" \n\t ", ""),
    ],
)
def test_normalize_query(raw, expected):
    assert normalize_query(raw) == expected


def test_normalize_query_caps_length_and_is_idempotent():
    long = normalize_query("word " * 5_000)
    assert len(long) <= MAX_QUERY_CHARS
    assert long == long.strip()
    assert normalize_query(long) == long
    for text in ODD_INPUTS:
        once = normalize_query(text)
        assert normalize_query(once) == once


@pytest.mark.parametrize("bad", [None, b"bytes", 42, ["a"]])
def test_non_str_is_a_type_error(bad):
    with pytest.raises(TypeError):
        normalize_query(bad)
    with pytest.raises(TypeError):
        query_key(bad)
    with pytest.raises(TypeError):
        QueryUnderstander().understand(bad)


def test_query_key_is_equal_for_spellings_that_normalise_alike():
    assert query_key("Taylor  Swift") == query_key("taylor swift") == query_key("ＴＡＹＬＯＲ swift")
    assert query_key("taylor swift") == query_key(" \tTAYLOR\u200b SWIFT\n")
    assert query_key("taylor swift") != query_key("taylor swifts")
    assert query_key("taylor swift") == "q_" + hashlib.sha1(b"taylor swift").hexdigest()[:16]


@pytest.mark.parametrize("text", ["taylor swift", *ODD_INPUTS])
def test_query_key_is_a_safe_feature_name(text):
    assert re.fullmatch(r"q_[0-9a-f]{16}", query_key(text))


# -- tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "normalized, expected",
    [
        ("blue velvet sofa", ("blue", "velvet", "sofa")),
        ("don't stop-me now!", ("don't", "stop", "me", "now")),
        ("'quoted' rock'n'roll", ("quoted", "rock'n'roll")),
        ("don\u2019t", ("don't",)),
        ("東京 love 🎵", ("東京", "love")),
        ("हिन्दी गाने", ("हिन्दी", "गाने")),
        ("iphone 15 pro, 256gb", ("iphone", "15", "pro", "256gb")),
        ('{"a": "}}\\"', ("a",)),
        ("under_score", ("under", "score")),
        ("", ()),
    ],
)
def test_tokenize(normalized, expected):
    assert tokenize(normalized) == expected


# -- the dictionary ---------------------------------------------------------------------------


def test_furniture_slots():
    understander = QueryUnderstander(FacetDictionary.from_terms(FURNITURE))
    q = understander.understand("blue velvet sofa")
    assert [(s.field, s.value) for s in q.slots] == [("colour", "blue"), ("material", "velvet"), ("category", "sofa")]
    assert [(s.start, s.end) for s in q.slots] == [(0, 1), (1, 2), (2, 3)]
    assert q.remaining_tokens == () and q.remaining_text == ""


def test_longest_match_wins():
    q = QueryUnderstander(FacetDictionary.from_terms(FURNITURE)).understand("Blue Velvet SOFA bed")
    assert q.slots[-1] == Slot("category", "sofa bed", 2, 4, 1.0)
    assert len(q.slots) == 3


def test_canonical_value_and_remaining_tokens():
    q = QueryUnderstander(FacetDictionary.from_terms(MUSIC)).understand("taylor swift love")
    assert q.slots == (Slot("artist", "Taylor Swift", 0, 2, 1.0),)
    assert q.remaining_tokens == ("love",)
    assert q.remaining_text == "love"
    assert q.key == query_key("Taylor Swift love")


def test_ambiguous_phrase_takes_the_larger_field_with_its_share_as_confidence():
    dictionary = FacetDictionary.from_terms({"title": {"Love": 30}, "genre": {"love": 10}})
    assert dictionary.match(("love",)) == [Slot("title", "Love", 0, 1, 0.75)]
    tie = FacetDictionary.from_terms({"b_field": {"x": 5}, "a_field": {"x": 5}})
    assert tie.match(("x",)) == [Slot("a_field", "x", 0, 1, 0.5)]


def test_greedy_matching_is_left_to_right_and_non_overlapping():
    dictionary = FacetDictionary.from_terms({"f": {"red blue": 1, "blue green": 1, "green": 1}})
    assert [(s.value, s.start, s.end) for s in dictionary.match(("red", "blue", "green"))] == [
        ("red blue", 0, 2),
        ("green", 2, 3),
    ]


def test_stopwords_are_never_single_token_slots_but_may_sit_inside_phrases():
    assert "the" in STOPWORDS
    dictionary = FacetDictionary.from_terms({"title": {"The": 100, "The End": 5, "End": 1}})
    assert dictionary.match(("the",)) == []
    assert [s.value for s in dictionary.match(("the", "end"))] == ["The End"]
    assert [s.value for s in dictionary.match(("the", "the", "bitter", "end"))] == ["End"]


def test_spellings_that_normalise_alike_merge_and_the_most_frequent_is_canonical():
    dictionary = FacetDictionary.from_terms({"genre": {"Pop": 3, "pop": 5, "POP ": 1}, "mood": {"pop": 8}})
    (slot,) = dictionary.match(("pop",))
    assert (slot.field, slot.value) == ("genre", "pop")  # 9 > 8
    assert slot.confidence == pytest.approx(9 / 17)


def test_unusable_entries_are_skipped():
    dictionary = FacetDictionary.from_terms(
        {
            "f": {"a b c d e": 5, "🎵": 5, "": 5, "ok": 2, "neg": -1, "nan": math.nan, "bool": True, "float": 4.0},
            "not_a_mapping": 3,  # type: ignore[dict-item]
        }
    )
    assert dictionary.terms == {"f": {"a b c d e": 5, "🎵": 5, "": 5, "ok": 2, "float": 4}}
    assert dictionary.lookup("ok") == Slot("f", "ok", 0, 1, 1.0)
    assert dictionary.lookup("float") == Slot("f", "float", 0, 1, 1.0)
    assert dictionary.lookup("a b c d e") is None  # longer than MAX_SLOT_TOKENS
    assert dictionary.lookup("🎵") is None  # no tokens
    assert len(dictionary) == 2


def test_zero_counts_share_the_confidence_evenly():
    dictionary = FacetDictionary.from_terms({"a": {"x": 0}, "b": {"x": 0}})
    assert dictionary.match(["x"])[0].confidence == 0.5


def test_json_round_trip():
    dictionary = FacetDictionary.from_terms({**FURNITURE, **MUSIC})
    restored = FacetDictionary.from_json(dictionary.to_json())
    assert restored == dictionary
    tokens = tokenize(normalize_query("blue velvet sofa bed taylor swift"))
    assert restored.match(tokens) == dictionary.match(tokens)


@pytest.mark.parametrize("text", ["[]", '{"version": 2, "terms": {}}', '{"version": 1}', "not json"])
def test_from_json_rejects_other_documents(text):
    with pytest.raises(ValueError):
        FacetDictionary.from_json(text)


class FakeClient:
    """Answers ``search`` with canned terms aggregations; records every body."""

    def __init__(self, terms: dict[str, dict[str, int]], *, fail: bool = False):
        self.terms = terms
        self.fail = fail
        self.bodies: list[dict] = []

    def search(self, index, body):
        self.bodies.append(body)
        if self.fail:
            raise ConnectionError("node down")
        aggs = {}
        for name, agg in body["aggs"].items():
            values = self.terms.get(agg["terms"]["field"], {})
            buckets = [{"key": k, "doc_count": c} for k, c in sorted(values.items(), key=lambda kv: -kv[1])]
            size = agg["terms"]["size"]
            aggs[name] = {"buckets": buckets[:size], "sum_other_doc_count": sum(b["doc_count"] for b in buckets[size:])}
        return {"aggregations": aggs}


def test_build_runs_one_size_zero_search_with_a_terms_aggregation_per_field():
    client = FakeClient({"facets.colour": {"blue": 10, "red": 2}, "category": {"sofa": 50}})
    dictionary = FacetDictionary.build(client, "catalog", ["facets.colour", "category", "missing"], size=1)
    assert len(client.bodies) == 1
    body = client.bodies[0]
    assert body["size"] == 0
    assert sorted(agg["terms"]["field"] for agg in body["aggs"].values()) == ["category", "facets.colour", "missing"]
    assert all(agg["terms"]["size"] == 1 for agg in body["aggs"].values())
    assert dictionary.terms == {"facets.colour": {"blue": 10}, "category": {"sofa": 50}, "missing": {}}
    assert dictionary.meta["truncated"] == ["facets.colour"]


@pytest.mark.parametrize("fields, error", [("genre", TypeError), ([], ValueError), (["genre", ""], ValueError)])
def test_build_rejects_bad_fields(fields, error):
    with pytest.raises(error):
        FacetDictionary.build(FakeClient({}), "catalog", fields)


# -- the cache --------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def test_cache_reuses_within_ttl_and_rebuilds_after():
    client, clock = FakeClient({"genre": {"pop": 1}}), Clock()
    cache = DictionaryCache(client, ttl_s=300, clock=clock)
    first = cache.get("catalog", ["genre"])
    assert cache.get("catalog", ("genre",)) is first
    clock.now += 299
    assert cache.get("catalog", ["genre"]) is first
    assert len(client.bodies) == 1
    client.terms = {"genre": {"pop": 1, "rock": 2}}
    clock.now += 2
    second = cache.get("catalog", ["genre"])
    assert second is not first and second.lookup("rock") is not None
    assert len(client.bodies) == 2


def test_cache_keys_by_index_and_field_set():
    client = FakeClient({"genre": {"pop": 1}, "artist": {"abba": 1}})
    cache = DictionaryCache(client, clock=Clock())
    assert cache.get("i", ["genre", "artist"]) is cache.get("i", ["artist", "genre"])
    cache.get("j", ["genre", "artist"])
    cache.get("i", ["genre"])
    assert len(client.bodies) == 3


def test_cache_refresh_rebuilds_now():
    client = FakeClient({"genre": {"pop": 1}})
    cache = DictionaryCache(client, clock=Clock())
    cache.get("i", ["genre"])
    cache.get("j", ["genre"])
    cache.refresh("i")
    assert len(client.bodies) == 3
    cache.refresh()
    assert len(client.bodies) == 5
    cache.refresh("k", ["genre"])
    assert len(client.bodies) == 6
    with pytest.raises(ValueError):
        cache.refresh(fields=["genre"])


def test_cache_serves_the_stale_dictionary_when_a_rebuild_fails():
    client, clock = FakeClient({"genre": {"pop": 1}}), Clock()
    cache = DictionaryCache(client, ttl_s=10, retry_s=5, clock=clock)
    first = cache.get("i", ["genre"])
    client.fail = True
    clock.now += 11
    assert cache.get("i", ["genre"]) is first
    assert cache.get("i", ["genre"]) is first
    assert len(client.bodies) == 2  # no retry storm: next attempt after retry_s
    clock.now += 6
    cache.get("i", ["genre"])
    assert len(client.bodies) == 3
    with pytest.raises(ConnectionError):
        cache.get("other", ["genre"])  # nothing stale to serve


def test_cache_persists_to_a_json_file(tmp_path):
    path = tmp_path / "cache" / "dictionaries.json"
    client, clock = FakeClient({"genre": {"pop": 1}}), Clock()
    DictionaryCache(client, ttl_s=300, path=path, clock=clock).get("i", ["genre"])
    assert json.loads(path.read_text())["entries"][0]["terms"] == {"genre": {"pop": 1}}

    restarted = DictionaryCache(client, ttl_s=300, path=path, clock=clock)
    assert restarted.get("i", ["genre"]).lookup("pop") == Slot("genre", "pop", 0, 1, 1.0)
    assert len(client.bodies) == 1  # served from the file

    clock.now += 301
    DictionaryCache(client, ttl_s=300, path=path, clock=clock).get("i", ["genre"])
    assert len(client.bodies) == 2  # too old: rebuilt


def test_cache_ignores_a_corrupt_file(tmp_path):
    path = tmp_path / "dictionaries.json"
    path.write_text("{ not json")
    client = FakeClient({"genre": {"pop": 1}})
    cache = DictionaryCache(client, path=path, clock=Clock())
    assert len(cache.get("i", ["genre"])) == 1
    assert json.loads(path.read_text())["version"] == 1  # rewritten


# -- understanding and features -------------------------------------------------------------


def test_feature_vector_of_a_known_query():
    q = QueryUnderstander(FacetDictionary.from_terms(FURNITURE)).understand("blue velvet sofa")
    f = dict(zip(FEATURE_NAMES, q.features()))
    assert f == pytest.approx(
        {
            "bias": 1.0,
            "n_tokens": 0.3,
            "n_chars": 0.16,
            "has_slots": 1.0,
            "slot_coverage": 1.0,
            "mean_slot_confidence": 1.0,
            "n_slot_fields": 0.75,
            "has_digits": 0.0,
            "non_ascii_fraction": 0.0,
            "oov_fraction": 0.0,
            "is_single_token": 0.0,
        }
    )


def test_features_of_partial_and_ambiguous_slots():
    dictionary = FacetDictionary.from_terms({"title": {"love": 30}, "genre": {"love": 10, "pop": 5}})
    q = QueryUnderstander(dictionary).understand("pop love tayler 2024 東京")
    f = dict(zip(FEATURE_NAMES, q.features()))
    assert f["slot_coverage"] == pytest.approx(2 / 5)
    assert f["mean_slot_confidence"] == pytest.approx((1.0 + 0.75) / 2)
    assert f["n_slot_fields"] == pytest.approx(2 / 4)
    assert f["has_digits"] == 1.0
    assert f["oov_fraction"] == pytest.approx(2 / 5)  # "tayler" and "東京"; "2024" is not a typo
    assert f["non_ascii_fraction"] == pytest.approx(2 / 19)  # spaces do not count
    assert q.remaining_tokens == ("tayler", "2024", "東京")


def test_without_a_dictionary_there_are_no_slots_and_no_oov_signal():
    q = QueryUnderstander().understand("Taylor Swift")
    assert q.slots == () and q.remaining_tokens == ("taylor", "swift") and q.oov_fraction == 0.0
    assert dict(zip(FEATURE_NAMES, q.features()))["is_single_token"] == 0.0
    assert dict(zip(FEATURE_NAMES, QueryUnderstander().understand("swift").features()))["is_single_token"] == 1.0


@pytest.mark.parametrize("text", ODD_INPUTS)
def test_odd_inputs_never_raise_and_give_bounded_features(text):
    understander = QueryUnderstander(FacetDictionary.from_terms({**FURNITURE, **MUSIC, "city": {"東京": 4}}))
    q = understander.understand(text)
    assert isinstance(q, QueryUnderstanding)
    assert q.raw == text
    assert len(q.normalized) <= MAX_QUERY_CHARS
    assert q.key == query_key(text)
    assert set(q.remaining_tokens) <= set(q.tokens)
    features = q.features()
    assert features.dtype == np.float64 and features.shape == (len(FEATURE_NAMES),)
    assert np.all(np.isfinite(features)) and np.all((features >= 0) & (features <= 1))
    json.dumps({"normalized": q.normalized, "tokens": q.tokens, "key": q.key})  # safe to log and send


def test_mixed_scripts():
    q = QueryUnderstander(FacetDictionary.from_terms({"city": {"東京": 4}})).understand("東京 love 🎵")
    assert q.tokens == ("東京", "love")
    assert q.slots == (Slot("city", "東京", 0, 1, 1.0),)
    assert q.remaining_tokens == ("love",)


def test_a_broken_dictionary_costs_the_slots_not_the_query():
    class Broken(FacetDictionary):
        def match(self, tokens):
            raise RuntimeError("bug")

    q = QueryUnderstander(Broken.from_terms(MUSIC)).understand("taylor swift")
    assert q.slots == () and q.remaining_tokens == ("taylor", "swift")


def test_feature_names_are_unique_and_documented():
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES) == 11
    assert FEATURE_NAMES[0] == "bias"


def test_understanding_is_frozen():
    q = QueryUnderstander().understand("x")
    with pytest.raises(AttributeError):
        q.key = "q_0"  # type: ignore[misc]


# -- integration: a dictionary from a real index ------------------------------------------------


def test_build_from_a_real_index(os_client, index_name):
    os_client.indices.create(
        index=index_name,
        body={
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {"properties": {"genre": {"type": "keyword"}, "artist": {"type": "keyword"}}},
        },
    )
    docs = [
        {"genre": "pop", "artist": "Taylor Swift"},
        {"genre": "pop", "artist": "Taylor Swift"},
        {"genre": "pop", "artist": "ABBA"},
        {"genre": "hip hop", "artist": "Kendrick Lamar"},
        {"genre": ["pop", "synth pop"], "artist": "The Weeknd"},
    ]
    for i, doc in enumerate(docs):
        os_client.index(index=index_name, id=str(i), body=doc)
    os_client.indices.refresh(index=index_name)

    dictionary = FacetDictionary.build(os_client, index_name, ["genre", "artist"])
    assert dictionary.terms == {
        "genre": {"pop": 4, "hip hop": 1, "synth pop": 1},
        "artist": {"Taylor Swift": 2, "ABBA": 1, "Kendrick Lamar": 1, "The Weeknd": 1},
    }
    q = QueryUnderstander(dictionary).understand("taylor swift synth pop")
    assert [(s.field, s.value) for s in q.slots] == [("artist", "Taylor Swift"), ("genre", "synth pop")]
