"""The Q2E (query-to-entity) memory, simulated in memory.

Per query key (``QueryUnderstanding.key``) and item, decayed counts (design note §5):

* c = engagement: clicks on the item for this key (each click weighs 1);
* n = impressions, position-debiased: Σ of the click model's examination weight of the rank the
  item was shown at (:meth:`~.clicks.ClickModel.examination_weights`), a COEC-style denominator;

both multiplied by 2^(−Δt/h) as simulated time (searches) passes, with half-life h (None: no decay).
The learned score is the Beta-smoothed rate

    s = (c + m·p0) / (n + m)          (prior mean p0, prior strength m = α + β)

A key seen for the first time gets *predicted* entries after that search (a cold-start job runs
asynchronously, so the first search of a key has no memory): the fused top ``predicted_top``
items of the other arms, with p̂_r = predicted_prior / r for fused rank r. Predictions are kept
apart from the counts (the real memory's ``q2e_pred``) and never count as engagement.

As in the real memory (:mod:`orchestrator.feedback.q2e`), an item has an *actual* score once its
n ≥ ``min_impressions``, and then its prediction is dropped (and never re-added). The
q2e_memory arm's candidates for a key are its items ordered by the plan's score
(query_plans/q2e_memory.yaml ranks ``q2e.<key>`` + predicted_weight · ``q2e_pred.<key>``):
s for items with an actual score, predicted_weight · p̂ for the others (ties by item id). The
defaults of p0 and m are the real memory's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..datatypes import Hit
from ..feedback.q2e import PRIOR_MEAN, PRIOR_STRENGTH, smoothed_score


class Q2EConfigError(ValueError):
    """A Q2E memory parameter is invalid; the message says which and why."""


@dataclass(frozen=True)
class Q2EConfig:
    """Parameters of :class:`Q2EMemory` (see the module docstring for the formula)."""

    prior_mean: float = PRIOR_MEAN  # p0: the click rate of an item nothing is known about
    prior_strength: float = PRIOR_STRENGTH  # m: how many examinations the prior weighs
    half_life: float | None = None  # h, in searches; None: no decay
    predicted_top: int = 10  # items a new key is seeded with
    predicted_prior: float = 0.3  # p̂ of the top predicted item (p̂_r = predicted_prior / r)
    predicted_weight: float = 0.3  # weight of predictions in the arm's score (the plan's default)
    min_impressions: float = 0.0  # learned entries with fewer (debiased) impressions are not served

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, what: str) -> None:
            if not ok:
                raise Q2EConfigError(f"{name} must be {what}, got {getattr(self, name)!r}")

        def num(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))

        check("prior_mean", num(self.prior_mean) and 0.0 < self.prior_mean < 1.0, "a number in (0, 1)")
        check("prior_strength", num(self.prior_strength) and self.prior_strength > 0, "a positive number")
        check("half_life", self.half_life is None or (num(self.half_life) and self.half_life > 0),
              "None or a positive number of searches")
        check("predicted_top", isinstance(self.predicted_top, int) and not isinstance(self.predicted_top, bool)
              and 0 <= self.predicted_top <= 1000, "an integer in [0, 1000]")
        check("predicted_prior", num(self.predicted_prior) and 0.0 <= self.predicted_prior <= 1.0, "a number in [0, 1]")
        check("predicted_weight", num(self.predicted_weight) and 0.0 <= self.predicted_weight <= 10.0,
              "a number in [0, 10]")
        check("min_impressions", num(self.min_impressions) and self.min_impressions >= 0, "a number >= 0")

    def learned_score(self, clicks: float, impressions: float) -> float:
        """s = (c + m·p0) / (n + m), the real memory's formula."""
        return smoothed_score(clicks, impressions, self.prior_mean, self.prior_strength)


@dataclass
class _Key:
    counts: dict[str, list[float]] = field(default_factory=dict)  # item -> [c, n] as of time ``at``
    predicted: dict[str, float] = field(default_factory=dict)  # item -> p̂
    at: int = 0


class Q2EMemory:
    """Decayed engagement counts per (key, item) and predicted cold-start entries; one per simulated
    world (each policy's clicks build its own memory)."""

    def __init__(self, config: Q2EConfig | None = None):
        self.config = config or Q2EConfig()
        self._keys: dict[str, _Key] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def has_key(self, key: str) -> bool:
        """Whether the key has any entry (learned or predicted): the context's ``q2e_key_exists``."""
        return key in self._keys

    def _decay(self, entry: _Key, now: int) -> float:
        h = self.config.half_life
        if h is None or now <= entry.at:
            return 1.0
        return 2.0 ** (-(now - entry.at) / h)

    def _advance(self, entry: _Key, now: int) -> None:
        factor = self._decay(entry, now)
        if factor != 1.0:
            for counts in entry.counts.values():
                counts[0] *= factor
                counts[1] *= factor
        entry.at = max(entry.at, now)

    def counts(self, key: str, now: int | None = None) -> dict[str, tuple[float, float]]:
        """item -> (c, n) for ``key``, decayed to time ``now`` (None: as last updated)."""
        entry = self._keys.get(key)
        if entry is None:
            return {}
        factor = 1.0 if now is None else self._decay(entry, now)
        return {item: (c * factor, n * factor) for item, (c, n) in entry.counts.items()}

    def scores(self, key: str, now: int | None = None) -> dict[str, float]:
        """item -> the arm's score at time ``now``: s for items with an actual score, else
        predicted_weight·p̂."""
        entry = self._keys.get(key)
        if entry is None:
            return {}
        cfg = self.config
        out = {item: cfg.predicted_weight * p for item, p in entry.predicted.items()}
        for item, (c, n) in self.counts(key, now).items():
            if n >= cfg.min_impressions:
                out[item] = cfg.learned_score(c, n)
        return out

    def hits(self, key: str, budget: int, now: int | None = None) -> tuple[Hit, ...]:
        """The arm's candidates: the ``budget`` items of the highest score (ties: item id)."""
        ranked = sorted(self.scores(key, now).items(), key=lambda kv: (-kv[1], kv[0]))[:budget]
        return tuple(Hit(item, rank, score) for rank, (item, score) in enumerate(ranked, 1))

    def observe(self, key: str, shown: Sequence[str], weights: np.ndarray | Sequence[float],
                clicked: Sequence[str], now: int) -> None:
        """One search's feedback: ``shown`` items (display order) with examination ``weights``
        (same length) add to n; each item of ``clicked`` adds 1 to c."""
        if len(weights) != len(shown):
            raise ValueError(f"{len(shown)} items shown but {len(weights)} examination weights")
        entry = self._keys.setdefault(key, _Key(at=now))
        self._advance(entry, now)
        for item, w in zip(shown, weights):
            if w > 0:
                entry.counts.setdefault(item, [0.0, 0.0])[1] += float(w)
        for item in clicked:
            entry.counts.setdefault(item, [0.0, 0.0])[0] += 1.0
        for item in set(shown) | set(clicked):
            counts = entry.counts.get(item)
            if counts is not None and counts[1] >= self.config.min_impressions:
                entry.predicted.pop(item, None)  # the first actual score replaces the prediction

    def predict(self, key: str, items: Sequence[str]) -> None:
        """Seed ``key`` with predictions for ``items`` (best first): p̂_r = predicted_prior / r, except
        for items that already have an actual score. Never engagement: the counts do not change."""
        entry = self._keys.setdefault(key, _Key())
        cfg = self.config
        for rank, item in enumerate(items[: cfg.predicted_top], 1):
            counts = entry.counts.get(item)
            if cfg.predicted_prior > 0 and (counts is None or counts[1] < cfg.min_impressions):
                entry.predicted.setdefault(item, cfg.predicted_prior / rank)

    def export(self, key: str, now: int | None = None) -> dict[str, Any]:
        """What the real index would hold for ``key``: learned scores (``q2e``), predictions
        (``q2e_pred``) and the counts behind them."""
        entry = self._keys.get(key)
        if entry is None:
            return {"learned": {}, "predicted": {}, "counts": {}}
        cfg = self.config
        counts = self.counts(key, now)
        return {"learned": {i: cfg.learned_score(c, n) for i, (c, n) in counts.items() if n >= cfg.min_impressions},
                "predicted": dict(entry.predicted), "counts": {i: (c, n) for i, (c, n) in counts.items()}}

    def keys(self) -> list[str]:
        return list(self._keys)


class Q2ECheckUnavailable(RuntimeError):
    """The real Q2E memory (orchestrator.feedback.q2e) is not importable, so the simulated memory
    cannot be checked against an index."""


def _evidence(key: str, item: str, clicks: float, impressions: float, at: float) -> list[Any]:
    """Q2EUpdates whose sums are (clicks, impressions): one update carries at most grade 100 and
    examination 1, so large sums are split."""
    from ..feedback.q2e import Q2EUpdate

    updates = []
    c, n = float(clicks), float(impressions)
    while c > 1e-12 or n > 1e-12:
        g, x = min(c, 100.0), min(n, 1.0)
        updates.append(Q2EUpdate(key, item, grade=g, examination=x, time=at))
        c, n = c - g, n - x
    return updates


def check_against_index(client: Any, catalogue: str, memory: Q2EMemory, texts: Mapping[str, str], *,
                        size: int = 10, now: int | None = None, plans: Mapping[str, Any] | None = None,
                        time_s: float = 1_700_000_000.0) -> dict[str, Any]:
    """Check the simulated memory against the real one on a sample of keys.

    Writes ``memory``'s counts and predictions for the keys of ``texts`` (key -> a query text of
    that key) with the real writer (:class:`orchestrator.feedback.q2e.Q2EMemory`, same p0, m and
    min exposure, no decay) into a throwaway memory index (never the catalogue's own
    ``<catalogue>-q2e``), runs the q2e_memory plan of a :class:`~orchestrator.pipeline.SearchPipeline`
    on catalogue ``catalogue`` against it for each text, and compares its top ``size`` with
    :meth:`Q2EMemory.hits`. The index is deleted afterwards.

    Returns ``{"keys", "mean_overlap", "exact_order_share", "mean_took_ms", "per_key": {key: {...}}}``:
    overlap = |simulated top ∩ real top| / |simulated top|. Rank_features keep 9 significant
    bits, so near-ties may swap; the overlap is the robust measure.
    """
    import uuid

    try:
        from ..feedback.q2e import Q2EConfig as RealConfig
        from ..feedback.q2e import Q2EMemory as RealMemory
    except ImportError as e:
        raise Q2ECheckUnavailable(f"orchestrator.feedback.q2e cannot be imported ({e})") from None
    from ..pipeline import SearchPipeline
    from ..strategies import load_plans, sync_plans

    cfg = memory.config
    real = RealMemory(client, f"ltrr-sim-check-{uuid.uuid4().hex[:10]}",
                      RealConfig(prior_mean=cfg.prior_mean, prior_strength=cfg.prior_strength, half_life_s=1e12,
                                 min_exposure=cfg.min_impressions, key_cache_ttl_s=0.0))
    plans = dict(plans or load_plans())
    if "q2e_memory" not in plans:
        raise Q2ECheckUnavailable("no q2e_memory plan to search the memory with")
    sync_plans(client, {"q2e_memory": plans["q2e_memory"]})
    per_key: dict[str, dict[str, Any]] = {}
    try:
        real.ensure()
        updates = [u for key in texts for item, (c, n) in memory.counts(key, now).items()
                   for u in _evidence(key, item, c, n, time_s)]
        real.record(updates, now=time_s)
        for key in texts:
            predicted = memory.export(key, now)["predicted"]
            if predicted:
                real.predict(key, predicted, source="simulation", now=time_s)
        real.refresh()
        pipe = SearchPipeline(client, catalogue, {"q2e_memory": plans["q2e_memory"]}, memory=real)
        for key, text in texts.items():
            expected = [h.doc_id for h in memory.hits(key, size, now)]
            resp = pipe.search(text, budgets={"q2e_memory": size}, size=size)
            result = next(r for r in resp.strategy_results if r.strategy == "q2e_memory")
            got = [h.doc_id for h in result.hits]
            per_key[key] = {"text": text, "overlap": len(set(expected) & set(got)) / len(expected) if expected
                            else float(not got), "same_order": expected == got, "took_ms": result.took_ms,
                            "status": result.status.value, "simulated": expected, "index": got}
    finally:
        real.drop()
    tooks = [v["took_ms"] for v in per_key.values() if v["took_ms"] is not None]
    return {"keys": len(per_key),
            "mean_overlap": float(np.mean([v["overlap"] for v in per_key.values()])) if per_key else None,
            "exact_order_share": float(np.mean([v["same_order"] for v in per_key.values()])) if per_key else None,
            "mean_took_ms": float(np.mean(tooks)) if tooks else None, "per_key": per_key}
