"""The reranker's features as data: ``ltr_models/features.yaml`` made into an LTR plugin feature set.

A feature is a mustache ``query`` (its score is the feature value; wrapped by :func:`matches_every_doc`
so a miss is 0, not NaN) or a painless ``script`` (values the request carries). ``per_arm`` features
are expanded once per query plan. The stored name is ``<name>-<sha8>`` of the expanded set, so a
changed file or a new plan gives a new feature set and never alters one that models were trained on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ltr_models_dir
from ..datatypes import FusedHit, StrategyResult
from ..understanding import QueryUnderstanding

FEATURES_FILE = "features.yaml"
MEMORY_ARMS = ("q2e_memory",)  # plans whose hit scores are Q2E memory scores (query_plans/*.yaml, index: memory)

REQUEST_PARAMS: dict[str, str] = {
    "keywords": "string",      # the normalised query
    "key": "string",           # the Q2E key
    "slot_values": "list",     # facet values found in the query
    "query_vector": "list",    # the query's embedding (empty without an encoder)
    "query_info": "map",       # {n_tokens, n_chars, has_slots}
    "arm_ranks": "map",        # {arm: {doc_id: rank}}
    "fused": "map",            # {doc_id: fused score}
    "q2e_scores": "map",       # {doc_id: the Q2E memory arm's score}
}
"""Every parameter a feature may declare, and its kind. Only ``string`` ones may appear in a
mustache query (inside JSON strings, where the plugin escapes them); the others are script values."""

_TAG = re.compile(r"\{\{(.*?)\}\}")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class FeatureSetError(ValueError):
    """``features.yaml`` is invalid; the message names the feature and the problem."""


def matches_every_doc(query: Mapping[str, Any]) -> dict[str, Any]:
    """``query`` as a feature every candidate matches (score 0 when ``query`` does not match).

    Upstream 3.x gives a non-matching feature NaN, which its XGBoost evaluator sends down each
    tree's "no" branch whatever the model learned; training data is logged with
    ``missing_as_zero``. Matching everything makes serving see the 0 that training saw."""
    return {"bool": {"must": {"match_all": {"boost": 0}}, "should": dict(query)}}


@dataclass(frozen=True)
class Feature:
    name: str
    params: tuple[str, ...]
    query: Mapping[str, Any] | None = None
    script: str | None = None
    constants: Mapping[str, Any] = field(default_factory=dict)  # fixed script params (per-arm: arm)

    def to_plugin(self) -> dict[str, Any]:
        """The feature as the LTR plugin stores it."""
        if self.query is not None:
            return {"name": self.name, "params": list(self.params), "template_language": "mustache",
                    "template": matches_every_doc(self.query)}
        return {"name": self.name, "params": list(self.params), "template_language": "script_feature",
                "template": {"lang": "painless", "source": self.script, "params": dict(self.constants)}}


@dataclass(frozen=True)
class FeatureSet:
    """The validated, expanded feature set; :attr:`name` is what the plugin stores it under."""

    base_name: str
    description: str
    features: tuple[Feature, ...]

    @property
    def digest(self) -> str:
        payload = json.dumps([f.to_plugin() for f in self.features], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:8]

    @property
    def name(self) -> str:
        return f"{self.base_name}-{self.digest}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def to_plugin(self) -> dict[str, Any]:
        return {"featureset": {"name": self.name, "features": [f.to_plugin() for f in self.features]}}


def _parse_feature(raw: Any, where: str, *, arm: str | None = None) -> Feature:
    if not isinstance(raw, Mapping):
        raise FeatureSetError(f"{where}: a feature is a mapping")
    unknown = set(raw) - {"name", "params", "query", "script"}
    if unknown:
        raise FeatureSetError(f"{where}: unknown keys {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise FeatureSetError(f"{where}: name {name!r} must be lowercase letters, digits and _")
    full = f"{name}_{arm}" if arm else name
    params = raw.get("params", [])
    if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
        raise FeatureSetError(f"{full}: params must be a list of names")
    undeclared = [p for p in params if p not in REQUEST_PARAMS]
    if undeclared:
        raise FeatureSetError(f"{full}: unknown params {undeclared}; known: {sorted(REQUEST_PARAMS)}")
    query, script = raw.get("query"), raw.get("script")
    if (query is None) == (script is None):
        raise FeatureSetError(f"{full}: give exactly one of query or script")
    if query is not None:
        if not isinstance(query, Mapping):
            raise FeatureSetError(f"{full}: query must be a mapping (query DSL)")
        _check_query_template(full, query, params)
        return Feature(full, tuple(params), query=dict(query))
    if not isinstance(script, str) or not script.strip():
        raise FeatureSetError(f"{full}: script must be painless source")
    if "{{" in script:
        raise FeatureSetError(f"{full}: scripts read params.<name>; mustache tags are for queries only")
    return Feature(full, tuple(params), script=script.strip(), constants={"arm": arm} if arm else {})


def _check_query_template(name: str, query: Mapping[str, Any], params: Sequence[str]) -> None:
    """The plans' escaping rule for feature queries: a tag is a plain ``{{param}}`` of a string
    parameter the feature declares, and only inside a JSON string (keys included); every declared
    parameter is used."""
    used: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(k)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            for tag in _TAG.findall(node):
                if not re.fullmatch(r"[a-z_]+", tag):
                    raise FeatureSetError(f"{name}: unsupported mustache tag {{{{{tag}}}}}: only {{{{param}}}}")
                if tag not in params:
                    raise FeatureSetError(f"{name}: template uses {{{{{tag}}}}} but params do not declare it")
                if REQUEST_PARAMS[tag] != "string":
                    raise FeatureSetError(f"{name}: {tag} is a {REQUEST_PARAMS[tag]}: pass it to a script feature")
                used.add(tag)
        elif "{{" in json.dumps(node):
            raise FeatureSetError(f"{name}: a tag outside a string")

    walk(query)
    if set(params) - used:
        raise FeatureSetError(f"{name}: params declared but not used: {sorted(set(params) - used)}")


def load_feature_set(arms: Sequence[str], path: Path | None = None) -> FeatureSet:
    """The feature set of ``features.yaml`` (default: the packaged ``ltr_models/``) with its
    ``per_arm`` features expanded for ``arms`` (the query plans, in a stable order)."""
    path = path or (ltr_models_dir() / FEATURES_FILE)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise FeatureSetError(f"{path}: {e}") from None
    if not isinstance(raw, Mapping):
        raise FeatureSetError(f"{path}: expected a mapping")
    unknown = set(raw) - {"name", "description", "features", "per_arm"}
    if unknown:
        raise FeatureSetError(f"{path}: unknown keys {sorted(unknown)}")
    base = raw.get("name", "ltrr")
    if not isinstance(base, str) or not _NAME.match(base):
        raise FeatureSetError(f"{path}: name {base!r} must be lowercase letters, digits and _")
    features = [_parse_feature(f, f"{path}: features[{i}]") for i, f in enumerate(raw.get("features") or [])]
    for arm in sorted(arms):
        features += [_parse_feature(f, f"{path}: per_arm[{i}]", arm=arm) for i, f in enumerate(raw.get("per_arm") or [])]
    names = [f.name for f in features]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FeatureSetError(f"{path}: duplicate feature names {duplicates}")
    if not features:
        raise FeatureSetError(f"{path}: no features")
    return FeatureSet(base, " ".join(str(raw.get("description", "")).split()), tuple(features))


def init_feature_set(client: Any, feature_set: FeatureSet) -> bool:
    """Create the plugin's default store and ``feature_set`` when missing (idempotent); True when
    the feature set was created now."""
    transport = client.transport
    transport.perform_request("PUT", "/_ltr", params={"ignore": 400})  # 400: the store exists
    exists = transport.perform_request("GET", f"/_ltr/_featureset/{feature_set.name}", params={"ignore": 404})
    if exists.get("found"):
        return False
    transport.perform_request("PUT", f"/_ltr/_featureset/{feature_set.name}", body=feature_set.to_plugin())
    return True


def request_params(u: QueryUnderstanding, vector: Sequence[float] | None, results: Sequence[StrategyResult],
                   fused: Sequence[FusedHit], *, memory_arms: Sequence[str] = MEMORY_ARMS) -> dict[str, Any]:
    """The sltr parameters for one query's candidates (see ``features.yaml``). Every parameter is
    always sent, so any feature set version finds what it declares. ``q2e_scores`` holds the
    scores of the ``memory_arms`` that ran (the Q2E memory is not a catalogue field, so its
    features come from those hits; the best score where several found an item)."""
    q2e_scores: dict[str, float] = {}
    for r in results:
        if r.ok and r.strategy in memory_arms:
            for h in r.hits:
                q2e_scores[h.doc_id] = max(h.score, q2e_scores.get(h.doc_id, 0.0))
    return {
        "keywords": u.normalized,
        "key": u.key,
        "slot_values": sorted({s.value for s in u.slots}),
        "query_vector": [round(float(x), 6) for x in vector] if vector is not None and len(vector) else [],
        "query_info": {"n_tokens": float(len(u.tokens)), "n_chars": float(len(u.normalized)),
                       "has_slots": 1.0 if u.slots else 0.0},
        "arm_ranks": {r.strategy: {h.doc_id: h.rank for h in r.hits} for r in results if r.ok},
        "fused": {h.doc_id: h.score for h in fused},
        "q2e_scores": q2e_scores,
    }
