#!/usr/bin/env python
"""Convert the Cranfield 1400 collection (cran.all.1400, cran.qry, cranqrel) to the BEIR layout.

    python scripts/convert_cranfield.py SRC_DIR OUT_DIR

Source quirks handled (see the source's SOURCE.md / cranqrel.readme):

* Grades: cranqrel's third column is Cleverdon's code, 1 = complete answer ... 4 = minimum
  interest (lower = MORE relevant). BEIR gains must grow with relevance, so gain = 5 - code
  (1->4, 2->3, 3->2, 4->1). A lexical check agrees with this direction: mean TF-IDF cosine
  between query and judged doc falls from code 1 (0.146) to code 4 (0.105).
* Code -1 ("no relevance code given") occurs exactly once per query, and that document has by
  far the highest query overlap (mean cosine 0.230, e.g. query "effect of an internal liquid
  column on the breathing vibrations of a ... shell" -> doc 764 "breathing vibrations of a
  circular shell with an internal liquid"). It is very likely the query's *source document*
  (Cranfield II questions were written by the authors of base papers), i.e. not a
  "not relevant" judgment. Policy (``minus_one``): "drop" (default) leaves the pair out of the
  qrels (unjudged) and records the doc id as the query's ``source_doc`` field; "zero" writes
  gain 0 (judged not relevant); an integer writes that gain.
* Query ids: the ``.I`` numbers in cran.qry are not contiguous (001, 002, 004, 008, ...) while
  cranqrel numbers queries 1..225 by their position in cran.qry. Query ``_id`` is therefore
  the 1-based position; the original ``.I`` number is kept as the ``source_id`` field.
* Records: doc 471 and 995 are empty (995 is still judged relevant for query 125) and are kept
  with empty title/text. Docs 240, 576 and 578 repeat a field marker (.A/.B/.W) inside the
  abstract; the repeated marker is dropped and its lines stay in the current field.
* cran.qry has CRLF line ends; whitespace is normalised (lines joined with single spaces).

Corpus fields: title (.T), text (.W abstract), author (.A, split on " and " into a list),
bibliography (.B), year (first 19xx/20xx year in .B, when present), entity_type = "paper".
"""

from __future__ import annotations

import argparse
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

EXPECTED = {"docs": 1400, "queries": 225, "qrels": 1837}  # qrels: all cranqrel rows incl. code -1
_MARKER = re.compile(r"^\.([ITABW])(?:\s+(\S+))?\s*$")
_YEAR = re.compile(r"\b(19[0-9]{2}|20[0-9]{2})\b")


def _records(path: Path, quirks: list[str]) -> list[tuple[str, dict[str, list[str]], int]]:
    """Split a SMART-format file into (``.I`` value, {field letter: lines}, line number)."""
    out: list[tuple[str, dict[str, list[str]], int]] = []
    cur: dict[str, list[str]] | None = None
    cur_id = ""
    cur_line = 0
    field: str | None = None
    with open(path, encoding="utf-8", newline="") as fh:
        for line_no, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            m = _MARKER.match(line)
            if m and m.group(1) == "I":
                if cur is not None:
                    out.append((cur_id, cur, cur_line))
                cur_id = (m.group(2) or "").strip()
                cur, cur_line, field = {}, line_no, None
                continue
            if cur is None:
                if line.strip():
                    quirks.append(f"{path.name}:{line_no}: text before the first .I ignored: {line[:60]!r}")
                continue
            if m and m.group(2) is None:
                letter = m.group(1)
                if letter in cur:
                    quirks.append(f"{path.name}:{line_no}: record .I {cur_id} repeats marker .{letter}; "
                                  f"kept its lines in .{field}")
                    continue
                field = letter
                cur[letter] = []
                continue
            if field is None:
                if line.strip():
                    quirks.append(f"{path.name}:{line_no}: record .I {cur_id}: text before any field marker ignored")
                continue
            cur[field].append(line)
    if cur is not None:
        out.append((cur_id, cur, cur_line))
    return out


def _join(lines: list[str] | None) -> str:
    return " ".join(" ".join(lines or []).split())


def _authors(s: str) -> list[str]:
    return [a.strip() for a in re.split(r"\s+and\s+", s) if a.strip()]


def convert(src: Path, out: Path, *, minus_one: str | int = "drop") -> dict[str, Any]:
    """Convert; ``minus_one`` is the policy for code -1 rows: "drop", "zero" or an int gain."""
    src, out = Path(src), Path(out)
    if isinstance(minus_one, str) and minus_one not in ("drop", "zero"):
        try:
            minus_one = int(minus_one)
        except ValueError:
            raise ValueError(f"minus_one must be 'drop', 'zero' or an integer gain, got {minus_one!r}") from None
    quirks: list[str] = []

    # -- corpus --------------------------------------------------------------------------
    docs = []
    seen: set[str] = set()
    for doc_id, rec, line_no in _records(src / "cran.all.1400", quirks):
        if not doc_id or doc_id in seen:
            quirks.append(f"cran.all.1400:{line_no}: bad or duplicate .I {doc_id!r}; record skipped")
            continue
        seen.add(doc_id)
        row: dict[str, Any] = {"_id": doc_id, "title": _join(rec.get("T")), "text": _join(rec.get("W")),
                               "entity_type": "paper"}
        authors = _authors(_join(rec.get("A")))
        if authors:
            row["author"] = authors
        bib = _join(rec.get("B"))
        if bib:
            row["bibliography"] = bib
            m = _YEAR.search(bib)
            if m:
                row["year"] = int(m.group(1))
        if not row["title"] and not row["text"]:
            quirks.append(f"cran.all.1400:{line_no}: doc {doc_id} is empty in the source (kept)")
        docs.append(row)

    # -- queries: _id = 1-based position (what cranqrel uses) ------------------------------
    queries = []
    for pos, (qnum, rec, _line_no) in enumerate(_records(src / "cran.qry", quirks), start=1):
        queries.append({"_id": str(pos), "text": _join(rec.get("W")), "source_id": qnum})

    # -- qrels ---------------------------------------------------------------------------
    doc_ids = {d["_id"] for d in docs}
    n_queries = len(queries)
    qrels: dict[str, dict[str, int]] = {}
    codes: Counter[int] = Counter()
    gains: Counter[int] = Counter()
    problems: list[str] = []
    source_doc: dict[str, str] = {}
    dropped = 0
    with open(src / "cranqrel", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                problems.append(f"cranqrel:{line_no}: expected 3 columns, got {len(parts)}")
                continue
            try:
                qn, dn, code = int(parts[0]), parts[1], int(parts[2])
            except ValueError:
                problems.append(f"cranqrel:{line_no}: non-integer query number or code: {line.strip()!r}")
                continue
            if not 1 <= qn <= n_queries:
                problems.append(f"cranqrel:{line_no}: query {qn} outside 1..{n_queries}")
                continue
            if dn not in doc_ids:
                problems.append(f"cranqrel:{line_no}: unknown doc {dn}")
                continue
            if code == -1:
                prev = source_doc.setdefault(str(qn), dn)
                if prev != dn:
                    problems.append(f"cranqrel:{line_no}: query {qn} has a second code -1 row (doc {dn})")
                if minus_one == "drop":
                    codes[code] += 1
                    dropped += 1
                    continue
                gain = 0 if minus_one == "zero" else int(minus_one)
            elif 1 <= code <= 4:
                gain = 5 - code
            else:
                problems.append(f"cranqrel:{line_no}: unknown relevance code {code}")
                continue
            q = qrels.setdefault(str(qn), {})
            if dn in q:
                problems.append(f"cranqrel:{line_no}: duplicate pair ({qn}, {dn}); kept the first")
                continue
            q[dn] = gain
            codes[code] += 1
            gains[gain] += 1

    for q in queries:
        if q["_id"] in source_doc:
            q["source_doc"] = source_doc[q["_id"]]

    policy = {"drop": "left out of the qrels (unjudged) and recorded as the query's source_doc field",
              "zero": "written as gain 0 (judged not relevant); also recorded as source_doc"}.get(
        str(minus_one), f"written as gain {minus_one}; also recorded as source_doc")
    spec = DatasetSpec(
        name="cranfield",
        description=(
            "Cranfield 1400: 1960s aeronautics abstracts, 225 real queries, graded judgments. "
            "Grades: gain = 5 - Cleverdon code (code 1 'complete answer' -> 4 ... code 4 "
            "'minimum interest' -> 1). Code -1 ('no relevance code given', one per query, very "
            f"likely the query's source document): {policy}. Query _id is the 1-based position in "
            "cran.qry (the source .I number is in source_id). Converted by scripts/convert_cranfield.py."
        ),
        facets=("author",),
        entity_type="entity_type",
        numeric=("year",),
        splits=("test",),
    )
    out.mkdir(parents=True, exist_ok=True)
    n_docs = write_jsonl(out / "corpus.jsonl", docs)
    n_q = write_jsonl(out / "queries.jsonl", queries)
    n_qrels = write_qrels(out / "qrels" / "test.tsv", qrels)
    write_spec(out, spec)
    summary = {
        "name": "cranfield",
        "out": str(out),
        "docs": n_docs,
        "queries": n_q,
        "qrels": n_qrels,
        "relevant": sum(v for g, v in gains.items() if g > 0),
        "queries_with_relevant": sum(1 for q in qrels.values() if any(g > 0 for g in q.values())),
        "codes": dict(sorted(codes.items())),
        "gains": dict(sorted(gains.items())),
        "minus_one": minus_one,
        "minus_one_dropped": dropped,
        "docs_with_year": sum(1 for d in docs if "year" in d),
        "quirks": quirks,
        "problems": problems,
    }
    expected = dict(EXPECTED, qrels=EXPECTED["qrels"] - dropped)
    mismatched = {k: (summary[k], v) for k, v in expected.items() if summary[k] != v}
    if mismatched:
        summary["unexpected_counts"] = mismatched
    return summary


def _missing_source(what: str, wants: str) -> int:
    """One line on stderr and exit code 2 when the source data is absent (it is not in the
    repository: the shared datasets live beside it, in ../shared/data)."""
    print(f"error: {what}: this converter reads {wants} from the source data "
          "(the shared datasets, e.g. ../shared/data/<name>; not part of the repository)", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="directory with cran.all.1400, cran.qry, cranqrel")
    ap.add_argument("out", type=Path, help="output directory (BEIR layout)")
    ap.add_argument("--minus-one", default="drop", metavar="drop|zero|GAIN",
                    help="what to do with code -1 rows (likely the query's source document): leave out of "
                         "the qrels (default), write gain 0, or write the given integer gain")
    args = ap.parse_args(argv)
    if not args.src.is_dir():
        return _missing_source(f"{args.src} does not exist", "cran.all.1400, cran.qry, cranqrel")
    try:
        summary = convert(args.src, args.out, minus_one=args.minus_one)
    except FileNotFoundError as e:
        return _missing_source(f"{e.filename} does not exist" if e.filename else str(e),
                               "cran.all.1400, cran.qry, cranqrel")
    except ValueError as e:
        ap.error(str(e))
    print(json.dumps(summary, indent=2))
    return 1 if summary["problems"] or "unexpected_counts" in summary else 0


if __name__ == "__main__":
    raise SystemExit(main())
