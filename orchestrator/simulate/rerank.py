"""The LTR rerank stage inside the simulation, scored locally with the plugin's own model.

Serving reranks the fused union's top ``window`` (200) with an XGBoost model the LTR plugin
evaluates on features of ``ltr_models/features.yaml``. Sending one plugin request per simulated
search, per policy and per counterfactual action would cost hours, so the simulation reranks
locally, with the same features and the same trees:

* **Features that depend only on the query and the document** (BM25 scores, phrases, popularity,
  slots, dense cosine, query length...) are logged once per query text by the plugin itself
  (:func:`log_union_features`), for every document of the text's *full* union (every fetched arm
  at the candidate cache's largest level). Every budget of every arm is a prefix of those lists,
  so every document a policy can retrieve has its row.
* **Features that depend on what retrieval returned** (``n_arms``, ``fused_score``,
  ``rrank_<arm>``, ``q2e_memory``: the script features fed by ``arm_ranks``, ``fused`` and
  ``q2e_scores``) are recomputed here for the arms a policy actually ran, at their budgets, with
  the formulas of ``features.yaml`` (:data:`RETRIEVAL_FEATURES`). A feature set holding any other
  retrieval-dependent feature is refused (:class:`LocalRerankError`): there is no local formula.
* **The model** is the XGBoost booster that was uploaded (the plugin's score is the booster's
  margin plus a constant, :mod:`orchestrator.ltr.model`), so its order is the plugin's order.

* **The query vector**: ``SearchPipeline.search`` encodes the query only when a chosen plan takes
  a vector, so when no such arm runs the model sees ``dense_cosine`` = 0. ``query_vector_from``
  (the plans with a vector parameter) reproduces that; None gives the model the vector always.

The rerank is therefore the plugin's, not an approximation of it; the demo checks it against the
plugin on real searches (``rerank_check``: identical top 10 on sampled searches). The Q2E memory
arm's scores come from the simulated memory, as everywhere in the simulation.

Several models may be given, one per query fold (:class:`LocalReranker` ``model_of``): cross-fitted
scoring, so that no simulated search is reranked by a model trained on its own query's judgments.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..datatypes import ArmStatus, StrategyResult
from ..ltr.features import MEMORY_ARMS, FeatureSet

RETRIEVAL_PARAMS = frozenset({"arm_ranks", "fused", "q2e_scores"})
"""Request parameters whose values depend on which arms ran (see ``features.yaml``)."""
RETRIEVAL_FEATURES = ("n_arms", "fused_score", "q2e_memory", "rrank_<arm>")
"""The retrieval-dependent features this module recomputes (``rrank_<arm>`` for every plan)."""
UNION_FEATURES_FORMAT = 1


class LocalRerankError(ValueError):
    """The feature set or the logged features cannot be reranked locally; the message says why."""


@dataclass
class UnionFeatures:
    """One query text: the documents of its full union (fused order) and their logged features."""

    text: str
    doc_ids: tuple[str, ...]
    matrix: np.ndarray  # float32, len(doc_ids) x features
    _row: dict[str, int] = field(default_factory=dict, repr=False)
    _id_rank: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def __post_init__(self) -> None:
        self._reindex()

    def _reindex(self) -> None:
        self._row = {d: i for i, d in enumerate(self.doc_ids)}
        # Rank of each doc id in string order: fusion's last tie-break, vectorised.
        order = sorted(range(len(self.doc_ids)), key=self.doc_ids.__getitem__)
        self._id_rank = np.empty(len(order), np.int64)
        self._id_rank[order] = np.arange(len(order))

    def rows(self, doc_ids: Sequence[str]) -> np.ndarray:
        """Row index of each id; an id the union lacks gets a new all-zero row (counted by the caller)."""
        get = self._row.get
        rows = [get(d, -1) for d in doc_ids]
        if -1 in rows:
            missing = [d for d in dict.fromkeys(doc_ids) if d not in self._row]
            self.doc_ids = self.doc_ids + tuple(missing)
            self.matrix = np.vstack([self.matrix, np.zeros((len(missing), self.matrix.shape[1]), np.float32)])
            self._reindex()
            rows = [self._row[d] for d in doc_ids]
        return np.array(rows, dtype=np.int64)

    @property
    def id_rank(self) -> np.ndarray:
        return self._id_rank


def training_rows(features: UnionFeatures, window: int) -> tuple[tuple[str, ...], np.ndarray]:
    """The first ``window`` documents of the full union in fused order, with their features: what
    ``ltrr ltr train`` logs for a query (every arm, the fused union's top window)."""
    return features.doc_ids[:window], features.matrix[:window]


def log_union_features(pipeline: Any, feature_set: FeatureSet, cache: Any, texts: Sequence[str], *,
                       vectors: Mapping[str, Any] | None = None,
                       on_batch: Callable[[int], None] = lambda n: None) -> dict[str, UnionFeatures]:
    """The plugin's features of every document of each text's full union (every arm of the candidate
    cache at its largest level, fused by the pipeline's fusion), with the request parameters serving
    would send for that union. ``vectors``: text -> query vector (None: encoded here)."""
    from ..ltr.feature_log import log_features
    from ..ltr.features import request_params

    texts = list(dict.fromkeys(texts))
    if vectors is None:
        encoded = pipeline.encode_queries(texts)
        vectors = {t: encoded[i] for i, t in enumerate(texts)} if encoded is not None else {}
    requests = []
    for text in texts:
        results = [r for r in cache.queries[text].results.values() if r.status is not ArmStatus.NOT_APPLICABLE]
        fused = pipeline.fuser.fuse(results, limit=None)
        if not fused:
            continue
        params = request_params(cache.understanding(text), vectors.get(text), results, fused)
        requests.append((text, params, [h.doc_id for h in fused]))
    logged = log_features(pipeline.client, pipeline.index, feature_set, requests, on_batch=on_batch)
    out = {q.query_id: UnionFeatures(q.query_id, q.doc_ids, q.features) for q in logged}
    for text in texts:  # nothing retrieved: an empty union (every document a policy shows is then unknown)
        out.setdefault(text, UnionFeatures(text, (), np.zeros((0, len(feature_set.names)), np.float32)))
    return out


def save_union_features(path: str | Path, names: Sequence[str], features: Mapping[str, UnionFeatures],
                        meta: Mapping[str, Any]) -> None:
    """Write logged union features (reload with :func:`load_union_features`)."""
    texts = list(features)
    offsets = np.cumsum([0] + [len(features[t].doc_ids) for t in texts]).astype(np.int64)
    width = len(names)
    matrix = np.vstack([features[t].matrix for t in texts]) if texts else np.zeros((0, width), np.float32)
    doc_ids = np.array([d for t in texts for d in features[t].doc_ids], dtype=str)
    header = {"format": UNION_FEATURES_FORMAT, "names": list(names), "texts": texts, "meta": dict(meta)}
    with open(path, "wb") as f:
        np.savez_compressed(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8), offsets=offsets,
                            matrix=matrix.astype(np.float32), doc_ids=doc_ids)


def load_union_features(path: str | Path) -> tuple[list[str], dict[str, UnionFeatures], dict[str, Any]]:
    """``(feature names, text -> features, meta)`` of a file written by :func:`save_union_features`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            offsets, matrix, doc_ids = data["offsets"], data["matrix"], data["doc_ids"]
    except (OSError, ValueError, KeyError) as e:
        raise LocalRerankError(f"{path}: not a union feature file ({e})") from None
    if header.get("format") != UNION_FEATURES_FORMAT:
        raise LocalRerankError(f"{path}: union feature file of format {header.get('format')!r}, "
                               f"expected {UNION_FEATURES_FORMAT}")
    out = {}
    for i, text in enumerate(header["texts"]):
        a, b = int(offsets[i]), int(offsets[i + 1])
        out[text] = UnionFeatures(text, tuple(str(d) for d in doc_ids[a:b]), np.array(matrix[a:b], np.float32))
    return list(header["names"]), out, dict(header.get("meta", {}))


def retrieval_columns(feature_set: FeatureSet, arms: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """Feature name -> (kind, arm) for the feature set's retrieval-dependent features; refuses a
    feature fed by ``arm_ranks``, ``fused`` or ``q2e_scores`` that has no local formula."""
    known: dict[str, tuple[str, str | None]] = {"n_arms": ("n_arms", None), "fused_score": ("fused", None),
                                                "q2e_memory": ("q2e", None)}
    known.update({f"rrank_{arm}": ("rrank", arm) for arm in arms})
    out = {}
    for feature in feature_set.features:
        if not RETRIEVAL_PARAMS & set(feature.params):
            continue
        if feature.name not in known:
            raise LocalRerankError(
                f"feature {feature.name} reads {sorted(RETRIEVAL_PARAMS & set(feature.params))}, which depend on "
                f"the arms that ran, and has no local formula (known: {', '.join(RETRIEVAL_FEATURES)}); the "
                "simulation cannot rerank with this feature set")
        out[feature.name] = known[feature.name]
    return out


class LocalReranker:
    """Reranks any selection of arm results for a logged query text (see the module docstring).

    ``models``: name -> XGBoost booster; ``model_of(query_id)`` names the one to use for a query
    (cross-fitting); ``window``: how many of the fused list the model scores (the rest follow in
    fused order), as ``SearchPipeline.rerank_window``; ``rrf_k``: the fusion of the pipeline;
    ``query_vector_from``: the arms whose running gives the model the query vector (None: always)."""

    def __init__(self, feature_set: FeatureSet, arms: Sequence[str], features: Mapping[str, UnionFeatures],
                 models: Mapping[str, Any], model_of: Callable[[str], str] | None = None, *, window: int = 200,
                 rrf_k: float = 60.0, memory_arms: Sequence[str] = MEMORY_ARMS,
                 query_vector_from: Sequence[str] | None = None):
        if not models:
            raise LocalRerankError("no model to rerank with")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise LocalRerankError(f"window must be a positive integer, got {window!r}")
        self.names = tuple(feature_set.names)
        self.columns = {self.names.index(n): kind for n, kind in retrieval_columns(feature_set, arms).items()}
        self.vector_columns = [i for i, f in enumerate(feature_set.features) if "query_vector" in f.params]
        self.query_vector_from = None if query_vector_from is None else frozenset(query_vector_from)
        self.features = dict(features)
        for text, f in self.features.items():
            if f.matrix.shape[1] != len(self.names):
                raise LocalRerankError(f"features of {text!r} have {f.matrix.shape[1]} columns; the feature set "
                                       f"{feature_set.name} has {len(self.names)}")
        self.models = dict(models)
        for booster in self.models.values():
            booster.set_param({"nthread": 1})  # thousands of small predictions: threads cost more than they give
        default = next(iter(self.models))
        self.model_of = model_of or (lambda _query_id: default)
        self.window = window
        self.rrf_k = float(rrf_k)
        self.memory_arms = frozenset(memory_arms)
        self.unknown_documents = 0  # retrieved documents without logged features (scored with zeros)
        self.calls = 0
        # (text, arm, budget) -> (hits, rows, ranks): the candidate cache hands out the same result
        # objects for a text, arm and budget, so their rows are computed once (checked by identity).
        self._lists: dict[tuple[str, str, int], tuple[Any, np.ndarray, np.ndarray]] = {}

    def _rows_ranks(self, union: UnionFeatures, r: StrategyResult) -> tuple[np.ndarray, np.ndarray]:
        """The union rows of ``r``'s hits and their ranks (a doc listed twice keeps its best rank)."""
        key = (union.text, r.strategy, r.budget)
        cached = self._lists.get(key)
        if cached is not None and cached[0] is r.hits:
            return cached[1], cached[2]
        ids = [h.doc_id for h in r.hits]
        known = len(union.doc_ids)
        rows = union.rows(ids)
        self.unknown_documents += len(union.doc_ids) - known
        ranks = np.maximum(np.array([h.rank for h in r.hits], dtype=np.int64), 1)
        if len(set(ids)) != len(ids):  # as fusion does
            best: dict[int, int] = {}
            for row, rank in zip(rows.tolist(), ranks.tolist()):
                best[row] = min(rank, best.get(row, rank))
            rows = np.fromiter(best, np.int64, len(best))
            ranks = np.fromiter(best.values(), np.int64, len(best))
        if r.strategy not in self.memory_arms:  # memory lists change with every click: not worth keeping
            self._lists[key] = (r.hits, rows, ranks)
        return rows, ranks

    def _fuse(self, union: UnionFeatures, results: Sequence[StrategyResult]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """RRF over ``results`` on the union's rows, in :class:`~orchestrator.fusion.RRF`'s order:
        ``(rows in fused order, fused score, arms holding the doc, arm -> rank per row, Q2E score per row)``."""
        live = sorted((r for r in results if r.ok), key=lambda r: r.strategy)  # fusion's summation order
        per_arm = [(r, *self._rows_ranks(union, r)) for r in live]
        n = len(union.doc_ids)
        score = np.zeros(n)
        best_rank = np.full(n, np.iinfo(np.int64).max, np.int64)
        found = np.zeros(n, np.int64)
        arm_rank: dict[str, np.ndarray] = {}
        q2e = np.zeros(n)
        for r, rows, ranks in per_arm:
            score[rows] += 1.0 / (self.rrf_k + ranks)
            best_rank[rows] = np.minimum(best_rank[rows], ranks)
            found[rows] += 1
            full = np.zeros(n, np.int64)
            full[rows] = ranks
            arm_rank[r.strategy] = full
            if r.strategy in self.memory_arms:
                values = np.array([h.score for h in r.hits], dtype=np.float64)
                np.maximum.at(q2e, union.rows([h.doc_id for h in r.hits]), values)
        candidates = np.flatnonzero(found)
        order = candidates[np.lexsort((union.id_rank[candidates], -found[candidates], best_rank[candidates],
                                       -score[candidates]))]
        return order, score, found, arm_rank, q2e

    def _matrix(self, union: UnionFeatures, rows: np.ndarray, score: np.ndarray, found: np.ndarray,
                arm_rank: Mapping[str, np.ndarray], q2e: np.ndarray) -> np.ndarray:
        x = union.matrix[rows].copy()
        for column, (kind, arm) in self.columns.items():
            if kind == "n_arms":
                values = found[rows].astype(np.float64)
            elif kind == "fused":
                values = score[rows]
            elif kind == "q2e":
                values = q2e[rows]
            else:
                ranks = arm_rank.get(str(arm))
                values = np.zeros(len(rows)) if ranks is None else np.divide(
                    1.0, ranks[rows], out=np.zeros(len(rows)), where=ranks[rows] > 0)
            x[:, column] = values.astype(np.float32)
        return x

    def rank(self, text: str, query_id: str, selections: Sequence[Sequence[StrategyResult]],
             size: int = 10) -> list[list[str]]:
        """For each selection (the results of the arms one search ran), the top ``size`` document ids
        after fusion and the rerank of the fused window; one model call for all selections."""
        union = self.features.get(text)
        if union is None:
            raise LocalRerankError(f"no logged features for {text!r}")
        fused = [self._fuse(union, results) for results in selections]
        windows = [order[: self.window] for order, *_ in fused]
        blocks = [self._matrix(union, w, score, found, ranks, q2e)
                  for w, (_order, score, found, ranks, q2e) in zip(windows, fused)]
        if self.query_vector_from is not None and self.vector_columns:
            for block, results in zip(blocks, selections):
                if not any(r.ok and r.strategy in self.query_vector_from for r in results):
                    block[:, self.vector_columns] = 0.0  # serving sent no vector: the plugin computes 0
        sizes = [len(w) for w in windows]
        scores = np.zeros(0)
        if sum(sizes):
            booster = self.models[self.model_of(query_id)]
            scores = np.asarray(booster.inplace_predict(np.vstack(blocks)), dtype=np.float64)
            self.calls += 1
        out = []
        start = 0
        for (order, *_), window, n in zip(fused, windows, sizes):
            s = scores[start: start + n]
            start += n
            ranked = window[np.lexsort((np.arange(n), -s))]  # model score, ties in fused order
            rows = ranked if size <= n else np.concatenate([ranked, order[n: size]])
            out.append([union.doc_ids[i] for i in rows[:size]])
        return out


def training_set(feature_set: FeatureSet, features: Mapping[str, UnionFeatures], queries: Sequence[Any],
                 qrels: Mapping[str, Mapping[str, int]], window: int) -> Any:
    """The :class:`~orchestrator.ltr.training.TrainingSet` of ``queries`` (rows with ``id`` and
    ``text``) from their texts' logged unions (:func:`training_rows`), labelled by ``qrels``."""
    from ..ltr.feature_log import LoggedQuery
    from ..ltr.training import QrelsLabels, TrainingSet

    logged = []
    for q in queries:
        union = features.get(q.text)
        if union is None:
            raise LocalRerankError(f"no logged features for query {q.id} ({q.text!r})")
        ids, matrix = training_rows(union, window)
        if ids:
            logged.append(LoggedQuery(q.id, ids, matrix))
    return TrainingSet.labelled(feature_set, logged, QrelsLabels(qrels))
