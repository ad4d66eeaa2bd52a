"""The simulated query stream: which query, which user, what text, what the system sees.

* **Queries**: a dataset's judged queries (graded qrels). A random permutation (redrawn per seed)
  splits them into *head* queries (the first ``1 − tail_fraction``) and held-out *tail* queries.
* **Popularity**: head queries are drawn Zipf, P(rank r) ∝ r^(−s); a fixed share of searches
  (``tail_share``) draws a tail query uniformly instead, so tail queries stay rare.
* **User types** (:data:`USER_TYPES`) change which arm is best:

  - ``typo``: character edits of the query (edit distance 1 per edited word);
  - ``vocabulary``: vocabulary mismatch, the rarest content terms (by document frequency) dropped;
  - ``repeat``: head queries only (the ``repeat_pool`` most popular), typed as before, so a
    query memory (Q2E) can help once warm;
  - ``plain``: the query as written.

  Query variants (typo'd or reduced texts) come from a fixed pool per query
  (``variants_per_query``), generated up front, so the candidate cache stays small.
* **What the system sees**: the ``segment`` tag of the request equals the user's true type's tag
  with probability ``segment_accuracy`` and is a uniformly random tag of the mix otherwise, plus
  whatever the query text itself shows (token count, OOV share...). The true type never reaches
  a policy. Tags are chosen to fall into distinct ``ctx-v1`` hash buckets.

Random streams are named and seeded separately (:func:`rng`): ``queries`` (popularity and the
query drawn), ``users`` (type, shown tag, which variant), ``variants`` (the variant pools), so
changing the number of searches never changes the variants, and every policy sees the same stream.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..understanding import STOPWORDS, normalize_query, tokenize


class StreamConfigError(ValueError):
    """A stream parameter is invalid; the message says which and why."""


@dataclass(frozen=True, slots=True)
class UserType:
    """A kind of user: the ``segment`` tag a request carries for them, how they write the query
    (``variant``: canonical | typo | vocabulary) and whether they search only head queries."""

    name: str
    segment: str
    variant: str = "canonical"
    head_only: bool = False


USER_TYPES: Mapping[str, UserType] = {
    "plain": UserType("plain", "general"),  # tag "general": "plain" shares a ctx-v1 bucket with "vocabulary"
    "typo": UserType("typo", "typo", "typo"),
    "vocabulary": UserType("vocabulary", "vocabulary", "vocabulary"),
    "repeat": UserType("repeat", "repeat", "canonical", head_only=True),
}
GENERIC_MIX: Mapping[str, float] = {"plain": 0.4, "typo": 0.2, "vocabulary": 0.2, "repeat": 0.2}
"""User mix for collections without intents (Cranfield, BEIR)."""
INTENT_MIX: Mapping[str, float] = {"plain": 0.7, "repeat": 0.3}
"""User mix for queries that carry an ``intent`` (the synthetic catalogue): intents already favour
different arms (misspelled -> fuzzy, artist/genre -> structured...), repeat users add Q2E."""


def rng(seed: int, name: str) -> np.random.Generator:
    """An independent generator for the named purpose (``"queries"``, ``"users"``, ``"policy:linucb"``...)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())]))


def stream_seed(seed: int, name: str) -> int:
    """A 32-bit seed for the named purpose, for APIs that take an int (policies)."""
    return int(rng(seed, name).integers(0, 2**31 - 1))


@dataclass(frozen=True)
class SimQuery:
    """A judged query: its id, canonical text, graded judgments and intent (None when not given)."""

    id: str
    text: str
    grades: Mapping[str, int]
    intent: str | None = None

    @property
    def relevant(self) -> frozenset[str]:
        return frozenset(d for d, g in self.grades.items() if g > 0)


@dataclass(frozen=True)
class StreamConfig:
    """How the stream is drawn. ``user_mix``: user type -> share (normalised; None: the default
    for the collection, :data:`GENERIC_MIX` or :data:`INTENT_MIX`)."""

    searches: int
    seed: int = 0
    zipf_s: float = 1.0
    tail_fraction: float = 0.25
    tail_share: float = 0.1
    segment_accuracy: float = 0.7
    user_mix: Mapping[str, float] | None = None
    repeat_pool: int = 20
    variants_per_query: int = 3

    def __post_init__(self) -> None:
        def number(name: str, lo: float, hi: float) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise StreamConfigError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")

        if isinstance(self.searches, bool) or not isinstance(self.searches, int) or not 1 <= self.searches <= 10_000_000:
            raise StreamConfigError(f"searches must be an integer in [1, 10000000], got {self.searches!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise StreamConfigError(f"seed must be an integer, got {self.seed!r}")
        number("zipf_s", 0.0, 5.0)
        number("tail_fraction", 0.0, 0.9)
        number("tail_share", 0.0, 1.0)
        number("segment_accuracy", 0.0, 1.0)
        for name in ("repeat_pool", "variants_per_query"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1000:
                raise StreamConfigError(f"{name} must be an integer in [1, 1000], got {v!r}")
        if self.user_mix is not None:
            if not self.user_mix:
                raise StreamConfigError("user_mix is empty")
            for name, share in self.user_mix.items():
                if name not in USER_TYPES:
                    raise StreamConfigError(f"unknown user type {name!r}; known: {sorted(USER_TYPES)}")
                if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) or share < 0:
                    raise StreamConfigError(f"share of {name} must be a finite number >= 0, got {share!r}")
            if sum(self.user_mix.values()) <= 0:
                raise StreamConfigError("user_mix shares sum to 0")
            object.__setattr__(self, "user_mix", dict(self.user_mix))

    def mix_for(self, has_intents: bool) -> dict[str, float]:
        """The normalised user mix (the collection default when none was given)."""
        mix = dict(self.user_mix) if self.user_mix is not None else dict(INTENT_MIX if has_intents else GENERIC_MIX)
        total = sum(mix.values())
        return {k: v / total for k, v in mix.items() if v > 0}


@dataclass(frozen=True, slots=True)
class SimSearch:
    """One search of the stream."""

    index: int  # 0-based position in the stream
    query: SimQuery
    text: str  # what the user typed (the canonical text or a variant)
    user_type: str  # the true type (never shown to a policy)
    segment: str  # the tag the request carries (noisy)
    tail: bool  # a held-out tail query

    @property
    def context_type(self) -> str:
        """The true context the regret comparator conditions on: the user type, with the intent when
        the query has one (``repeat:artist``)."""
        return self.user_type if self.query.intent is None else f"{self.user_type}:{self.query.intent}"


@dataclass
class QueryStream:
    """The drawn stream and what it was drawn from."""

    searches: list[SimSearch]
    head: tuple[str, ...]  # head query ids in popularity order (rank 1 first)
    tail: tuple[str, ...]  # held-out tail query ids
    variants: dict[str, dict[str, tuple[str, ...]]]  # query id -> variant kind -> texts
    mix: dict[str, float]
    config: StreamConfig
    notes: list[str] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        """Distinct query texts of the stream, in first-use order (what the candidate cache fetches)."""
        return list(dict.fromkeys(s.text for s in self.searches))

    def summary(self) -> dict[str, object]:
        return {
            "searches": len(self.searches),
            "queries": len(self.head) + len(self.tail),
            "head_queries": len(self.head),
            "tail_queries": len(self.tail),
            "distinct_texts": len(self.texts),
            "tail_searches": sum(s.tail for s in self.searches),
            "user_types": dict(Counter(s.user_type for s in self.searches)),
            "context_types": dict(Counter(s.context_type for s in self.searches)),
            "segment_accuracy_realised": float(np.mean([s.segment == USER_TYPES[s.user_type].segment
                                                        for s in self.searches])) if self.searches else 0.0,
            "mix": self.mix,
            "notes": self.notes,
        }


# ------------------------------------------------------------------------------------------------
# Query variants

_NEIGHBOURS = {  # QWERTY neighbours, for substitution typos
    "q": "wa", "w": "qes", "e": "wrd", "r": "etf", "t": "ryg", "y": "tuh", "u": "yij", "i": "uok", "o": "ipl",
    "p": "ol", "a": "qsz", "s": "adw", "d": "sfe", "f": "dgr", "g": "fht", "h": "gjy", "j": "hku", "k": "jli",
    "l": "ko", "z": "xa", "x": "zcs", "c": "xvd", "v": "cbf", "b": "vng", "n": "bmh", "m": "nj",
}


def _edit_word(word: str, gen: np.random.Generator) -> str:
    """One character edit (substitute a neighbour, delete, transpose, double), never the first letter."""
    pos = 1 + int(gen.integers(len(word) - 1))
    op = int(gen.integers(4))
    ch = word[pos]
    if op == 0:
        options = _NEIGHBOURS.get(ch, "e")
        return word[:pos] + options[int(gen.integers(len(options)))] + word[pos + 1:]
    if op == 1:
        return word[:pos] + word[pos + 1:]
    if op == 2 and pos + 1 < len(word) and word[pos + 1] != ch:
        return word[:pos] + word[pos + 1] + ch + word[pos + 2:]
    return word[:pos] + ch + word[pos:]


def typo_variants(text: str, n: int, gen: np.random.Generator, edit_share: float = 1 / 3) -> tuple[str, ...]:
    """Up to ``n`` distinct misspellings of ``text``: each alphabetic word of 4+ letters is edited
    with probability ``edit_share`` (at least one word is). Empty when no word can be edited."""
    words = normalize_query(text).split(" ")
    editable = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not editable:
        return ()
    out: dict[str, None] = {}
    for _attempt in range(20 * n):
        if len(out) >= n:
            break
        chosen = [i for i in editable if gen.random() < edit_share] or [editable[int(gen.integers(len(editable)))]]
        new = list(words)
        for i in chosen:
            new[i] = _edit_word(new[i], gen)
        variant = " ".join(new)
        if normalize_query(variant) != normalize_query(text):
            out[variant] = None
    return tuple(out)


def vocabulary_variants(text: str, n: int, gen: np.random.Generator, doc_frequency: Mapping[str, int],
                        rarest: int = 4) -> tuple[str, ...]:
    """Up to ``n`` distinct texts with one or two of the ``rarest`` content terms (lowest document
    frequency; unknown terms count as rarest) dropped, keeping at least one content term. Empty
    when the query has fewer than two content terms."""
    tokens = list(tokenize(normalize_query(text)))
    content = [i for i, t in enumerate(tokens) if t not in STOPWORDS and not t.isdigit() and len(t) >= 3]
    if len(content) < 2:
        return ()
    by_rarity = sorted(content, key=lambda i: (doc_frequency.get(tokens[i], 0), i))[:rarest]
    out: dict[str, None] = {}
    for _attempt in range(20 * n):
        if len(out) >= n:
            break
        k = 1 if len(content) < 4 else 1 + int(gen.integers(2))
        k = min(k, len(content) - 1, len(by_rarity))
        drop = {int(i) for i in gen.choice(by_rarity, size=k, replace=False)}
        variant = " ".join(t for i, t in enumerate(tokens) if i not in drop)
        if variant and variant != " ".join(tokens):
            out[variant] = None
    return tuple(out)


def document_frequency(texts: Iterable[str]) -> dict[str, int]:
    """Token -> number of texts holding it (tokens as the query side sees them)."""
    df: Counter[str] = Counter()
    for text in texts:
        df.update(set(tokenize(normalize_query(text))))
    return dict(df)


# ------------------------------------------------------------------------------------------------
# The stream


def zipf_probabilities(n: int, s: float) -> np.ndarray:
    """P(rank r) ∝ r^(−s) for r = 1..n, shape (n,)."""
    p = np.arange(1, n + 1, dtype=np.float64) ** (-float(s))
    return p / p.sum()


def build_stream(queries: Sequence[SimQuery], config: StreamConfig,
                 doc_frequency: Mapping[str, int] | None = None) -> QueryStream:
    """Draw ``config.searches`` searches over ``queries`` (see the module docstring).

    ``doc_frequency`` (token -> documents) is needed when the mix has vocabulary users."""
    if not queries:
        raise StreamConfigError("no queries to draw from")
    ids = [q.id for q in queries]
    if len(set(ids)) != len(ids):
        raise StreamConfigError("query ids are not unique")
    has_intents = any(q.intent is not None for q in queries)
    mix = config.mix_for(has_intents)
    if "vocabulary" in mix and doc_frequency is None:
        raise StreamConfigError("vocabulary users need the corpus's document frequencies")
    tags = [USER_TYPES[t].segment for t in mix]
    if len(set(tags)) != len(tags):
        raise StreamConfigError(f"user types share a segment tag: {tags}")
    by_id = {q.id: q for q in queries}
    q_rng, u_rng, v_rng = rng(config.seed, "queries"), rng(config.seed, "users"), rng(config.seed, "variants")

    order = [ids[i] for i in q_rng.permutation(len(ids))]
    n_tail = int(round(config.tail_fraction * len(order)))
    if n_tail >= len(order):
        n_tail = len(order) - 1
    head, tail = order[: len(order) - n_tail], order[len(order) - n_tail:]
    notes: list[str] = []

    variants: dict[str, dict[str, tuple[str, ...]]] = {}
    kinds = {USER_TYPES[t].variant for t in mix} - {"canonical"}
    for q in queries:  # in input order, so a query's variants do not depend on the permutation
        per: dict[str, tuple[str, ...]] = {}
        if "typo" in kinds:
            per["typo"] = typo_variants(q.text, config.variants_per_query, v_rng)
        if "vocabulary" in kinds:
            per["vocabulary"] = vocabulary_variants(q.text, config.variants_per_query, v_rng, doc_frequency or {})
        variants[q.id] = per
    for kind in sorted(kinds):
        missing = sum(1 for per in variants.values() if not per.get(kind))
        if missing:
            notes.append(f"{missing} of {len(queries)} queries have no {kind} variant; those users type the query as is")

    n = config.searches
    names = list(mix)
    types = u_rng.choice(len(names), size=n, p=np.array([mix[t] for t in names]))
    honest = u_rng.random(n) < config.segment_accuracy
    random_tag = u_rng.integers(len(names), size=n)
    variant_pick = u_rng.random(n)
    head_p = zipf_probabilities(len(head), config.zipf_s)
    pool = min(config.repeat_pool, len(head))
    repeat_p = zipf_probabilities(pool, config.zipf_s)
    draw_tail = (q_rng.random(n) < config.tail_share) if tail else np.zeros(n, dtype=bool)
    head_rank = q_rng.choice(len(head), size=n, p=head_p)
    repeat_rank = q_rng.choice(pool, size=n, p=repeat_p)
    tail_pick = q_rng.integers(len(tail), size=n) if tail else np.zeros(n, dtype=np.int64)

    searches: list[SimSearch] = []
    for t in range(n):
        user = USER_TYPES[names[int(types[t])]]
        if user.head_only:
            qid, is_tail = head[int(repeat_rank[t])], False
        elif draw_tail[t]:
            qid, is_tail = tail[int(tail_pick[t])], True
        else:
            qid, is_tail = head[int(head_rank[t])], False
        query = by_id[qid]
        options = variants[qid].get(user.variant, ()) if user.variant != "canonical" else ()
        text = options[int(variant_pick[t] * len(options))] if options else query.text
        segment = user.segment if honest[t] else USER_TYPES[names[int(random_tag[t])]].segment
        searches.append(SimSearch(t, query, text, user.name, segment, is_tail))
    return QueryStream(searches, tuple(head), tuple(tail), variants, mix, config, notes)
