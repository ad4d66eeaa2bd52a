"""Converters on the real source data (skipped when ../shared is absent). Outputs go to tmp_path."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
import zipfile
from pathlib import Path

import pytest

from orchestrator.datasets import Dataset, RowError

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    if os.environ.get("LTRR_SHARED_DIR"):
        return Path(os.environ["LTRR_SHARED_DIR"])
    return Path(__file__).resolve().parents[2] / "shared"


DATA = _shared_dir() / "data"


def _load_script(name: str):
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"ltrr_scripts_{name}", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _src(name: str) -> Path:
    src = DATA / name
    if not src.is_dir():
        pytest.skip(f"shared data not available: {src}")
    return src


def _read_all(out: Path):
    ds = Dataset.open(out)
    rows = list(ds.iter_corpus())
    errors = [r for r in rows if isinstance(r, RowError)]
    assert errors == [], errors[:5]
    queries = list(ds.iter_queries())
    assert not any(isinstance(q, RowError) for q in queries)
    qrels, qerrs = ds.qrels_with_errors("test")
    assert qerrs == []
    return ds, rows, queries, qrels


# ------------------------------------------------------------------------------ cranfield


@pytest.fixture(scope="module")
def cranfield(tmp_path_factory):
    src = _src("cranfield")
    mod = _load_script("convert_cranfield")
    out = tmp_path_factory.mktemp("cran")
    summary = mod.convert(src, out)
    return mod, src, out, summary


@pytest.mark.shared_data
def test_cranfield_counts(cranfield):
    _mod, _src_dir, out, summary = cranfield
    ds, rows, queries, qrels = _read_all(out)
    assert len(rows) == summary["docs"] == 1400
    assert len(queries) == summary["queries"] == 225
    assert summary["problems"] == []
    assert "unexpected_counts" not in summary
    # 1837 cranqrel rows = 1612 graded (codes 1..4) + 225 code -1 (dropped by default)
    assert summary["codes"] == {-1: 225, 1: 128, 2: 387, 3: 734, 4: 363}
    assert summary["qrels"] == 1612
    assert sum(len(d) for d in qrels.values()) == 1612
    assert len(qrels) == 225  # every query has graded judgments
    assert ds.spec.name == "cranfield" and ds.spec.facets == ("author",)
    assert {r.id for r in rows} == {str(i) for i in range(1, 1401)}
    # empty source records are kept, not dropped
    empty = {r.id for r in rows if not r.title and not r.text}
    assert empty == {"471", "995"}


@pytest.mark.shared_data
def test_cranfield_grade_direction(cranfield):
    _mod, src, out, _summary = cranfield
    qrels = Dataset.open(out).qrels()
    raw = [line.split() for line in (src / "cranqrel").read_text().splitlines() if line.strip()]
    code1 = [(q, d) for q, d, c in raw if c == "1"]
    code4 = [(q, d) for q, d, c in raw if c == "4"]
    # known pairs from cranqrel: query 1 / doc 184 has code 2; first code-1 pair is checked too
    assert ("1", "184", "2") in [tuple(x) for x in raw]
    assert qrels["1"]["184"] == 3
    q, d = code1[0]
    assert qrels[q][d] == 4, "code 1 (complete answer) must become the highest gain 4"
    q, d = code4[0]
    assert qrels[q][d] == 1, "code 4 (minimum interest) must become gain 1"
    assert all(qrels[q][d] == 4 for q, d in code1)
    assert all(qrels[q][d] == 1 for q, d in code4)
    assert set(g for docs in qrels.values() for g in docs.values()) == {1, 2, 3, 4}


@pytest.mark.shared_data
def test_cranfield_query_numbering_is_positional(cranfield):
    _mod, src, out, _summary = cranfield
    queries = {q.id: q for q in Dataset.open(out).iter_queries()}
    assert [queries[str(i)].fields["source_id"] for i in (1, 2, 3, 4)] == ["001", "002", "004", "008"]
    assert queries["3"].text.startswith("what problems of heat conduction in composite slabs")
    # qrels refer to positions: query 3 ("heat conduction in composite slabs") -> doc 5 and 90 are slab papers
    qrels = Dataset.open(out).qrels()
    corpus = {r.id: r for r in Dataset.open(out).iter_corpus()}
    assert all("slab" in corpus[d].title for d in ("5", "6", "90")) and {"5", "6", "90"} <= set(qrels["3"])
    # code -1 docs are recorded as source_doc, not judged
    assert queries["1"].fields["source_doc"] == "486"
    assert "486" not in qrels["1"]


@pytest.mark.shared_data
def test_cranfield_minus_one_policies(cranfield, tmp_path):
    mod, src, _out, _summary = cranfield
    s = mod.convert(src, tmp_path / "zero", minus_one="zero")
    assert s["qrels"] == 1837 and s["gains"][0] == 225
    assert Dataset.open(tmp_path / "zero").qrels()["1"]["486"] == 0
    with pytest.raises(ValueError):
        mod.convert(src, tmp_path / "bad", minus_one="nope")


@pytest.mark.shared_data
def test_cranfield_fields(cranfield):
    _mod, _src_dir, out, summary = cranfield
    rows = {r.id: r for r in Dataset.open(out).iter_corpus()}
    r1 = rows["1"]
    assert r1.title == "experimental investigation of the aerodynamics of a wing in a slipstream ."
    assert r1.text.startswith("experimental investigation of the aerodynamics")
    assert r1.fields["author"] == ["brenckman,m."]
    assert r1.fields["bibliography"] == "j. ae. scs. 25, 1958, 324."
    assert r1.fields["year"] == 1958
    assert r1.fields["entity_type"] == "paper"
    # the stray .A/.B markers inside doc 240's abstract keep their text in the abstract
    assert "application to turbulent separations" in rows["240"].text
    assert rows["240"].fields["author"] == ["dean r. chapman"]
    assert len(summary["quirks"]) == 6


# -------------------------------------------------------------------------------- spotify


@pytest.fixture(scope="module")
def spotify(tmp_path_factory):
    src = _src("spotify_music_2024")
    mod = _load_script("convert_spotify")
    out = tmp_path_factory.mktemp("spotify")
    return mod, src, out, mod.convert(src, out)


@pytest.mark.shared_data
def test_spotify_dedupe(spotify):
    mod, src, out, summary = spotify
    csv_rows = []
    for f in mod.FILES:
        with open(src / f, encoding="utf-8-sig", newline="") as fh:
            csv_rows += list(csv.DictReader(fh))
    unique_ids = {r["track_id"] for r in csv_rows}
    ds, rows, queries, qrels = _read_all(out)
    ids = [r.id for r in rows]
    assert len(ids) == len(set(ids)), "duplicate ids in the corpus"
    assert set(ids) == unique_ids
    assert len(rows) == len(unique_ids) == summary["docs"] == 4495
    assert summary["rows_read"] == len(csv_rows) == 4831
    # a track listed in several playlists keeps every genre/playlist
    multi = {}
    for r in csv_rows:
        multi.setdefault(r["track_id"], set()).add(r["playlist_genre"])
    by_id = {r.id: r for r in rows}
    for tid, genres in multi.items():
        assert set(by_id[tid].fields["genre"]) == genres
    assert summary["multi_genre_tracks"] > 0


@pytest.mark.shared_data
def test_spotify_fields_and_queries(spotify):
    mod, _src_dir, out, summary = spotify
    ds, rows, queries, qrels = _read_all(out)
    assert ds.spec.popularity == "popularity"
    assert set(ds.spec.facets) >= {"genre", "subgenre", "artist", "album"}
    by_id = {r.id: r for r in rows}
    t = by_id["2plbrEY59IikOBgBGLjaoe"]  # Die With A Smile
    assert t.title == "Die With A Smile"
    assert t.fields["artist"] == ["Lady Gaga", "Bruno Mars"]
    assert t.fields["popularity"] == 100.0 and t.fields["entity_type"] == "track"
    assert t.fields["year"] == 2024 and t.fields["duration_ms"] == 251668
    assert "Lady Gaga" in t.text and "Die With A Smile" in t.text
    assert mod.split_artists("Tyler, The Creator, Kali Uchis") == ["Tyler, The Creator", "Kali Uchis"]
    assert mod.base_name("Jump - 2015 Remaster") == "Jump"
    assert mod.base_name("All My Life (feat. J. Cole)") == "All My Life"
    assert len(queries) == summary["queries"] and sum(len(d) for d in qrels.values()) == summary["qrels"]
    q_by_text = {q.text: q for q in queries}
    q = q_by_text["Die With A Smile"]
    assert qrels[q.id] == {"2plbrEY59IikOBgBGLjaoe": 1}
    gaga = q_by_text["Lady Gaga"]
    assert gaga.fields["intent"] == "artist"
    assert "2plbrEY59IikOBgBGLjaoe" in qrels[gaga.id]
    assert all("Lady Gaga" in by_id[d].fields["artist"] for d in qrels[gaga.id])
    assert "known-item" in ds.spec.description


# --------------------------------------------------------------------------------- icecat


@pytest.fixture(scope="module")
def icecat(tmp_path_factory):
    src = _src("icecat_chorus")
    mod = _load_script("convert_icecat")
    out = tmp_path_factory.mktemp("icecat")
    return mod, src, out, mod.convert(src, out)


@pytest.mark.shared_data
def test_icecat_rows_equal_products_read(icecat):
    mod, src, out, summary = icecat
    n_products = 0
    for z in sorted(src.glob("*.json.zip")):
        with zipfile.ZipFile(z) as zf:
            for m in zf.namelist():
                n_products += len(json.loads(zf.read(m)))
    ds, rows, queries, qrels = _read_all(out)
    assert len(rows) == summary["docs"] == summary["products_read"] == n_products == 19406
    assert len({r.id for r in rows}) == len(rows)
    assert summary["problems"] == []
    assert not any(p.suffix == ".json" for p in src.iterdir()), "zips must not be extracted"


@pytest.mark.shared_data
def test_icecat_fields_and_queries(icecat):
    mod, _src_dir, out, summary = icecat
    ds, rows, queries, qrels = _read_all(out)
    assert {"brand", "color", "category"} <= set(ds.spec.facets)
    assert ds.spec.entity_type == "entity_type" and "price" in ds.spec.numeric
    by_id = {r.id: r for r in rows}
    x = by_id["3920564"]
    assert x.title == "Xerox 006R90321 toner cartridge Original Black 6 pc(s)"
    assert x.text == "Toner (6 Per Box) for CopyCentre C65 Digital Copier"
    assert x.fields["brand"] == "Xerox" and x.fields["category"] == "toner cartridge"
    assert x.fields["price"] == 49.95 and x.fields["entity_type"] == "product"
    assert x.fields["print_technology"] == "Laser printing"
    assert summary["brands"] == 161
    assert mod.derive_category("Thule Construct CONBP-116 Carbon Blue backpack Nylon", "CONBP-116 Carbon Blue") == "backpack"
    q_by_text = {q.text: q for q in queries}
    assert qrels[q_by_text[x.title].id] == {"3920564": 1}
    assert qrels[q_by_text["006R90321"].id] == {"3920564": 1}
    # duplicate titles -> one query judging every product with that title
    dup = q_by_text["Newstar flat screen desk mount"]
    assert len(qrels[dup.id]) == 30


@pytest.mark.shared_data
def test_specs_fit_the_catalogue_template(cranfield, spotify, icecat):
    """Every converted dataset.yaml can create a catalogue index (no field-name collisions)."""
    from orchestrator import catalog
    template = catalog.IndexTemplate.load("catalog")
    for _mod, _src_dir, out, _summary in (cranfield, spotify, icecat):
        spec = Dataset.open(out).spec
        props = template.body(spec)["mappings"]["properties"]
        assert set(spec.facets) | set(spec.numeric) <= set(props)


# ------------------------------------------------------------------------------ no source data


@pytest.mark.parametrize("name", ["convert_cranfield", "convert_spotify", "convert_icecat"])
def test_missing_source_is_one_line_and_exit_2(name, tmp_path):
    """On a fresh clone ../shared is absent: the converters name the missing path, no traceback."""
    import subprocess

    (tmp_path / "empty").mkdir()
    for src, named in ((tmp_path / "nowhere", tmp_path / "nowhere"), (tmp_path / "empty", tmp_path / "empty")):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), str(src), str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and str(named) in lines[0], proc.stderr
        assert "shared" in lines[0] and proc.stdout == ""
        assert not (tmp_path / "out").exists()
