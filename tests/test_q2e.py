"""The Q2E memory in its own index: formula and decay, predictions replaced by evidence, the arm
through SearchPipeline.search, concurrent writers, survival across reloads, not-applicable cases."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime

import numpy as np
import pytest

from orchestrator.catalog import CatalogError, check_alias, drop, load_dataset
from orchestrator.datasets import Dataset
from orchestrator.datatypes import ArmStatus, FusedHit, Hit, StrategyResult
from orchestrator.feedback.q2e import (
    MAX_VALUE,
    MIN_VALUE,
    Q2EConfig,
    Q2EError,
    Q2EMemory,
    Q2EUpdate,
    check_key,
    impression_updates,
    memory_index,
)
from orchestrator.ltr.features import request_params
from orchestrator.pipeline import SearchPipeline
from orchestrator.strategies import PlanError, StrategyCall, StrategyExecutor, load_plan, load_plans, sync_plans
from orchestrator.understanding import QueryUnderstander, query_key

T0 = 1_700_000_000.0  # a fixed clock: every test passes its times explicitly
DAY = 86_400.0
KEY = query_key("love song")
OTHER = query_key("feeling good")


def reference_sums(updates: list[Q2EUpdate], half_life_s: float) -> tuple[float, float, float]:
    """c, n decayed to the latest update time, computed directly from the definition."""
    times = [float(u.time) for u in updates]  # type: ignore[arg-type]
    t = max(times)
    w = [2.0 ** (-(t - ti) / half_life_s) for ti in times]
    return sum(u.grade * wi for u, wi in zip(updates, w)), sum(u.examination * wi for u, wi in zip(updates, w)), t


# ---------------------------------------------------------------------------------------------
# Without a node
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    ({"prior_mean": 0.0}, "prior_mean"), ({"prior_mean": 1.0}, "prior_mean"), ({"prior_strength": 0}, "prior_strength"),
    ({"half_life_s": float("inf")}, "half_life_s"), ({"scale": -1}, "scale"), ({"min_exposure": -0.1}, "min_exposure"),
    ({"max_keys": 0}, "max_keys"), ({"max_keys": True}, "max_keys"), ({"write_attempts": 0}, "write_attempts"),
])
def test_config_is_validated(kwargs, message):
    with pytest.raises(Q2EError, match=message):
        Q2EConfig(**kwargs)


def test_score_value_and_decay_follow_the_formula():
    c = Q2EConfig(prior_mean=0.2, prior_strength=4.0, half_life_s=10.0, scale=10.0)
    assert c.score(0.0, 0.0) == pytest.approx(0.2)  # no evidence: the prior mean
    assert c.score(3.0, 6.0) == pytest.approx((3 + 0.8) / (6 + 4))
    assert c.score(1e6, 2e6) == pytest.approx(0.5, rel=1e-5)  # evidence outweighs the prior
    assert c.decay(10.0) == pytest.approx(0.5) and c.decay(20.0) == pytest.approx(0.25) and c.decay(-5) == 1.0
    assert c.value(0.0) == MIN_VALUE and c.value(1e9) == MAX_VALUE and c.value(0.3) == pytest.approx(3.0)


@pytest.mark.parametrize("key", ["", "q_123", "Q_0123456789ABCDEF", "q2e.q_0123 OR 1=1; DROP TABLE --",
                                 "q_0123456789abcdef.x", None, 7])
def test_bad_keys_are_rejected(key):
    with pytest.raises(Q2EError, match="not a query key"):
        check_key(key)
    with pytest.raises(Q2EError, match="not a query key"):
        Q2EUpdate(key, "d1", 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs,message", [
    ({"doc_id": ""}, "doc_id"), ({"doc_id": "x" * 600}, "512 bytes"), ({"grade": -0.1}, "grade"),
    ({"grade": float("nan")}, "grade"), ({"examination": 1.5}, "examination"),
    ({"grade": 0.0, "examination": 0.0}, "says nothing"), ({"time": datetime(2024, 1, 1)}, "timezone"),
])
def test_bad_updates_are_rejected(kwargs, message):
    with pytest.raises(Q2EError, match=message):
        Q2EUpdate(**{"key": KEY, "doc_id": "d1", "grade": 1.0, **kwargs})


def test_impression_updates_weight_positions_and_skip_unshown_engagement():
    ups = impression_updates(KEY, ["a", "b", "c"], {"b": 1.0, "zz": 0.3}, lambda k: 1.0 / k, time=T0)
    assert [(u.doc_id, u.grade, u.examination) for u in ups] == [("a", 0.0, 1.0), ("b", 1.0, 0.5), ("c", 0.0, 1 / 3)]


def test_memory_names_cannot_collide_with_catalogues():
    assert memory_index("music") == "music-q2e"
    with pytest.raises(CatalogError, match="reserved"):
        check_alias("music-q2e")  # no catalogue can be called like another one's memory


def test_plans_declare_their_index(tmp_path):
    plans = load_plans()
    assert plans["q2e_memory"].target == "memory"
    assert {p.target for name, p in plans.items() if name != "q2e_memory"} == {"catalogue"}
    path = tmp_path / "odd.yaml"
    path.write_text(json.dumps({"id": "odd", "index": "elsewhere", "params": {},
                                "template": '{"timeout": "{{timeout}}", "query": {"match_all": {}}}'}))
    with pytest.raises(PlanError, match="index must be one of"):
        load_plan(path)


def test_executor_sends_each_call_to_its_index():
    executor = StrategyExecutor(None, load_plans())  # type: ignore[arg-type]  # the body is built without a node
    body = executor.msearch_body("music", [StrategyCall("bm25_popularity", 5, {"query": "love"}),
                                           StrategyCall("q2e_memory", 5, {"key": KEY}, index="music-q2e")])
    assert [line["index"] for line in body[::2]] == ["music", "music-q2e"]


def test_request_params_carry_the_memory_arms_scores():
    u = QueryUnderstander().understand("love song")
    results = [StrategyResult("q2e_memory", (Hit("a", 1, 7.5), Hit("b", 2, 0.6)), 10),
               StrategyResult("bm25_popularity", (Hit("a", 1, 12.0), Hit("c", 2, 3.0)), 10)]
    params = request_params(u, None, results, [FusedHit("a", 1.0, ())])
    assert params["q2e_scores"] == {"a": 7.5, "b": 0.6}
    assert request_params(u, None, results[1:], [])["q2e_scores"] == {}


# ---------------------------------------------------------------------------------------------
# Against the node
# ---------------------------------------------------------------------------------------------


def _catalogue_dir(root):
    rows = []
    for i in range(30):
        title = ["Love Story", "Blue in Green", "Feeling Good", "Love Song", "Home"][i % 5] + f" {i}"
        rows.append({"_id": f"t{i}", "title": title, "text": "a song", "genre": ["pop", "jazz", "soul"][i % 3],
                     "popularity": float(i)})
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "dataset.yaml").write_text(json.dumps({"name": "x", "facets": ["genre"], "popularity": "popularity"}))
    return Dataset.open(root)


@pytest.fixture(scope="module")
def catalogue(os_client, tmp_path_factory):
    """A 30-item catalogue (no vectors) with its memory, and the plans stored."""
    ds = _catalogue_dir(tmp_path_factory.mktemp("q2e"))
    alias = f"ltrr-test-q2e-{uuid.uuid4().hex[:8]}"
    report = load_dataset(os_client, ds, alias=alias, embed=False, force_merge=False)
    assert report.swapped and not report.warnings, report.warnings
    sync_plans(os_client, load_plans())
    yield alias, ds
    drop(os_client, alias, memory=True)


@pytest.fixture
def memory(os_client):
    """A memory of its own (no catalogue needed for the store itself), dropped afterwards."""
    mem = Q2EMemory(os_client, f"ltrr-test-mem-{uuid.uuid4().hex[:8]}", Q2EConfig(half_life_s=DAY, key_cache_ttl_s=0))
    mem.ensure()
    yield mem
    mem.drop()


def _source(os_client, mem: Q2EMemory, doc_id: str) -> dict:
    return os_client.get(index=mem.index, id=doc_id)["_source"]


def _feature_hits(os_client, mem: Q2EMemory, field: str, key: str) -> list[str]:
    body = {"query": {"rank_feature": {"field": f"{field}.{key}", "linear": {}}}}
    return [h["_id"] for h in os_client.search(index=mem.index, body=body)["hits"]["hits"]]


def test_ensure_creates_once_and_load_creates_the_memory(os_client, catalogue, memory):
    alias, _ = catalogue
    assert os_client.indices.exists(index=memory_index(alias))  # the load made it
    assert memory.ensure() is False  # idempotent
    mapping = os_client.indices.get_mapping(index=memory.index)[memory.index]["mappings"]
    assert mapping["properties"]["q2e"]["type"] == "rank_features" and mapping["_meta"]["ltrr"]["template"] == "q2e_memory"


def test_ensure_refuses_an_index_that_is_not_a_memory(os_client, index_name):
    os_client.indices.create(index=f"{index_name}-q2e", body={"mappings": {"properties": {"x": {"type": "keyword"}}}})
    try:
        with pytest.raises(Q2EError, match="not a Q2E memory"):
            Q2EMemory(os_client, index_name).ensure()
    finally:
        os_client.indices.delete(index=f"{index_name}-q2e")


def test_scores_follow_the_formula_with_decay_in_any_arrival_order(os_client, memory):
    cfg = memory.config
    rng = np.random.default_rng(3)
    updates = [Q2EUpdate(KEY, "a", float(rng.choice([0.0, 0.3, 1.0])), float(rng.uniform(0.2, 1.0)),
                         T0 + float(rng.uniform(0, 3 * DAY))) for _ in range(40)]
    # Item "a" gets the evidence in time order, in 4 batches; item "b" the same evidence
    # shuffled (late arrivals), in 3 batches: the sums must agree.
    ordered = sorted(updates, key=lambda u: float(u.time))  # type: ignore[arg-type]
    for i in range(0, 40, 10):
        memory.record(ordered[i:i + 10], now=T0 + 3 * DAY)
    shuffled = [Q2EUpdate(KEY, "b", u.grade, u.examination, u.time) for u in rng.permutation(np.array(updates, dtype=object))]
    for i in range(0, 40, 14):
        memory.record(shuffled[i:i + 14], now=T0 + 3 * DAY, refresh=True)
    c, n, t = reference_sums(updates, cfg.half_life_s)
    for doc_id in ("a", "b"):
        counts = _source(os_client, memory, doc_id)["counts"][KEY]
        assert counts["c"] == pytest.approx(c, rel=1e-9) and counts["n"] == pytest.approx(n, rel=1e-9)
        assert counts["t"] == pytest.approx(t)
    f = cfg.decay(T0 + 3 * DAY - t)
    expected = cfg.score(c * f, n * f)
    actual, predicted = memory.entries(KEY)["a"]
    assert actual == pytest.approx(expected, rel=1e-9) and predicted is None
    # Rescoring later decays the evidence: the score moves back toward the prior mean.
    assert memory.rescore(now=T0 + 30 * DAY, refresh=True) == 2
    later, _ = memory.entries(KEY)["a"]
    f_late = cfg.decay(T0 + 30 * DAY - t)
    assert later == pytest.approx(cfg.score(c * f_late, n * f_late), rel=1e-9)
    assert abs(later - cfg.prior_mean) < abs(expected - cfg.prior_mean)


def test_engagement_ranks_items_and_impressions_alone_lower_the_score(os_client, memory):
    memory.record([Q2EUpdate(KEY, "played", 1.0, 1.0, T0), Q2EUpdate(KEY, "played", 1.0, 1.0, T0),
                   Q2EUpdate(KEY, "clicked", 0.3, 1.0, T0), Q2EUpdate(KEY, "ignored", 0.0, 1.0, T0),
                   Q2EUpdate(KEY, "ignored", 0.0, 1.0, T0)], now=T0, refresh=True)
    entries = memory.entries(KEY)
    assert list(entries) == ["played", "clicked", "ignored"]  # the rank_feature order is the score order
    assert entries["ignored"][0] < memory.config.prior_mean < entries["played"][0]
    assert _feature_hits(os_client, memory, "q2e", KEY) == ["played", "clicked", "ignored"]


def test_predictions_are_replaced_by_evidence(os_client, memory):
    assert memory.predict(KEY, {"a": 0.6, "b": 0.4}, source="ltr-v1", now=T0, refresh=True) == 2
    assert memory.entries(KEY) == {"a": (None, 0.6), "b": (None, 0.4)}
    assert _feature_hits(os_client, memory, "q2e_pred", KEY) == ["a", "b"]
    assert _source(os_client, memory, "a")["predicted"][KEY] == {"p": 0.6, "t": T0, "source": "ltr-v1"}
    assert "counts" not in _source(os_client, memory, "a") or not _source(os_client, memory, "a")["counts"]
    # Engagement with "a": its prediction goes, from the source and from the index.
    memory.record([Q2EUpdate(KEY, "a", 1.0, 1.0, T0 + 60)], now=T0 + 60, refresh=True)
    entries = memory.entries(KEY)
    assert entries["a"][1] is None and entries["a"][0] is not None and entries["b"] == (None, 0.4)
    assert _feature_hits(os_client, memory, "q2e_pred", KEY) == ["b"]
    assert _feature_hits(os_client, memory, "q2e", KEY) == ["a"]
    src = _source(os_client, memory, "a")
    assert KEY not in src["q2e_pred"] and KEY not in src["predicted"]
    # A new prediction never overrides evidence.
    memory.predict(KEY, {"a": 0.99}, now=T0 + 120, refresh=True)
    assert memory.entries(KEY)["a"][1] is None
    with pytest.raises(Q2EError, match="predicted score"):
        memory.predict(KEY, {"c": 1.5})
    with pytest.raises(Q2EError, match="not a query key"):
        memory.predict("q_bad", {"c": 0.5})


def test_min_exposure_keeps_predictions_until_there_is_enough_evidence(os_client):
    mem = Q2EMemory(os_client, f"ltrr-test-mem-{uuid.uuid4().hex[:8]}", Q2EConfig(min_exposure=1.5, key_cache_ttl_s=0))
    try:
        mem.predict(KEY, {"a": 0.5}, now=T0)
        mem.record([Q2EUpdate(KEY, "a", 0.0, 1.0, T0)], now=T0, refresh=True)
        assert mem.entries(KEY) == {"a": (None, 0.5)}  # n = 1 < 1.5: no actual score yet
        mem.record([Q2EUpdate(KEY, "a", 1.0, 1.0, T0)], now=T0, refresh=True)
        actual, predicted = mem.entries(KEY)["a"]
        assert predicted is None and actual == pytest.approx(mem.config.score(1.0, 2.0))
    finally:
        mem.drop()


def test_keys_per_item_are_capped_predictions_first(os_client):
    mem = Q2EMemory(os_client, f"ltrr-test-mem-{uuid.uuid4().hex[:8]}", Q2EConfig(max_keys=3, key_cache_ttl_s=0))
    keys = [query_key(f"query {i}") for i in range(5)]
    try:
        mem.predict(keys[0], {"a": 0.9}, now=T0)
        mem.predict(keys[1], {"a": 0.2}, now=T0)
        mem.record([Q2EUpdate(keys[2], "a", 1.0, 1.0, T0), Q2EUpdate(keys[3], "a", 0.0, 1.0, T0)], now=T0, refresh=True)
        src = os_client.get(index=mem.index, id="a")["_source"]
        assert set(src["counts"]) == {keys[2], keys[3]} and set(src["predicted"]) == {keys[0]}  # lowest p̂ went
        mem.record([Q2EUpdate(keys[4], "a", 0.3, 1.0, T0)], now=T0, refresh=True)
        src = os_client.get(index=mem.index, id="a")["_source"]
        assert set(src["counts"]) == {keys[2], keys[3], keys[4]} and not src["predicted"]
        mem.record([Q2EUpdate(keys[0], "a", 1.0, 1.0, T0)], now=T0, refresh=True)
        src = os_client.get(index=mem.index, id="a")["_source"]
        assert set(src["counts"]) == {keys[0], keys[2], keys[4]}  # the never-engaged key had the lowest score
        assert set(src["q2e"]) == set(src["counts"])
    finally:
        mem.drop()


def test_concurrent_writers_lose_nothing(os_client, memory):
    writers, batches = 4, 15
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            barrier.wait()
            for b in range(batches):  # every batch touches the same three items: the documents race
                memory.record([Q2EUpdate(KEY, d, 1.0 if (w + b) % 2 else 0.0, 1.0, T0) for d in ("a", "b", "c")]
                              + [Q2EUpdate(OTHER, "a", 0.3, 0.5, T0)], now=T0)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    memory.refresh()
    grades = sum(1.0 for w in range(writers) for b in range(batches) if (w + b) % 2)
    for d in ("a", "b", "c"):
        counts = _source(os_client, memory, d)["counts"][KEY]
        assert counts["n"] == writers * batches and counts["c"] == pytest.approx(grades)
    other = _source(os_client, memory, "a")["counts"][OTHER]
    assert other["n"] == pytest.approx(0.5 * writers * batches) and other["c"] == pytest.approx(0.3 * writers * batches)


def test_a_retried_request_counts_once(os_client, memory):
    class SendsTwice:
        """A client whose bulk requests arrive twice, as after a timeout and a client retry."""

        def __init__(self, client):
            self._client = client

        def bulk(self, **kwargs):
            self._client.bulk(**kwargs)
            return self._client.bulk(**kwargs)

        def __getattr__(self, name):
            return getattr(self._client, name)

    twice = Q2EMemory(SendsTwice(os_client), memory.catalogue, memory.config)  # type: ignore[arg-type]
    twice.record([Q2EUpdate(KEY, "a", 1.0, 1.0, T0)], now=T0, refresh=True)
    assert _source(os_client, memory, "a")["counts"][KEY]["n"] == 1.0


def test_partial_update_to_null_drops_a_feature_only_from_the_index(os_client, index_name):
    """The node behaviour the scripts work around (OpenSearch 3.5): a null feature value is
    ignored by the mapper (the feature leaves the index) but stays in the source; merging an
    empty map changes nothing."""
    os_client.indices.create(index=index_name, body={"mappings": {"properties": {"q2e": {"type": "rank_features"}}}})
    os_client.index(index=index_name, id="a", body={"q2e": {"q_a": 2.0, "q_b": 3.0}}, refresh=True)
    os_client.update(index=index_name, id="a", body={"doc": {"q2e": {"q_a": None}}}, refresh=True)
    found = os_client.search(index=index_name, body={"query": {"rank_feature": {"field": "q2e.q_a"}}})
    assert found["hits"]["hits"] == []
    assert os_client.get(index=index_name, id="a")["_source"]["q2e"] == {"q_a": None, "q_b": 3.0}
    noop = os_client.update(index=index_name, id="a", body={"doc": {"q2e": {}}}, refresh=True)
    assert noop["result"] == "noop"


def test_the_arm_finds_engaged_items_for_a_repeated_query(os_client, catalogue):
    alias, _ = catalogue
    mem = Q2EMemory(os_client, alias)
    key = query_key("Love   Song")
    assert key == query_key("love song")
    pipe = SearchPipeline(os_client, alias, load_plans(), encoder=None)
    first = pipe.search("love song", strategies=["q2e_memory", "bm25_popularity"])
    q2e = {r.strategy: r for r in first.strategy_results}["q2e_memory"]
    assert q2e.status is ArmStatus.NOT_APPLICABLE and "no entries" in (q2e.detail or "")
    # Users searched "love song" and played t18 (shown 3rd), clicked t3 (1st), ignored t8 (2nd).
    mem.record(impression_updates(key, ["t3", "t8", "t18"], {"t18": 1.0, "t3": 0.3}, lambda k: 1.0 / k, time=T0),
               now=T0, refresh=True)
    again = pipe.search("LOVE song", strategies=["q2e_memory", "bm25_popularity"])
    q2e = {r.strategy: r for r in again.strategy_results}["q2e_memory"]
    assert q2e.status is ArmStatus.OK and [h.doc_id for h in q2e.hits] == ["t18", "t3", "t8"]
    assert "q2e_memory" in next(h for h in again.hits if h.doc_id == "t18").strategies
    # Filters cannot be evaluated in the memory: the arm does not apply (the others run).
    filtered = pipe.search("love song", strategies=["q2e_memory", "bm25_popularity"], filters={"genre": "pop"})
    by = {r.strategy: r for r in filtered.strategy_results}
    assert by["q2e_memory"].status is ArmStatus.NOT_APPLICABLE and "filters" in (by["q2e_memory"].detail or "")
    assert by["bm25_popularity"].ok
    # The bandit's context feature.
    assert mem.has_key(key) and not mem.has_key(query_key("never searched"))


def test_the_arm_is_not_applicable_without_a_memory_index(os_client, catalogue):
    alias, _ = catalogue
    pipe = SearchPipeline(os_client, alias, load_plans(), encoder=None,
                          memory=Q2EMemory(os_client, f"ltrr-test-none-{uuid.uuid4().hex[:8]}"))
    resp = pipe.search("love song", strategies=["q2e_memory", "bm25_popularity"])
    by = {r.strategy: r for r in resp.strategy_results}
    assert by["q2e_memory"].status is ArmStatus.NOT_APPLICABLE and "no Q2E memory index" in (by["q2e_memory"].detail or "")
    assert not resp.errors and by["bm25_popularity"].hits


def test_the_memory_survives_a_reload_and_a_drop_unless_asked(os_client, tmp_path):
    ds = _catalogue_dir(tmp_path / "cat")
    alias = f"ltrr-test-q2e-reload-{uuid.uuid4().hex[:8]}"
    try:
        load_dataset(os_client, ds, alias=alias, embed=False, force_merge=False)
        mem = Q2EMemory(os_client, alias)
        mem.record([Q2EUpdate(KEY, "t3", 1.0, 1.0, T0)], now=T0, refresh=True)
        before = mem.entries(KEY)
        again = load_dataset(os_client, ds, alias=alias, embed=False, force_merge=False)
        assert again.index.endswith("-v2") and mem.entries(KEY) == before != {}
        assert memory_index(alias) not in drop(os_client, alias)  # versions gone, memory kept
        assert mem.entries(KEY) == before
        load_dataset(os_client, ds, alias=alias, embed=False, force_merge=False)  # a later load finds it again
        resp = SearchPipeline(os_client, alias, load_plans(), encoder=None).search("love song", strategies=["q2e_memory"])
        assert [h.doc_id for h in resp.hits] == ["t3"]
        assert memory_index(alias) in drop(os_client, alias, memory=True)
        assert not mem.exists()
    finally:
        drop(os_client, alias, memory=True)


def test_an_empty_memory_goes_with_its_catalogue(os_client, tmp_path):
    alias = f"ltrr-test-q2e-empty-{uuid.uuid4().hex[:8]}"
    load_dataset(os_client, _catalogue_dir(tmp_path / "cat"), alias=alias, embed=False, force_merge=False)
    assert Q2EMemory(os_client, alias).exists()
    assert memory_index(alias) in drop(os_client, alias)  # it held nothing worth keeping
    with pytest.raises(CatalogError, match="whole catalogue"):
        drop(os_client, alias, 1, memory=True)


def test_reads_and_writes_reject_bad_input(memory):
    with pytest.raises(Q2EError, match="not a query key"):
        memory.entries("q_nope")
    with pytest.raises(Q2EError, match="not a query key"):
        memory.has_key("../_search")
    with pytest.raises(Q2EError, match="Q2EUpdate"):
        memory.record([{"key": KEY, "doc_id": "a"}])  # type: ignore[list-item]
    with pytest.raises(Q2EError, match="refresh"):
        memory.record([Q2EUpdate(KEY, "a", 1.0)], refresh="sometimes")
    assert memory.record([]) == 0 and memory.entries(KEY) == {}
