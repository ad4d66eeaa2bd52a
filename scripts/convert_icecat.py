#!/usr/bin/env python
"""Convert the Icecat product catalogue shipped with Chorus (1.json.zip .. 4.json.zip) to BEIR.

    python scripts/convert_icecat.py SRC_DIR OUT_DIR

The zips are read in place with :mod:`zipfile` (nothing is extracted to disk); each holds one
JSON array of products. Two streaming passes: the first counts attribute coverage, the second
writes the rows.

* ``_id`` = product ``id``; title = Icecat ``title``; text = ``short_description`` (missing
  for ~4% of products -> empty text); entity_type = "product".
* Facets: ``brand`` (``supplier``), ``color`` (``attr_t_product_colour`` split on ","),
  ``category`` (see below) and every frequent text attribute: ``attr_t_*`` present on >= 1000
  products with <= 300 distinct values (temperature/humidity/dimension strings excluded),
  renamed without the ``attr_t_`` prefix (e.g. ``print_technology``, ``country_of_origin``).
* Numeric: ``price`` (source value / 100: the source stores cents), ``year`` (from
  ``date_released``) and every ``attr_n_*`` present on >= 1000 products (e.g. ``weight``).
* All other (sparse) attributes are kept as readable strings in ``specs``
  (["print technology: Laser printing", ...]) so they stay searchable without adding thousands
  of fields to an index mapping.
* ``category``: the source has NO category field. It is derived from the title, which Icecat
  builds as "<brand> <name> <category> <attributes>": the run of lower-case words right after
  the product name ("toner cartridge", "networking cable"). About a third of products get one.
* No popularity signal and no usable judgments exist in the source, so queries.jsonl +
  qrels/test.tsv are generated known-item queries: every distinct title -> all products with
  that title (grade 1), and every model-code-like ``name`` (one token with a digit, e.g.
  "006R90321") -> all products with that name (grade 1).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    from orchestrator.datasets import DatasetSpec, write_jsonl, write_qrels, write_spec
except ModuleNotFoundError:  # run as a script from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from orchestrator.datasets import DatasetSpec, write_jsonl, write_qrels, write_spec

MIN_COVERAGE = 1000
MAX_FACET_VALUES = 300
_EXCLUDE_FACET = re.compile(r"temperature|humidity|dimensions")
_COLOUR_ATTRS = {"attr_t_printing_colours", "attr_t_cable_colour"}
CORE_FIELDS = {"_id", "title", "text", "entity_type", "brand", "name", "ean", "price", "release_date", "year",
               "category", "color", "image_url", "thumbnail_url", "specs"}
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")  # usable as an index field name
_CATEGORY_WORD = re.compile(r"^[a-z][a-z0-9/\-]*$")
_MODEL_CODE = re.compile(r"^(?=.*\d)[A-Za-z0-9][A-Za-z0-9\-./#+]{3,}$")
_SKIP = {"id", "name", "title", "ean", "short_description", "img_high", "img_low", "img_500x500", "img_thumb",
         "date_released", "supplier", "price", "attr_t_product_colour"}


def zip_files(src: Path) -> list[Path]:
    files = sorted(src.glob("*.json.zip"), key=lambda p: (int(re.sub(r"\D", "", p.name) or 0), p.name))
    if not files:
        raise FileNotFoundError(f"no *.json.zip files in {src}")
    return files


def iter_products(src: Path, problems: list[str] | None = None) -> Iterator[tuple[str, int, Any]]:
    """Yield (zip name, index in its array, product) from every zip without extracting."""
    for zpath in zip_files(src):
        with zipfile.ZipFile(zpath) as zf:
            for member in zf.namelist():
                if not member.endswith(".json"):
                    continue
                with zf.open(member) as fh:
                    try:
                        data = json.load(fh)
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        if problems is not None:
                            problems.append(f"{zpath.name}/{member}: unreadable JSON ({e})")
                        continue
                if not isinstance(data, list):
                    if problems is not None:
                        problems.append(f"{zpath.name}/{member}: expected a JSON array, got {type(data).__name__}")
                    continue
                for i, p in enumerate(data):
                    yield f"{zpath.name}/{member}", i, p


def clean_attr_name(key: str) -> str:
    name = re.sub(r"^attr_[tnb]_", "", key)
    name = re.sub(r"_+", "_", name).strip("_")
    return name


def derive_category(title: str, name: str) -> str | None:
    """Lower-case word run after the product name in the Icecat title, e.g. 'toner cartridge'."""
    if not name or not title:
        return None
    i = title.find(name)
    if i < 0:
        return None
    words = []
    for w in title[i + len(name):].split():
        if not _CATEGORY_WORD.match(w):
            break
        words.append(w)
    return " ".join(words) or None


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _split_colours(v: str) -> list[str]:
    return list(dict.fromkeys(c.strip() for c in v.split(",") if c.strip()))


def convert(src: Path, out: Path) -> dict[str, Any]:
    src, out = Path(src), Path(out)
    problems: list[str] = []

    # -- pass 1: attribute coverage ------------------------------------------------------
    coverage: Counter[str] = Counter()
    values: dict[str, set] = {}
    kinds: dict[str, set[str]] = {}
    for _src, _i, p in iter_products(src, problems):
        if not isinstance(p, dict):
            continue
        for k, v in p.items():
            if not k.startswith("attr_") or v is None:
                continue
            coverage[k] += 1
            kinds.setdefault(k, set()).add("num" if _finite(v) else type(v).__name__)
            vs = values.setdefault(k, set())
            if len(vs) <= MAX_FACET_VALUES and isinstance(v, (str, int, float, bool)):
                vs.add(v)
    facet_attrs: dict[str, str] = {}
    numeric_attrs: dict[str, str] = {}
    for k, c in coverage.items():
        if c < MIN_COVERAGE or k == "attr_t_product_colour":
            continue
        name = clean_attr_name(k)
        if name in CORE_FIELDS or not _FIELD_NAME.fullmatch(name):
            name = k
        if k.startswith("attr_t_") and kinds[k] == {"str"} and len(values[k]) <= MAX_FACET_VALUES \
                and not _EXCLUDE_FACET.search(k):
            facet_attrs[k] = name
        elif k.startswith("attr_n_") and kinds[k] == {"num"}:
            numeric_attrs[k] = name

    # -- pass 2: rows --------------------------------------------------------------------
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    products_read = 0
    per_file: Counter[str] = Counter()
    for where, i, p in iter_products(src):
        products_read += 1
        per_file[where] += 1
        if not isinstance(p, dict):
            problems.append(f"{where}[{i}]: product is not an object; skipped")
            continue
        pid = p.get("id")
        if isinstance(pid, int) and not isinstance(pid, bool):
            pid = str(pid)
        if not isinstance(pid, str) or not pid.strip():
            problems.append(f"{where}[{i}]: missing id; skipped")
            continue
        pid = pid.strip()
        if pid in seen:
            problems.append(f"{where}[{i}]: duplicate id {pid}; skipped (first kept)")
            continue
        seen.add(pid)
        title = p.get("title") if isinstance(p.get("title"), str) else ""
        name = p.get("name") if isinstance(p.get("name"), str) else ""
        desc = p.get("short_description") if isinstance(p.get("short_description"), str) else ""
        row: dict[str, Any] = {"_id": pid, "title": " ".join(title.split()), "text": " ".join(desc.split()),
                               "entity_type": "product"}
        if isinstance(p.get("supplier"), str) and p["supplier"].strip():
            row["brand"] = p["supplier"].strip()
        if name.strip():
            row["name"] = name.strip()
        cat = derive_category(title, name)
        if cat:
            row["category"] = cat
        colour = p.get("attr_t_product_colour")
        if isinstance(colour, str) and colour.strip():
            row["color"] = _split_colours(colour)
        ean = p.get("ean")
        if isinstance(ean, list) and ean:
            row["ean"] = [str(e) for e in ean if isinstance(e, (str, int)) and not isinstance(e, bool)]
        price = p.get("price")
        if isinstance(price, str):
            try:
                price = float(price)
            except ValueError:
                price = None
        if _finite(price):
            row["price"] = round(price / 100.0, 2)
        date = p.get("date_released")
        if isinstance(date, str) and date.strip():
            row["release_date"] = date.strip()
            if re.match(r"^\d{4}", date.strip()):
                row["year"] = int(date.strip()[:4])
        if isinstance(p.get("img_500x500"), str):
            row["image_url"] = p["img_500x500"]
        if isinstance(p.get("img_thumb"), str):
            row["thumbnail_url"] = p["img_thumb"]
        specs = []
        for k, v in p.items():
            if v is None or k in _SKIP:
                continue
            if k in facet_attrs and isinstance(v, str):
                row[facet_attrs[k]] = _split_colours(v) if k in _COLOUR_ATTRS else v
            elif k in numeric_attrs and _finite(v):
                row[numeric_attrs[k]] = v
            elif k.startswith("attr_"):
                specs.append(f"{clean_attr_name(k).replace('_', ' ')}: {_fmt(v)}")
            else:
                problems.append(f"{where}[{i}]: unexpected field {k!r} ignored")
        if specs:
            row["specs"] = specs
        rows.append(row)

    # -- known-item queries --------------------------------------------------------------
    by_text: dict[str, dict[str, Any]] = {}
    for row in rows:
        keys = []
        if row["title"]:
            keys.append(("title", row["title"]))
        if row.get("name") and _MODEL_CODE.match(row["name"]):
            keys.append(("model", row["name"]))
        for intent, text in keys:
            e = by_text.setdefault(text.casefold(), {"text": text, "intents": [], "docs": {}})
            if intent not in e["intents"]:
                e["intents"].append(intent)
            e["docs"][row["_id"]] = 1
    queries = []
    qrels: dict[str, dict[str, int]] = {}
    intents: Counter[str] = Counter()
    for n, e in enumerate(by_text.values(), start=1):
        qid = f"q{n:05d}"
        intent = "+".join(e["intents"])
        intents[intent] += 1
        queries.append({"_id": qid, "text": e["text"], "intent": intent, "n_relevant": len(e["docs"])})
        qrels[qid] = e["docs"]

    facets = ("brand", "color", "category") + tuple(sorted(facet_attrs.values()))
    numeric = ("price", "year") + tuple(sorted(numeric_attrs.values()))
    spec = DatasetSpec(
        name="icecat",
        description=(
            "Icecat product catalogue as shipped in Chorus for OpenSearch (19,406 products). "
            "category is derived from the title (the source has none; ~1/3 coverage); price is the "
            "source value / 100. No popularity and no judgments in the source: queries are generated "
            "known-item queries (product title -> products with that title; model-code name -> "
            "products with that name; grade 1). Converted by scripts/convert_icecat.py."
        ),
        facets=facets,
        entity_type="entity_type",
        numeric=numeric,
        splits=("test",),
    )
    out.mkdir(parents=True, exist_ok=True)
    n_docs = write_jsonl(out / "corpus.jsonl", rows)
    n_q = write_jsonl(out / "queries.jsonl", queries)
    n_qrels = write_qrels(out / "qrels" / "test.tsv", qrels)
    write_spec(out, spec)
    return {
        "name": "icecat",
        "out": str(out),
        "products_read": products_read,
        "per_file": dict(per_file),
        "docs": n_docs,
        "with_description": sum(1 for r in rows if r["text"]),
        "with_category": sum(1 for r in rows if "category" in r),
        "with_color": sum(1 for r in rows if "color" in r),
        "brands": len({r.get("brand") for r in rows if r.get("brand")}),
        "categories": len({r["category"] for r in rows if "category" in r}),
        "attribute_keys": len(coverage),
        "facet_attributes": dict(sorted(facet_attrs.items())),
        "numeric_attributes": dict(sorted(numeric_attrs.items())),
        "queries": n_q,
        "queries_by_intent": dict(intents),
        "qrels": n_qrels,
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
    ap.add_argument("src", type=Path, help="directory with 1.json.zip .. 4.json.zip")
    ap.add_argument("out", type=Path, help="output directory (BEIR layout)")
    args = ap.parse_args(argv)
    if not args.src.is_dir():
        return _missing_source(f"{args.src} does not exist", "1.json.zip .. 4.json.zip")
    try:
        summary = convert(args.src, args.out)
    except FileNotFoundError as e:
        return _missing_source(f"{e.filename} does not exist" if e.filename else str(e), "1.json.zip .. 4.json.zip")
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
