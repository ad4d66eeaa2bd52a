"""Typed, streaming reader (and small writer helpers) for BEIR-layout datasets.

A dataset is a directory laid out exactly like a BEIR dataset, so any BEIR dataset loads
unchanged::

    <root>/corpus.jsonl        one JSON object a line: _id, title, text, + any extra fields
    <root>/queries.jsonl       one JSON object a line: _id, text, + any extra fields
    <root>/qrels/<split>.tsv   header ``query-id<TAB>corpus-id<TAB>score``; integer grades, >0 relevant
    <root>/dataset.yaml        optional: maps extra corpus fields to catalogue roles (DatasetSpec)

Reading never crashes on bad input and never drops a row silently: every line that cannot be
turned into a row comes back as a :class:`RowError` (file path, 1-based line number, reason)
and reading continues with the next line. Blank (whitespace-only) lines carry no row and are
skipped; :meth:`Dataset.count_corpus_lines` counts non-blank lines, so for any corpus
``rows + errors == count_corpus_lines()``.

``dataset.yaml`` schema (every key optional except that unknown keys are rejected)::

    name: cranfield                 # str; defaults to the directory name
    description: ...                # str
    facets: [genre, artist]         # keyword fields: value is a string or a list of strings
    popularity: popularity          # numeric field -> catalogue popularity (finite, >= 0)
    entity_type: entity_type        # keyword field naming the entity type (track/artist/...)
    default_entity_type: paper      # entity type for rows that lack the entity_type field
    numeric: [duration_ms, year]    # numeric fields (finite int/float) for range filters
    splits: [test]                  # informational: qrels splits the producer wrote

A precomputed ``embedding`` field (a list of :data:`EMBEDDING_DIM` finite numbers) is allowed on
corpus rows and passed through in :attr:`CorpusRow.fields` (as a tuple of floats) so the loader
can use it instead of encoding; a wrong length or non-finite entry is a RowError.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import numpy as np
import orjson
import yaml

__all__ = [
    "EMBEDDING_DIM",
    "EMBEDDING_FIELD",
    "RESERVED_FIELDS",
    "CorpusRow",
    "QueryRow",
    "RowError",
    "DatasetSpec",
    "DatasetSpecError",
    "Dataset",
    "read_qrels",
    "write_jsonl",
    "write_qrels",
    "write_spec",
]

EMBEDDING_FIELD = "embedding"
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2
MAX_ID_BYTES = 512  # OpenSearch refuses longer document ids
RESERVED_FIELDS = frozenset({"_id", "title", "text", EMBEDDING_FIELD})

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"
SPEC_FILE = "dataset.yaml"
QRELS_HEADER = ("query-id", "corpus-id", "score")


# --------------------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class CorpusRow:
    id: str
    title: str
    text: str
    fields: Mapping[str, object]
    line: int


@dataclass(frozen=True, slots=True)
class QueryRow:
    id: str
    text: str
    fields: Mapping[str, object]
    line: int


@dataclass(frozen=True, slots=True)
class RowError:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


# --------------------------------------------------------------------------------------- spec


class DatasetSpecError(ValueError):
    """dataset.yaml is malformed (unknown key, wrong type, conflicting roles)."""


_SPEC_KEYS = (
    "name",
    "description",
    "facets",
    "popularity",
    "entity_type",
    "default_entity_type",
    "numeric",
    "splits",
)


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """Validated contents of ``dataset.yaml``. Field roles name corpus fields."""

    name: str
    description: str = ""
    facets: tuple[str, ...] = ()
    popularity: str | None = None
    entity_type: str | None = None
    default_entity_type: str | None = None
    numeric: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Re-validate so that directly constructed specs obey the same rules as loaded ones.
        _validate_spec_values(self, source="DatasetSpec")

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Any, *, source: str = "dataset.yaml", default_name: str = "dataset") -> DatasetSpec:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise DatasetSpecError(f"{source}: top level must be a mapping, got {_tname(data)}")
        unknown = sorted(str(k) for k in data if k not in _SPEC_KEYS)
        if unknown:
            raise DatasetSpecError(
                f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_SPEC_KEYS)}"
            )

        def opt_str(key: str) -> str | None:
            v = data.get(key)
            if v is None:
                return None
            if not isinstance(v, str) or not v.strip():
                raise DatasetSpecError(f"{source}: '{key}' must be a non-empty string, got {_tname(v)} {v!r}")
            return v.strip()

        def str_list(key: str) -> tuple[str, ...]:
            v = data.get(key)
            if v is None:
                return ()
            if isinstance(v, str):
                raise DatasetSpecError(f"{source}: '{key}' must be a list of strings, got a string {v!r} (write [{v}])")
            if not isinstance(v, list):
                raise DatasetSpecError(f"{source}: '{key}' must be a list of strings, got {_tname(v)}")
            out = []
            for i, item in enumerate(v):
                if not isinstance(item, str) or not item.strip():
                    raise DatasetSpecError(f"{source}: '{key}'[{i}] must be a non-empty string, got {_tname(item)} {item!r}")
                out.append(item.strip())
            if len(set(out)) != len(out):
                dups = sorted({x for x in out if out.count(x) > 1})
                raise DatasetSpecError(f"{source}: '{key}' lists {', '.join(dups)} more than once")
            return tuple(out)

        name = data.get("name", default_name)
        if not isinstance(name, str) or not name.strip():
            raise DatasetSpecError(f"{source}: 'name' must be a non-empty string, got {_tname(name)} {name!r}")
        description = data.get("description", "")
        if description is None:
            description = ""
        if not isinstance(description, str):
            raise DatasetSpecError(f"{source}: 'description' must be a string, got {_tname(description)}")
        try:
            return cls(
                name=name.strip(),
                description=description.strip(),
                facets=str_list("facets"),
                popularity=opt_str("popularity"),
                entity_type=opt_str("entity_type"),
                default_entity_type=opt_str("default_entity_type"),
                numeric=str_list("numeric"),
                splits=str_list("splits"),
            )
        except DatasetSpecError as e:
            msg = str(e)
            if msg.startswith("DatasetSpec: "):
                msg = f"{source}: " + msg[len("DatasetSpec: "):]
            raise DatasetSpecError(msg) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, default_name: str | None = None) -> DatasetSpec:
        p = Path(path)
        try:
            raw = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DatasetSpecError(f"{p}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise DatasetSpecError(f"{p}: invalid YAML: {e}") from None
        return cls.from_mapping(data, source=str(p), default_name=default_name or p.parent.name or "dataset")

    def to_mapping(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.facets:
            out["facets"] = list(self.facets)
        if self.popularity:
            out["popularity"] = self.popularity
        if self.entity_type:
            out["entity_type"] = self.entity_type
        if self.default_entity_type:
            out["default_entity_type"] = self.default_entity_type
        if self.numeric:
            out["numeric"] = list(self.numeric)
        if self.splits:
            out["splits"] = list(self.splits)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_mapping(), sort_keys=False, allow_unicode=True, width=100)

    # -- helpers --------------------------------------------------------------------------
    @property
    def keyword_fields(self) -> tuple[str, ...]:
        """Facets plus the entity_type field (all validated as str / list of str)."""
        if self.entity_type and self.entity_type not in self.facets:
            return self.facets + (self.entity_type,)
        return self.facets

    @property
    def numeric_fields(self) -> tuple[str, ...]:
        """Numeric fields plus the popularity field (all validated as finite numbers)."""
        if self.popularity and self.popularity not in self.numeric:
            return self.numeric + (self.popularity,)
        return self.numeric


def _validate_spec_values(spec: DatasetSpec, *, source: str) -> None:
    def bad(msg: str) -> DatasetSpecError:
        return DatasetSpecError(f"{source}: {msg}")

    if not isinstance(spec.name, str) or not spec.name.strip():
        raise bad(f"'name' must be a non-empty string, got {spec.name!r}")
    if not isinstance(spec.description, str):
        raise bad("'description' must be a string")
    for key in ("facets", "numeric", "splits"):
        v = getattr(spec, key)
        if not isinstance(v, tuple) or not all(isinstance(x, str) and x for x in v):
            raise bad(f"'{key}' must be a tuple of non-empty strings, got {v!r}")
    for key in ("popularity", "entity_type", "default_entity_type"):
        v = getattr(spec, key)
        if v is not None and (not isinstance(v, str) or not v):
            raise bad(f"'{key}' must be a non-empty string or None, got {v!r}")
    role_fields = list(spec.facets) + list(spec.numeric) + [f for f in (spec.popularity, spec.entity_type) if f]
    reserved = sorted({f for f in role_fields if f in RESERVED_FIELDS})
    if reserved:
        raise bad(f"field(s) {', '.join(reserved)} are reserved (_id/title/text/embedding) and cannot take a role")
    both = sorted(set(spec.facets) & set(spec.numeric))
    if both:
        raise bad(f"field(s) {', '.join(both)} cannot be both a facet (keyword) and numeric")
    if spec.popularity and spec.popularity in spec.facets:
        raise bad(f"popularity field '{spec.popularity}' is numeric and cannot also be a facet")
    if spec.entity_type and spec.entity_type in spec.numeric:
        raise bad(f"entity_type field '{spec.entity_type}' is a keyword and cannot also be numeric")
    if spec.entity_type and spec.popularity and spec.entity_type == spec.popularity:
        raise bad("entity_type and popularity cannot name the same field")


def _tname(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


# ------------------------------------------------------------------------------ line reading


def _iter_lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """Yield (line_no, text, decode_error) for each non-blank line, decoding UTF-8 per line."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if raw.strip():
                    yield line_no, None, f"invalid UTF-8: {e.reason} at byte {e.start} of the line"
                continue
            if not text or text.isspace():
                continue
            text = text.rstrip("\r\n")
            yield line_no, text, None


def _count_nonblank(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip() and raw.strip() != b"\xef\xbb\xbf":
                n += 1
    return n


def _parse_object(path: str, line_no: int, text: str) -> dict[str, Any] | RowError:
    try:
        obj = orjson.loads(text)  # fast on long float arrays
    except orjson.JSONDecodeError:
        # The slow path only for rows orjson refuses: the standard library accepts the NaN and
        # Infinity that Python writers emit, so the checks below can name the field instead.
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            return RowError(path, line_no, f"invalid JSON: {e.msg} at column {e.colno}")
        except RecursionError:
            return RowError(path, line_no, "invalid JSON: nested too deeply")
    except RecursionError:
        return RowError(path, line_no, "invalid JSON: nesting too deep")
    if not isinstance(obj, dict):
        return RowError(path, line_no, f"row is a JSON {_tname(obj)}, expected an object")
    return obj


def _parse_id(obj: Mapping[str, Any]) -> str:
    """Return the normalised id, or raise ValueError with a reason."""
    if "_id" not in obj:
        raise ValueError("missing _id")
    v = obj["_id"]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ValueError(f"_id must be a string, got {_tname(v)}")
    s = str(v).strip() if isinstance(v, str) else str(v)
    if not s:
        raise ValueError("empty _id")
    if any(c in s for c in "\t\r\n"):
        raise ValueError("_id contains a tab or newline")
    if len(s.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise ValueError(f"_id is longer than {MAX_ID_BYTES} bytes (OpenSearch's limit)")
    return s


def _iter_objects(path: Path) -> Iterator[tuple[int, dict[str, Any], str] | RowError]:
    """(line, object, id) for each JSONL row that is an object with a usable ``_id``, else the
    RowError saying why not."""
    sp = str(path)
    for line_no, text, err in _iter_lines(path):
        if err is not None or text is None:
            yield RowError(sp, line_no, err or "unreadable line")
            continue
        obj = _parse_object(sp, line_no, text)
        if isinstance(obj, RowError):
            yield obj
            continue
        try:
            yield line_no, obj, _parse_id(obj)
        except ValueError as e:
            yield RowError(sp, line_no, str(e))


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_keyword(name: str, v: object) -> str | None:
    if isinstance(v, str):
        return None
    if isinstance(v, list):
        for i, x in enumerate(v):
            if not isinstance(x, str):
                return f"field '{name}'[{i}] must be a string, got {_tname(x)}"
        return None
    return f"field '{name}' must be a string or a list of strings, got {_tname(v)}"


def _check_number(name: str, v: object, *, non_negative: bool = False) -> str | None:
    if not _is_number(v):
        return f"field '{name}' must be a number, got {_tname(v)} {v!r}"[:200]
    try:
        f = float(v)  # type: ignore[arg-type]
    except OverflowError:
        return f"field '{name}' is out of range"
    if not math.isfinite(f):
        return f"field '{name}' must be finite, got {v!r}"
    if non_negative and f < 0:
        return f"field '{name}' must be >= 0, got {v!r}"
    return None


def _check_embedding(v: object, dim: int) -> tuple[float, ...] | str:
    if not isinstance(v, list):
        return f"field '{EMBEDDING_FIELD}' must be a list of {dim} numbers, got {_tname(v)}"
    if len(v) != dim:
        return f"field '{EMBEDDING_FIELD}' has {len(v)} values, expected {dim}"
    # Fast path: one C-level conversion. Strings or nested lists give a non-numeric dtype, and bools
    # (which numpy would silently turn into 0/1) are looked for first; the per-item loop below
    # only runs to explain what is wrong.
    if not any(type(x) is bool for x in v):
        arr = np.array(v)
        if arr.ndim == 1 and arr.dtype.kind in "fi" and np.isfinite(arr).all():
            return tuple(arr.astype(np.float64).tolist())
    out = []
    for i, x in enumerate(v):
        if not _is_number(x):
            return f"field '{EMBEDDING_FIELD}'[{i}] must be a number, got {_tname(x)}"
        try:
            f = float(x)
        except OverflowError:
            return f"field '{EMBEDDING_FIELD}'[{i}] is out of range"
        if not math.isfinite(f):
            return f"field '{EMBEDDING_FIELD}'[{i}] must be finite, got {x!r}"
        out.append(f)
    return tuple(out)


# ------------------------------------------------------------------------------------- qrels


def read_qrels(path: str | os.PathLike[str]) -> tuple[dict[str, dict[str, int]], list[RowError]]:
    """Parse a qrels TSV; return ({query_id: {doc_id: grade}}, errors).

    Accepts BEIR's 3-column form (``query-id corpus-id score``, header optional) and TREC's
    4-column form (``qid iteration docid rel``). Columns are tab separated; whitespace
    separation is accepted when a line has no tab. Grades must be integers (``2`` or ``2.0``).
    A repeated (query, doc) pair is an error on the later line; the first grade is kept.
    """
    p = Path(path)
    sp = str(p)
    qrels: dict[str, dict[str, int]] = {}
    errors: list[RowError] = []
    for line_no, text, err in _iter_lines(p):
        if err is not None:
            errors.append(RowError(sp, line_no, err))
            continue
        assert text is not None
        cols = text.split("\t") if "\t" in text else text.split()
        cols = [c.strip() for c in cols]
        if tuple(c.lower() for c in cols[:3]) == QRELS_HEADER:
            if line_no != 1:
                errors.append(RowError(sp, line_no, "header line repeated after line 1"))
            continue
        if len(cols) == 4:
            qid, did, score = cols[0], cols[2], cols[3]
        elif len(cols) == 3:
            qid, did, score = cols
        else:
            errors.append(RowError(sp, line_no, f"expected 3 columns (query-id, corpus-id, score), got {len(cols)}"))
            continue
        if not qid:
            errors.append(RowError(sp, line_no, "empty query-id"))
            continue
        if not did:
            errors.append(RowError(sp, line_no, "empty corpus-id"))
            continue
        try:
            grade = int(score)
        except ValueError:
            try:
                f = float(score)
            except ValueError:
                f = math.nan
            if not math.isfinite(f) or f != int(f):
                errors.append(RowError(sp, line_no, f"score {score!r} is not an integer"))
                continue
            grade = int(f)
        docs = qrels.setdefault(qid, {})
        if did in docs:
            errors.append(RowError(sp, line_no, f"duplicate judgment for query {qid!r}, doc {did!r} "
                                                f"(kept the first, grade {docs[did]})"))
            continue
        docs[did] = grade
    return qrels, errors


# ------------------------------------------------------------------------------------ dataset


@dataclass(frozen=True)
class Dataset:
    """A BEIR-layout directory plus its (validated) spec. Use :meth:`open` to load the spec."""

    root: Path
    spec: DatasetSpec
    embedding_dim: int = EMBEDDING_DIM

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, embedding_dim: int = EMBEDDING_DIM) -> Dataset:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset directory not found: {root}")
        spec_path = root / SPEC_FILE
        if spec_path.exists():
            spec = DatasetSpec.load(spec_path, default_name=root.name)
        else:
            spec = DatasetSpec(name=root.name or "dataset")
        return cls(root, spec, embedding_dim)

    # -- paths ----------------------------------------------------------------------------
    @property
    def corpus_path(self) -> Path:
        return self.root / CORPUS_FILE

    @property
    def queries_path(self) -> Path:
        return self.root / QUERIES_FILE

    def qrels_path(self, split: str = "test") -> Path:
        return self.root / QRELS_DIR / f"{split}.tsv"

    # -- corpus ---------------------------------------------------------------------------
    def iter_corpus(self) -> Iterator[CorpusRow | RowError]:
        """Stream corpus rows in file order; bad lines come back as RowError (never raised)."""
        path = self.corpus_path
        sp = str(path)
        spec = self.spec
        keyword = spec.keyword_fields
        numeric = spec.numeric
        popularity = spec.popularity
        seen: set[str] = set()
        for item in _iter_objects(path):
            if isinstance(item, RowError):
                yield item
                continue
            line_no, obj, doc_id = item
            reason = None
            title = obj.get("title", "")
            body = obj.get("text", "")
            if title is None:
                title = ""
            if body is None:
                body = ""
            if not isinstance(title, str):
                reason = f"title must be a string, got {_tname(title)}"
            elif not isinstance(body, str):
                reason = f"text must be a string, got {_tname(body)}"
            # an empty title and text is allowed: real collections have empty records that
            # qrels still reference (e.g. Cranfield doc 995)
            fields: dict[str, object] = {}
            if reason is None:
                for k, v in obj.items():
                    if k in ("_id", "title", "text"):
                        continue
                    if v is None:  # null == absent
                        continue
                    if k == EMBEDDING_FIELD:
                        emb = _check_embedding(v, self.embedding_dim)
                        if isinstance(emb, str):
                            reason = emb
                            break
                        v = emb
                    elif k in keyword:
                        reason = _check_keyword(k, v)
                    elif k == popularity:
                        reason = _check_number(k, v, non_negative=True)
                    elif k in numeric:
                        reason = _check_number(k, v)
                    if reason is not None:
                        break
                    fields[k] = v
            if reason is not None:
                yield RowError(sp, line_no, f"_id {doc_id!r}: {reason}")
                continue
            if doc_id in seen:
                yield RowError(sp, line_no, f"duplicate _id {doc_id!r} (an earlier line has the same id)")
                continue
            seen.add(doc_id)
            if spec.default_entity_type and spec.entity_type and spec.entity_type not in fields:
                fields[spec.entity_type] = spec.default_entity_type
            yield CorpusRow(doc_id, title, body, MappingProxyType(fields), line_no)

    def count_corpus_lines(self) -> int:
        """Number of non-blank lines in corpus.jsonl (== rows + errors from iter_corpus)."""
        return _count_nonblank(self.corpus_path)

    def count_query_lines(self) -> int:
        return _count_nonblank(self.queries_path)

    # -- queries --------------------------------------------------------------------------
    def iter_queries(self) -> Iterator[QueryRow | RowError]:
        for _qid, item in self._iter_queries_with_ids():
            yield item

    def _iter_queries_with_ids(self) -> Iterator[tuple[str | None, QueryRow | RowError]]:
        """(id, row or error); the id of a rejected row when it has one, so that qrels naming
        it can say why the query is missing."""
        path = self.queries_path
        sp = str(path)
        seen: set[str] = set()
        for item in _iter_objects(path):
            if isinstance(item, RowError):
                yield None, item
                continue
            line_no, obj, qid = item
            qtext = obj.get("text")
            if "text" not in obj:
                yield qid, RowError(sp, line_no, f"_id {qid!r}: missing text")
                continue
            if not isinstance(qtext, str):
                yield qid, RowError(sp, line_no, f"_id {qid!r}: text must be a string, got {_tname(qtext)}")
                continue
            if not qtext.strip():
                yield qid, RowError(sp, line_no, f"_id {qid!r}: empty text")
                continue
            if qid in seen:
                yield qid, RowError(sp, line_no, f"duplicate _id {qid!r} (an earlier line has the same id)")
                continue
            seen.add(qid)
            fields = {k: v for k, v in obj.items() if k not in ("_id", "text") and v is not None}
            yield qid, QueryRow(qid, qtext, MappingProxyType(fields), line_no)

    # -- qrels ----------------------------------------------------------------------------
    def splits(self) -> list[str]:
        d = self.root / QRELS_DIR
        if not d.is_dir():
            return []
        return sorted(p.stem for p in d.glob("*.tsv") if p.is_file())

    def qrels(self, split: str = "test") -> dict[str, dict[str, int]]:
        """{query_id: {doc_id: grade}}; malformed lines are skipped (see :meth:`qrels_with_errors`)."""
        return self.qrels_with_errors(split)[0]

    def qrels_with_errors(self, split: str = "test") -> tuple[dict[str, dict[str, int]], list[RowError]]:
        path = self.qrels_path(split)
        if not path.exists():
            raise FileNotFoundError(f"no qrels for split {split!r}: {path} (available: {self.splits()})")
        return read_qrels(path)

    # -- whole-dataset check --------------------------------------------------------------
    def check(self, max_errors: int = 50) -> dict[str, Any]:
        """Read everything once; return counts and the first ``max_errors`` errors per file.

        Also reports qrels that reference unknown query or corpus ids (as RowErrors).
        """
        doc_ids: set[str] = set()
        n_docs = 0
        corpus_errors: list[RowError] = []
        n_corpus_errors = 0
        for r in self.iter_corpus():
            if isinstance(r, RowError):
                n_corpus_errors += 1
                if len(corpus_errors) < max_errors:
                    corpus_errors.append(r)
            else:
                n_docs += 1
                doc_ids.add(r.id)
        q_ids: set[str] = set()
        q_rejected: dict[str, RowError] = {}  # id -> why its (first rejected) row was not read
        query_errors: list[RowError] = []
        n_query_errors = 0
        have_queries = self.queries_path.exists()
        if have_queries:
            for qid, r in self._iter_queries_with_ids():
                if isinstance(r, RowError):
                    n_query_errors += 1
                    if len(query_errors) < max_errors:
                        query_errors.append(r)
                    if qid is not None:
                        q_rejected.setdefault(qid, r)
                else:
                    q_ids.add(r.id)
        splits: dict[str, Any] = {}
        for split in self.splits():
            qrels, errs = self.qrels_with_errors(split)
            sp = str(self.qrels_path(split))
            dangling = []
            for qid, docs in qrels.items():
                if have_queries and qid not in q_ids:
                    why = q_rejected.get(qid)
                    dangling.append(RowError(sp, 0, f"query-id {qid!r} not in queries.jsonl" if why is None else
                                             f"query-id {qid!r}: its query was rejected "
                                             f"(queries.jsonl line {why.line}: {why.reason})"))
                for did in docs:
                    if did not in doc_ids:
                        dangling.append(RowError(sp, 0, f"corpus-id {did!r} (query {qid!r}) not in corpus.jsonl"))
            splits[split] = {
                "queries": len(qrels),
                "judgments": sum(len(d) for d in qrels.values()),
                "relevant": sum(1 for d in qrels.values() for g in d.values() if g > 0),
                "errors": len(errs),
                "dangling": len(dangling),
                "error_samples": [str(e) for e in (errs + dangling)[:max_errors]],
            }
        return {
            "name": self.spec.name,
            "docs": n_docs,
            "corpus_errors": n_corpus_errors,
            "corpus_error_samples": [str(e) for e in corpus_errors],
            "queries": len(q_ids),
            "query_errors": n_query_errors,
            "query_error_samples": [str(e) for e in query_errors],
            "splits": splits,
        }


# ------------------------------------------------------------------------------------ writing


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as UTF-8 JSONL (LF line ends, non-ASCII kept). Returns the row count."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(p, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False, separators=(",", ":")))
            fh.write("\n")
            n += 1
    return n


def write_qrels(path: str | os.PathLike[str], qrels: Mapping[str, Mapping[str, int]] | Iterable[tuple[str, str, int]]) -> int:
    """Write BEIR qrels TSV (with header). Accepts a nested mapping or (qid, did, grade) triples."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    triples: Iterable[tuple[str, str, int]]
    if isinstance(qrels, Mapping):
        nested = cast("Mapping[str, Mapping[str, int]]", qrels)
        triples = ((q, d, g) for q, docs in nested.items() for d, g in docs.items())
    else:
        triples = qrels
    n = 0
    with open(p, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\t".join(QRELS_HEADER) + "\n")
        for q, d, g in triples:
            if not isinstance(g, int) or isinstance(g, bool):
                raise TypeError(f"grade for ({q!r}, {d!r}) must be an int, got {g!r}")
            fh.write(f"{q}\t{d}\t{g}\n")
            n += 1
    return n


def write_spec(root: str | os.PathLike[str], spec: DatasetSpec) -> Path:
    p = Path(root) / SPEC_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(spec.to_yaml(), encoding="utf-8")
    return p


# ----------------------------------------------------------------------------------------- cli


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m orchestrator.datasets", description="Validate a BEIR-layout dataset directory.")
    ap.add_argument("root", type=Path)
    ap.add_argument("--max-errors", type=int, default=20)
    args = ap.parse_args(argv)
    try:
        ds = Dataset.open(args.root)
    except (FileNotFoundError, DatasetSpecError) as e:
        print(f"error: {e}")
        return 2
    report = ds.check(max_errors=args.max_errors)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    splits = report["splits"].values()
    bad = report["corpus_errors"] or report["query_errors"] or any(s["errors"] or s["dangling"] for s in splits)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(_main())
