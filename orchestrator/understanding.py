"""Query understanding: normalise the text, key it, tokenise it, find facet slots, featurise it.

The first stage of the flow. Its output, :class:`QueryUnderstanding`, feeds

* the **Q2E memory** through :func:`query_key` (the rank_features name ``q2e.<key>``);
* the **strategies** through the slots (``colour=blue``) and the text left after them;
* the **contextual bandit** through :meth:`QueryUnderstanding.features` (:data:`FEATURE_NAMES`).

Slots come from a :class:`FacetDictionary`: every value of the catalogue's keyword fields (paged
with a ``composite`` aggregation per field, in their stored spelling), matched greedily on the
query's tokens. :class:`DictionaryCache` keeps dictionaries in memory (and optionally on disk)
with a TTL.

Understanding never raises on odd text (empty, 10k characters, emoji, mixed scripts, JSON
fragments): only a non-``str`` argument is a ``TypeError``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "FEATURE_NAMES",
    "MAX_QUERY_CHARS",
    "MAX_SLOT_TOKENS",
    "STOPWORDS",
    "DictionaryCache",
    "FacetDictionary",
    "QueryUnderstander",
    "QueryUnderstanding",
    "Slot",
    "normalize_query",
    "query_key",
    "tokenize",
]

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 10_000
"""The longest query ltrr searches (the pipeline refuses longer ones as a client error, so nothing
is cut silently). Real queries are a few words, but test collections hold paragraph-length
questions, and every word of them counts for BM25. Normalisation can lengthen text (NFKC expands
ligatures and some symbols); only such an expansion past the limit is cut. The cap bounds the work
of every later stage (tokens, slot lookups, query bodies)."""

# Raw text is cut to this many characters *before* normalising, so that a megabyte of input
# costs no more than a few kilobytes. Whitespace and control characters shrink during
# normalisation, hence the margin over MAX_QUERY_CHARS.
_RAW_CHARS = 16 * MAX_QUERY_CHARS

MAX_SLOT_TOKENS = 4
"""Dictionary phrases are 1 to this many tokens long; longer facet values are not slots."""

# Characters deleted by normalisation: C0/C1 controls except the ones str.split() treats as
# whitespace (tab, newlines, \x1c-\x1f, \x85: those become word breaks instead), lone
# surrogates (they cannot be encoded, so they would break hashing and JSON), and invisible
# format characters (soft hyphen, zero-width space, bidi marks and isolates, word joiner, BOM).
# ZWNJ/ZWJ (U+200C/U+200D) stay: some scripts and emoji sequences need them.
_DELETED = re.compile(
    "[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u00ad\u200b\u200e\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ud800-\udfff]"
)


def normalize_query(text: str) -> str:
    """The canonical form of a query: what two queries must share to be "the same query".

    1. Unicode NFKC (full-width ``ＴＡＹＬＯＲ`` -> ``TAYLOR``, ligatures, compatibility forms);
    2. casefold (``Straße`` -> ``strasse``), then NFKC again since casefolding can denormalise;
    3. delete control and invisible format characters (see ``_DELETED``);
    4. collapse every run of whitespace to one space and trim;
    5. cut to :data:`MAX_QUERY_CHARS` characters (and trim again).

    Raises ``TypeError`` for anything but ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"query text must be str, not {type(text).__name__}")
    text = text[:_RAW_CHARS]
    text = unicodedata.normalize("NFKC", text)
    text = unicodedata.normalize("NFKC", text.casefold())
    text = _DELETED.sub("", text)
    text = " ".join(text.split())
    if len(text) > MAX_QUERY_CHARS:
        text = text[:MAX_QUERY_CHARS].rstrip()
    return text


def query_key(text: str) -> str:
    """The Q2E memory key of a query: ``"q_" + sha1(normalize_query(text))[:16]`` (hex, UTF-8).

    Equal for every spelling that normalises alike (``"Taylor  Swift"``, ``"taylor swift"``,
    ``"ＴＡＹＬＯＲ swift"``). Only ``[0-9a-z_]``, so it is a safe rank_features feature name:
    OpenSearch addresses it as ``q2e.<key>``, where a dot or space would break the path. 64 bits
    of hash make collisions negligible for any realistic number of distinct queries.
    """
    return _key_of_normalized(normalize_query(text))


def _key_of_normalized(normalized: str) -> str:
    digest = hashlib.sha1(normalized.encode("utf-8"), usedforsecurity=False)
    return "q_" + digest.hexdigest()[:16]


def _combining_marks() -> str:
    # Python's \w leaves out combining marks (Mn/Mc/Me), which would cut Devanagari, Thai,
    # Arabic with harakat... into pieces. A regex class of the BMP's marks (~7 ms at import).
    ranges: list[tuple[int, int]] = []
    for code in range(0x80, 0x10000):
        if 0xD800 <= code <= 0xDFFF or unicodedata.category(chr(code))[0] != "M":
            continue
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in ranges)


_WORD_CHAR = rf"(?:[^\W_]|[{_combining_marks()}])"
# A token: letters/digits (with their marks), apostrophes allowed *inside* ("don't", "l'amour").
_TOKEN = re.compile(rf"{_WORD_CHAR}+(?:['\u2019]{_WORD_CHAR}+)*")


def tokenize(normalized: str) -> tuple[str, ...]:
    """Word tokens of a normalised query: runs of Unicode letters and digits (with combining
    marks); apostrophes stay inside words (typographic ``’`` becomes ``'``); punctuation, symbols
    and emoji are dropped. Scripts without spaces (Chinese, Japanese) come out as one token per
    run. Non-``str`` gives an empty tuple rather than an error."""
    if not isinstance(normalized, str):
        return ()
    return tuple(m.group().replace("\u2019", "'") for m in _TOKEN.finditer(normalized))


STOPWORDS: frozenset[str] = frozenset(
    """a about an and are as at be but by can do does for from how i in is it its me my near no
    not of on or our so than that the their them then there these they this to up us was we what
    when where which who why will with you your""".split()
)
"""Very common English words: never a slot on their own (in a phrase they are fine), and never
counted as out-of-vocabulary."""


@dataclass(frozen=True, slots=True)
class Slot:
    """A facet value found in the query: ``field=value`` over tokens ``[start, end)``."""

    field: str
    value: str  # the dictionary's canonical value (e.g. "Taylor Swift", not "taylor swift")
    start: int  # first token of the span
    end: int  # one past the last token of the span
    confidence: float  # doc count of the chosen field / doc counts of the phrase over all fields


@dataclass(frozen=True, slots=True)
class _Choice:
    field: str
    value: str
    confidence: float


MAX_DICTIONARY_VALUES = 1_000_000
"""At most this many facet values (all fields, stored forms included) go into one dictionary;
a catalogue with more gets a truncated dictionary and a logged warning."""

STORED_FORMS_FIELD = "facets_all"
"""The catalogue's plain keyword field holding every facet value as stored in ``_source``."""

_MAX_PAGE = 10_000  # composite buckets per request (search.max_buckets is 65,535 by default)
_ANALYZE_BATCH = 1_000  # texts per _analyze request (index.analyze.max_token_count: 10,000)
_SIMPLE_FILTERS = frozenset({"lowercase", "asciifolding"})


class FacetDictionary:
    """Normalised phrases (1-4 tokens) -> ``(field, canonical value, doc_count)``.

    A phrase is the token tuple of ``normalize_query(value)``. Values that normalise to the same
    phrase within one field ("Pop", "pop") merge: counts add up, the most frequent spelling is
    the canonical one. When a phrase belongs to several fields, :meth:`match` picks the field
    with the largest count (ties: field name) and reports ``confidence = count / Σ counts``.
    """

    def __init__(self, terms: Mapping[str, Mapping[str, int]] | None = None, *, meta: Mapping | None = None):
        self._terms: dict[str, dict[str, int]] = {}
        for field_name, values in (terms or {}).items():
            if not isinstance(field_name, str) or not isinstance(values, Mapping):
                continue
            clean = {}
            for value, count in values.items():
                count = _count(count)
                if isinstance(value, str) and count is not None:
                    clean[value] = count
            self._terms[field_name] = clean
        self.meta: dict = dict(meta or {})
        self._choices, self._vocabulary, self._max_len = self._compile(self._terms)

    @staticmethod
    def _compile(terms: Mapping[str, Mapping[str, int]]):
        # phrase -> field -> spelling -> count
        counts: dict[tuple[str, ...], dict[str, dict[str, int]]] = {}
        for field_name, values in terms.items():
            for value, count in values.items():
                phrase = tokenize(normalize_query(value))
                if not phrase or len(phrase) > MAX_SLOT_TOKENS:
                    continue
                spellings = counts.setdefault(phrase, {}).setdefault(field_name, {})
                spellings[value] = spellings.get(value, 0) + count
        choices: dict[tuple[str, ...], _Choice] = {}
        vocabulary: set[str] = set()
        for phrase, per_field in counts.items():
            vocabulary.update(phrase)
            field_counts = {name: sum(spellings.values()) for name, spellings in per_field.items()}
            # The most frequent field wins; ties go to the smaller name, to stay deterministic.
            name = min(field_counts, key=lambda f: (-field_counts[f], f))
            total = sum(field_counts.values())
            confidence = field_counts[name] / total if total > 0 else 1.0 / len(field_counts)
            # Canonical spelling within the field: the most frequent, ties to the smaller string.
            value = min(per_field[name].items(), key=lambda item: (-item[1], item[0]))[0]
            choices[phrase] = _Choice(name, value, confidence)
        max_len = max((len(p) for p in choices), default=0)
        return choices, frozenset(vocabulary), max_len

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_terms(cls, mapping: Mapping[str, Mapping[str, int]]) -> FacetDictionary:
        """From ``{field: {value: doc_count}}``; entries with a non-str value or a count that is
        not a non-negative integer are skipped."""
        return cls(mapping)

    @classmethod
    def build(cls, client, index: str, fields: Sequence[str], size: int = 10000, *,
              max_values: int = MAX_DICTIONARY_VALUES) -> FacetDictionary:
        """Read every value of the keyword ``fields`` of ``index``, with its doc count.

        Each field is paged with a ``composite`` aggregation (``size`` values per request, then
        ``after_key``), so nothing is left out, up to ``max_values`` values in all (stored forms
        included); beyond that a warning is logged and ``meta["truncated"]`` names what was not
        read to the end. A truncated dictionary is never silent.

        Canonical values are the values as stored in the documents' ``_source``. A field with a
        normalizer (the catalogue's facet fields lowercase and fold to ASCII) aggregates to
        normalized keys ("taylor swift"); their stored spellings ("Taylor Swift") come from
        :data:`STORED_FORMS_FIELD` (``facets_all``, a plain keyword holding every facet value
        as stored), matched to the keys through the field's own normalizer (``_analyze``, or
        locally for ASCII text when the normalizer only lowercases and folds to ASCII). Several
        spellings of one key: the most frequent wins. A key with no stored spelling found stays
        as it is (counted in ``meta["unresolved"]``).

        Unmapped fields come back empty. OpenSearch errors propagate: building is not on the
        search path (:class:`DictionaryCache` keeps serving the previous dictionary).
        """
        fields = _check_fields(fields)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        if isinstance(max_values, bool) or not isinstance(max_values, int) or max_values < 0:
            raise ValueError(f"max_values must be an int >= 0, got {max_values!r}")
        page = min(size, _MAX_PAGE)
        mappings = _field_mappings(client, index, (*fields, STORED_FORMS_FIELD))
        keys: dict[str, dict[str, int]] = {}
        truncated: list[str] = []
        budget = max_values
        for name in fields:
            keys[name], complete = _all_values(client, index, name, page, budget)
            budget -= len(keys[name])
            if not complete:
                truncated.append(name)
        normalized = {name for name in fields if (mappings.get(name) or {}).get("normalizer")}
        stored: dict[str, int] = {}
        if normalized and STORED_FORMS_FIELD in mappings and not (mappings[STORED_FORMS_FIELD] or {}).get("normalizer"):
            stored, complete = _all_values(client, index, STORED_FORMS_FIELD, page, budget)
            if not complete:
                truncated.append(STORED_FORMS_FIELD)
        terms: dict[str, dict[str, int]] = {}
        unresolved = 0
        spellings_by_normalizer: dict[str, dict[str, tuple[str, int]]] = {}
        for name in fields:
            normalizer = (mappings.get(name) or {}).get("normalizer")
            if not normalizer:
                terms[name] = keys[name]  # the keys are the stored values
                continue
            if normalizer not in spellings_by_normalizer:
                spellings_by_normalizer[normalizer] = _spellings(client, index, name, normalizer, stored)
            spellings = spellings_by_normalizer[normalizer]
            values: dict[str, int] = {}
            for key, count in keys[name].items():
                spelling = spellings.get(key)
                if spelling is None:
                    unresolved += 1
                values[spelling[0] if spelling else key] = count
            terms[name] = values
        if truncated:
            log.warning("the facet dictionary of %s stops at %d values: %s not read to the end; raise max_values "
                        "or narrow the facet fields", index, max_values, ", ".join(truncated))
        meta = {"index": index, "fields": list(fields), "size": page, "max_values": max_values,
                "values": max_values - budget + len(stored), "built_at": time.time(), "truncated": truncated,
                "unresolved": unresolved}
        return cls(terms, meta=meta)

    def to_json(self) -> str:
        """A JSON document from which :meth:`from_json` rebuilds an equal dictionary."""
        return json.dumps({"version": 1, "meta": self.meta, "terms": self._terms}, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> FacetDictionary:
        """Inverse of :meth:`to_json`; ``ValueError`` when the document is not one."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("terms"), dict):
            raise ValueError("not a FacetDictionary JSON document (version 1)")
        meta = data.get("meta")
        return cls(data["terms"], meta=meta if isinstance(meta, dict) else None)

    # -- use ---------------------------------------------------------------------------------

    @property
    def terms(self) -> dict[str, dict[str, int]]:
        """``{field: {value: doc_count}}`` as loaded (a copy)."""
        return {name: dict(values) for name, values in self._terms.items()}

    @property
    def vocabulary(self) -> frozenset[str]:
        """Every token of every phrase: words the catalogue's facets know."""
        return self._vocabulary

    def __len__(self) -> int:
        """Number of distinct phrases."""
        return len(self._choices)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FacetDictionary) and self._terms == other._terms

    __hash__ = None  # type: ignore[assignment]  # equal by content, and meta may change: no dict key

    def lookup(self, phrase: str) -> Slot | None:
        """The slot a phrase alone would give (span over its own tokens), or ``None``."""
        tokens = tokenize(normalize_query(phrase))
        choice = self._choices.get(tokens)
        return Slot(choice.field, choice.value, 0, len(tokens), choice.confidence) if choice else None

    def match(self, tokens: Sequence[str]) -> list[Slot]:
        """Greedy longest match, left to right, non-overlapping.

        At each position try the longest phrase first (up to :data:`MAX_SLOT_TOKENS` tokens); on
        a hit emit a slot and jump past it, otherwise move one token on. A single stopword is
        never a slot ("the" may be a title word; it says nothing about the intent).
        """
        tokens = tuple(tokens)
        slots: list[Slot] = []
        if not self._choices:
            return slots
        n = len(tokens)
        i = 0
        while i < n:
            for length in range(min(self._max_len, n - i), 0, -1):
                if length == 1 and tokens[i] in STOPWORDS:
                    continue
                choice = self._choices.get(tokens[i : i + length])
                if choice is not None:
                    slots.append(Slot(choice.field, choice.value, i, i + length, choice.confidence))
                    i += length
                    break
            else:
                i += 1
        return slots

    def __repr__(self) -> str:
        return f"FacetDictionary(fields={sorted(self._terms)}, phrases={len(self._choices)})"


def _count(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


def _check_fields(fields: Sequence[str]) -> tuple[str, ...]:
    if isinstance(fields, str):
        raise TypeError("fields must be a sequence of field names, not one str")
    fields = tuple(fields)
    if not fields or not all(isinstance(f, str) and f for f in fields):
        raise ValueError(f"fields must be non-empty field names, got {fields!r}")
    return fields


def _all_values(client, index: str, field_name: str, page: int, budget: int) -> tuple[dict[str, int], bool]:
    """Every value of one keyword field with its doc count (composite aggregation, after_key
    loop), and whether all were read: at most ``budget`` values are kept."""
    values: dict[str, int] = {}
    after = None
    while True:
        want = min(page, budget - len(values) + 1)  # one more than the budget tells "there are more"
        composite: dict = {"size": want, "sources": [{"v": {"terms": {"field": field_name}}}]}
        if after is not None:
            composite["after"] = after
        body = {"size": 0, "track_total_hits": False, "aggs": {"values": {"composite": composite}}}
        agg = (client.search(index=index, body=body).get("aggregations") or {}).get("values") or {}
        buckets = agg.get("buckets") or ()
        for bucket in buckets:
            key = (bucket.get("key") or {}).get("v")
            if key is not None:
                values[str(key)] = values.get(str(key), 0) + int(bucket.get("doc_count", 0))
        if len(values) > budget:
            return dict(list(values.items())[:budget]), False
        after = agg.get("after_key")
        if not buckets or after is None or len(buckets) < want:
            return values, True


def _field_mappings(client, index: str, names: Sequence[str]) -> dict[str, dict]:
    """``{field: its leaf mapping}`` for the mapped ones among ``names`` (any concrete index of
    ``index``; a normalizer in any of them counts)."""
    response = client.indices.get_field_mapping(index=index, fields=list(names))
    out: dict[str, dict] = {}
    for per_index in (response or {}).values():
        for name, entry in ((per_index or {}).get("mappings") or {}).items():
            leaf = next(iter(((entry or {}).get("mapping") or {}).values()), None)
            if isinstance(leaf, dict) and (name not in out or leaf.get("normalizer")):
                out[name] = leaf
    return out


def _spellings(client, index: str, field_name: str, normalizer: str, stored: Mapping[str, int]
               ) -> dict[str, tuple[str, int]]:
    """Normalized key -> (the most frequent stored spelling, its count), for the stored values
    under ``field_name``'s normalizer."""
    if not stored:
        return {}
    local = _folds_ascii_only(client, index, normalizer)
    normalized: dict[str, str] = {}
    remote: list[str] = []
    for value in stored:
        if local and value.isascii():
            normalized[value] = value.lower()  # exactly what lowercase + asciifolding do to ASCII
        else:
            remote.append(value)
    for start in range(0, len(remote), _ANALYZE_BATCH):
        batch = remote[start:start + _ANALYZE_BATCH]
        tokens = client.indices.analyze(index=index, body={"field": field_name, "text": batch}).get("tokens") or []
        if len(tokens) != len(batch):  # a normalizer gives one token per text; anything else is not one
            log.warning("_analyze on %s gave %d tokens for %d values; skipping them", field_name, len(tokens), len(batch))
            continue
        for value, token in zip(batch, sorted(tokens, key=lambda t: t.get("position", 0))):
            normalized[value] = str(token.get("token", ""))
    best: dict[str, tuple[str, int]] = {}
    for value, key in normalized.items():
        count = stored[value]
        current = best.get(key)
        if current is None or (-count, value) < (-current[1], current[0]):
            best[key] = (value, count)
    return best


def _folds_ascii_only(client, index: str, normalizer: str) -> bool:
    """Whether ``normalizer`` only lowercases and folds to ASCII (then ASCII text normalizes to
    ``str.lower()`` and needs no _analyze round trip)."""
    settings = client.indices.get_settings(index=index)
    for per_index in (settings or {}).values():
        analysis = (((per_index or {}).get("settings") or {}).get("index") or {}).get("analysis") or {}
        custom_filters = analysis.get("filter") or {}
        definition = (analysis.get("normalizer") or {}).get(normalizer)
        if definition is None:
            if normalizer != "lowercase":
                return False
            continue  # the built-in lowercase normalizer
        filters = definition.get("filter") or []
        filters = [filters] if isinstance(filters, str) else list(filters)
        if (definition.get("type", "custom") != "custom" or definition.get("char_filter")
                or not all(f in _SIMPLE_FILTERS and f not in custom_filters for f in filters)):
            return False
    return True


class DictionaryCache:
    """One :class:`FacetDictionary` per ``(index, fields)``, rebuilt after ``ttl_s`` seconds.

    With ``path`` the dictionaries are also kept in that JSON file, so a restart reuses them
    while they are younger than the TTL. A failed rebuild keeps serving the previous
    dictionary (retrying after ``retry_s``); with nothing to serve the error propagates.
    Thread-safe; builds run under a lock, so concurrent misses build once.
    """

    def __init__(
        self,
        client,
        *,
        ttl_s: float = 300.0,
        path: str | os.PathLike | None = None,
        size: int = 10000,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ):
        if not (isinstance(ttl_s, (int, float)) and math.isfinite(ttl_s) and ttl_s >= 0):
            raise ValueError(f"ttl_s must be finite and >= 0, got {ttl_s!r}")
        self.client = client
        self.ttl_s = float(ttl_s)
        self.path = Path(path) if path is not None else None
        self.size = size
        self.retry_s = float(retry_s)
        self._clock = clock  # wall clock: ages must survive a restart when persisted
        self._lock = threading.Lock()
        # key -> (dictionary, built_at, next_attempt_at)
        self._entries: dict[tuple[str, tuple[str, ...]], tuple[FacetDictionary, float, float]] = {}
        self._load()

    @staticmethod
    def _key(index: str, fields: Sequence[str]) -> tuple[str, tuple[str, ...]]:
        # Field order does not change the dictionary, so it does not split the cache.
        return index, tuple(sorted(set(_check_fields(fields))))

    def get(self, index: str, fields: Sequence[str]) -> FacetDictionary:
        """The cached dictionary, rebuilt first when missing or older than the TTL."""
        key = self._key(index, fields)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and now < entry[2]:
            return entry[0]
        with self._lock:
            entry = self._entries.get(key)  # another thread may have rebuilt it meanwhile
            if entry is not None and self._clock() < entry[2]:
                return entry[0]
            return self._rebuild(key, stale=entry)

    def refresh(self, index: str | None = None, fields: Sequence[str] | None = None) -> None:
        """Rebuild now: the ``(index, fields)`` entry when fields are given (cached or not), else
        every cached entry of ``index``, else (no arguments) every cached entry."""
        with self._lock:
            if fields is not None:
                if index is None:
                    raise ValueError("refresh(fields=...) needs the index too")
                keys = [self._key(index, fields)]
            else:
                keys = [key for key in self._entries if index is None or key[0] == index]
            for key in keys:
                self._rebuild(key, stale=self._entries.get(key))

    def clear(self) -> None:
        """Forget every dictionary (the file too, when there is one)."""
        with self._lock:
            self._entries.clear()
            self._save()

    def _rebuild(self, key, *, stale) -> FacetDictionary:
        index, fields = key
        try:
            dictionary = FacetDictionary.build(self.client, index, fields, size=self.size)
        except Exception:
            if stale is None:
                raise
            log.warning("rebuilding the facet dictionary of %s %s failed; serving the old one", index, fields, exc_info=True)
            self._entries[key] = (stale[0], stale[1], self._clock() + self.retry_s)
            return stale[0]
        now = self._clock()
        self._entries[key] = (dictionary, now, now + self.ttl_s)
        self._save()
        return dictionary

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            now = self._clock()
            for item in data["entries"]:
                built_at = float(item["built_at"])
                if now - built_at >= self.ttl_s:
                    continue
                dictionary = FacetDictionary(item["terms"], meta=item.get("meta"))
                key = (str(item["index"]), tuple(item["fields"]))
                self._entries[key] = (dictionary, built_at, built_at + self.ttl_s)
        except Exception:
            # A corrupt cache file costs a rebuild, never an outage.
            log.warning("ignoring unreadable facet dictionary cache %s", self.path, exc_info=True)
            self._entries.clear()

    def _save(self) -> None:
        if self.path is None:
            return
        entries = [
            {"index": index, "fields": list(fields), "built_at": built_at, "meta": d.meta, "terms": d.terms}
            for (index, fields), (d, built_at, _) in self._entries.items()
        ]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps({"version": 1, "entries": entries}, ensure_ascii=False), encoding="utf-8")
            os.replace(temporary, self.path)  # atomic: readers never see half a file
        except OSError:
            log.warning("could not write facet dictionary cache %s", self.path, exc_info=True)


FEATURE_NAMES: tuple[str, ...] = (
    "bias",  # 1.0: the intercept of the bandit's linear models
    "n_tokens",  # min(tokens / 10, 1): short navigational vs long descriptive queries
    "n_chars",  # min(normalised characters / 100, 1)
    "has_slots",  # 1.0 when at least one facet slot was found: structured intent
    "slot_coverage",  # tokens inside slots / tokens (0 without tokens): how structured
    "mean_slot_confidence",  # mean Slot.confidence (0 without slots): how unambiguous the slots are
    "n_slot_fields",  # min(distinct slot fields / 4, 1)
    "has_digits",  # 1.0 when the query holds a digit: codes, years, model numbers
    "non_ascii_fraction",  # non-ASCII / non-space characters: other scripts, accents, emoji
    "oov_fraction",  # tokens not in the dictionary's vocabulary / tokens: a typo signal
    "is_single_token",  # 1.0 for exactly one token: names, codes, navigational queries
)
"""Names of :meth:`QueryUnderstanding.features`, in order: the contextual bandit's context.
Every feature lies in [0, 1]; see the comment beside each name for its definition."""

_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class QueryUnderstanding:
    """Everything the later stages need to know about one query."""

    raw: str  # the text as received
    normalized: str  # normalize_query(raw)
    tokens: tuple[str, ...]  # tokenize(normalized)
    slots: tuple[Slot, ...]  # facet slots, left to right
    remaining_tokens: tuple[str, ...]  # tokens outside every slot, in order
    key: str  # query_key(raw): the Q2E memory key
    oov_fraction: float = 0.0  # tokens unknown to the dictionary / tokens (0 without a dictionary)

    @property
    def remaining_text(self) -> str:
        """The free text left once the slots are taken out, e.g. for a BM25 strategy."""
        return " ".join(self.remaining_tokens)

    def features(self) -> np.ndarray:
        """The bandit's context vector (float64, ``len(FEATURE_NAMES)``); see :data:`FEATURE_NAMES`."""
        n_tokens = len(self.tokens)
        covered = sum(slot.end - slot.start for slot in self.slots)
        visible = self.normalized.replace(" ", "")
        values = (
            1.0,
            min(n_tokens / 10.0, 1.0),
            min(len(self.normalized) / 100.0, 1.0),
            1.0 if self.slots else 0.0,
            covered / n_tokens if n_tokens else 0.0,
            sum(slot.confidence for slot in self.slots) / len(self.slots) if self.slots else 0.0,
            min(len({slot.field for slot in self.slots}) / 4.0, 1.0),
            1.0 if _DIGIT.search(self.normalized) else 0.0,
            sum(not c.isascii() for c in visible) / len(visible) if visible else 0.0,
            self.oov_fraction,
            1.0 if n_tokens == 1 else 0.0,
        )
        return np.array(values, dtype=np.float64)


class QueryUnderstander:
    """Turns raw query text into a :class:`QueryUnderstanding`.

    ``dictionary`` may be replaced at any time (e.g. from a :class:`DictionaryCache`); without
    one there are no slots and ``oov_fraction`` is 0.
    """

    def __init__(self, dictionary: FacetDictionary | None = None):
        self.dictionary = dictionary

    def understand(self, text: str) -> QueryUnderstanding:
        """Understand ``text``. Never raises on odd text; ``TypeError`` when it is not a str."""
        normalized = normalize_query(text)  # raises TypeError for non-str, by contract
        key = _key_of_normalized(normalized)  # = query_key(text), without normalising twice
        tokens = tokenize(normalized)
        dictionary = self.dictionary
        slots: tuple[Slot, ...] = ()
        oov = 0.0
        if dictionary is not None and tokens:
            try:
                slots = tuple(dictionary.match(tokens))
                oov = _oov_fraction(tokens, dictionary.vocabulary)
            except Exception:
                # A broken dictionary costs the slots, not the search.
                log.exception("facet matching failed for a query of %d characters", len(normalized))  # no query text in logs
                slots, oov = (), 0.0
        covered = set()
        for slot in slots:
            covered.update(range(slot.start, slot.end))
        remaining = tuple(token for i, token in enumerate(tokens) if i not in covered)
        return QueryUnderstanding(
            raw=text,
            normalized=normalized,
            tokens=tokens,
            slots=slots,
            remaining_tokens=remaining,
            key=key,
            oov_fraction=oov,
        )


def _oov_fraction(tokens: Sequence[str], vocabulary: frozenset[str]) -> float:
    """Share of tokens the dictionary does not know. Stopwords and pure numbers count as known:
    they are not typos. An empty vocabulary gives 0: no vocabulary, no evidence."""
    if not vocabulary or not tokens:
        return 0.0
    unknown = sum(1 for t in tokens if t not in vocabulary and t not in STOPWORDS and not t.isdigit())
    return unknown / len(tokens)
