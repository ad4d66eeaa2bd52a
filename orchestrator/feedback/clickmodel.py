"""Position bias: a position-based click model (PBM) fitted by EM, and click-trained LTR data.

**Model** (Chuklin, Markov, de Rijke, *Click Models for Web Search*, ch. 3). A document d shown at
rank k for query q is clicked iff it is examined and found attractive, independently::

    P(C = 1 | q, d, k) = θ_k · a(q, d)        θ_k = P(E = 1 | k),  a(q, d) = P(R = 1 | q, d)

**Assumptions.**

* The first ``max_rank`` items of the logged ranking (the viewport) are the impressions; items
  below it are never negatives, because nobody saw them.
* Any engagement event on an item (click, play, add-to-cart, favourite; configurable) is a click:
  acting on an item needs examining it. An item engaged several times in one search is one click.
* Examination depends on the rank alone (not on the query, the device or the items above).
* A query is its Q2E key (the normalised query); a(q, d) is shared by every search of that key.
* A click on an item outside the viewport is ignored and counted (the viewport is then too small).

**Estimation** (EM without features, the regression-EM of Wang et al., WSDM 2018, with the
regression replaced by a per-(q, d) parameter). Over the distinct (q, d, k) triples with n
impressions and c clicks, each iteration computes the posteriors of the unobserved examination
and attractiveness of the non-clicks::

    P(E=1, R=0 | C=0) = θ_k (1 − a) / (1 − θ_k a)        P(E=0, R=1 | C=0) = (1 − θ_k) a / (1 − θ_k a)

and re-estimates every parameter as its expected count over its impressions::

    θ_k    = Σ_{(q,d)} [c + (n − c) · P(E=1, R=0 | C=0)] / Σ_{(q,d)} n      (triples at rank k)
    a(q,d) = Σ_k      [c + (n − c) · P(E=0, R=1 | C=0)] / Σ_k n             (triples of (q, d))

until no parameter moves more than ``tol``. θ and a are identified only up to a common scale, and
only where the same (q, d) was shown at several ranks (different rankers, bandit arms, reranker
versions: "intervention harvesting"); the result is reported normalised, θ_1 = 1.

**Training data** (Joachims, Swaminathan, Schnabel, WSDM 2017, propensity-weighted pairwise
loss): one query group per click, holding the clicked item (label 1) and the displayed non-clicked
items (label 0) in displayed order, with group weight min(1/θ_k, clip). XGBoost ranking objectives
take one weight per group (``DMatrix.set_weight`` with one value per group), so this is exactly the
inverse-propensity weight of the click's pairs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .records import EVENT_GRADES, FeedbackEvent, SearchRecord

if TYPE_CHECKING:
    from ..ltr.feature_log import LoggedQuery
    from ..ltr.features import FeatureSet
    from ..ltr.training import TrainingSet

DEFAULT_MAX_RANK = 10
# Pairwise, as the design note prescribes for propensity-weighted clicks; the plugin accepts it.
CLICK_PARAMS: dict[str, Any] = {"objective": "rank:pairwise"}


class ClickModelError(ValueError):
    """Click data or a click model setting is invalid; the message says which and why."""


@dataclass(frozen=True, slots=True)
class PBMConfig:
    """``max_rank``: the viewport (ranks 1..max_rank are impressions). ``iterations``: the most EM
    iterations; ``tol``: stop when no parameter moves more than this. ``floor``: parameters are
    kept in [floor, 1 − floor] so the posteriors stay defined."""

    max_rank: int = DEFAULT_MAX_RANK
    iterations: int = 2000
    tol: float = 1e-7
    floor: float = 1e-6

    def __post_init__(self) -> None:
        for name, low, high in (("max_rank", 1, 1000), ("iterations", 1, 1_000_000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ClickModelError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        for name, high in (("tol", 0.1), ("floor", 0.01)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
                raise ClickModelError(f"{name} must be a number in (0, {high}], got {value!r}")


@dataclass(frozen=True)
class ClickCounts:
    """Impressions and clicks per distinct (query, document, rank) triple.

    ``pairs[j]`` is the (query key, doc id) of pair index j; per triple t (arrays of shape (T,)):
    ``pair[t]`` (int64 index into ``pairs``), ``rank[t]`` (int64, 1-based), ``impressions[t]`` and
    ``clicks[t]`` (float64, 0 <= clicks <= impressions). ``ignored_clicks``: clicks outside the
    viewport.
    """

    pairs: tuple[tuple[str, str], ...]
    pair: np.ndarray
    rank: np.ndarray
    impressions: np.ndarray
    clicks: np.ndarray
    max_rank: int
    ignored_clicks: int = 0

    def __post_init__(self) -> None:
        n = len(self.pair)
        if not (len(self.rank) == len(self.impressions) == len(self.clicks) == n):
            raise ClickModelError("pair, rank, impressions and clicks must have the same length")
        if n and (self.pair.min() < 0 or self.pair.max() >= len(self.pairs)):
            raise ClickModelError("pair indices must index pairs")
        if n and (self.rank.min() < 1 or self.rank.max() > self.max_rank):
            raise ClickModelError(f"ranks must be in [1, {self.max_rank}]")
        if np.any(self.impressions <= 0) or np.any(self.clicks < 0) or np.any(self.clicks > self.impressions):
            raise ClickModelError("need impressions > 0 and 0 <= clicks <= impressions for every triple")

    @classmethod
    def from_arrays(cls, query: Sequence[str], doc: Sequence[str], rank: Sequence[int] | np.ndarray,
                    clicked: Sequence[bool] | np.ndarray, *, max_rank: int = DEFAULT_MAX_RANK) -> ClickCounts:
        """Counts of single impressions: one row per (query, doc, 1-based rank, clicked?)."""
        ranks = np.asarray(rank, dtype=np.int64)
        clicks = np.asarray(clicked, dtype=np.float64)
        if not (len(query) == len(doc) == len(ranks) == len(clicks)):
            raise ClickModelError("query, doc, rank and clicked must have the same length")
        keep = (ranks >= 1) & (ranks <= max_rank)
        ignored = int(clicks[~keep].sum())
        pair_index: dict[tuple[str, str], int] = {}
        pair_of = np.fromiter((pair_index.setdefault((q, d), len(pair_index)) for q, d in zip(query, doc)),
                              dtype=np.int64, count=len(ranks))
        triple = pair_of[keep] * (max_rank + 1) + ranks[keep]
        keys, inverse = np.unique(triple, return_inverse=True)
        impressions = np.bincount(inverse, minlength=len(keys)).astype(np.float64)
        click_sums = np.bincount(inverse, weights=clicks[keep], minlength=len(keys))
        return cls(tuple(pair_index), keys // (max_rank + 1), keys % (max_rank + 1), impressions, click_sums,
                   max_rank, ignored)

    @classmethod
    def from_log(cls, records: Iterable[SearchRecord], events_by_search: Mapping[str, Sequence[FeedbackEvent]], *,
                 max_rank: int = DEFAULT_MAX_RANK, click_types: Collection[str] | None = None) -> ClickCounts:
        """Counts from logged searches (their rankings are the impressions) and their events."""
        types = _click_types(click_types)
        queries: list[str] = []
        docs: list[str] = []
        ranks: list[int] = []
        clicked: list[bool] = []
        ignored = 0
        for record in records:
            shown = _displayed(record, max_rank)
            hits = {e.doc_id for e in events_by_search.get(record.search_id, ()) if e.type in types}
            ignored += len(hits - set(shown))
            for k, doc in enumerate(shown, 1):
                queries.append(record.key)
                docs.append(doc)
                ranks.append(k)
                clicked.append(doc in hits)
        counts = cls.from_arrays(queries, docs, ranks, clicked, max_rank=max_rank)
        return cls(counts.pairs, counts.pair, counts.rank, counts.impressions, counts.clicks, max_rank, ignored)

    def impressions_per_rank(self) -> np.ndarray:
        """(max_rank,) float64: impressions at each rank."""
        return np.bincount(self.rank - 1, weights=self.impressions, minlength=self.max_rank)

    def ctr_per_rank(self) -> np.ndarray:
        """(max_rank,) float64: click-through rate at each rank (NaN where nothing was shown)."""
        shown = self.impressions_per_rank()
        clicks = np.bincount(self.rank - 1, weights=self.clicks, minlength=self.max_rank)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(shown > 0, clicks / shown, np.nan)


@dataclass(frozen=True)
class PBMEstimate:
    """A fitted PBM. ``theta``: (max_rank,) float64, examination per rank normalised θ_1 = 1 (NaN
    at ranks never shown); ``attractiveness``: (P,) float64 per pair of ``pairs``, on the scale
    where θ is un-normalised (``theta_raw``); ``impressions``: (max_rank,) per rank."""

    theta: np.ndarray
    theta_raw: np.ndarray
    attractiveness: np.ndarray
    pairs: tuple[tuple[str, str], ...]
    impressions: np.ndarray
    iterations: int
    converged: bool
    log_likelihood: float
    extra: dict[str, Any] = field(default_factory=dict)

    def propensity(self, rank: int) -> float:
        """θ_rank (1-based, normalised); NaN beyond the viewport or where nothing was shown."""
        return float(self.theta[rank - 1]) if 1 <= rank <= len(self.theta) else float("nan")


def _log_likelihood(theta: np.ndarray, attract: np.ndarray, counts: ClickCounts) -> float:
    p = np.clip(theta[counts.rank - 1] * attract[counts.pair], 1e-12, 1 - 1e-12)
    return float(np.sum(counts.clicks * np.log(p) + (counts.impressions - counts.clicks) * np.log1p(-p)))


def estimate_pbm(counts: ClickCounts, config: PBMConfig | None = None) -> PBMEstimate:
    """Fit θ_k and a(q, d) by EM (see the module docstring); θ reported with θ_1 = 1."""
    config = config or PBMConfig(max_rank=counts.max_rank)
    if config.max_rank != counts.max_rank:
        raise ClickModelError(f"config max_rank {config.max_rank} differs from the counts' {counts.max_rank}")
    shown = counts.impressions_per_rank()
    if shown[0] <= 0:
        raise ClickModelError("no impressions at rank 1: θ cannot be normalised")
    if counts.clicks.sum() <= 0:
        raise ClickModelError("no clicks: examination cannot be estimated")
    k = counts.rank - 1
    n, c = counts.impressions, counts.clicks
    n_pair = np.bincount(counts.pair, weights=n, minlength=len(counts.pairs))
    lo, hi = config.floor, 1.0 - config.floor
    # Start from flat θ = 0.5 (θ = 1 is a fixed point of the updates) and a = the pair's CTR.
    theta = np.full(counts.max_rank, 0.5)
    attract = np.clip(np.bincount(counts.pair, weights=c, minlength=len(counts.pairs)) / np.maximum(n_pair, 1), lo, hi)
    iterations, converged = 0, False
    while iterations < config.iterations:
        iterations += 1
        th, a = theta[k], attract[counts.pair]
        denom = 1.0 - th * a
        examined = c + (n - c) * th * (1.0 - a) / denom  # expected examinations per triple
        attractive = c + (n - c) * (1.0 - th) * a / denom  # expected attractive impressions per triple
        new_theta = np.where(shown > 0, np.bincount(k, weights=examined, minlength=counts.max_rank)
                             / np.maximum(shown, 1), theta)
        new_attract = np.bincount(counts.pair, weights=attractive, minlength=len(counts.pairs)) / n_pair
        new_theta, new_attract = np.clip(new_theta, lo, hi), np.clip(new_attract, lo, hi)
        delta = max(float(np.max(np.abs(new_theta - theta))), float(np.max(np.abs(new_attract - attract))))
        theta, attract = new_theta, new_attract
        if delta < config.tol:
            converged = True
            break
    normalised = np.where(shown > 0, theta / theta[0], np.nan)
    return PBMEstimate(normalised, theta, attract, counts.pairs, shown, iterations, converged,
                       _log_likelihood(theta, attract, counts))


# ------------------------------------------------------------------------------------------------
# Click-trained LTR data


@dataclass(frozen=True)
class ClickGroup:
    """One training query group: the items shown by search ``search_id`` (displayed order), the
    one clicked at ``clicked_rank`` labelled 1, the others 0; ``weight`` = min(1/θ_k, clip)."""

    group_id: str
    search_id: str
    query_key: str
    doc_ids: tuple[str, ...]
    labels: tuple[float, ...]
    clicked_doc: str
    clicked_rank: int
    weight: float


def _click_types(click_types: Collection[str] | None) -> frozenset[str]:
    types = frozenset(EVENT_GRADES) if click_types is None else frozenset(click_types)
    unknown = types - set(EVENT_GRADES)
    if not types or unknown:
        raise ClickModelError(f"click_types must be event types of {sorted(EVENT_GRADES)}, got {sorted(types)}")
    return types


def _displayed(record: SearchRecord, max_rank: int) -> list[str]:
    """The viewport: the first ``max_rank`` distinct ids of the ranking."""
    return list(dict.fromkeys(record.ranking))[:max_rank]


def click_training_groups(records: Iterable[SearchRecord], events_by_search: Mapping[str, Sequence[FeedbackEvent]],
                          theta: PBMEstimate | Sequence[float] | np.ndarray, *, clip: float = 20.0,
                          click_types: Collection[str] | None = None) -> list[ClickGroup]:
    """One :class:`ClickGroup` per clicked item of each search. ``theta``: examination per rank
    (θ_1 = 1; its length is the viewport). Other clicked items of the same search are left out of
    a group (they are not negatives); a rank with unknown θ (NaN or <= 0) gets weight ``clip``."""
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip < 1:
        raise ClickModelError(f"clip must be a finite number >= 1, got {clip!r}")
    propensity = np.asarray(theta.theta if isinstance(theta, PBMEstimate) else theta, dtype=np.float64)
    if propensity.ndim != 1 or not len(propensity):
        raise ClickModelError("theta must be a non-empty vector of examination probabilities per rank")
    types = _click_types(click_types)
    max_rank = len(propensity)
    groups: list[ClickGroup] = []
    for record in records:
        shown = _displayed(record, max_rank)
        engaged = {e.doc_id for e in events_by_search.get(record.search_id, ()) if e.type in types}
        clicked = [(k, doc) for k, doc in enumerate(shown, 1) if doc in engaged]
        if not clicked or len(clicked) == len(shown):
            continue  # nothing clicked, or no negative left to pair with
        for k, doc in clicked:
            members = [d for d in shown if d == doc or d not in engaged]
            theta_k = float(propensity[k - 1])
            weight = float(clip) if not theta_k > 0 else min(1.0 / theta_k, float(clip))
            groups.append(ClickGroup(f"{record.search_id}#{k}", record.search_id, record.key, tuple(members),
                                     tuple(1.0 if d == doc else 0.0 for d in members), doc, k, weight))
    return groups


@dataclass(frozen=True)
class ClickLabels:
    """:class:`~orchestrator.ltr.training.LabelSource` of click groups: query id = group id; the
    group's clicked item is 1, anything else 0."""

    clicked: Mapping[str, str]  # group id -> clicked doc id

    @classmethod
    def of(cls, groups: Iterable[ClickGroup]) -> ClickLabels:
        return cls({g.group_id: g.clicked_doc for g in groups})

    def label(self, query_id: str, doc_id: str) -> float:
        return 1.0 if self.clicked.get(query_id) == doc_id else 0.0


def feature_requests(groups: Sequence[ClickGroup],
                     records: Mapping[str, SearchRecord]) -> list[tuple[str, Mapping[str, Any], Sequence[str]]]:
    """``(group id, sltr params, doc ids)`` per group for :func:`~orchestrator.ltr.feature_log.log_features`,
    with the params the search's rerank used (``SearchRecord.ltr_params``); groups whose search
    kept none are left out."""
    out: list[tuple[str, Mapping[str, Any], Sequence[str]]] = []
    for g in groups:
        record = records.get(g.search_id)
        if record is not None and record.ltr_params is not None:
            out.append((g.group_id, record.ltr_params, g.doc_ids))
    return out


def click_training_set(feature_set: FeatureSet, logged: Sequence[LoggedQuery],
                       groups: Sequence[ClickGroup]) -> tuple[TrainingSet, np.ndarray]:
    """The :class:`~orchestrator.ltr.training.TrainingSet` of logged click groups (query id =
    group id) and its group weights, (n_groups,) float64 in the set's query order. A group whose
    clicked item or every negative is missing from the logged rows (not in the index) is dropped."""
    from ..ltr.training import TrainingSet

    by_id = {g.group_id: g for g in groups}
    kept: list[LoggedQuery] = []
    weights: list[float] = []
    for q in logged:
        g = by_id.get(q.query_id)
        if g is None or g.clicked_doc not in q.doc_ids or len(q.doc_ids) < 2:
            continue
        kept.append(q)
        weights.append(g.weight)
    return TrainingSet.labelled(feature_set, kept, ClickLabels.of(groups)), np.asarray(weights, dtype=np.float64)


def train_weighted(data: TrainingSet, weights: np.ndarray | Sequence[float], *, params: Mapping[str, Any] | None = None,
                   rounds: int | None = None) -> Any:
    """:func:`~orchestrator.ltr.training.train` with one weight per query group (the inverse
    propensities); the objective defaults to ``rank:pairwise``."""
    import xgboost as xgb

    from ..ltr.training import DEFAULT_PARAMS, DEFAULT_ROUNDS

    X, y, sizes = data.matrix()
    w = np.asarray(weights, dtype=np.float64)
    if not sizes:
        raise ClickModelError("no training groups")
    if w.shape != (len(sizes),) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ClickModelError(f"need one positive finite weight per group ({len(sizes)}), got shape {w.shape}")
    dtrain = xgb.DMatrix(X, label=y, feature_names=list(data.feature_set.names))
    dtrain.set_group(sizes)
    dtrain.set_weight(w)
    return xgb.train({**DEFAULT_PARAMS, **CLICK_PARAMS, **(params or {})}, dtrain,
                     num_boost_round=rounds if rounds is not None else DEFAULT_ROUNDS)
