"""Fusion: merge the candidate lists of several retrieval strategies into one ranked list.

Every strategy (BM25, k-NN, Q2E memory, ...) returns a :class:`StrategyResult`. Fusion takes the
union of their hits, keeps for each document where it came from (:class:`Provenance`), and scores
it with one of two methods:

* **RRF** (:func:`reciprocal_rank_fusion`)::

      score(d) = Σ_s  w_s / (k + rank_s(d))

  summed over the strategies s that found d. Only ranks matter, so strategies whose raw scores
  live on different scales (BM25 vs cosine) mix without calibration.

* **Weighted score fusion** (:func:`weighted_score_fusion`)::

      score(d) = Σ_s  w_s · norm_s(score_s(d))        (a strategy that did not find d adds 0)

  with ``norm_s`` one of :data:`NORMALIZATIONS`, computed over strategy s's own list.

Weights default to 1.0; a strategy missing from ``weights`` also gets 1.0. A weight of 0 keeps the
strategy's documents in the union (with its provenance) but adds nothing to their scores.

Rules shared by both methods
----------------------------
* **Strategies that did not run cleanly** (status other than ``ok``: failed, timed out, not
  applicable) contribute nothing, whatever their ``hits`` hold.
* **Duplicate doc ids inside one strategy's list** keep the best (lowest) rank and the score of
  that occurrence (the higher finite score when they share the rank); the other occurrences are
  dropped. Ranks below 1 are read as 1 so that RRF's
  denominator stays ``>= k``.
* **Deterministic order.** Hits are sorted by

  1. fused score, descending;
  2. best (lowest) rank in any strategy, ascending;
  3. number of strategies that found the document, descending;
  4. ``doc_id``, ascending.

  Each document's contributions are summed in strategy-name order, not input order (floating
  point addition is not associative), so shuffling the input never changes the output order or
  scores; only each hit's provenance follows the input's strategy order.
* **Non-finite raw scores** (NaN, ±inf, non-numbers) are left out of a strategy's normalisation
  statistics and normalise to 0.0; RRF ignores raw scores altogether.

The kernel is plain Python over dicts and tuples: for 5 strategies × 100 hits it runs in well
under a millisecond. :class:`Provenance` and :class:`FusedHit` objects are created only for the
hits that are returned (after ``limit``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .datatypes import FusedHit, Hit, Provenance, StrategyResult

__all__ = [
    "FUSION_METHODS",
    "Fusion",
    "RRF",
    "WeightedScores",
    "make_fusion",
    "NORMALIZATIONS",
    "FusedHit",
    "Hit",
    "Provenance",
    "StrategyResult",
    "fuse",
    "reciprocal_rank_fusion",
    "union",
    "weighted_score_fusion",
]


# ---------------------------------------------------------------------------------------------
# Internals. A "pool" is the deduplicated view of the live strategies:
#   names[i]  -> strategy name of the i-th live strategy (input order)
#   lists[i]  -> {doc_id: (rank, raw score)} with duplicates reduced to the best rank
#   found     -> {doc_id: [i, ...]} live strategy indices that found the doc, ascending

_Entry = tuple[int, float]


def _dedup(hits: Sequence[Hit]) -> dict[str, _Entry]:
    best: dict[str, _Entry] = {}
    for hit in hits:
        rank = hit.rank if hit.rank >= 1 else 1
        previous = best.get(hit.doc_id)
        if previous is None or rank < previous[0]:
            best[hit.doc_id] = (rank, hit.score)
        elif rank == previous[0] and _finite(hit.score) is not None and _higher(hit.score, previous[1]):
            # Same id twice at one rank: keep the higher score, so the order of hits is irrelevant.
            best[hit.doc_id] = (rank, hit.score)
    return best


def _higher(candidate: float, incumbent) -> bool:
    incumbent = _finite(incumbent)
    return incumbent is None or candidate > incumbent


def _live(results: Sequence[StrategyResult]) -> tuple[list[str], list[dict[str, _Entry]]]:
    names: list[str] = []
    lists: list[dict[str, _Entry]] = []
    for result in results:
        if not result.ok:
            continue
        names.append(result.strategy)
        lists.append(_dedup(result.hits or ()))
    return names, lists


def _check_strategy_names(results: Sequence[StrategyResult]) -> None:
    seen: set[str] = set()
    for result in results:
        if result.strategy in seen:
            # Weights and provenance are keyed by name: two lists under one name are ambiguous.
            raise ValueError(f"strategy {result.strategy!r} appears more than once in the results")
        seen.add(result.strategy)


def _resolve_weights(results: Sequence[StrategyResult], weights: Mapping[str, float] | None) -> dict[str, float]:
    known = {r.strategy for r in results}
    resolved = dict.fromkeys(known, 1.0)
    if weights is None:
        return resolved
    if not isinstance(weights, Mapping):
        raise ValueError(f"weights must be a mapping of strategy name to weight, not {type(weights).__name__}")
    unknown = sorted(str(name) for name in weights if name not in known)
    if unknown:
        raise ValueError(f"weights name unknown strategies {unknown}; known: {sorted(known)}")
    for name, raw in weights.items():
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"weight for {name!r} must be a number, got {raw!r}") from None
        if not math.isfinite(value) or value < 0.0:
            raise ValueError(f"weight for {name!r} must be finite and >= 0, got {raw!r}")
        resolved[name] = value
    return resolved


def _check_limit(limit: int | None) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")


def _summation_order(names: list[str]) -> list[int]:
    # Floating-point addition is not associative: summing each document's contributions in
    # strategy-name order (names are unique) makes fused scores independent of input order.
    return sorted(range(len(names)), key=names.__getitem__)


def _add(score: dict[str, float], best: dict[str, int], found: dict[str, int], doc_id: str, rank: int, value: float) -> None:
    previous = score.get(doc_id)
    if previous is None:
        score[doc_id] = value
        best[doc_id] = rank
        found[doc_id] = 1
    else:
        score[doc_id] = previous + value
        if rank < best[doc_id]:
            best[doc_id] = rank
        found[doc_id] += 1


def _rank_and_build(
    score: dict[str, float],
    best: dict[str, int],
    found: dict[str, int],
    names: list[str],
    lists: list[dict[str, _Entry]],
    limit: int | None,
) -> list[FusedHit]:
    # Sort keys: (-fused score, best rank, -n strategies, doc_id); see the module docstring.
    keyed = sorted((-value, best[doc_id], -found[doc_id], doc_id) for doc_id, value in score.items())
    if limit is not None:
        keyed = keyed[:limit]
    # Provenance objects only for returned hits, in the input's strategy order.
    sources = list(zip(names, lists))
    return [
        FusedHit(
            doc_id,
            0.0 - neg_score,  # 0.0 - x: never -0.0
            tuple([Provenance(name, *entries[doc_id]) for name, entries in sources if doc_id in entries]),
        )
        for neg_score, _, _, doc_id in keyed
    ]


def _prepare(results, weights, limit):
    results = tuple(results)
    _check_strategy_names(results)
    resolved = _resolve_weights(results, weights)
    _check_limit(limit)
    names, lists = _live(results)
    return resolved, names, lists


# ---------------------------------------------------------------------------------------------
# Public functions


def union(results: Sequence[StrategyResult]) -> dict[str, tuple[Provenance, ...]]:
    """Every document any live strategy found, with its provenance.

    Returns ``{doc_id: (Provenance, ...)}``: one entry per strategy that found the document, in
    the input's strategy order; documents appear in first-seen order. Failed strategies are
    skipped and duplicate ids inside one list keep their best rank (see the module docstring).
    """
    results = tuple(results)
    _check_strategy_names(results)
    names, lists = _live(results)
    merged: dict[str, list[Provenance]] = {}
    for name, entries in zip(names, lists):
        for doc_id, (rank, score) in entries.items():
            merged.setdefault(doc_id, []).append(Provenance(name, rank, score))
    return {doc_id: tuple(provenance) for doc_id, provenance in merged.items()}


def reciprocal_rank_fusion(
    results: Sequence[StrategyResult],
    *,
    k: float = 60.0,
    weights: Mapping[str, float] | None = None,
    limit: int | None = None,
) -> list[FusedHit]:
    """Reciprocal rank fusion: ``score(d) = Σ_s w_s / (k + rank_s(d))``; see :class:`RRF`."""
    return RRF(k=k, weights=weights).fuse(results, limit=limit)


def _finite(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _minmax(scores: list[float | None]) -> list[float]:
    """``(s - min) / (max - min)``; a single score or all-equal scores give 1.0."""
    finite = [s for s in scores if s is not None]
    if not finite:
        return [0.0] * len(scores)
    low, high = min(finite), max(finite)
    span = high - low
    if span <= 0.0:
        return [0.0 if s is None else 1.0 for s in scores]
    return [0.0 if s is None else (s - low) / span for s in scores]


def _zscore(scores: list[float | None]) -> list[float]:
    """``(s - mean) / std`` (population std); zero spread gives 0.0, the mean, for every score."""
    finite = [s for s in scores if s is not None]
    if not finite:
        return [0.0] * len(scores)
    mean = math.fsum(finite) / len(finite)
    std = math.sqrt(math.fsum((s - mean) ** 2 for s in finite) / len(finite))
    if std <= 0.0:
        return [0.0] * len(scores)
    return [0.0 if s is None else (s - mean) / std for s in scores]


def _max(scores: list[float | None]) -> list[float]:
    """``s / max`` when max > 0. A non-positive max has no positive scale to divide by (dividing
    would flip the order), so those lists fall back to min-max."""
    finite = [s for s in scores if s is not None]
    if not finite:
        return [0.0] * len(scores)
    high = max(finite)
    if high <= 0.0:
        return _minmax(scores)
    return [0.0 if s is None else s / high for s in scores]


def _none(scores: list[float | None]) -> list[float]:
    """The raw score unchanged (non-finite ones become 0.0)."""
    return [0.0 if s is None else s for s in scores]


NORMALIZATIONS: dict[str, Callable[[list[float | None]], list[float]]] = {
    "minmax": _minmax,
    "zscore": _zscore,
    "max": _max,
    "none": _none,
}
"""Per-strategy score normalisations of :func:`weighted_score_fusion`, by name."""


def weighted_score_fusion(
    results: Sequence[StrategyResult],
    *,
    weights: Mapping[str, float] | None = None,
    normalization: str = "minmax",
    limit: int | None = None,
) -> list[FusedHit]:
    """Weighted sum of normalised scores: ``score(d) = Σ_s w_s · norm_s(d)``; see :class:`WeightedScores`."""
    return WeightedScores(normalization=normalization, weights=weights).fuse(results, limit=limit)


# ---------------------------------------------------------------------------------------------
# The methods: one base class owns the union, the weights and the order; each subclass is only
# its formula for one strategy's list (as rank_bm25 does for its BM25 variants).


@dataclass(frozen=True)
class Fusion:
    """A fusion method with its options, validated at construction. ``weights`` maps strategy
    name to w_s (default 1.0 for every strategy); subclasses define :meth:`values`."""

    weights: Mapping[str, float] | None = field(default=None, kw_only=True)

    name = "fusion"

    @property
    def label(self) -> str:
        """How tables name the union fused by this method, e.g. ``union (rrf k=60)``."""
        return f"union ({self.name})"

    def values(self, entries: Mapping[str, _Entry]) -> list[float]:
        """The unweighted contribution of each document of one strategy's deduplicated list
        ``{doc_id: (rank, raw score)}``, in the list's order."""
        raise NotImplementedError

    def fuse(self, results: Sequence[StrategyResult], *, limit: int | None = None) -> list[FusedHit]:
        """Fused hits, best first, at most ``limit`` (order rules in the module docstring)."""
        resolved, names, lists = _prepare(results, self.weights, limit)
        score: dict[str, float] = {}
        best: dict[str, int] = {}
        found: dict[str, int] = {}
        for i in _summation_order(names):
            weight = resolved[names[i]]
            entries = lists[i]
            for (doc_id, (rank, _raw)), value in zip(entries.items(), self.values(entries)):
                _add(score, best, found, doc_id, rank, weight * value)
        return _rank_and_build(score, best, found, names, lists, limit)


@dataclass(frozen=True)
class RRF(Fusion):
    """Reciprocal rank fusion: ``score(d) = Σ_s w_s / (k + rank_s(d))``.

    ``k`` (> 0, finite) damps the head: with the customary k = 60 rank 1 is worth 1/61 and rank
    10 is worth 1/70, so agreement between strategies outweighs a single top rank.
    """

    k: float = 60.0

    name = "rrf"

    def __post_init__(self) -> None:
        try:
            k_value = float(self.k)
        except (TypeError, ValueError):
            raise ValueError(f"k must be a number, got {self.k!r}") from None
        if not math.isfinite(k_value) or k_value <= 0.0:
            raise ValueError(f"k must be finite and > 0, got {self.k!r}")
        object.__setattr__(self, "k", k_value)

    @property
    def label(self) -> str:
        return f"union (rrf k={self.k:g})"

    def values(self, entries: Mapping[str, _Entry]) -> list[float]:
        k = self.k
        return [1.0 / (k + rank) for rank, _raw in entries.values()]


@dataclass(frozen=True)
class WeightedScores(Fusion):
    """Weighted sum of normalised scores: ``score(d) = Σ_s w_s · norm_s(score_s(d))``, absent = 0.

    ``normalization`` (computed per strategy over its deduplicated list):

    * ``"minmax"``: ``(s - min) / (max - min)``; one hit or all-equal scores give 1.0;
    * ``"zscore"``: ``(s - mean) / std``; all-equal scores give 0.0;
    * ``"max"``: ``s / max``; when max <= 0 the list falls back to min-max;
    * ``"none"``: raw scores, for strategies already on one scale.
    """

    normalization: str = "minmax"

    name = "weighted"

    def __post_init__(self) -> None:
        if not isinstance(self.normalization, str) or self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; choose one of {sorted(NORMALIZATIONS)}")

    @property
    def label(self) -> str:
        return f"union (weighted {self.normalization})"

    def values(self, entries: Mapping[str, _Entry]) -> list[float]:
        return NORMALIZATIONS[self.normalization]([_finite(raw) for _rank, raw in entries.values()])


FUSION_METHODS: dict[str, type[Fusion]] = {"rrf": RRF, "weighted": WeightedScores}
"""The fusion methods by name."""


def make_fusion(method: str = "rrf", **options) -> Fusion:
    """A :class:`Fusion` by name (``rrf`` or ``weighted``) with its options (``k``, ``weights``,
    ``normalization``); unknown names and options are a ``ValueError``."""
    cls = FUSION_METHODS.get(method) if isinstance(method, str) else None
    if cls is None:
        raise ValueError(f"unknown fusion method {method!r}; choose one of {sorted(FUSION_METHODS)}")
    try:
        return cls(**options)
    except TypeError as e:
        raise ValueError(f"bad options for {method} fusion: {e}") from None


def fuse(results: Sequence[StrategyResult], method: str = "rrf", *, limit: int | None = None, **options) -> list[FusedHit]:
    """Fuse by method name: ``make_fusion(method, **options).fuse(results, limit=limit)``."""
    return make_fusion(method, **options).fuse(results, limit=limit)
