"""The Q2E memory: which items engaged users for which query, kept per catalogue in its own index.

**Where.** ``<alias>-q2e`` (``index_templates/q2e_memory.yaml``), beside the catalogue's versions
``<alias>-v<N>``: ``ltrr load`` builds a new catalogue version and leaves the memory alone, and an
update rewrites a small memory document, never an item's 384-d vector. In the catalogue, Lucene
would re-index the whole document for every memory update; worse, the catalogue keeps vectors
out of ``_source``, so a partial ``_update`` there re-indexes the item *without* its vector (it
silently leaves the k-NN arm), and a correct in-place update must resend the vector
(``scripts/bench_q2e.py`` measures the three ways). One document per item that has memory,
``_id`` = the catalogue doc id:

* ``q2e``: rank_features, query key -> ``v = clip(scale·s, 1e-3, 1e3)`` (the *actual* score);
* ``q2e_pred``: rank_features, query key -> ``clip(scale·p̂, 1e-3, 1e3)`` (the *predicted* score);
* ``counts`` (not indexed): query key -> ``{c, n, t}``, the decayed sums below and the time (epoch
  seconds) they refer to, so every score can be recomputed (:meth:`Q2EMemory.rescore`);
* ``predicted`` (not indexed): query key -> ``{p, t, source}``, the provenance of a prediction;
* ``applied`` (not indexed): the ids of the last :data:`APPLIED_RING` record batches, so a retried
  request (a client retry after a timeout) is not counted twice.

**Score** of a (query key, item) pair, a Beta-smoothed, position-debiased engagement rate:

    s = (c + m·p0) / (n + m)

* ``c`` = decayed Σ engagement grades (``feedback.records.EVENT_GRADES``: click 0.3 ... play 1);
* ``n`` = decayed Σ examination weights θ_k of the impressions (θ_k: the probability that a user
  looks at position k, which the caller passes, so n is the expected number of real looks);
* ``p0`` = prior mean, ``m`` = prior strength (α = m·p0, β = m·(1 − p0)): with no evidence
  s = p0; as n grows past m, s approaches c/n. An impression without engagement lowers s.

**Decay**: half-life ``h`` on ``c`` and ``n`` alike; at time T, c(T) = Σ_i g_i·2^{−(T − t_i)/h}
(the same for n). A document stores (c, n, t); an update at t' ≥ t first decays the sums to t',
an older one (t' < t) is added decayed to t, so the order in which writers arrive does not change
the result. Written scores are computed at the write time; :meth:`Q2EMemory.rescore` recomputes
all of them at one time (stale pairs drift back to the prior).

**rank_features** (Lucene FeatureField): values must be positive and finite (0 is rejected, so
:data:`MIN_VALUE` is the floor) and keep 9 significant bits (~0.4% relative error): near-ties
collapse, which is why the exact sums live in ``counts``. Removing a key: a partial update with
``{"q2e": {"q_x": null}}`` does drop the feature from the index on OpenSearch 3.5 (the mapper
ignores nulls) but leaves ``"q_x": null`` in the source, and merging ``{"q2e": {}}`` is a no-op;
the scripts here therefore remove keys from the source maps, and the document is re-indexed from
that source (checked in tests/test_q2e.py).

**Predictions** (cold start): :meth:`Q2EMemory.predict` writes ``p̂`` for a key's likely items into
``q2e_pred`` only (never into the sums: a prediction is not engagement), unless the pair already
has an actual score. The first actual score written for a pair removes its prediction.

**Eligibility and cap**: a pair gets an actual score once its decayed n ≥ ``min_exposure``; an
item keeps at most ``max_keys`` keys (actual + predicted): predictions with the lowest p̂ go
first, then the actual pairs with the lowest score.

**Writes** are scripted ``_update``s with ``retry_on_conflict`` (the script runs again on the
current document), one bulk request per call, so concurrent writers lose nothing.

**Request filters** (facets) cannot be evaluated in the memory (it holds no catalogue fields):
the pipeline makes the memory arm not applicable when a search has filters; copying filterable
fields here would go stale at every reload and double every catalogue write.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import threading
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opensearchpy import OpenSearch
from opensearchpy.exceptions import NotFoundError, TransportError

MEMORY_SUFFIX = "-q2e"  # <alias>-q2e; catalog.check_alias keeps catalogue aliases from ending so
TEMPLATE = "q2e_memory"
MIN_VALUE = 1e-3  # rank_features rejects 0; the floor of a written value
MAX_VALUE = 1e3
APPLIED_RING = 32  # record batch ids kept per document (idempotent retries)
MAX_DOC_ID_BYTES = 512  # OpenSearch's _id limit
BULK_DOCS = 5_000  # documents per bulk request
_KEY_RE = re.compile(r"^q_[0-9a-f]{16}$")
_RETRY_STATUSES = {409, 429, 502, 503, 504}


class Q2EError(ValueError):
    """A Q2E memory input is malformed, or a write could not be completed (the message says which)."""


def check_key(key: object) -> str:
    """``key`` when it is a query key (``q_`` + 16 hex digits, :func:`orchestrator.understanding.query_key`)."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise Q2EError(f"{str(key)[:40]!r} is not a query key (q_ + 16 lowercase hex digits)")
    return key


def _check_doc_id(doc_id: object) -> str:
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise Q2EError("doc_id must be a non-empty string")
    if len(doc_id.encode("utf-8", "surrogatepass")) > MAX_DOC_ID_BYTES:
        raise Q2EError(f"doc_id {doc_id[:40]!r}... is over {MAX_DOC_ID_BYTES} bytes")
    return doc_id


def _finite(name: str, value: object, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Q2EError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if v < lo or v > hi or (lo_open and v == lo):
        raise Q2EError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
    return v


def _epoch(name: str, value: float | datetime | None) -> float:
    if value is None:
        return time.time()
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise Q2EError(f"{name} must be timezone-aware")
        return value.timestamp()
    return _finite(name, value, 0.0, 1e11, lo_open=True)


PRIOR_MEAN = 0.1  # p0: the engagement rate of an item nothing is known about
PRIOR_STRENGTH = 5.0  # m: how many examinations the prior weighs


def smoothed_score(c: float, n: float, prior_mean: float, prior_strength: float) -> float:
    """The Q2E score s = (c + m·p0) / (n + m): engagement c over examinations n, Beta-smoothed
    towards p0 with strength m (the real memory and the simulator's share it)."""
    return (c + prior_strength * prior_mean) / (n + prior_strength)


@dataclass(frozen=True, slots=True)
class Q2EConfig:
    """How scores are computed and kept (see the module docstring for the formula).

    ``prior_mean`` p0 in (0, 1) and ``prior_strength`` m > 0: the Beta prior (fit them to the
    catalogue's engagement rates when known). ``half_life_s``: decay of c and n (seconds).
    ``scale``: written value = clip(scale·s, 1e-3, 1e3). ``min_exposure``: decayed n an actual
    score needs. ``max_keys``: keys an item keeps. ``key_cache_ttl_s``: how long
    :meth:`Q2EMemory.has_key` answers from memory. ``retry_on_conflict``: server-side re-runs of
    a scripted update that lost a race; ``write_attempts``: client-side attempts of items the
    node refused for load (429/5xx) or that exhausted those re-runs.
    """

    prior_mean: float = PRIOR_MEAN
    prior_strength: float = PRIOR_STRENGTH
    half_life_s: float = 14 * 86_400.0
    scale: float = 10.0
    min_exposure: float = 0.0
    max_keys: int = 256
    key_cache_ttl_s: float = 10.0
    retry_on_conflict: int = 10
    write_attempts: int = 5

    def __post_init__(self) -> None:
        _finite("prior_mean", self.prior_mean, 0.0, 1.0, lo_open=True)
        if self.prior_mean >= 1.0:
            raise Q2EError(f"prior_mean must be in (0, 1), got {self.prior_mean}")
        _finite("prior_strength", self.prior_strength, 0.0, 1e9, lo_open=True)
        _finite("half_life_s", self.half_life_s, 0.0, 1e12, lo_open=True)
        _finite("scale", self.scale, 0.0, 1e6, lo_open=True)
        _finite("min_exposure", self.min_exposure, 0.0, 1e9)
        _finite("key_cache_ttl_s", self.key_cache_ttl_s, 0.0, 86_400.0)
        for name, lo, hi in (("max_keys", 1, 100_000), ("retry_on_conflict", 0, 1_000), ("write_attempts", 1, 100)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise Q2EError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")

    def score(self, c: float, n: float) -> float:
        """s = (c + m·p0) / (n + m) for sums already decayed to the time of interest."""
        return smoothed_score(c, n, self.prior_mean, self.prior_strength)

    def value(self, s: float) -> float:
        """What rank_features stores for a score s (or a prediction p̂)."""
        return min(MAX_VALUE, max(MIN_VALUE, self.scale * s))

    def decay(self, dt_s: float) -> float:
        """2^(−dt/h): the weight of evidence ``dt_s`` seconds old."""
        return 2.0 ** (-max(0.0, dt_s) / self.half_life_s)


@dataclass(frozen=True, slots=True)
class Q2EUpdate:
    """One impression of item ``doc_id`` for query key ``key``: its engagement ``grade`` (0 when
    shown and not engaged; the largest event grade otherwise), the ``examination`` weight θ_k of
    the position it was shown at (1 without a position model), and when (epoch seconds or an
    aware datetime; None: now)."""

    key: str
    doc_id: str
    grade: float = 0.0
    examination: float = 1.0
    time: float | datetime | None = None

    def __post_init__(self) -> None:
        check_key(self.key)
        _check_doc_id(self.doc_id)
        grade = _finite("grade", self.grade, 0.0, 100.0)
        examination = _finite("examination", self.examination, 0.0, 1.0)
        if grade == 0.0 and examination == 0.0:
            raise Q2EError(f"an update of ({self.key}, {self.doc_id}) with grade 0 and examination 0 says nothing")
        object.__setattr__(self, "grade", grade)
        object.__setattr__(self, "examination", examination)
        object.__setattr__(self, "time", _epoch("time", self.time))


def impression_updates(key: str, shown: Sequence[str], engaged: Mapping[str, float],
                       examination: Callable[[int], float], *, time: float | datetime | None = None) -> list[Q2EUpdate]:
    """The updates of one displayed ranking: each shown item (``shown``, best first, only what was
    in the viewport) at 1-based position k gets examination ``examination(k)`` and the grade
    ``engaged.get(doc_id, 0)``; engaged items that were not shown are ignored (no exposure known)."""
    at = _epoch("time", time)
    return [Q2EUpdate(key, doc_id, float(engaged.get(doc_id, 0.0)), float(examination(k)), at)
            for k, doc_id in enumerate(shown, start=1)]


# ------------------------------------------------------------------------------------------------
# Painless: the same arithmetic as Q2EConfig, run inside the update so that it is atomic
# ------------------------------------------------------------------------------------------------

_FUNCTIONS = """
double num(def x) { return x == null ? 0.0 : ((Number) x).doubleValue(); }
double score(def cur, double at, double h, double m, double p0) {
  double f = Math.pow(2.0, -Math.max(0.0, at - num(cur.t)) / h);
  return (num(cur.c) * f + m * p0) / (num(cur.n) * f + m);
}
double clip(double v, double lo, double hi) { return Math.min(hi, Math.max(lo, v)); }
int keyCount(Map counts, Map predicted) {
  int total = counts.size();
  for (def k : predicted.keySet()) { if (!counts.containsKey(k)) { total++; } }
  return total;
}
void cap(Map src, int limit, double now, double h, double m, double p0) {
  int total = keyCount(src.counts, src.predicted);
  while (total > limit) {
    String victim = null;
    double lowest = Double.POSITIVE_INFINITY;
    for (def e : src.predicted.entrySet()) {
      double p = num(e.getValue().p);
      if (!src.counts.containsKey(e.getKey()) && p < lowest) { lowest = p; victim = e.getKey(); }
    }
    if (victim == null) {
      for (def e : src.counts.entrySet()) {
        double s = score(e.getValue(), Math.max(now, num(e.getValue().t)), h, m, p0);
        if (s < lowest) { lowest = s; victim = e.getKey(); }
      }
    }
    src.counts.remove(victim); src.predicted.remove(victim); src.q2e.remove(victim); src.q2e_pred.remove(victim);
    total = keyCount(src.counts, src.predicted);
  }
}
void init(Map src, def docId) {
  if (src.doc_id == null) { src.doc_id = docId; }
  if (src.q2e == null) { src.q2e = new HashMap(); }
  if (src.q2e_pred == null) { src.q2e_pred = new HashMap(); }
  if (src.counts == null) { src.counts = new HashMap(); }
  if (src.predicted == null) { src.predicted = new HashMap(); }
  if (src.applied == null) { src.applied = new HashMap(); }
}
void rescoreKey(Map src, String k, double now, double h, double m, double p0, double scale, double minExposure,
                double lo, double hi) {
  def cur = src.counts.get(k);
  double at = Math.max(now, num(cur.t));
  double f = Math.pow(2.0, -(at - num(cur.t)) / h);
  if (num(cur.n) * f >= minExposure) {
    src.q2e.put(k, clip(scale * score(cur, at, h, m, p0), lo, hi));
    src.q2e_pred.remove(k);
    src.predicted.remove(k);
  } else {
    src.q2e.remove(k);
  }
}
"""

_RECORD = _FUNCTIONS + """
Map src = ctx._source;
init(src, params.doc_id);
if (src.applied.containsKey(params.batch)) {
  ctx.op = 'none';
} else {
  double h = params.half_life_s;
  for (def e : params.updates.entrySet()) {
    String k = e.getKey();
    def u = e.getValue();
    double dc = num(u.c);
    double dn = num(u.n);
    double t = num(u.t);
    def cur = src.counts.get(k);
    if (cur == null) {
      src.counts.put(k, ['c': dc, 'n': dn, 't': t]);
    } else if (t >= num(cur.t)) {
      double older = Math.pow(2.0, -(t - num(cur.t)) / h);
      cur.c = num(cur.c) * older + dc; cur.n = num(cur.n) * older + dn; cur.t = t;
    } else {
      double late = Math.pow(2.0, -(num(cur.t) - t) / h);
      cur.c = num(cur.c) + dc * late; cur.n = num(cur.n) + dn * late;
    }
    rescoreKey(src, k, params.now, h, params.prior_strength, params.prior_mean, params.scale, params.min_exposure,
               params.min_value, params.max_value);
  }
  cap(src, params.max_keys, params.now, h, params.prior_strength, params.prior_mean);
  src.applied.put(params.batch, params.now_ms);
  if (src.applied.size() > params.applied_ring) {
    String oldest = null;
    long when = Long.MAX_VALUE;
    for (def e : src.applied.entrySet()) {
      long w = ((Number) e.getValue()).longValue();
      if (w < when) { when = w; oldest = e.getKey(); }
    }
    src.applied.remove(oldest);
  }
  src.updated = params.now_ms;
}
"""

_PREDICT = _FUNCTIONS + """
Map src = ctx._source;
init(src, params.doc_id);
if (src.q2e.containsKey(params.key)) {
  ctx.op = 'none';
} else {
  src.q2e_pred.put(params.key, params.value);
  src.predicted.put(params.key, ['p': params.p, 't': params.now, 'source': params.source]);
  cap(src, params.max_keys, params.now, params.half_life_s, params.prior_strength, params.prior_mean);
  src.updated = params.now_ms;
}
"""

_RESCORE = _FUNCTIONS + """
Map src = ctx._source;
init(src, src.doc_id);
for (def k : new ArrayList(src.counts.keySet())) {
  rescoreKey(src, k, params.now, params.half_life_s, params.prior_strength, params.prior_mean, params.scale,
             params.min_exposure, params.min_value, params.max_value);
}
src.updated = params.now_ms;
"""


_SCRIPTS = {"record": _RECORD, "predict": _PREDICT, "rescore": _RESCORE}


def script_id(name: str) -> str:
    """The stored script of ``name``, content-addressed (a changed script never replaces one in use)."""
    return f"ltrr-q2e-{name}-{hashlib.sha256(_SCRIPTS[name].encode()).hexdigest()[:8]}"


class _KeyCache:
    """(memory index, key) -> (why the arm cannot run, or None; expiry), shared by every
    :class:`Q2EMemory` of the process so a write invalidates what a search cached."""

    def __init__(self, max_entries: int = 100_000):
        self._data: OrderedDict[tuple[str, str], tuple[str | None, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, index: str, key: str) -> tuple[bool, str | None]:
        with self._lock:
            hit = self._data.get((index, key))
            if hit is None or hit[1] < time.monotonic():
                return False, None
            return True, hit[0]

    def put(self, index: str, key: str, reason: str | None, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        with self._lock:
            self._data[(index, key)] = (reason, time.monotonic() + ttl_s)
            self._data.move_to_end((index, key))
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def forget(self, index: str, keys: Iterable[str] | None = None) -> None:
        with self._lock:
            if keys is None:
                for k in [k for k in self._data if k[0] == index]:
                    del self._data[k]
            else:
                for key in keys:
                    self._data.pop((index, key), None)
                self._data.pop((index, ""), None)


_KEY_CACHE = _KeyCache()


def _reason(error: object) -> str:
    """A bulk item's error as one line."""
    if not isinstance(error, Mapping):
        return str(error)[:300]
    cause = error.get("caused_by") or {}
    why = f"{error.get('type', 'error')}: {error.get('reason', '')}"
    if isinstance(cause, Mapping) and cause.get("reason"):
        why += f" ({cause.get('type', '')}: {cause.get('reason')})"
    return why[:300]


def memory_index(catalogue_alias: str) -> str:
    """The memory index of a catalogue alias."""
    return f"{catalogue_alias}{MEMORY_SUFFIX}"


class Q2EMemory:
    """The Q2E memory of catalogue ``catalogue_alias`` (index ``<alias>-q2e``).

    Writes go through the given client; give it one without client retries when you can (the
    record batches are idempotent anyway, see ``applied`` in the module docstring).
    """

    def __init__(self, client: OpenSearch, catalogue_alias: str, config: Q2EConfig | None = None):
        from ..catalog import check_alias

        self.client = client
        self.catalogue = check_alias(catalogue_alias)
        self.index = memory_index(catalogue_alias)
        self.config = config or Q2EConfig()
        self._ready = False

    # ---- the index ---------------------------------------------------------------------------
    def ensure(self) -> bool:
        """Create the memory index when missing (idempotent); True when it was created now.

        Refuses a name that is taken by an alias or by an index that is not a Q2E memory."""
        from ..catalog import CatalogError, IndexTemplate

        if self.client.indices.exists_alias(name=self.index):
            raise Q2EError(f"{self.index} is an alias; the Q2E memory of {self.catalogue} needs that name for its index")
        created = False
        if self.client.indices.exists(index=self.index):
            mapping = self.client.indices.get_mapping(index=self.index)
            meta = next(iter(mapping.values()))["mappings"].get("_meta", {}).get("ltrr", {})
            if meta.get("template") != TEMPLATE:
                raise Q2EError(f"index {self.index} exists and is not a Q2E memory (its _meta.ltrr.template is "
                               f"{meta.get('template')!r}); rename it or load the catalogue under another alias")
        else:
            try:
                body = IndexTemplate.load(TEMPLATE).body()
            except CatalogError as e:
                raise Q2EError(str(e)) from None
            meta = body["mappings"]["_meta"]["ltrr"]
            for unused in ("facets", "numeric"):
                meta.pop(unused, None)
            meta["catalogue"] = self.catalogue
            try:
                self.client.indices.create(index=self.index, body=body)
                created = True
            except TransportError as e:
                if getattr(e, "error", "") != "resource_already_exists_exception":  # a concurrent ensure won
                    raise Q2EError(f"creating {self.index} failed: {getattr(e, 'info', e)}") from e
        self._put_scripts()
        _KEY_CACHE.forget(self.index)
        self._ready = True
        return created

    def _put_scripts(self) -> None:
        for name, source in _SCRIPTS.items():
            try:
                self.client.get_script(id=script_id(name))
            except NotFoundError:
                self.client.put_script(id=script_id(name), body={"script": {"lang": "painless", "source": source}})

    def exists(self) -> bool:
        return bool(self.client.indices.exists(index=self.index))

    def drop(self) -> bool:
        """Delete the memory index; True when there was one."""
        _KEY_CACHE.forget(self.index)
        self._ready = False
        try:
            self.client.indices.delete(index=self.index)
        except NotFoundError:
            return False
        return True

    def refresh(self) -> None:
        self.client.indices.refresh(index=self.index)

    # ---- writes ------------------------------------------------------------------------------
    def _script_params(self, now: float) -> dict[str, Any]:
        c = self.config
        return {"now": now, "now_ms": int(now * 1000), "half_life_s": c.half_life_s, "prior_mean": c.prior_mean,
                "prior_strength": c.prior_strength, "scale": c.scale, "min_exposure": c.min_exposure,
                "min_value": MIN_VALUE, "max_value": MAX_VALUE, "max_keys": c.max_keys}

    def record(self, updates: Iterable[Q2EUpdate], *, now: float | datetime | None = None,
               refresh: bool | str = False) -> int:
        """Add engagement evidence; returns the number of item documents written.

        Updates of one (key, item) are summed (each decayed to the latest of their times) and
        every item gets one scripted update, all in one bulk request (per :data:`BULK_DOCS`
        items). Scores are computed at ``now`` (default: the wall clock, never before the evidence).
        """
        at = _epoch("now", now)
        by_doc: dict[str, dict[str, list[tuple[float, float, float]]]] = defaultdict(lambda: defaultdict(list))
        for u in updates:
            if not isinstance(u, Q2EUpdate):
                raise Q2EError(f"record takes Q2EUpdate objects, got {type(u).__name__}")
            assert isinstance(u.time, float)
            by_doc[u.doc_id][u.key].append((u.grade, u.examination, u.time))
        if not by_doc:
            return 0
        self._ensure_once()
        base = self._script_params(at)
        base["applied_ring"] = APPLIED_RING
        actions: list[tuple[str, dict[str, Any]]] = []
        touched: set[str] = set()
        for doc_id, per_key in by_doc.items():
            sums: dict[str, dict[str, float]] = {}
            for key, rows in per_key.items():
                t_ref = max(t for _, _, t in rows)
                weights = [self.config.decay(t_ref - t) for _, _, t in rows]
                sums[key] = {"c": sum(g * w for (g, _, _), w in zip(rows, weights)),
                             "n": sum(x * w for (_, x, _), w in zip(rows, weights)), "t": t_ref}
                touched.add(key)
            params = {**base, "doc_id": doc_id, "updates": sums, "batch": uuid.uuid4().hex}
            actions.append((doc_id, {"script": {"id": script_id("record"), "params": params},
                                     "scripted_upsert": True, "upsert": {}}))
        written = self._bulk_update(actions, refresh)
        _KEY_CACHE.forget(self.index, touched)
        return written

    def predict(self, key: str, scores: Mapping[str, float], *, source: str = "", now: float | datetime | None = None,
                refresh: bool | str = False) -> int:
        """Predicted entries for ``key``: ``scores`` is item -> p̂ in (0, 1] (e.g. a calibrated LTR
        score of the other arms' top items). Pairs that already have an actual score are left
        alone. ``source`` names the predictor (a model version), kept as provenance. Returns the
        number of item documents sent."""
        check_key(key)
        if not isinstance(source, str) or len(source) > 128:
            raise Q2EError("source must be a string of at most 128 characters")
        at = _epoch("now", now)
        checked = {_check_doc_id(d): _finite(f"predicted score of {d!r}", p, 0.0, 1.0, lo_open=True)
                   for d, p in scores.items()}
        if not checked:
            return 0
        self._ensure_once()
        base = self._script_params(at)
        actions = [(doc_id, {"script": {"id": script_id("predict"),
                                        "params": {**base, "doc_id": doc_id, "key": key, "p": p,
                                                   "value": self.config.value(p), "source": source}},
                             "scripted_upsert": True, "upsert": {}}) for doc_id, p in checked.items()]
        written = self._bulk_update(actions, refresh)
        _KEY_CACHE.forget(self.index, [key])
        return written

    def rescore(self, *, now: float | datetime | None = None, refresh: bool = False) -> int:
        """Recompute every actual score at ``now`` (decay moves stale pairs back to the prior);
        returns the documents updated. A document a concurrent writer changed meanwhile is
        skipped: that writer rescored the keys it touched."""
        at = _epoch("now", now)
        if not self.exists():
            return 0
        self._ensure_once()
        resp = self.client.update_by_query(
            index=self.index, body={"script": {"id": script_id("rescore"), "params": self._script_params(at)}},
            params={"conflicts": "proceed", "refresh": "true" if refresh else "false", "request_timeout": 3600})
        if resp.get("failures"):
            raise Q2EError(f"rescoring {self.index} failed: {str(resp['failures'][0])[:300]}")
        _KEY_CACHE.forget(self.index)
        return int(resp.get("updated", 0))

    def forget(self, doc_ids: Iterable[str], *, refresh: bool = False) -> int:
        """Delete the memory of these items (e.g. removed from the catalogue); returns how many existed."""
        ids = [_check_doc_id(d) for d in doc_ids]
        if not ids or not self.exists():
            return 0
        body = [{"delete": {"_index": self.index, "_id": d}} for d in ids]
        resp = self.client.bulk(body=body, params={"refresh": "true" if refresh else "false"})
        _KEY_CACHE.forget(self.index)
        return sum(1 for item in resp["items"] if item["delete"].get("result") == "deleted")

    def _ensure_once(self) -> None:
        if not self._ready:
            self.ensure()

    def _bulk_update(self, actions: list[tuple[str, dict[str, Any]]], refresh: bool | str) -> int:
        """Send scripted updates; items the node refused for load (429/5xx) or that lost more races
        than ``retry_on_conflict`` are sent again (they were not applied), with jittered backoff;
        any other failure, or one that outlasts ``write_attempts``, is an error naming the items."""
        refresh_param = ("true" if refresh else "false") if isinstance(refresh, bool) else refresh
        if refresh_param not in ("true", "false", "wait_for"):
            raise Q2EError(f"refresh must be True, False or 'wait_for', got {refresh!r}")
        written = 0
        scripts_put = False
        for start in range(0, len(actions), BULK_DOCS):
            pending = actions[start:start + BULK_DOCS]
            last_chunk = start + BULK_DOCS >= len(actions)
            backoff = 0.05
            attempt = 0
            while pending:
                attempt += 1
                body: list[dict[str, Any]] = []
                for doc_id, update in pending:
                    body.append({"update": {"_index": self.index, "_id": doc_id,
                                            "retry_on_conflict": self.config.retry_on_conflict}})
                    body.append(update)
                resp = self.client.bulk(body=body, params={"refresh": refresh_param if last_chunk else "false",
                                                           "request_timeout": 120})
                retry: list[tuple[str, dict[str, Any]]] = []
                failed: list[tuple[tuple[str, dict[str, Any]], int, str]] = []
                for action, item in zip(pending, resp["items"]):
                    result = item["update"]
                    status = int(result.get("status", 500))
                    if 200 <= status < 300:
                        written += 1
                    elif status in _RETRY_STATUSES:
                        retry.append(action)
                    else:
                        failed.append((action, status, _reason(result.get("error"))))
                missing_scripts = [f for f in failed if "unable to find script" in f[2]]
                if missing_scripts and not scripts_put:
                    # The stored scripts were deleted since ensure(): store them again and resend.
                    self._put_scripts()
                    scripts_put = True
                    retry += [action for action, _, _ in missing_scripts]
                    failed = [f for f in failed if f not in missing_scripts]
                if retry and attempt >= self.config.write_attempts:
                    failed += [(action, 0, f"still refused after {attempt} attempts") for action in retry]
                    retry = []
                if failed:
                    detail = "; ".join(f"{a[0]}: {status or ''} {why}".strip() for a, status, why in failed[:3])
                    raise Q2EError(f"{len(failed)} of {len(pending)} memory updates of {self.index} failed "
                                   f"({written} applied): {detail}")
                pending = retry
                if pending:
                    time.sleep(backoff * (1 + random.random()))  # jitter: racing writers do not retry in lockstep
                    backoff = min(backoff * 2, 2.0)
        return written

    # ---- reads -------------------------------------------------------------------------------
    def entries(self, key: str, *, limit: int = 1000) -> dict[str, tuple[float | None, float | None]]:
        """Item -> (actual score s, predicted p̂) for ``key`` (None where absent), best first;
        empty when the memory does not exist. ``s`` is the written value / scale (so it is
        clipped like the value)."""
        check_key(key)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise Q2EError(f"limit must be an integer in [1, 10000], got {limit!r}")
        body = {"size": limit, "track_total_hits": False,
                "_source": ["doc_id", f"q2e.{key}", f"predicted.{key}"],
                "query": {"bool": {"should": [{"rank_feature": {"field": f"q2e.{key}", "linear": {}}},
                                              {"rank_feature": {"field": f"q2e_pred.{key}", "linear": {}}}],
                                   "minimum_should_match": 1}}}
        try:
            hits = self.client.search(index=self.index, body=body)["hits"]["hits"]
        except NotFoundError:
            return {}
        out: dict[str, tuple[float | None, float | None]] = {}
        for h in hits:
            src = h.get("_source", {})
            actual = (src.get("q2e") or {}).get(key)
            predicted = ((src.get("predicted") or {}).get(key) or {}).get("p")
            out[h["_id"]] = (None if actual is None else float(actual) / self.config.scale,
                             None if predicted is None else float(predicted))
        return out

    def why_unavailable(self, key: str | None, *, timeout_s: float | None = None) -> str | None:
        """Why the memory arm cannot serve ``key`` (no memory index, or no entries for the key);
        None when it can. Answers are cached for ``key_cache_ttl_s``; a write through any
        memory object of this process clears the keys it wrote. ``key`` None: only whether the
        memory exists and holds anything."""
        if key is not None:
            check_key(key)
        cache_key = key or ""
        cached, reason = _KEY_CACHE.get(self.index, cache_key)
        if cached:
            return reason
        query: dict[str, Any] = {"match_all": {}} if key is None else {"bool": {"should": [
            {"rank_feature": {"field": f"q2e.{key}", "linear": {}}},
            {"rank_feature": {"field": f"q2e_pred.{key}", "linear": {}}}], "minimum_should_match": 1}}
        params: dict[str, Any] = {"terminate_after": 1}
        if timeout_s is not None:
            params["request_timeout"] = timeout_s
        try:
            found = int(self.client.count(index=self.index, body={"query": query}, params=params)["count"])
        except NotFoundError:
            reason = f"no Q2E memory index {self.index} (`ltrr load` creates it)"
        else:
            reason = None if found else (f"the Q2E memory has no entries for {key}" if key
                                         else f"the Q2E memory {self.index} is empty")
        _KEY_CACHE.put(self.index, cache_key, reason, self.config.key_cache_ttl_s)
        return reason

    def has_key(self, key: str, *, timeout_s: float | None = None) -> bool:
        """Whether ``key`` has memory entries (actual or predicted): the bandit's
        ``q2e_key_exists`` context feature. Cached like :meth:`why_unavailable`."""
        return self.why_unavailable(key, timeout_s=timeout_s) is None

    def document_count(self) -> int:
        """Items with memory (0 when there is no memory index)."""
        try:
            self.refresh()
            return int(self.client.count(index=self.index)["count"])
        except NotFoundError:
            return 0
