"""Reader for the BEIR layout: every bad-input kind becomes a RowError, nothing is dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.datasets import (
    EMBEDDING_DIM,
    CorpusRow,
    Dataset,
    DatasetSpec,
    DatasetSpecError,
    QueryRow,
    RowError,
    read_qrels,
    write_jsonl,
    write_qrels,
    write_spec,
)

SPEC_YAML = """\
name: music
description: test fixture
facets: [genre, artist]
popularity: popularity
entity_type: entity_type
numeric: [duration_ms, year]
"""


def _write(root: Path, corpus_lines: list[bytes | str], *, spec: str | None = SPEC_YAML) -> Dataset:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "wb") as fh:
        for line in corpus_lines:
            fh.write(line if isinstance(line, bytes) else line.encode("utf-8"))
            fh.write(b"\n")
    if spec is not None:
        (root / "dataset.yaml").write_text(spec, encoding="utf-8")
    return Dataset.open(root)


def _j(**kw: object) -> str:
    return json.dumps(kw)


def _split(items):
    rows = [r for r in items if not isinstance(r, RowError)]
    errs = [r for r in items if isinstance(r, RowError)]
    return rows, errs


GOOD = _j(_id="d1", title="Hello", text="a song", genre="pop", artist=["A", "B"], popularity=3.5,
          entity_type="track", duration_ms=180000, year=2001, extra={"nested": True})


# (bad line, expected fragment of the reason)
BAD_CASES = [
    ('{"_id": "x", "title": "t"', "invalid JSON"),
    ("[1, 2, 3]", "JSON array, expected an object"),
    ('"just a string"', "JSON string, expected an object"),
    (_j(title="no id", text="t"), "missing _id"),
    (_j(_id="", title="t", text="t"), "empty _id"),
    (_j(_id="   ", title="t", text="t"), "empty _id"),
    (_j(_id=None, title="t", text="t"), "_id must be a string"),
    (_j(_id=["a"], title="t", text="t"), "_id must be a string"),
    (_j(_id="x1", title=5, text="t"), "title must be a string"),
    (_j(_id="x2", title="t", text=["a"]), "text must be a string"),
    (_j(_id="x4", title="t", genre=7), "field 'genre' must be a string or a list of strings"),
    (_j(_id="x5", title="t", artist=["a", 3]), "field 'artist'[1] must be a string"),
    (_j(_id="x6", title="t", entity_type={"k": 1}), "field 'entity_type' must be a string"),
    (_j(_id="x7", title="t", popularity="high"), "field 'popularity' must be a number"),
    (_j(_id="x8", title="t", popularity=-1), "field 'popularity' must be >= 0"),
    (_j(_id="x9", title="t", popularity=True), "field 'popularity' must be a number"),
    ('{"_id": "x10", "title": "t", "popularity": NaN}', "field 'popularity' must be finite"),
    ('{"_id": "x11", "title": "t", "year": Infinity}', "field 'year' must be finite"),
    (_j(_id="x12", title="t", duration_ms="3:20"), "field 'duration_ms' must be a number"),
    (_j(_id="x13", title="t", embedding=[0.1] * 10), f"has 10 values, expected {EMBEDDING_DIM}"),
    (_j(_id="x14", title="t", embedding="0.1,0.2"), "must be a list of 384 numbers"),
    (_j(_id="x15", title="t", embedding=[0.1] * 383 + ["x"]), "'embedding'[383] must be a number"),
    ('{"_id": "x16", "title": "t", "embedding": [' + ", ".join(["0.5"] * 383 + ["NaN"]) + "]}",
     "'embedding'[383] must be finite"),
    (b'{"_id": "x17", "title": "caf\xe9"}', "invalid UTF-8"),
]


@pytest.mark.parametrize("bad,fragment", BAD_CASES, ids=[f"case{i}" for i in range(len(BAD_CASES))])
def test_each_bad_kind_is_a_row_error_with_path_line_reason(tmp_path: Path, bad, fragment):
    ds = _write(tmp_path / "ds", [GOOD, bad, _j(_id="d3", title="After", text="still read")])
    rows, errs = _split(list(ds.iter_corpus()))
    assert [r.id for r in rows] == ["d1", "d3"], "good rows before and after the bad line must come through"
    assert len(errs) == 1
    e = errs[0]
    assert e.path == str(tmp_path / "ds" / "corpus.jsonl")
    assert e.line == 2
    assert fragment in e.reason, e.reason
    assert len(rows) + len(errs) == ds.count_corpus_lines() == 3


def test_all_bad_kinds_together_nothing_dropped(tmp_path: Path):
    lines: list[bytes | str] = []
    expected_bad_lines = []
    for i, (bad, _) in enumerate(BAD_CASES):
        lines.append(_j(_id=f"good{i}", title=f"t{i}", text="x"))
        lines.append(bad)
        expected_bad_lines.append(2 * i + 2)
    lines.append(_j(_id="good0", title="dup", text="later duplicate"))  # duplicate id
    lines.append("")  # blank lines carry no row
    lines.append("   ")
    ds = _write(tmp_path / "ds", lines)
    items = list(ds.iter_corpus())
    rows, errs = _split(items)
    assert len(rows) == len(BAD_CASES)
    assert [e.line for e in errs] == expected_bad_lines + [2 * len(BAD_CASES) + 1]
    assert "duplicate _id 'good0'" in errs[-1].reason
    assert len(rows) + len(errs) == ds.count_corpus_lines() == 2 * len(BAD_CASES) + 1
    # file order is preserved
    assert [x.line for x in items] == sorted(x.line for x in items)


def test_good_row_typed_and_fields_passed_through(tmp_path: Path):
    emb = [0.01 * i for i in range(EMBEDDING_DIM)]
    ds = _write(tmp_path / "ds", [GOOD, _j(_id=42, title="int id", embedding=emb, popularity=0, genre=[]),
                                  _j(_id="empty", title="", text=None)])
    rows, errs = _split(list(ds.iter_corpus()))
    assert errs == []
    r0, r1, r2 = rows
    assert isinstance(r0, CorpusRow)
    assert (r0.id, r0.title, r0.text, r0.line) == ("d1", "Hello", "a song", 1)
    assert dict(r0.fields) == {"genre": "pop", "artist": ["A", "B"], "popularity": 3.5, "entity_type": "track",
                               "duration_ms": 180000, "year": 2001, "extra": {"nested": True}}
    assert r1.id == "42" and r1.text == ""
    assert r2.id == "empty" and (r2.title, r2.text) == ("", "")  # empty records are kept
    assert r1.fields["embedding"] == tuple(emb)
    assert len(r1.fields["embedding"]) == EMBEDDING_DIM
    with pytest.raises(TypeError):
        r0.fields["genre"] = "rock"  # read-only mapping


def test_duplicate_id_reported_for_later_occurrence(tmp_path: Path):
    ds = _write(tmp_path / "ds", [_j(_id="a", title="first"), _j(_id="b", title="b"), _j(_id="a", title="second")])
    rows, errs = _split(list(ds.iter_corpus()))
    assert [(r.id, r.title) for r in rows] == [("a", "first"), ("b", "b")]
    assert errs == [RowError(str(ds.corpus_path), 3, "duplicate _id 'a' (an earlier line has the same id)")]


def test_without_spec_extra_fields_unchecked_but_embedding_checked(tmp_path: Path):
    ds = _write(tmp_path / "plain", [_j(_id="a", title="t", genre=7, popularity="x"),
                                     _j(_id="b", title="t", embedding=[1.0])], spec=None)
    assert ds.spec == DatasetSpec(name="plain")
    rows, errs = _split(list(ds.iter_corpus()))
    assert [r.id for r in rows] == ["a"] and rows[0].fields["genre"] == 7
    assert len(errs) == 1 and errs[0].line == 2 and "expected 384" in errs[0].reason


def test_crlf_bom_and_default_entity_type(tmp_path: Path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "corpus.jsonl").write_bytes(b'\xef\xbb\xbf{"_id": "a", "title": "t"}\r\n{"_id": "b", "text": "u", "kind": "x"}\r\n')
    (root / "dataset.yaml").write_text("entity_type: kind\ndefault_entity_type: paper\n")
    ds = Dataset.open(root)
    assert ds.spec.name == "ds"
    rows, errs = _split(list(ds.iter_corpus()))
    assert errs == []
    assert [r.fields["kind"] for r in rows] == ["paper", "x"]


def test_queries(tmp_path: Path):
    root = tmp_path / "ds"
    _write(root, [GOOD])
    (root / "queries.jsonl").write_bytes(b"\n".join([
        _j(_id="q1", text="hello", intent="exact").encode(),
        _j(_id="q2").encode(),
        _j(_id="q3", text="").encode(),
        _j(_id="q4", text=5).encode(),
        b"not json",
        _j(text="no id").encode(),
        _j(_id="q1", text="dup").encode(),
        b'{"_id": "q8", "text": "\xff"}',
        _j(_id=9, text="ok").encode(),
    ]) + b"\n")
    ds = Dataset.open(root)
    rows, errs = _split(list(ds.iter_queries()))
    assert rows == [QueryRow("q1", "hello", rows[0].fields, 1), QueryRow("9", "ok", rows[1].fields, 9)]
    assert dict(rows[0].fields) == {"intent": "exact"}
    assert [(e.line, e.reason) for e in errs] == [
        (2, "_id 'q2': missing text"),
        (3, "_id 'q3': empty text"),
        (4, "_id 'q4': text must be a string, got number"),
        (5, errs[3].reason),
        (6, "missing _id"),
        (7, "duplicate _id 'q1' (an earlier line has the same id)"),
        (8, errs[6].reason),
    ]
    assert errs[3].reason.startswith("invalid JSON")
    assert errs[6].reason.startswith("invalid UTF-8")
    assert all(e.path == str(root / "queries.jsonl") for e in errs)
    assert len(rows) + len(errs) == ds.count_query_lines()


def test_qrels_good_and_malformed(tmp_path: Path):
    root = tmp_path / "ds"
    _write(root, [GOOD])
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_bytes(
        b"query-id\tcorpus-id\tscore\n"
        b"q1\td1\t2\n"
        b"q1\td2\t0\n"
        b"q1\td3\n"           # 3: too few columns
        b"q2\td1\thigh\n"     # 4: not an integer
        b"q2\td1\t1.5\n"      # 5: not an integer
        b"q2\td1\t1.0\n"      # ok -> 1
        b"q1\td1\t3\n"        # 7: duplicate pair
        b"\td1\t1\n"          # 8: empty query id
        b"q3\t\t1\n"          # 9: empty corpus id
        b"q3 0 d9 2\n"        # TREC 4-column, whitespace separated
        b"q3\td\xff\t1\n"     # 11: invalid utf-8
        b"q3\td8\t-1\n"       # negative grades are kept (non-relevant)
    )
    (root / "qrels" / "train.tsv").write_text("q1\td1\t1\n")  # header optional
    ds = Dataset.open(root)
    assert ds.splits() == ["test", "train"]
    qrels, errs = ds.qrels_with_errors("test")
    assert qrels == {"q1": {"d1": 2, "d2": 0}, "q2": {"d1": 1}, "q3": {"d9": 2, "d8": -1}}
    assert ds.qrels() == qrels
    assert [e.line for e in errs] == [4, 5, 6, 8, 9, 10, 12]
    reasons = [e.reason for e in errs]
    assert "expected 3 columns" in reasons[0]
    assert "'high' is not an integer" in reasons[1]
    assert "'1.5' is not an integer" in reasons[2]
    assert "duplicate judgment" in reasons[3]
    assert reasons[4] == "empty query-id"
    assert reasons[5] == "empty corpus-id"
    assert reasons[6].startswith("invalid UTF-8")
    assert all(e.path == str(root / "qrels" / "test.tsv") for e in errs)
    assert ds.qrels("train") == {"q1": {"d1": 1}}
    with pytest.raises(FileNotFoundError):
        ds.qrels("dev")
    # same function is usable standalone
    assert read_qrels(root / "qrels" / "test.tsv") == (qrels, errs)


def test_writers_roundtrip_and_check(tmp_path: Path):
    root = tmp_path / "rt"
    write_jsonl(root / "corpus.jsonl", [{"_id": "a", "title": "Ünïcode", "text": "x", "genre": "pop", "popularity": 1.0},
                                        {"_id": "b", "title": "b", "text": "y"}])
    write_jsonl(root / "queries.jsonl", [{"_id": "q", "text": "unicode"}])
    write_qrels(root / "qrels" / "test.tsv", {"q": {"a": 2, "zzz": 1}})
    write_spec(root, DatasetSpec(name="rt", facets=("genre",), popularity="popularity"))
    ds = Dataset.open(root)
    assert ds.spec.facets == ("genre",)
    rows, errs = _split(list(ds.iter_corpus()))
    assert errs == [] and rows[0].title == "Ünïcode"
    report = ds.check()
    assert report["docs"] == 2 and report["queries"] == 1
    assert report["splits"]["test"]["judgments"] == 2
    assert report["splits"]["test"]["dangling"] == 1  # 'zzz' is not in the corpus


def test_check_explains_qrels_of_rejected_queries(tmp_path: Path):
    """A judged query whose row was rejected is named with the row's line and reason, not as
    "not in queries.jsonl"; also when every query row was rejected."""
    root = tmp_path / "q"
    write_jsonl(root / "corpus.jsonl", [{"_id": "a", "title": "t", "text": "x"}])
    (root / "queries.jsonl").write_text(
        _j(_id="q1", text="fine") + "\n" + _j(_id="q2", text="  ") + "\n" + _j(_id="q3", text=7) + "\n")
    write_qrels(root / "qrels" / "test.tsv", {"q1": {"a": 1}, "q2": {"a": 1}, "q3": {"a": 1}, "q9": {"a": 1}})
    split = Dataset.open(root).check()["splits"]["test"]
    assert split["dangling"] == 3
    samples = split["error_samples"]
    assert any("'q2': its query was rejected (queries.jsonl line 2: _id 'q2': empty text)" in e for e in samples)
    assert any("'q3': its query was rejected (queries.jsonl line 3: _id 'q3': text must be a string" in e
               for e in samples)
    assert any("query-id 'q9' not in queries.jsonl" in e for e in samples)
    # Only rejected rows: still reported (an empty set of good ids used to silence the check).
    (root / "queries.jsonl").write_text(_j(_id="q2", text="") + "\n")
    split = Dataset.open(root).check()["splits"]["test"]
    assert split["dangling"] == 4
    assert any("'q2': its query was rejected (queries.jsonl line 1" in e for e in split["error_samples"])


# ------------------------------------------------------------------------------------ spec


def test_spec_loads_and_roundtrips(tmp_path: Path):
    (tmp_path / "dataset.yaml").write_text(SPEC_YAML)
    spec = DatasetSpec.load(tmp_path / "dataset.yaml")
    assert spec == DatasetSpec(name="music", description="test fixture", facets=("genre", "artist"),
                               popularity="popularity", entity_type="entity_type", numeric=("duration_ms", "year"))
    assert spec.keyword_fields == ("genre", "artist", "entity_type")
    assert spec.numeric_fields == ("duration_ms", "year", "popularity")
    assert DatasetSpec.from_mapping(spec.to_mapping()) == spec
    with pytest.raises(Exception):
        spec.name = "other"  # frozen


def test_spec_empty_file_defaults_name(tmp_path: Path):
    d = tmp_path / "mydata"
    d.mkdir()
    (d / "dataset.yaml").write_text("")
    assert DatasetSpec.load(d / "dataset.yaml") == DatasetSpec(name="mydata")


@pytest.mark.parametrize("data,fragment", [
    ({"name": "x", "facet": ["a"]}, "unknown key(s) facet"),
    ({"name": "x", "weights": 1, "zzz": 2}, "unknown key(s) weights, zzz"),
    ({"name": 5}, "'name' must be a non-empty string"),
    ({"name": ""}, "'name' must be a non-empty string"),
    ({"description": ["a"]}, "'description' must be a string"),
    ({"facets": "genre"}, "must be a list of strings, got a string"),
    ({"facets": {"genre": 1}}, "'facets' must be a list of strings, got object"),
    ({"facets": ["genre", 3]}, "'facets'[1] must be a non-empty string"),
    ({"facets": ["genre", "genre"]}, "lists genre more than once"),
    ({"numeric": [None]}, "'numeric'[0] must be a non-empty string"),
    ({"popularity": ["a"]}, "'popularity' must be a non-empty string"),
    ({"entity_type": 3}, "'entity_type' must be a non-empty string"),
    ({"facets": ["year"], "numeric": ["year"]}, "both a facet (keyword) and numeric"),
    ({"facets": ["pop"], "popularity": "pop"}, "cannot also be a facet"),
    ({"entity_type": "kind", "numeric": ["kind"]}, "cannot also be numeric"),
    ({"facets": ["title"]}, "reserved"),
    ({"numeric": ["embedding"]}, "reserved"),
    (["not", "a", "mapping"], "top level must be a mapping"),
])
def test_spec_validation_errors(data, fragment):
    with pytest.raises(DatasetSpecError) as ei:
        DatasetSpec.from_mapping(data, source="dataset.yaml")
    msg = str(ei.value)
    assert fragment in msg, msg
    assert msg.startswith("dataset.yaml: ")


def test_spec_invalid_yaml_and_dataset_open(tmp_path: Path):
    (tmp_path / "dataset.yaml").write_text("facets: [a, b\n")
    with pytest.raises(DatasetSpecError, match="invalid YAML"):
        DatasetSpec.load(tmp_path / "dataset.yaml")
    (tmp_path / "corpus.jsonl").write_text("")
    with pytest.raises(DatasetSpecError):
        Dataset.open(tmp_path)
    with pytest.raises(FileNotFoundError):
        Dataset.open(tmp_path / "missing")


def test_spec_direct_construction_is_validated():
    with pytest.raises(DatasetSpecError, match="reserved"):
        DatasetSpec(name="x", facets=("_id",))
    with pytest.raises(DatasetSpecError, match="tuple of non-empty strings"):
        DatasetSpec(name="x", facets=["a"])  # type: ignore[arg-type]


def test_overlong_id_is_a_row_error(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "corpus.jsonl").write_text(json.dumps({"_id": "é" * 300, "title": "t", "text": ""}) + "\n"
                                       + json.dumps({"_id": "ok", "title": "t", "text": ""}) + "\n")
    items = list(Dataset.open(root).iter_corpus())
    assert isinstance(items[0], RowError) and "512 bytes" in items[0].reason and items[0].line == 1
    assert items[1].id == "ok"
