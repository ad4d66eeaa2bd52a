#!/usr/bin/env python
"""Convert the Kaggle "Spotify Music Dataset" (high/low popularity CSVs) to the BEIR layout.

    python scripts/convert_spotify.py SRC_DIR OUT_DIR

* One document per ``track_id`` (``_id`` = the Spotify track id). The same track appears in
  several playlists/genres (and 43 tracks in both files): those rows are merged, with
  ``genre`` / ``subgenre`` / ``playlist`` becoming lists of the distinct values (first-seen
  order); scalar fields take the first non-empty value (conflicts are counted in the summary).
* title = track name; text = a short description built from artist, album, release year,
  genre, subgenre and playlist names.
* ``artist`` is a list: ``track_artist`` is split on ", " except inside known artist names that
  contain a comma (``COMMA_NAMES``, e.g. "Tyler, The Creator"); the raw credit is kept in
  ``artist_credit``.
* popularity = ``track_popularity`` (0-100); numeric fields: duration_ms, year (from the album
  release date), tempo, energy, danceability, valence, acousticness, instrumentalness, loudness,
  speechiness, liveness. Missing audio features (one source row has none) are omitted.
* The source has no queries or judgments. queries.jsonl + qrels/test.tsv are generated
  known-item queries: every distinct track name (with " - Remaster"-style suffixes and
  "(feat. ...)" removed) -> all tracks with that name (grade 1), and every artist name -> all
  of that artist's tracks (grade 1). A text that is both a name and an artist gets one query
  with both sets of tracks (intent "track_name+artist").
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

try:
    from orchestrator.datasets import DatasetSpec, write_jsonl, write_qrels, write_spec
except ModuleNotFoundError:  # run as a script from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from orchestrator.datasets import DatasetSpec, write_jsonl, write_qrels, write_spec

FILES = ("high_popularity_spotify_data.csv", "low_popularity_spotify_data.csv")
# Artist names that contain ", " and must not be split (checked against the credits).
COMMA_NAMES = ("Tyler, The Creator", "Earth, Wind & Fire", "Crosby, Stills, Nash & Young",
               "Crosby, Stills & Nash", "Peter, Paul and Mary", "Emerson, Lake & Palmer",
               "Blood, Sweat & Tears", "Now, Now", "Me, Myself and I")
FLOAT_FIELDS = ("tempo", "energy", "danceability", "valence", "acousticness", "instrumentalness",
                "loudness", "speechiness", "liveness")
INT_FIELDS = ("duration_ms", "key", "mode", "time_signature")
NUMERIC = ("duration_ms", "year") + FLOAT_FIELDS
_SUFFIX = re.compile(r"\s+-\s+.*$|\s*[(\[](?:feat|ft|with|from|prod)\.?\s[^)\]]*[)\]]", re.IGNORECASE)


def split_artists(credit: str) -> list[str]:
    """'Tyler, The Creator, Kali Uchis' -> ['Tyler, The Creator', 'Kali Uchis']."""
    parts = [p.strip() for p in credit.split(", ")]
    out: list[str] = []
    i = 0
    while i < len(parts):
        for name in COMMA_NAMES:
            n = name.count(", ") + 1
            if ", ".join(parts[i:i + n]) == name:
                out.append(name)
                i += n
                break
        else:
            if parts[i]:
                out.append(parts[i])
            i += 1
    return list(dict.fromkeys(out))


def base_name(name: str) -> str:
    """'Jump - 2015 Remaster' -> 'Jump'; 'All My Life (feat. J. Cole)' -> 'All My Life'."""
    stripped = " ".join(_SUFFIX.sub("", name).split())
    return stripped or " ".join(name.split())


def _num(v: str, kind: type) -> int | float | None:
    v = (v or "").strip()
    if not v:
        return None
    try:
        f = float(v)
    except ValueError:
        return None
    if f != f or f in (float("inf"), float("-inf")):
        return None
    return int(f) if kind is int and f == int(f) else (f if kind is float else None)


def _describe(doc: dict[str, Any]) -> str:
    artists = doc.get("artist") or []
    by = ", ".join(artists[:-1]) + " and " + artists[-1] if len(artists) > 1 else (artists[0] if artists else "unknown artist")
    s = f"{doc['title']} by {by}"
    if doc.get("album"):
        s += f", from the album {doc['album']}"
        if doc.get("year"):
            s += f" ({doc['year']})"
    s += "."
    genres = doc.get("genre") or []
    subs = doc.get("subgenre") or []
    if genres:
        g = "/".join(genres)
        s += f" Genre: {g}" + (f" ({', '.join(subs)})" if subs else "") + "."
    pls = doc.get("playlist") or []
    if pls:
        s += f" On playlists: {', '.join(pls[:5])}" + (f" and {len(pls) - 5} more" if len(pls) > 5 else "") + "."
    return s


def convert(src: Path, out: Path) -> dict[str, Any]:
    src, out = Path(src), Path(out)
    docs: dict[str, dict[str, Any]] = {}
    rows_read = 0
    per_file: dict[str, dict[str, int]] = {}
    conflicts: Counter[str] = Counter()
    problems: list[str] = []
    for fname in FILES:
        path = src / fname
        ids_in_file: set[str] = set()
        n = 0
        with open(path, encoding="utf-8-sig", newline="") as fh:
            for line_no, rec in enumerate(csv.DictReader(fh), start=2):
                n += 1
                tid = (rec.get("track_id") or "").strip()
                name = (rec.get("track_name") or "").strip()
                if not tid:
                    problems.append(f"{fname}: row at line ~{line_no} has no track_id; skipped")
                    continue
                ids_in_file.add(tid)
                doc = docs.get(tid)
                if doc is None:
                    if not name:
                        problems.append(f"{fname}: track {tid} has no track_name")
                    credit = (rec.get("track_artist") or "").strip()
                    doc = {"_id": tid, "title": name, "text": "", "entity_type": "track",
                           "artist": split_artists(credit) if credit else [], "artist_credit": credit,
                           "album": (rec.get("track_album_name") or "").strip(),
                           "album_id": (rec.get("track_album_id") or "").strip(),
                           "genre": [], "subgenre": [], "playlist": [], "_sources": []}
                    date = (rec.get("track_album_release_date") or "").strip()
                    if date:
                        doc["release_date"] = date
                        if re.match(r"^\d{4}", date):
                            doc["year"] = int(date[:4])
                    docs[tid] = doc
                else:
                    for col, key in (("track_name", "title"), ("track_album_name", "album"), ("track_artist", "artist_credit")):
                        v = (rec.get(col) or "").strip()
                        if v and doc[key] and v != doc[key]:
                            conflicts[col] += 1
                    if not doc["title"] and name:
                        doc["title"] = name
                for col, key in (("playlist_genre", "genre"), ("playlist_subgenre", "subgenre"), ("playlist_name", "playlist")):
                    v = (rec.get(col) or "").strip()
                    if v and v not in doc[key]:
                        doc[key].append(v)
                src_tag = fname.split("_")[0]  # high / low
                if src_tag not in doc["_sources"]:
                    doc["_sources"].append(src_tag)
                pop = _num(rec.get("track_popularity", ""), float)
                if pop is not None:
                    if "popularity" in doc and doc["popularity"] != pop:
                        conflicts["track_popularity"] += 1
                    doc.setdefault("popularity", pop)
                for col in FLOAT_FIELDS:
                    v = _num(rec.get(col, ""), float)
                    if v is not None:
                        if col in doc and doc[col] != v:
                            conflicts[col] += 1
                        doc.setdefault(col, v)
                for col in INT_FIELDS:
                    v = _num(rec.get(col, ""), int)
                    if v is not None:
                        doc.setdefault(col, v)
        rows_read += n
        per_file[fname] = {"rows": n, "unique_track_ids": len(ids_in_file)}

    missing_audio = 0
    rows_out = []
    for doc in docs.values():
        doc["source_files"] = doc.pop("_sources")
        if "energy" not in doc:
            missing_audio += 1
        for key in ("genre", "subgenre", "playlist"):
            if not doc[key]:
                del doc[key]
        if not doc["album_id"]:
            del doc["album_id"]
        doc["text"] = _describe(doc)
        rows_out.append(doc)

    # -- known-item queries --------------------------------------------------------------
    by_text: dict[str, dict[str, Any]] = {}
    for doc in rows_out:
        if doc["title"]:
            q = base_name(doc["title"])
            e = by_text.setdefault(q.casefold(), {"text": q, "intents": [], "docs": {}})
            if "track_name" not in e["intents"]:
                e["intents"].append("track_name")
            e["docs"][doc["_id"]] = 1
    for doc in rows_out:
        for a in doc["artist"]:
            e = by_text.setdefault(a.casefold(), {"text": a, "intents": [], "docs": {}})
            if "artist" not in e["intents"]:
                e["intents"].append("artist")
            e["docs"][doc["_id"]] = 1
    queries = []
    qrels: dict[str, dict[str, int]] = {}
    intents: Counter[str] = Counter()
    for n, e in enumerate(by_text.values(), start=1):
        qid = f"q{n:05d}"
        intent = "+".join(e["intents"])
        intents[intent] += 1
        queries.append({"_id": qid, "text": e["text"], "intent": intent, "n_relevant": len(e["docs"])})
        qrels[qid] = e["docs"]

    spec = DatasetSpec(
        name="spotify_music_2024",
        description=(
            "Spotify tracks (Kaggle 'Spotify Music Dataset', high+low popularity CSVs), one document "
            "per track_id with genre/subgenre/playlist merged into lists. The source has NO queries or "
            "relevance judgments: queries are generated known-item queries (track name without "
            "version/feat. suffix -> every track with that name; artist name -> all of the artist's "
            "tracks; grade 1). Converted by scripts/convert_spotify.py."
        ),
        facets=("genre", "subgenre", "artist", "album", "playlist"),
        popularity="popularity",
        entity_type="entity_type",
        numeric=NUMERIC,
        splits=("test",),
    )
    out.mkdir(parents=True, exist_ok=True)
    n_docs = write_jsonl(out / "corpus.jsonl", rows_out)
    n_q = write_jsonl(out / "queries.jsonl", queries)
    n_qrels = write_qrels(out / "qrels" / "test.tsv", qrels)
    write_spec(out, spec)
    return {
        "name": "spotify_music_2024",
        "out": str(out),
        "rows_read": rows_read,
        "files": per_file,
        "docs": n_docs,
        "merged_rows": rows_read - n_docs,
        "in_both_files": sum(1 for d in rows_out if len(d["source_files"]) > 1),
        "multi_genre_tracks": sum(1 for d in rows_out if len(d.get("genre", [])) > 1),
        "missing_audio_features": missing_audio,
        "artists": len({a for d in rows_out for a in d["artist"]}),
        "queries": n_q,
        "queries_by_intent": dict(intents),
        "qrels": n_qrels,
        "conflicts": dict(conflicts),
        "problems": problems,
    }


def _missing_source(what: str, wants: str) -> int:
    """One line on stderr and exit code 2 when the source data is absent (it is not in the
    repository: the shared datasets live beside it, in ../shared/data)."""
    print(f"error: {what}: this converter reads {wants} from the source data "
          "(the shared datasets, e.g. ../shared/data/<name>; not part of the repository)", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="directory with the two spotify CSV files")
    ap.add_argument("out", type=Path, help="output directory (BEIR layout)")
    args = ap.parse_args(argv)
    if not args.src.is_dir():
        return _missing_source(f"{args.src} does not exist", ", ".join(FILES))
    try:
        summary = convert(args.src, args.out)
    except FileNotFoundError as e:
        return _missing_source(f"{e.filename} does not exist" if e.filename else str(e), ", ".join(FILES))
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
