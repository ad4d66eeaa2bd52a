"""XGBoost models in the LTR plugin: conversion, upload, the active model per catalogue, model cards.

Models are XGBoost ranking boosters (``rank:ndcg`` or ``rank:pairwise``: no output transform),
uploaded as ``model/xgboost+json`` under the objective name the plugin accepts. The plugin scores
a candidate as the sum of its trees' leaves: it never adds XGBoost's ``base_score``, and Lucene
refuses negative scores, so :func:`to_plugin_definition` adds ``shift`` (>= 0, enough to keep
every sum non-negative) to the first tree's leaves::

    plugin score = booster.predict(x, output_margin=True) - base_score + shift

The order is the booster's. :class:`ModelRegistry` keeps, per catalogue alias, the active model
and the ones before it in one document updated with optimistic concurrency, so a switch is atomic
and ``rollback`` returns to the previous model.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from opensearchpy.exceptions import ConflictError, NotFoundError

from .features import FeatureSet

# The plugin's xgboost+json parser accepts rank:pairwise but not rank:ndcg; both output the raw
# sum of leaves (no transform), so a rank:ndcg model is uploaded under this name, unchanged.
OBJECTIVE = "rank:pairwise"
REGISTRY_ALIAS = "ltrr-models"


class ModelError(RuntimeError):
    """A model could not be converted, uploaded or switched; the message says why."""


def _min_leaf(node: dict) -> float:
    if "leaf" in node:
        return float(node["leaf"])
    return min(_min_leaf(child) for child in node["children"])


def _shift_leaves(node: dict, shift: float) -> None:
    if "leaf" in node:
        node["leaf"] = float(node["leaf"]) + shift
    else:
        for child in node["children"]:
            _shift_leaves(child, shift)


def base_score(booster: Any) -> float:
    """The booster's ``base_score`` (added by ``predict``, never by the plugin)."""
    config = json.loads(booster.save_config())
    raw = str(config["learner"]["learner_model_param"]["base_score"])
    # XGBoost 3 writes a vector ("[-3.3E-8]", one value per target); 2.x a scalar.
    return float(raw.strip("[]").split(",")[0])


def to_plugin_definition(booster: Any) -> tuple[dict[str, Any], float]:
    """``({"objective", "splits"}, shift)`` for ``model/xgboost+json``: the trees dumped without
    stats (the plugin's parser refuses them), the first tree's leaves raised by ``shift``."""
    trees = [json.loads(t) for t in booster.get_dump(dump_format="json", with_stats=False)]
    if not trees:
        raise ModelError("the booster has no trees")
    lowest = sum(_min_leaf(tree) for tree in trees)
    # The plugin sums leaves in float32: a little headroom keeps a path that sums to exactly 0
    # from coming out as -1e-8.
    shift = -lowest + 1e-3 if lowest < 0 else 0.0
    if shift:
        trees = copy.deepcopy(trees)
        _shift_leaves(trees[0], shift)
    return {"objective": OBJECTIVE, "splits": trees}, shift


def plugin_scores(booster: Any, features: Any, shift: float, feature_names: Sequence[str]) -> Any:
    """What the plugin will return for rows ``features`` (see the module docstring)."""
    import xgboost as xgb

    margin = booster.predict(xgb.DMatrix(features, feature_names=list(feature_names)), output_margin=True)
    return margin - base_score(booster) + shift


def upload_model(client: Any, feature_set: FeatureSet, name: str, definition: dict[str, Any]) -> None:
    """Store model ``name`` on ``feature_set`` (which pins the features it was trained on)."""
    try:
        client.transport.perform_request("POST", f"/_ltr/_featureset/{feature_set.name}/_createmodel", body={
            "model": {"name": name, "model": {"type": "model/xgboost+json", "definition": definition}}})
    except Exception as e:  # the plugin answers 400 with its parser's reason
        raise ModelError(f"uploading model {name} failed: {getattr(e, 'info', e)}") from None


def delete_model(client: Any, name: str) -> None:
    client.transport.perform_request("DELETE", f"/_ltr/_model/{name}", params={"ignore": 404})


class ModelRegistry:
    """The active LTR model of each catalogue alias (one document per alias in ``ltrr-models``)."""

    def __init__(self, client: Any):
        self.client = client

    def _ensure(self) -> None:
        from ..catalog import ensure_index

        ensure_index(self.client, REGISTRY_ALIAS, "ltr_models")

    def state(self, catalogue: str) -> dict[str, Any]:
        """``{"active", "previous", "cards"}`` of ``catalogue`` (empty when nothing was trained)."""
        try:
            doc = self.client.get(index=REGISTRY_ALIAS, id=catalogue)
        except NotFoundError:
            return {"catalogue": catalogue, "active": None, "previous": [], "cards": {}}
        return {**doc["_source"], "_seq_no": doc["_seq_no"], "_primary_term": doc["_primary_term"]}

    def active(self, catalogue: str) -> tuple[str | None, dict[str, Any] | None]:
        state = self.state(catalogue)
        name = state.get("active")
        return name, (state.get("cards", {}).get(name) if name else None)

    def _write(self, catalogue: str, change) -> dict[str, Any]:
        self._ensure()
        for _ in range(10):  # optimistic concurrency: re-read and retry when another writer won
            state = self.state(catalogue)
            seq = state.pop("_seq_no", None)
            term = state.pop("_primary_term", None)
            new = change(state)
            new["updated"] = datetime.now(UTC).isoformat()
            kwargs: dict[str, Any] = {"params": {"refresh": "true"}}
            if seq is None:
                kwargs["params"]["op_type"] = "create"
            else:
                kwargs["params"].update({"if_seq_no": seq, "if_primary_term": term})
            try:
                self.client.index(index=REGISTRY_ALIAS, id=catalogue, body=new, **kwargs)
                return new
            except ConflictError:
                continue
        raise ModelError(f"could not update the model registry of {catalogue}: too many concurrent writers")

    def activate(self, catalogue: str, name: str, card: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make ``name`` the active model of ``catalogue`` (the current one becomes the previous)."""
        def change(state: dict[str, Any]) -> dict[str, Any]:
            cards = dict(state.get("cards") or {})
            if card is not None:
                cards[name] = card
            if name not in cards:
                raise ModelError(f"no model {name!r} for {catalogue}")
            previous = [m for m in ([state["active"]] if state.get("active") else []) + list(state.get("previous") or [])
                        if m != name]
            return {"catalogue": catalogue, "active": name, "previous": previous, "cards": cards}

        return self._write(catalogue, change)

    def rollback(self, catalogue: str) -> dict[str, Any]:
        """Switch back to the model that was active before the current one."""
        def change(state: dict[str, Any]) -> dict[str, Any]:
            previous = list(state.get("previous") or [])
            if not previous:
                raise ModelError(f"{catalogue} has no previous model to roll back to")
            rest = previous[1:] + ([state["active"]] if state.get("active") else [])
            return {"catalogue": catalogue, "active": previous[0], "previous": rest, "cards": state.get("cards", {})}

        return self._write(catalogue, change)
