"""The candidate cache: each arm's hits per query text, fetched once at the largest budget.

A search that gives arm a the budget n sees the first n hits of a's list at the largest level L:
OpenSearch's top n is the top L cut at n (same query, same scores; ties aside), so one
``pipeline.search`` per distinct query text (every arm at L, one _msearch) serves every budget of
every policy. That is what makes thousands of simulated searches for several policies cheap.

Time: each arm's ``took_ms`` at L comes with its hits. Its time at a smaller level is modelled as
took(text, a, L) · ratio(a, n), where ratio(a, n) = Σ took(a, n) / Σ took(a, L) over a sample of
texts searched again at every level (:meth:`CandidateCache.from_pipeline`); without a sample the
ratio is 1 (time at L: conservative).

The Q2E memory arm (:data:`MEMORY_ARM`) is simulated in memory (:mod:`.q2e`): it is never fetched,
it applies exactly when the simulated memory holds the query's key (as the pipeline makes it
applicable only when the real memory does), and its time is ``memory_took_ms`` per search (a
rank_feature query on the small memory index; :func:`.q2e.check_against_index` measures it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..datatypes import ArmStatus, Hit, StrategyResult
from ..fusion import Fusion, make_fusion
from ..understanding import QueryUnderstander, QueryUnderstanding, Slot

MEMORY_ARM = "q2e_memory"
CACHE_FORMAT = 1
MEMORY_TOOK_MS = 1.0  # modelled time of the memory arm's query unless measured


class CandidateCacheError(ValueError):
    """A cache file or a cache lookup does not fit (unknown text or arm, wrong file)."""


@dataclasses.dataclass(frozen=True)
class CachedQuery:
    """One query text: how the system understood it and each arm's result at the largest level."""

    text: str
    understanding: QueryUnderstanding
    results: Mapping[str, StrategyResult]


class CandidateCache:
    """Per query text and arm, the hits at ``max_level``; slices for smaller budgets (memoized)."""

    def __init__(self, arms: Sequence[str], max_level: int, queries: Mapping[str, CachedQuery],
                 level_time: Mapping[str, Mapping[int, float]] | None = None, *, index: str = "",
                 fetch_seconds: float = 0.0, memory_took_ms: float = MEMORY_TOOK_MS):
        if isinstance(max_level, bool) or not isinstance(max_level, int) or not 1 <= max_level <= 1000:
            raise CandidateCacheError(f"max_level must be an integer in [1, 1000], got {max_level!r}")
        if not arms or len(set(arms)) != len(arms):
            raise CandidateCacheError(f"arms must be distinct and non-empty, got {list(arms)!r}")
        self.arms = tuple(arms)
        self.max_level = max_level
        self.queries = dict(queries)
        for text, q in self.queries.items():
            unknown = set(q.results) - set(self.arms)
            missing = set(self.arms) - set(q.results)
            if unknown or missing:
                raise CandidateCacheError(f"{text!r}: results for unknown arms {sorted(unknown)} / "
                                          f"missing arms {sorted(missing)}")
        self.level_time = {a: {int(k): float(v) for k, v in lv.items()} for a, lv in (level_time or {}).items()}
        self.index = index
        self.fetch_seconds = fetch_seconds
        self.memory_took_ms = float(memory_took_ms)
        self._slices: dict[tuple[str, str, int], StrategyResult] = {}
        self._predicted: dict[tuple[str, int], tuple[str, ...]] = {}

    # ---- lookups ---------------------------------------------------------------------------
    def _query(self, text: str) -> CachedQuery:
        q = self.queries.get(text)
        if q is None:
            raise CandidateCacheError(f"no cached candidates for {text!r}")
        return q

    def __contains__(self, text: object) -> bool:
        return text in self.queries

    def understanding(self, text: str) -> QueryUnderstanding:
        return self._query(text).understanding

    def eligible(self, text: str) -> tuple[str, ...]:
        """Arms other than the memory arm that apply to the text (every arm whose plan applied,
        failed ones included: a policy cannot know in advance that an arm will fail), in arm order."""
        results = self._query(text).results
        return tuple(a for a in self.arms if a != MEMORY_ARM and results[a].status is not ArmStatus.NOT_APPLICABLE)

    def not_applicable(self, text: str) -> dict[str, str]:
        results = self._query(text).results
        return {a: str(r.detail or "") for a, r in results.items() if r.status is ArmStatus.NOT_APPLICABLE}

    def result(self, text: str, arm: str, budget: int) -> StrategyResult:
        """Arm ``arm``'s result for ``text`` at ``budget`` (≤ max_level): the first ``budget`` hits."""
        key = (text, arm, budget)
        cached = self._slices.get(key)
        if cached is not None:
            return cached
        if arm == MEMORY_ARM:
            raise CandidateCacheError(f"{MEMORY_ARM} is simulated in memory, not cached")
        full = self._query(text).results.get(arm)
        if full is None:
            raise CandidateCacheError(f"unknown arm {arm!r}; known: {list(self.arms)}")
        if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= self.max_level:
            raise CandidateCacheError(f"budget must be an integer in [1, {self.max_level}], got {budget!r}")
        sliced = dataclasses.replace(full, hits=full.hits[:budget], budget=budget,
                                     took_ms=self.took(text, arm, budget))
        self._slices[key] = sliced
        return sliced

    def took(self, text: str, arm: str, budget: int) -> float:
        """Modelled OpenSearch time (ms) of ``arm`` at ``budget`` for ``text`` (see the module docstring)."""
        if arm == MEMORY_ARM:
            return self.memory_took_ms
        full = self._query(text).results[arm]
        if full.status is ArmStatus.NOT_APPLICABLE or full.took_ms is None:
            return 0.0
        return float(full.took_ms) * self.time_ratio(arm, budget)

    def time_ratio(self, arm: str, budget: int) -> float:
        """took(budget) / took(max_level), interpolated linearly between measured levels; 1 when not measured."""
        levels = self.level_time.get(arm)
        if not levels:
            return 1.0
        points = sorted({**levels, self.max_level: 1.0}.items())
        xs = np.array([p[0] for p in points], dtype=np.float64)
        ys = np.array([p[1] for p in points], dtype=np.float64)
        return float(np.interp(budget, xs, ys))

    def predicted(self, text: str, top: int, fusion: Fusion | None = None) -> tuple[str, ...]:
        """The fused top ``top`` of every arm but the memory arm at the largest level: what a cold-start
        job predicts for a new Q2E key."""
        key = (text, top)
        if key not in self._predicted:
            results = [r for a, r in self._query(text).results.items() if a != MEMORY_ARM]
            fused = (fusion or make_fusion("rrf")).fuse(results, limit=top)
            self._predicted[key] = tuple(h.doc_id for h in fused)
        return self._predicted[key]

    def failures(self) -> dict[str, int]:
        """Arm -> texts on which it failed or timed out when fetched."""
        out: dict[str, int] = {}
        for q in self.queries.values():
            for arm, r in q.results.items():
                if r.error is not None:
                    out[arm] = out.get(arm, 0) + 1
        return out

    def summary(self) -> dict[str, Any]:
        return {"texts": len(self.queries), "arms": list(self.arms), "max_level": self.max_level,
                "failures": self.failures(), "level_time_ratio": self.level_time, "index": self.index,
                "fetch_seconds": round(self.fetch_seconds, 3), "memory_took_ms": self.memory_took_ms}

    # ---- building ------------------------------------------------------------------------
    @classmethod
    def from_lists(cls, arms: Sequence[str], max_level: int, lists: Mapping[str, Mapping[str, Sequence[str] | None]],
                   took_ms: Mapping[str, float] | None = None, understander: QueryUnderstander | None = None
                   ) -> CandidateCache:
        """An in-memory cache (no OpenSearch): ``lists[text][arm]`` is the arm's doc ids in rank
        order, or None when the arm does not apply to the text (so does an arm left out; the
        :data:`MEMORY_ARM` is never listed: it is simulated). ``took_ms``: arm -> ms."""
        understander = understander or QueryUnderstander()
        queries: dict[str, CachedQuery] = {}
        for text, per_arm in lists.items():
            results: dict[str, StrategyResult] = {}
            if per_arm.get(MEMORY_ARM) is not None:
                raise CandidateCacheError(f"{MEMORY_ARM} is simulated in memory; do not list its hits")
            for arm in arms:
                ids = per_arm.get(arm)
                if arm == MEMORY_ARM:
                    results[arm] = _memory_placeholder(max_level)
                elif ids is None:
                    results[arm] = StrategyResult.not_applicable(arm, max_level, "not in the test lists")
                else:
                    hits = tuple(Hit(d, r, float(max_level - r + 1)) for r, d in enumerate(ids[:max_level], 1))
                    results[arm] = StrategyResult(arm, hits, max_level, float((took_ms or {}).get(arm, 1.0)))
            queries[text] = CachedQuery(text, understander.understand(text), results)
        return cls(arms, max_level, queries)

    @classmethod
    def from_pipeline(cls, pipeline: Any, texts: Sequence[str], max_level: int, *, levels: Sequence[int] = (),
                      time_sample: int = 30, on_text: Callable[[], None] | None = None) -> CandidateCache:
        """Fetch every text once with every plan of ``pipeline`` at ``max_level`` (one _msearch each),
        then search ``time_sample`` of the texts again at each of ``levels`` below ``max_level`` to
        model time by budget. A text the pipeline refuses gets every arm FAILED (counted in
        :meth:`failures`), not an exception."""
        import time

        from ..pipeline import QueryError

        t0 = time.perf_counter()
        arms = tuple(pipeline.plans)
        fetched = tuple(a for a in arms if a != MEMORY_ARM)
        understander = pipeline.understander()
        texts = list(dict.fromkeys(texts))
        vectors = pipeline.encode_queries(texts)
        queries: dict[str, CachedQuery] = {}
        for i, text in enumerate(texts):
            vector = vectors[i] if vectors is not None else None
            try:
                resp = pipeline.search(text, budgets=dict.fromkeys(fetched, max_level), size=1,
                                       understander=understander, vector=vector)
                results = {r.strategy: r for r in resp.strategy_results}
                understanding = resp.understanding
            except QueryError as e:
                results = {a: StrategyResult.failed(a, max_level, f"query refused: {e}") for a in fetched}
                understanding = understander.understand(text)
            if MEMORY_ARM in arms:
                results[MEMORY_ARM] = _memory_placeholder(max_level)
            queries[text] = CachedQuery(text, understanding, results)
            if on_text is not None:
                on_text()
        smaller = sorted({int(v) for v in levels if 1 <= int(v) < max_level})
        level_time: dict[str, dict[int, float]] = {}
        sample = texts[:: max(1, len(texts) // max(1, time_sample))][:time_sample] if smaller else []
        for level in smaller:
            spent: dict[str, float] = {}
            spent_max: dict[str, float] = {}
            for text in sample:
                base = queries[text].results
                run = [a for a in fetched if base[a].ok and base[a].took_ms is not None]
                if not run:
                    continue
                index = texts.index(text)
                try:
                    resp = pipeline.search(text, budgets=dict.fromkeys(run, level), size=1, understander=understander,
                                           vector=vectors[index] if vectors is not None else None)
                except QueryError:
                    continue
                for r in resp.strategy_results:
                    if r.ok and r.took_ms is not None:
                        spent[r.strategy] = spent.get(r.strategy, 0.0) + float(r.took_ms)
                        spent_max[r.strategy] = spent_max.get(r.strategy, 0.0) + float(base[r.strategy].took_ms or 0.0)
            for arm, total in spent.items():
                if spent_max.get(arm, 0.0) > 0:
                    level_time.setdefault(arm, {})[level] = total / spent_max[arm]
        return cls(arms, max_level, queries, level_time, index=str(pipeline.index),
                   fetch_seconds=time.perf_counter() - t0)

    # ---- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the cache as JSON (reload with :meth:`load`)."""
        doc = {"format": CACHE_FORMAT, "index": self.index, "arms": list(self.arms), "max_level": self.max_level,
               "level_time": {a: {str(k): v for k, v in lv.items()} for a, lv in self.level_time.items()},
               "fetch_seconds": self.fetch_seconds, "memory_took_ms": self.memory_took_ms,
               "queries": {text: {"understanding": _understanding_to_json(q.understanding),
                                  "results": {a: _result_to_json(r) for a, r in q.results.items()}}
                           for text, q in self.queries.items()}}
        Path(path).write_bytes(orjson.dumps(doc))

    @classmethod
    def load(cls, path: str | Path) -> CandidateCache:
        try:
            doc = orjson.loads(Path(path).read_bytes())
        except orjson.JSONDecodeError as e:
            raise CandidateCacheError(f"{path}: not a candidate cache (invalid JSON: {e})") from None
        if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
            raise CandidateCacheError(f"{path}: not a candidate cache of format {CACHE_FORMAT}")
        try:
            queries = {text: CachedQuery(text, _understanding_from_json(q["understanding"]),
                                         {a: _result_from_json(a, r) for a, r in q["results"].items()})
                       for text, q in doc["queries"].items()}
            level_time = {a: {int(k): float(v) for k, v in lv.items()} for a, lv in doc.get("level_time", {}).items()}
            return cls(doc["arms"], int(doc["max_level"]), queries, level_time, index=str(doc.get("index", "")),
                       fetch_seconds=float(doc.get("fetch_seconds", 0.0)),
                       memory_took_ms=float(doc.get("memory_took_ms", MEMORY_TOOK_MS)))
        except (KeyError, TypeError, ValueError) as e:
            raise CandidateCacheError(f"{path}: malformed candidate cache ({type(e).__name__}: {e})") from None

    def covers(self, texts: Iterable[str]) -> list[str]:
        """The texts of ``texts`` the cache does not hold."""
        return [t for t in texts if t not in self.queries]


def _memory_placeholder(max_level: int) -> StrategyResult:
    return StrategyResult.not_applicable(MEMORY_ARM, max_level, "simulated in memory (orchestrator.simulate.q2e)")


def _finite_or_none(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _result_to_json(r: StrategyResult) -> dict[str, Any]:
    return {"ids": [h.doc_id for h in r.hits], "scores": [_finite_or_none(h.score) for h in r.hits],
            "budget": r.budget, "took_ms": r.took_ms, "status": r.status.value, "detail": r.detail}


def _result_from_json(arm: str, d: Mapping[str, Any]) -> StrategyResult:
    hits = tuple(Hit(str(i), rank, float("nan") if s is None else float(s))
                 for rank, (i, s) in enumerate(zip(d["ids"], d["scores"], strict=True), 1))
    took = d.get("took_ms")
    return StrategyResult(arm, hits, int(d["budget"]), None if took is None else float(took),
                          ArmStatus(d["status"]), d.get("detail"))


def _understanding_to_json(u: QueryUnderstanding) -> dict[str, Any]:
    return {"raw": u.raw, "normalized": u.normalized, "tokens": list(u.tokens),
            "slots": [[s.field, s.value, s.start, s.end, s.confidence] for s in u.slots],
            "remaining_tokens": list(u.remaining_tokens), "key": u.key, "oov_fraction": u.oov_fraction}


def _understanding_from_json(d: Mapping[str, Any]) -> QueryUnderstanding:
    return QueryUnderstanding(str(d["raw"]), str(d["normalized"]), tuple(d["tokens"]),
                              tuple(Slot(str(f), str(v), int(a), int(b), float(c)) for f, v, a, b, c in d["slots"]),
                              tuple(d["remaining_tokens"]), str(d["key"]), float(d["oov_fraction"]))
