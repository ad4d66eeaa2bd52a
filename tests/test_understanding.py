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
    """A fake node for ``FacetDictionary.build``: field mappings, composite aggregations paged by
    ``after_key``, ``_analyze`` and settings. Records every search body; counts builds (each
    starts with one field-mapping read)."""

    def __init__(self, terms: dict[str, dict[str, int]], *, fail: bool = False, normalized=(),
                 stored: dict[str, int] | None = None):
        self.terms = terms  # field -> {key as aggregated: doc_count}
        self.fail = fail
        self.normalized = set(normalized)  # fields with the lowercase_ascii normalizer
        self.stored = stored  # facets_all: {value as stored: doc_count}; None = unmapped
        self.bodies: list[dict] = []
        self.analyzed: list[str] = []
        self.builds = 0
        self.indices = self

    def get_field_mapping(self, index, fields):
        self.builds += 1
        if self.fail:
            raise ConnectionError("node down")
        mapped = {f for f in fields if f in self.terms or (f == "facets_all" and self.stored is not None)}
        return {f"{index}-v1": {"mappings": {
            f: {"full_name": f, "mapping": {f: {"type": "keyword", **({"normalizer": "lowercase_ascii"}
                                                                        if f in self.normalized else {})}}}
            for f in mapped}}}

    def get_settings(self, index):
        return {f"{index}-v1": {"settings": {"index": {"analysis": {"normalizer": {
            "lowercase_ascii": {"type": "custom", "filter": ["lowercase", "asciifolding"]}}}}}}}

    def analyze(self, index, body):
        import unicodedata

        self.analyzed.extend(body["text"])
        def fold(t):
            return "".join(c for c in unicodedata.normalize("NFKD", t) if not unicodedata.combining(c)).lower()

        return {"tokens": [{"token": fold(t), "position": i} for i, t in enumerate(body["text"])]}

    def search(self, index, body):
        self.bodies.append(body)
        composite = body["aggs"]["values"]["composite"]
        field_name = composite["sources"][0]["v"]["terms"]["field"]
        values = (self.stored or {}) if field_name == "facets_all" else self.terms.get(field_name, {})
        after = composite.get("after", {}).get("v")
        keys = [k for k in sorted(values) if after is None or k > after][: composite["size"]]
        agg = {"buckets": [{"key": {"v": k}, "doc_count": values[k]} for k in keys]}
        if keys:
            agg["after_key"] = {"v": keys[-1]}
        return {"aggregations": {"values": agg}}


def test_build_pages_every_value_with_a_composite_aggregation():
    colours = {f"colour {i:02d}": i + 1 for i in range(25)}
    client = FakeClient({"facets.colour": colours, "category": {"sofa": 50}})
    dictionary = FacetDictionary.build(client, "catalog", ["facets.colour", "category", "missing"], size=10)
    assert dictionary.terms == {"facets.colour": colours, "category": {"sofa": 50}, "missing": {}}
    assert all(b["size"] == 0 and b["aggs"]["values"]["composite"]["size"] <= 10 for b in client.bodies)
    assert len(client.bodies) == 3 + 1 + 1  # 25 colours in pages of 10, then one page each
    assert [b["aggs"]["values"]["composite"].get("after") for b in client.bodies[:3]] == [
        None, {"v": "colour 09"}, {"v": "colour 19"}]
    assert dictionary.meta["truncated"] == [] and dictionary.meta["values"] == 26


def test_a_truncated_dictionary_is_never_silent(caplog):
    colours = {f"colour {i:02d}": 1 for i in range(25)}
    client = FakeClient({"colour": colours, "category": {"sofa": 50}})
    with caplog.at_level("WARNING", logger="orchestrator.understanding"):
        dictionary = FacetDictionary.build(client, "catalog", ["colour", "category", "missing"], size=10, max_values=12)
    assert len(dictionary.terms["colour"]) == 12 and dictionary.terms["category"] == {}
    assert dictionary.meta["truncated"] == ["colour", "category"]
    assert "colour, category" in caplog.text and "12 values" in caplog.text
    full = FacetDictionary.build(client, "catalog", ["colour"], size=10, max_values=25)
    assert full.meta["truncated"] == [] and len(full.terms["colour"]) == 25  # exactly at the cap is complete


def test_normalized_keys_become_stored_spellings():
    """A field with a normalizer aggregates to lowercased keys; the canonical values are the stored
    spellings from facets_all (the most frequent when several), matched through the normalizer."""
    client = FakeClient(
        {"artist": {"taylor swift": 3, "ac/dc": 2, "beyonce": 1, "royksopp": 1}, "genre": {"Pop": 7}},
        normalized={"artist"},
        stored={"Taylor Swift": 2, "TAYLOR SWIFT": 1, "AC/DC": 2, "Beyoncé": 1, "Pop": 7})
    dictionary = FacetDictionary.build(client, "catalog", ["artist", "genre"])
    assert dictionary.terms == {"artist": {"Taylor Swift": 3, "AC/DC": 2, "Beyoncé": 1, "royksopp": 1},
                                "genre": {"Pop": 7}}
    assert dictionary.meta["unresolved"] == 1  # no stored spelling of "royksopp": the key stays
    assert client.analyzed == ["Beyoncé"]  # ASCII values are lowercased locally
    q = QueryUnderstander(dictionary).understand("TAYLOR swift ac/dc Beyoncé")
    assert [(s.field, s.value) for s in q.slots] == [("artist", "Taylor Swift"), ("artist", "AC/DC"),
                                                     ("artist", "Beyoncé")]


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
    assert client.builds == 1
    client.terms = {"genre": {"pop": 1, "rock": 2}}
    clock.now += 2
    second = cache.get("catalog", ["genre"])
    assert second is not first and second.lookup("rock") is not None
    assert client.builds == 2


def test_cache_keys_by_index_and_field_set():
    client = FakeClient({"genre": {"pop": 1}, "artist": {"abba": 1}})
    cache = DictionaryCache(client, clock=Clock())
    assert cache.get("i", ["genre", "artist"]) is cache.get("i", ["artist", "genre"])
    cache.get("j", ["genre", "artist"])
    cache.get("i", ["genre"])
    assert client.builds == 3


def test_cache_refresh_rebuilds_now():
    client = FakeClient({"genre": {"pop": 1}})
    cache = DictionaryCache(client, clock=Clock())
    cache.get("i", ["genre"])
    cache.get("j", ["genre"])
    cache.refresh("i")
    assert client.builds == 3
    cache.refresh()
    assert client.builds == 5
    cache.refresh("k", ["genre"])
    assert client.builds == 6
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
    assert client.builds == 2  # no retry storm: next attempt after retry_s
    clock.now += 6
    cache.get("i", ["genre"])
    assert client.builds == 3
    with pytest.raises(ConnectionError):
        cache.get("other", ["genre"])  # nothing stale to serve


def test_cache_persists_to_a_json_file(tmp_path):
    path = tmp_path / "cache" / "dictionaries.json"
    client, clock = FakeClient({"genre": {"pop": 1}}), Clock()
    DictionaryCache(client, ttl_s=300, path=path, clock=clock).get("i", ["genre"])
    assert json.loads(path.read_text())["entries"][0]["terms"] == {"genre": {"pop": 1}}

    restarted = DictionaryCache(client, ttl_s=300, path=path, clock=clock)
    assert restarted.get("i", ["genre"]).lookup("pop") == Slot("genre", "pop", 0, 1, 1.0)
    assert client.builds == 1  # served from the file

    clock.now += 301
    DictionaryCache(client, ttl_s=300, path=path, clock=clock).get("i", ["genre"])
    assert client.builds == 2  # too old: rebuilt


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


def test_catalogue_dictionary_keeps_stored_spellings_and_its_slots_match(os_client, tmp_path):
    """The catalogue's facet fields lowercase their values (normalizer lowercase_ascii); the
    dictionary still gives the stored spelling, read over several pages, and the slot clauses the
    pipeline builds from it match the documents (on the facet field and on facets_all)."""
    import uuid

    from orchestrator.catalog import drop, load_dataset
    from orchestrator.datasets import Dataset
    from orchestrator.pipeline import SearchPipeline
    from orchestrator.strategies import load_plans, sync_plans

    artists = ["Taylor Swift", "AC/DC", "Beyoncé", "The Weeknd", "ABBA", "Miles Davis", "Nina Simone", "Daft Punk"]
    root = tmp_path / "mixed"
    root.mkdir()
    rows = [{"_id": f"d{i}", "title": f"Song {i}", "text": "a song", "artist": artist, "genre": ["Pop", "Jazz"][i % 2]}
            for i, artist in enumerate(artists + ["Taylor Swift"])]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "dataset.yaml").write_text(json.dumps({"name": "mixed", "facets": ["artist", "genre"]}))
    alias = f"ltrr-test-dict-{uuid.uuid4().hex[:8]}"
    load_dataset(os_client, Dataset.open(root), alias=alias, embed=False)
    try:
        dictionary = FacetDictionary.build(os_client, alias, ["artist", "genre"], size=3)  # 8 artists: 3 pages
        assert dictionary.terms["artist"] == {**{a: 1 for a in artists}, "Taylor Swift": 2}
        assert dictionary.terms["genre"] == {"Pop": 5, "Jazz": 4}
        assert dictionary.meta["truncated"] == [] and dictionary.meta["unresolved"] == 0

        u = QueryUnderstander(dictionary).understand("taylor swift pop")
        assert [(s.field, s.value) for s in u.slots] == [("artist", "Taylor Swift"), ("genre", "Pop")]
        for slot in u.slots:  # the stored form matches the plain keyword facets_all too
            assert os_client.count(index=alias, body={"query": {"term": {"facets_all": slot.value}}})["count"] > 0

        sync_plans(os_client, load_plans())
        pipe = SearchPipeline(os_client, alias, load_plans(), encoder=None)
        (call,), _ = pipe.calls_for(pipe.understander().understand("AC/DC"), None, {"structured": 10})
        assert call.params["slot_clauses"] == [{"term": {"artist": {"value": "AC/DC", "boost": 2.0}}}]
        resp = pipe.search("taylor swift", strategies=["structured"])
        assert resp.errors == {} and {h.doc_id for h in resp.hits} == {"d0", "d8"}
    finally:
        drop(os_client, alias)
