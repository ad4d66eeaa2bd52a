"""Feature logging: the plugin computes every feature of a feature set for given candidates
(``sltr`` as a named filter + ``ext.ltr_log`` with ``missing_as_zero``), many queries per
``_msearch``. Training data and the parity check read features this way, so the model learns
from exactly the values serving computes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .features import FeatureSet

LOG_NAME = "ltrr"


class FeatureLogError(RuntimeError):
    """OpenSearch could not log features for a query; the message says which and why."""


@dataclass(frozen=True)
class LoggedQuery:
    """The feature matrix of one query's candidates (rows in ``doc_ids`` order)."""

    query_id: str
    doc_ids: tuple[str, ...]
    features: np.ndarray  # float32, len(doc_ids) x len(feature set)


def log_body(feature_set: FeatureSet, params: Mapping[str, Any], doc_ids: Sequence[str]) -> dict[str, Any]:
    return {
        "size": len(doc_ids), "_source": False, "track_total_hits": False,
        "query": {"bool": {"filter": [
            {"ids": {"values": list(doc_ids)}},
            {"sltr": {"_name": LOG_NAME, "featureset": feature_set.name, "params": dict(params)}}]}},
        "ext": {"ltr_log": {"log_specs": {"name": LOG_NAME, "named_query": LOG_NAME, "missing_as_zero": True}}},
    }


def log_features(client: Any, index: str, feature_set: FeatureSet,
                 requests: Iterable[tuple[str, Mapping[str, Any], Sequence[str]]], *, batch: int = 16,
                 on_batch: Callable[[int], None] = lambda n: None) -> list[LoggedQuery]:
    """Features for each ``(query_id, sltr params, candidate doc ids)``, ``batch`` queries per
    request; a candidate missing from the index is left out of its query's rows."""
    names = feature_set.names
    out: list[LoggedQuery] = []
    pending: list[tuple[str, Mapping[str, Any], Sequence[str]]] = []

    def flush() -> None:
        if not pending:
            return
        body: list[dict] = []
        for _qid, params, doc_ids in pending:
            body += [{"index": index}, log_body(feature_set, params, doc_ids)]
        responses = client.msearch(body=body, params={"request_timeout": 120})["responses"]
        for (qid, _params, doc_ids), resp in zip(pending, responses):
            if "error" in resp:
                raise FeatureLogError(f"logging features for query {qid} failed: {str(resp['error'])[:300]}")
            rows: dict[str, list[float]] = {}
            for hit in resp["hits"]["hits"]:
                logged = {f["name"]: f.get("value", 0.0) for f in hit["fields"]["_ltrlog"][0][LOG_NAME]}
                rows[hit["_id"]] = [float(logged.get(n, 0.0)) for n in names]
            kept = tuple(d for d in doc_ids if d in rows)
            matrix = np.array([rows[d] for d in kept], dtype=np.float32).reshape(len(kept), len(names))
            out.append(LoggedQuery(qid, kept, matrix))
        on_batch(len(pending))
        pending.clear()

    for request in requests:
        pending.append(request)
        if len(pending) >= batch:
            flush()
    flush()
    return out
