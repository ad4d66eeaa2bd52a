"""The rerank stage: the fused union's top window scored by the active LTR model, inside
OpenSearch, in one request (an ids filter over the window + an ``sltr`` rescore of it).

When there is no model or the request fails, the fused order stands and the outcome says why:
reranking can only ever improve an answer, never cost one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opensearchpy.exceptions import ConnectionError as OSConnectionError
from opensearchpy.exceptions import TransportError

from .feature_log import LOG_NAME


@dataclass(frozen=True)
class RerankOutcome:
    """Model scores for the window (doc id -> score, best first), or why there are none."""

    model: str | None
    scores: dict[str, float]
    took_ms: float = 0.0
    error: str | None = None
    features: dict[str, dict[str, float]] | None = None  # doc id -> feature -> value (explain)

    @property
    def applied(self) -> bool:
        return self.error is None and bool(self.scores)


def rerank_body(model: str, params: Mapping[str, Any], window: Sequence[str], *,
                feature_set: str | None = None, explain: bool = False) -> dict[str, Any]:
    """One search: every candidate of ``window`` (and nothing else) rescored by ``model``. With
    ``explain`` the feature values are logged too (``feature_set`` names them)."""
    sltr: dict[str, Any] = {"model": model, "params": dict(params)}
    body: dict[str, Any] = {
        # Ids from doc values: loading _id for 200 hits (stored fields; with k-NN vectors in the
        # index) cost more than scoring them with the model (bench_rerank.py: 12 ms vs 2 ms).
        "size": len(window), "_source": False, "track_total_hits": False,
        "stored_fields": "_none_", "docvalue_fields": ["doc_id"],
        "query": {"bool": {"filter": [{"ids": {"values": list(window)}}]}},
        "rescore": {"window_size": len(window), "query": {
            "rescore_query": {"sltr": sltr}, "query_weight": 0.0, "rescore_query_weight": 1.0}},
    }
    if explain and feature_set:
        body["query"]["bool"]["filter"].append(
            {"sltr": {"_name": LOG_NAME, "featureset": feature_set, "params": dict(params)}})
        body["ext"] = {"ltr_log": {"log_specs": {"name": LOG_NAME, "named_query": LOG_NAME, "missing_as_zero": True}}}
    return body


@dataclass
class Reranker:
    """Reranks windows of ``index`` with ``model`` (a model stored in the LTR plugin)."""

    client: Any
    index: str
    model: str
    feature_set: str | None = None
    timeout_ms: int = 1000

    def rerank(self, params: Mapping[str, Any], window: Sequence[str], *, explain: bool = False) -> RerankOutcome:
        if not window:
            return RerankOutcome(self.model, {})
        t0 = time.perf_counter()
        try:
            resp = self.client.search(
                index=self.index, body=rerank_body(self.model, params, window, feature_set=self.feature_set,
                                                   explain=explain),
                params={"request_timeout": self.timeout_ms / 1000, "timeout": f"{self.timeout_ms}ms"})
        except (OSConnectionError, TransportError) as e:
            return RerankOutcome(self.model, {}, (time.perf_counter() - t0) * 1000, f"rerank failed: {str(e)[:300]}")
        took = float(resp.get("took", 0))
        if resp.get("timed_out"):
            return RerankOutcome(self.model, {}, took, f"rerank timed out after {self.timeout_ms} ms")
        hits = resp["hits"]["hits"]
        try:
            ids = [h["fields"]["doc_id"][0] for h in hits]
        except (KeyError, IndexError):
            return RerankOutcome(self.model, {}, took, "the catalogue has no doc_id field: reload it (ltrr load)")
        scores = {doc_id: float(h["_score"]) for doc_id, h in zip(ids, hits)}
        features = None
        if explain:
            features = {doc_id: {f["name"]: float(f.get("value", 0.0)) for f in h["fields"]["_ltrlog"][0][LOG_NAME]}
                        for doc_id, h in zip(ids, hits) if "_ltrlog" in h.get("fields", {})}
        return RerankOutcome(self.model, scores, took, None, features)
