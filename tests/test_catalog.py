"""Catalogue loading against the real node: counts, bad rows, alias swaps, interruption."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import numpy as np
import pytest

from orchestrator.catalog import (
    BulkOptions,
    CatalogError,
    IndexTemplate,
    create_version,
    drop,
    list_versions,
    load_dataset,
    swap_alias,
)
from orchestrator.datasets import Dataset

from .conftest import cli_env


def _write_dataset(root, rows, spec=None, raw_lines=()):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "wb") as f:
        for row in rows:
            f.write((json.dumps(row) + "\n").encode())
        for line in raw_lines:
            f.write(line)
    (root / "dataset.yaml").write_text(json.dumps(spec or {"name": root.name, "facets": ["genre"],
                                                           "popularity": "pop", "numeric": ["year"]}))
    return Dataset.open(root)


@pytest.fixture
def alias(os_client):
    name = f"ltrr-test-cat-{uuid.uuid4().hex[:8]}"
    yield name
    drop(os_client, name)


def _rows(n, start=0):
    rng = np.random.default_rng(start)
    return [{"_id": f"d{i}", "title": f"song {i}", "text": f"a {['pop', 'rock'][i % 2]} song number {i}",
             "genre": ["pop", "rock"][i % 2], "pop": float(rng.integers(0, 100)), "year": 1990 + i % 30,
             "embedding": rng.normal(size=384).tolist()} for i in range(start, start + n)]


def test_template_body_adds_dataset_fields_and_rejects_collisions(tmp_path):
    ds = _write_dataset(tmp_path / "x", [], {"name": "x", "facets": ["genre", "artist"], "numeric": ["year"]})
    body = IndexTemplate.load("catalog").body(ds.spec)
    props = body["mappings"]["properties"]
    assert props["genre"]["type"] == "keyword" and props["year"]["type"] == "double"
    assert props["embedding"]["method"]["engine"] == "lucene"
    assert "q2e" not in props and props["popularity"]["type"] == "rank_feature"  # the memory has its own index
    bad = _write_dataset(tmp_path / "y", [], {"name": "y", "facets": ["popularity"]})
    with pytest.raises(CatalogError, match="collides"):
        IndexTemplate.load("catalog").body(bad.spec)


def test_load_counts_swap_and_idempotent_reload(os_client, alias, tmp_path):
    ds = _write_dataset(tmp_path / "good", _rows(1200))
    report = load_dataset(os_client, ds, alias=alias, embed=True, encoder=None,
                          options=BulkOptions(chunk_size=250, threads=2))
    assert report.accepted == 1200 and not report.rejected and report.swapped
    assert os_client.count(index=alias)["count"] == 1200
    doc = os_client.get(index=alias, id="d7")["_source"]
    pop = _rows(1200)[7]["pop"]
    assert doc["genre"] == "rock" and doc["popularity_raw"] == pop and doc["popularity"] == max(pop, 1e-3)
    assert "embedding" not in doc  # vectors are indexed, not returned
    # Reloading the same rows builds v2 with the same documents (idempotent by id) and serves it.
    again = load_dataset(os_client, ds, alias=alias, encoder=None)
    assert again.index.endswith("-v2") and again.docs_in_index == 1200
    serving = [v for v in list_versions(os_client, alias) if v.serving]
    assert [v.index for v in serving] == [again.index]
    # k-NN over the loaded vectors finds a document by its own vector.
    vec = _rows(1200)[42]["embedding"]
    hit = os_client.search(index=alias, body={"size": 1, "query": {"knn": {"embedding": {"vector": vec, "k": 1}}}})
    assert hit["hits"]["hits"][0]["_id"] == "d42"


def test_bad_rows_are_reported_with_line_and_never_swapped(os_client, alias, tmp_path):
    good = _rows(5)
    wrong_dim = dict(_rows(1, 100)[0], embedding=[0.1] * 10)
    raw = [b"{broken json\n", b'{"title": "no id"}\n', b'{"_id": "u", "title": "\xff\xfe bad utf8", "text": ""}\n',
           (json.dumps(wrong_dim) + "\n").encode(), (json.dumps({"_id": "d1", "title": "dup", "text": ""}) + "\n").encode()]
    ds = _write_dataset(tmp_path / "bad", good, raw_lines=raw)
    # A first, clean version serves...
    clean = load_dataset(os_client, _write_dataset(tmp_path / "clean", _rows(3)), alias=alias, encoder=None)
    assert clean.swapped
    report = load_dataset(os_client, ds, alias=alias, encoder=None)
    lines = sorted(e.line for e in report.rejected)
    assert lines == [6, 7, 8, 9, 10]
    assert report.accepted == 5 and report.docs_in_index == 5
    assert report.accepted + len(report.rejected) == report.rows_read == 10
    # ... and keeps serving, because the new version had rejected rows.
    assert not report.swapped
    assert os_client.count(index=alias)["count"] == 3


def test_rejections_by_opensearch_are_reported(os_client, alias, tmp_path):
    rows = _rows(4)
    rows[2]["genre"] = "x" * 40000  # a valid string for the reader, an "immense term" for Lucene
    ds = _write_dataset(tmp_path / "r", rows)
    report = load_dataset(os_client, ds, alias=alias, encoder=None)
    assert report.accepted == 3 and len(report.rejected) == 1
    assert report.rejected[0].line == 3


def test_interrupted_load_leaves_previous_version_serving(os_client, alias, tmp_path):
    first = load_dataset(os_client, _write_dataset(tmp_path / "a", _rows(50)), alias=alias, encoder=None)
    big = _write_dataset(tmp_path / "b", _rows(3000))

    def interrupt(done, total):
        if done >= 500:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_dataset(os_client, big, alias=alias, encoder=None, options=BulkOptions(chunk_size=250), progress=interrupt)
    versions = list_versions(os_client, alias)
    assert [v.index for v in versions] == [first.index]  # the partial version is gone
    assert os_client.count(index=alias)["count"] == 50


def test_swap_and_drop_rules(os_client, alias):
    v1 = create_version(os_client, alias)
    swap_alias(os_client, alias, v1)
    v2 = create_version(os_client, alias)
    with pytest.raises(CatalogError, match="serving"):
        drop(os_client, alias, 1)
    swap_alias(os_client, alias, v2)
    assert list(os_client.indices.get_alias(name=alias)) == [v2]
    assert drop(os_client, alias, 1) == [v1]
    with pytest.raises(CatalogError, match="does not exist"):
        swap_alias(os_client, alias, f"{alias}-v9")


def test_cli_load_exit_codes(os_client, opensearch_url, alias, tmp_path):
    ds = _write_dataset(tmp_path / "cli", _rows(3), raw_lines=[b"nope\n"])
    env = cli_env(opensearch_url)
    cmd = [sys.executable, "-m", "orchestrator.cli", "load", str(ds.root), "--index", alias, "--no-embed"]
    failed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert "corpus.jsonl:4" in failed.stderr
    allowed = subprocess.run(cmd + ["--allow-errors"], env=env, capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 0, allowed.stderr
    assert os_client.count(index=alias)["count"] == 3


def test_failure_before_the_swap_keeps_the_old_version(os_client, alias, tmp_path, monkeypatch):
    first = load_dataset(os_client, _write_dataset(tmp_path / "a", _rows(20)), alias=alias, encoder=None)

    def broken(*args, **kwargs):
        raise ConnectionError("segments timed out")

    monkeypatch.setattr(os_client.indices, "segments", broken)  # read after the load, before the swap
    with pytest.raises(ConnectionError):
        load_dataset(os_client, _write_dataset(tmp_path / "b", _rows(30)), alias=alias, encoder=None)
    monkeypatch.undo()
    assert [v.index for v in list_versions(os_client, alias)] == [first.index]
    assert os_client.count(index=alias)["count"] == 20


def test_pruning_keeps_versions_that_served(os_client, alias, tmp_path):
    v1 = load_dataset(os_client, _write_dataset(tmp_path / "a", _rows(5)), alias=alias, encoder=None)
    bad = load_dataset(os_client, _write_dataset(tmp_path / "b", _rows(5), raw_lines=[b"oops\n"]), alias=alias,
                       encoder=None)
    assert not bad.swapped
    v3 = load_dataset(os_client, _write_dataset(tmp_path / "c", _rows(6)), alias=alias, encoder=None, keep_versions=2)
    versions = {v.index: v.serving for v in list_versions(os_client, alias)}
    # The build that never served is gone; the last good version stays for a rollback.
    assert versions == {v1.index: False, v3.index: True}


def test_one_refused_document_does_not_sink_its_chunk(os_client, index_name):
    from orchestrator.catalog import BulkWriter

    os_client.indices.create(index=index_name, body={"mappings": {"properties": {"t": {"type": "keyword"}}}})
    writer = BulkWriter(os_client, index_name, BulkOptions(chunk_size=10, threads=1))
    writer.write([[("a", {"t": "1"}, 1), ("x" * 600, {"t": "2"}, 2), ("b", {"t": "3"}, 3)]])
    os_client.indices.refresh(index=index_name)
    assert writer.accepted == 2
    assert [(doc_id[:3], line) for doc_id, line, _ in writer.rejected] == [("xxx", 2)]
    assert os_client.count(index=index_name)["count"] == 2


def test_empty_load_and_wrong_targets(os_client, alias, index_name, tmp_path):
    first = load_dataset(os_client, _write_dataset(tmp_path / "a", _rows(3)), alias=alias, encoder=None)
    empty = load_dataset(os_client, _write_dataset(tmp_path / "e", []), alias=alias, encoder=None,
                         swap_on_errors=True)
    assert not empty.swapped and empty.warnings
    assert [v.index for v in list_versions(os_client, alias) if v.serving] == [first.index]
    os_client.indices.create(index=index_name)
    with pytest.raises(CatalogError, match="not an alias"):
        load_dataset(os_client, _write_dataset(tmp_path / "x", _rows(1)), alias=index_name, encoder=None)
    (tmp_path / "nocorpus").mkdir()
    with pytest.raises(CatalogError, match="does not exist"):
        load_dataset(os_client, Dataset.open(tmp_path / "nocorpus"), alias=alias, encoder=None)
    assert len(list_versions(os_client, alias)) == 2  # nothing half-built was left behind


def test_reload_reports_the_live_size(os_client, alias, tmp_path):
    """The size after a reload of the same rows is the size of the first load, not the merged-away
    segments' files on top (the store stats counted them, cached for 10 s: about 2x)."""
    ds = _write_dataset(tmp_path / "size", _rows(1500))
    first = load_dataset(os_client, ds, alias=alias, encoder=None, options=BulkOptions(chunk_size=100))
    again = load_dataset(os_client, ds, alias=alias, encoder=None, options=BulkOptions(chunk_size=100))
    assert first.size_bytes > 1500 * 384 * 4  # at least the vectors
    assert 0.8 < again.size_bytes / first.size_bytes < 1.25, (first.size_bytes, again.size_bytes)
    for report in (first, again):  # the one merged segment, nothing else
        segments = os_client.indices.segments(index=report.index)["indices"][report.index]["shards"]["0"][0]["segments"]
        assert len(segments) == 1 and sum(s["size_in_bytes"] for s in segments.values()) == report.size_bytes


def test_oversized_text_is_loaded_with_a_warning(os_client, alias, tmp_path):
    rows = [{"_id": f"t{i}", "title": f"t{i}", "text": "word " * 10} for i in range(4)]
    rows[1]["text"] = "long text " * 120_000  # 1.2 MB
    rows[3]["title"] = "\u00e9" * 600_000  # 1.2 MB in UTF-8, 600k characters
    ds = _write_dataset(tmp_path / "big", rows, {"name": "big"})
    report = load_dataset(os_client, ds, alias=alias, embed=False)
    assert report.accepted == 4 and report.swapped
    (warning,) = [w for w in report.warnings if "over 1 MB" in w]
    assert warning.startswith("2 document(s)") and "'t1', 't3'" in warning
    small = load_dataset(os_client, _write_dataset(tmp_path / "small", rows[:1], {"name": "small"}), alias=alias,
                         embed=False)
    assert not [w for w in small.warnings if "over 1 MB" in w]
