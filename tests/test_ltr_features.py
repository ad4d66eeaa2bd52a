"""The feature set as data: expansion, versioning, and the template rules (unit tests)."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.ltr.features import FeatureSetError, load_feature_set, matches_every_doc

ARMS = ["bm25_popularity", "fuzzy", "knn", "q2e_memory", "structured"]


def test_shipped_feature_set_expands_per_arm_and_is_versioned_by_content():
    fs = load_feature_set(ARMS)
    assert {"title_bm25", "dense_cosine", "q2e_memory", "fused_score", "n_arms"} <= set(fs.names)
    assert [n for n in fs.names if n.startswith("rrank_")] == [f"rrank_{a}" for a in sorted(ARMS)]
    assert fs.name == f"ltrr-{fs.digest}" and load_feature_set(list(reversed(ARMS))).name == fs.name
    assert load_feature_set(ARMS[:-1]).name != fs.name  # a plan more or less: a new feature set
    plugin = {f["name"]: f for f in fs.to_plugin()["featureset"]["features"]}
    # Query features match every candidate (a miss is 0, not NaN); per-arm scripts know their arm.
    assert plugin["title_bm25"]["template"] == matches_every_doc({"match": {"title": "{{keywords}}"}})
    assert plugin["rrank_knn"]["template"]["params"] == {"arm": "knn"}
    assert plugin["dense_cosine"]["template_language"] == "script_feature"


@pytest.mark.parametrize("feature,message", [
    ({"name": "f", "params": ["keywords"], "query": {"match": {"t": "{{{keywords}}}"}}}, "unsupported"),
    ({"name": "f", "params": ["keywords"], "query": {"match": {"t": "{{#keywords}}x{{/keywords}}"}}}, "unsupported"),
    ({"name": "f", "params": [], "query": {"match": {"t": "{{keywords}}"}}}, "do not declare"),
    ({"name": "f", "params": ["arm_ranks"], "query": {"match": {"t": "{{arm_ranks}}"}}}, "script feature"),
    ({"name": "f", "params": ["keywords", "key"], "query": {"match": {"t": "{{keywords}}"}}}, "not used"),
    ({"name": "f", "params": ["nope"], "script": "return 1;"}, "unknown params"),
    ({"name": "f", "params": ["keywords"], "script": "return '{{keywords}}';"}, "mustache tags"),
    ({"name": "f", "params": [], "query": {"match_all": {}}, "script": "return 1;"}, "exactly one"),
    ({"name": "Bad Name", "params": [], "script": "return 1;"}, "lowercase"),
])
def test_feature_rules(tmp_path, feature, message):
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "features": [feature]}))
    with pytest.raises(FeatureSetError, match=message):
        load_feature_set(ARMS, path)


def test_duplicate_names_and_unknown_keys(tmp_path):
    path = tmp_path / "features.yaml"
    f = {"name": "f", "params": [], "script": "return 1;"}
    path.write_text(yaml.safe_dump({"name": "t", "features": [f, f]}))
    with pytest.raises(FeatureSetError, match="duplicate"):
        load_feature_set(ARMS, path)
    path.write_text(yaml.safe_dump({"name": "t", "features": [f], "extra": 1}))
    with pytest.raises(FeatureSetError, match="unknown keys"):
        load_feature_set(ARMS, path)
