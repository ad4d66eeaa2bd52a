"""Synthetic music catalogue: determinism, shape, queries and qrels."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.datasets import Dataset, RowError
from orchestrator.synthetic import (
    AMBIGUOUS_TITLES,
    ENTITY_TYPES,
    INTENTS,
    SyntheticCatalog,
    _Permutation,
    edit_distance,
    generate_corpus,
    generate_queries,
    main,
    write_synthetic,
)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("syn") / "s7"
    summary = write_synthetic(out, n_docs=5000, n_queries=300, seed=7)
    return out, summary


def test_same_seed_identical_files_different_seed_differs(tmp_path: Path, small):
    out, summary = small
    again = write_synthetic(tmp_path / "again", n_docs=5000, n_queries=300, seed=7)
    assert _digest(out) == _digest(tmp_path / "again")
    assert {k: v for k, v in summary.items() if k not in ("out", "seconds")} == \
        {k: v for k, v in again.items() if k not in ("out", "seconds")}
    write_synthetic(tmp_path / "other", n_docs=5000, n_queries=300, seed=8)
    other = _digest(tmp_path / "other")
    mine = _digest(out)
    assert other["corpus.jsonl"] != mine["corpus.jsonl"]
    assert other["queries.jsonl"] != mine["queries.jsonl"]
    assert other["qrels/test.tsv"] != mine["qrels/test.tsv"]


def test_written_dataset_reads_cleanly(small):
    out, summary = small
    ds = Dataset.open(out)
    assert ds.spec.name == "synthetic_music"
    assert ds.spec.popularity == "popularity" and ds.spec.entity_type == "entity_type"
    report = ds.check()
    assert report["docs"] == summary["docs"] == 5000
    assert report["corpus_errors"] == 0 and report["query_errors"] == 0
    assert report["queries"] == summary["queries"] == 300
    assert report["splits"]["test"]["errors"] == 0
    assert report["splits"]["test"]["dangling"] == 0
    assert report["splits"]["test"]["judgments"] == summary["qrels"]
    assert ds.splits() == ["test"]


def test_entity_types_ids_and_fields(small):
    out, summary = small
    rows = [r for r in Dataset.open(out).iter_corpus()]
    assert not any(isinstance(r, RowError) for r in rows)
    types = Counter(r.fields["entity_type"] for r in rows)
    assert set(types) == set(ENTITY_TYPES)
    assert types == Counter(summary["by_type"])
    assert types["track"] > types["album"] > types["artist"]
    ids = [r.id for r in rows]
    assert len(set(ids)) == len(ids)
    assert "trk_000123" in set(ids) and "art_000000" in set(ids)
    for r in rows:
        f = r.fields
        assert r.title and r.text
        assert f["popularity"] > 0
        assert isinstance(f["genre"], str) and isinstance(f["subgenre"], str)
        if f["entity_type"] == "track":
            assert r.id.startswith("trk_")
            assert {"artist", "album", "year", "duration_ms"} <= set(f)
            assert 60_000 <= f["duration_ms"] <= 600_000
            assert 1960 <= f["year"] <= 2024
    # ambiguous titles are shared by many tracks
    track_titles = Counter(r.title for r in rows if r.fields["entity_type"] == "track")
    assert all(track_titles[w] >= 5 for w in ("Love", "Home", "Hello"))
    # two-word person-like artist names exist
    names = [r.title for r in rows if r.fields["entity_type"] == "artist"]
    assert sum(1 for n in names if len(n.split()) == 2 and not n.startswith("The ")) > len(names) / 3


def test_zipf_popularity_shape():
    cat = SyntheticCatalog(20_000, seed=3)
    pops = sorted((d["popularity"] for d in cat), reverse=True)
    assert len(pops) == 20_000
    total = sum(pops)
    top1 = sum(pops[:200]) / total
    assert top1 > 0.45, top1  # s=1: H(200)/H(20000) ~= 0.56
    assert pops[0] == 100.0 and pops[1] == 50.0
    assert pops[-1] > 0
    # rank is a permutation: popularity values are 100/(rank+1), all distinct ranks
    assert len({cat.rank(g) for g in range(20_000)}) == 20_000
    # popularity is not correlated with position (random permutation)
    first_half = sum(cat.rank(g) for g in range(10_000)) / 10_000
    assert 8_000 < first_half < 12_000


def test_permutation_is_bijective_and_invertible():
    for n in (5, 17, 1000, 4097):
        p = _Permutation(n, seed=11)
        image = [p(x) for x in range(n)]
        assert sorted(image) == list(range(n))
        assert all(p.inverse(y) == x for x, y in enumerate(image))


def test_scale_streams_counts_without_materialising():
    n = 20_000
    it = generate_corpus(n, seed=5)
    count = 0
    by_type: Counter[str] = Counter()
    for d in it:
        count += 1
        by_type[d["entity_type"]] += 1
    assert count == n
    assert sum(by_type.values()) == n
    cat = SyntheticCatalog(n, seed=5)
    assert by_type == Counter(cat.counts)
    # random access matches streaming
    docs = list(SyntheticCatalog(200, seed=5))
    assert all(SyntheticCatalog(200, seed=5).doc(g) == docs[g] for g in (0, 57, 123, 199))


def test_relations_are_consistent():
    cat = SyntheticCatalog(3000, seed=2)
    docs = {d["_id"]: d for d in cat}
    for d in docs.values():
        if d["entity_type"] == "track":
            alb = docs[d["album_id"]]
            art = docs[d["artist_id"]]
            assert alb["title"] == d["album"] and art["title"] == d["artist"] == alb["artist"]
            assert alb["year"] == d["year"]
    n_tracks = sum(d.get("track_count", 0) for d in docs.values() if d["entity_type"] == "album")
    assert n_tracks == cat.counts["track"]


def test_queries_intents_and_qrels(small):
    out, _ = small
    ds = Dataset.open(out)
    queries = {q.id: q for q in ds.iter_queries()}
    corpus = {r.id: r for r in ds.iter_corpus()}
    qrels = ds.qrels("test")
    intents = Counter(q.fields["intent"] for q in queries.values())
    assert set(intents) == set(INTENTS)
    assert len({q.text for q in queries.values()}) == len(queries)  # unique texts
    for qid, q in queries.items():
        judged = qrels[qid]
        assert judged and max(judged.values()) >= 1
        assert all(g in (1, 2, 3) for g in judged.values())
        intent = q.fields["intent"]
        if intent == "exact_title":
            target = q.fields["target"]
            assert judged[target] == 3
            assert corpus[target].title.lower() == q.text
        elif intent == "artist":
            top = [d for d, g in judged.items() if g == 3]
            assert all(corpus[d].fields["entity_type"] == "artist" and corpus[d].title.lower() == q.text for d in top)
            assert q.fields["target"] in top
        elif intent == "ambiguous":
            assert q.text in {w.lower() for w in AMBIGUOUS_TITLES}
            assert all(corpus[d].title.lower() == q.text for d in judged)
            # graded by popularity: every grade-3 doc is more popular than every grade-1 doc
            p3 = min(corpus[d].fields["popularity"] for d, g in judged.items() if g == 3)
            p1 = max(corpus[d].fields["popularity"] for d, g in judged.items() if g == 1)
            assert p3 > p1
        elif intent == "genre":
            assert all(q.text.split()[0] in (corpus[d].fields["genre"] + " " + corpus[d].fields["subgenre"])
                       for d in judged)
        elif intent == "misspelled":
            assert q.fields["target"] in judged


def test_misspelled_queries_are_small_edits(small):
    out, _ = small
    queries = [q for q in Dataset.open(out).iter_queries() if q.fields["intent"] == "misspelled"]
    assert len(queries) >= 20
    for q in queries:
        base = q.fields["base_text"]
        d = edit_distance(q.text, base)
        assert 1 <= d <= 2, (q.text, base, d)
        assert q.text[0] == base[0]


def test_edit_distance():
    assert edit_distance("taylor love", "tayler love") == 1
    assert edit_distance("taylor", "tyalor") == 1  # transposition
    assert edit_distance("abc", "abc") == 0
    assert edit_distance("", "abc") == 3
    assert edit_distance("kitten", "sitting") == 3


def test_generate_queries_matches_written(small):
    out, _ = small
    qs = generate_queries(5000, 300, seed=7)
    written = {q.id: q for q in Dataset.open(out).iter_queries()}
    qrels = Dataset.open(out).qrels()
    assert [q.id for q in qs] == list(written)
    for q in qs:
        assert q.text == written[q.id].text
        assert dict(q.qrels) == qrels[q.id]


def test_tiny_catalog_and_bad_sizes(tmp_path: Path):
    s = write_synthetic(tmp_path / "tiny", n_docs=5, n_queries=3, seed=0)
    assert s["docs"] == 5 and set(s["by_type"]) == set(ENTITY_TYPES)
    assert 1 <= s["queries"] <= 3
    with pytest.raises(ValueError):
        SyntheticCatalog(4)


def test_cli(tmp_path: Path, capsys):
    assert main([str(tmp_path / "cli"), "--docs", "500", "--queries", "20", "--seed", "4"]) == 0
    assert '"docs": 500' in capsys.readouterr().out
    assert (tmp_path / "cli" / "dataset.yaml").exists()
    assert Dataset.open(tmp_path / "cli").count_corpus_lines() == 500


def test_spec_fits_the_catalogue_template(small):
    """Facet/numeric names must not collide with the catalogue's own fields."""
    from orchestrator import catalog
    out, _ = small
    spec = Dataset.open(out).spec
    body = catalog.IndexTemplate.load("catalog").body(spec)
    props = body["mappings"]["properties"]
    assert set(spec.facets) | set(spec.numeric) <= set(props)
