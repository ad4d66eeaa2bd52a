"""Shared bandit statistics: processes merge their deltas with optimistic concurrency and lose nothing."""

from __future__ import annotations

import multiprocessing
import threading
import uuid

import numpy as np
import pytest
from opensearchpy.exceptions import ConflictError, ConnectionTimeout

from orchestrator.bandit.context import CONTEXT_VERSION
from orchestrator.bandit.state import (
    BackgroundSync,
    SharedStateError,
    SharedStatistics,
    StoredStatistics,
    policy_key,
)
from orchestrator.bandit.stats import PolicyStatistics
from orchestrator.catalog import drop
from orchestrator.client import make_client
from orchestrator.config import ConnectionSettings

DIM = 12
LEVELS = (10, 20, 50)
ARMS = ("bm25_popularity", "knn", "fuzzy", "q2e_memory", "structured")
PROCESSES, UPDATES = 3, 1000


def updates(seed: int, n: int):
    """n random observations: (arm, context x with a bias term, reward, engaged within-arm ranks)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.random(DIM)
        x[0] = 1.0
        ranks = [int(r) for r in rng.integers(1, 80, size=rng.integers(0, 3))]
        yield str(rng.choice(ARMS)), x, float(rng.random() < 0.3), ranks


def apply(stats: PolicyStatistics, arm: str, x: np.ndarray, reward: float, ranks: list[int]) -> None:
    stats.arm(arm).add(x, reward, [stats.rank_bucket(r) for r in ranks])


def assert_same(a: PolicyStatistics, b: PolicyStatistics) -> None:
    assert (a.dim, a.levels) == (b.dim, b.levels) and set(a.arms) == set(b.arms)
    for name in a.arms:
        x, y = a.arms[name], b.arms[name]
        assert x.pulls == y.pulls, name
        assert np.allclose(x.gram, y.gram) and np.allclose(x.moment, y.moment), name
        assert np.allclose(x.rank_counts, y.rank_counts) and np.isclose(x.reward_sum, y.reward_sum), name


def _worker(url: str, index: str, key: str, seed: int, barrier, results) -> None:
    """One orchestrator process: learns from its own stream and pushes a delta every ~50 updates."""
    try:
        shared = SharedStatistics(make_client(ConnectionSettings(url=url), retries=False), index=index, seed=seed)
        rng = np.random.default_rng(seed + 1000)
        delta = PolicyStatistics(DIM, LEVELS)
        next_push = int(rng.integers(40, 61))
        barrier.wait(60)  # all three start pushing together, so their writes race
        for i, update in enumerate(updates(seed, UPDATES), start=1):
            apply(delta, *update)
            if i == next_push or i == UPDATES:
                shared.push(key, delta)
                delta = delta.empty_like()
                next_push = i + int(rng.integers(40, 61))
        results.put((seed, shared.conflicts, shared.pushes, None))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        results.put((seed, 0, 0, repr(e)))


@pytest.fixture
def state_index(os_client):
    name = f"ltrr-test-bandit-{uuid.uuid4().hex[:8]}"
    yield name
    drop(os_client, name)


def test_three_processes_merge_exactly_what_one_process_learns(os_client, opensearch_url, state_index):
    key = policy_key("music", "linucb")
    SharedStatistics(os_client, index=state_index).ensure()
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    seeds = [11, 22, 33]
    procs = [ctx.Process(target=_worker, args=(opensearch_url, state_index, key, s, barrier, results)) for s in seeds]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    errors = [err for _, _, _, err in outcomes if err]
    assert not errors, errors
    conflicts = sum(c for _, c, _, _ in outcomes)
    pushes = sum(n for _, _, n, _ in outcomes)
    print(f"\n{PROCESSES} processes x {UPDATES} updates: {pushes} pushes, {conflicts} conflicts retried")
    assert conflicts > 0, "the processes never raced: the retry path was not exercised"

    single = PolicyStatistics(DIM, LEVELS)
    for s in seeds:
        for update in updates(s, UPDATES):
            apply(single, *update)
    restarted = SharedStatistics(make_client(ConnectionSettings(url=opensearch_url)), index=state_index)  # a restart
    stored = restarted.read(key)
    assert stored is not None and stored.snapshot == pushes and stored.feature_schema == CONTEXT_VERSION
    assert stored.statistics.total_pulls == PROCESSES * UPDATES
    assert_same(stored.statistics, single)


def test_push_creates_merges_and_checks_shapes(os_client, state_index):
    shared = SharedStatistics(os_client, index=state_index)
    key = policy_key("music", "ts")
    assert shared.pull(key) is None
    a, b = PolicyStatistics(DIM, LEVELS), PolicyStatistics(DIM, LEVELS)
    batches = list(updates(5, 40))
    for i, u in enumerate(batches):
        apply(a if i < 25 else b, *u)
    first = shared.push(key, a)
    assert_same(first, a)
    merged = shared.push(key, b)
    expected = a.copy()
    expected.merge(b)
    assert_same(merged, expected)
    assert_same(shared.pull(key), expected)  # type: ignore[arg-type]
    assert shared.read(key).snapshot == 2  # type: ignore[union-attr]
    assert_same(shared.push(key, PolicyStatistics(DIM, LEVELS)), expected)  # an empty delta writes nothing
    assert shared.read(key).snapshot == 2  # type: ignore[union-attr]
    with pytest.raises(SharedStateError, match="cannot merge"):
        shared.push(key, _one(PolicyStatistics(DIM + 1, LEVELS)))
    other_schema = SharedStatistics(os_client, index=state_index, context_version="ctx-v0")
    with pytest.raises(SharedStateError, match="context schema"):
        other_schema.push(key, _one(PolicyStatistics(DIM, LEVELS)))
    with pytest.raises(SharedStateError, match="PolicyStatistics"):
        shared.push(key, {"dim": DIM})  # type: ignore[arg-type]
    with pytest.raises(SharedStateError, match="policy key"):
        shared.push("", a)
    assert shared.delete(key) and shared.pull(key) is None


def _one(stats: PolicyStatistics) -> PolicyStatistics:
    x = np.ones(stats.dim)
    stats.arm("knn").add(x, 1.0)
    return stats


class _Flaky:
    """A client whose index() misbehaves: ``mode`` "conflict" always answers 409; "lost" writes
    and then raises a timeout (the answer was lost) the first ``times`` times."""

    def __init__(self, client, mode: str, times: int = 1_000_000):
        self._client, self.mode, self.times = client, mode, times

    def index(self, **kwargs):
        if self.times <= 0:
            return self._client.index(**kwargs)
        self.times -= 1
        if self.mode == "conflict":
            raise ConflictError(409, "version_conflict_engine_exception", {})
        self._client.index(**kwargs)
        raise ConnectionTimeout("TIMEOUT", "read timed out", None)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_exhausted_retries_are_a_clear_error(os_client, state_index):
    shared = SharedStatistics(_Flaky(os_client, "conflict"), index=state_index, max_attempts=5, backoff_s=0.001)  # type: ignore[arg-type]
    with pytest.raises(SharedStateError, match="after 5 attempts.*conflict.*not merged"):
        shared.push("k", _one(PolicyStatistics(DIM, LEVELS)))
    assert shared.conflicts == 5


def test_a_lost_answer_does_not_merge_twice(os_client, state_index):
    key = "music:eps"
    shared = SharedStatistics(_Flaky(os_client, "lost", times=2), index=state_index, backoff_s=0.001)  # type: ignore[arg-type]
    delta = _one(PolicyStatistics(DIM, LEVELS))
    shared.push(key, delta)  # create: written, answer lost -> re-read finds its push id
    shared.push(key, delta)  # update: the same
    stored = SharedStatistics(os_client, index=state_index).read(key)
    assert stored is not None and stored.statistics.total_pulls == 2 and stored.snapshot == 2


class FakePolicy:
    """take_delta / load_statistics as orchestrator.bandit.policies implements them."""

    def __init__(self):
        self.base = PolicyStatistics(DIM, LEVELS)
        self.delta = PolicyStatistics(DIM, LEVELS)
        self.snapshot: str | None = None
        self.lock = threading.Lock()

    def learn(self, update) -> None:
        with self.lock:
            apply(self.delta, *update)

    def take_delta(self) -> PolicyStatistics:
        delta, self.delta = self.delta, self.delta.empty_like()
        return delta

    def load_statistics(self, stats: PolicyStatistics, snapshot: str | None = None) -> None:
        self.base, self.snapshot = stats.copy(), snapshot

    @property
    def statistics(self) -> PolicyStatistics:
        out = self.base.copy()
        out.merge(self.delta)
        return out


def test_sync_loads_merged_statistics_and_keeps_a_failed_delta(os_client, state_index):
    key = policy_key("music", "linucb")
    mine, theirs = FakePolicy(), FakePolicy()
    stream = list(updates(9, 60))
    for u in stream[:30]:
        theirs.learn(u)
    SharedStatistics(os_client, index=state_index).sync(key, theirs)
    for u in stream[30:50]:
        mine.learn(u)
    # The write fails (answers 409 forever): the delta stays queued, nothing is lost.
    failing = SharedStatistics(_Flaky(os_client, "conflict"), index=state_index, max_attempts=2, backoff_s=0.001)  # type: ignore[arg-type]
    with pytest.raises(SharedStateError):
        failing.sync(key, mine, lock=mine.lock)
    assert failing.unsent(key) == 1
    for u in stream[50:]:
        mine.learn(u)
    failing.client = os_client  # the node is healthy again
    stored = failing.sync(key, mine, lock=mine.lock)
    assert isinstance(stored, StoredStatistics) and failing.unsent(key) == 0
    expected = PolicyStatistics(DIM, LEVELS)
    for u in stream:
        apply(expected, *u)
    assert_same(mine.statistics, expected)
    assert mine.snapshot == stored.snapshot_id == f"{key}@3"
    # A restart: a new process starts from what was learned.
    fresh = FakePolicy()
    SharedStatistics(make_client(), index=state_index).sync(key, fresh)
    assert_same(fresh.statistics, expected)


def test_background_sync_flushes_on_close(os_client, state_index):
    key = policy_key("music", "bg")
    policy = FakePolicy()
    stream = list(updates(4, 200))
    shared = SharedStatistics(os_client, index=state_index)
    with BackgroundSync(shared, key, policy, interval_s=0.02, lock=policy.lock) as syncer:
        for u in stream:
            policy.learn(u)
    assert syncer.failures == 0 and syncer.syncs >= 1
    expected = PolicyStatistics(DIM, LEVELS)
    for u in stream:
        apply(expected, *u)
    assert_same(shared.pull(key), expected)  # type: ignore[arg-type]
    assert_same(policy.statistics, expected)
    with pytest.raises(SharedStateError, match="interval_s"):
        BackgroundSync(shared, key, policy, interval_s=0)


def test_config_is_validated(os_client):
    with pytest.raises(SharedStateError, match="max_attempts"):
        SharedStatistics(os_client, max_attempts=0)
    with pytest.raises(SharedStateError, match="backoff"):
        SharedStatistics(os_client, backoff_s=1.0, max_backoff_s=0.5)
