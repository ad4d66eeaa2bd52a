"""Fusion: RRF and weighted score fusion, normalisations, validation, deterministic ordering."""

from __future__ import annotations

import math
import random

import pytest

from orchestrator.datatypes import ArmStatus
from orchestrator.fusion import (
    FUSION_METHODS,
    NORMALIZATIONS,
    FusedHit,
    Hit,
    Provenance,
    StrategyResult,
    fuse,
    reciprocal_rank_fusion,
    union,
    weighted_score_fusion,
)


def result(strategy: str, *hits: tuple[str, float], error: str | None = None) -> StrategyResult:
    """A strategy result whose hits are ranked 1, 2, ... in the given order."""
    return StrategyResult(
        strategy=strategy,
        hits=tuple(Hit(doc_id, rank, score) for rank, (doc_id, score) in enumerate(hits, start=1)),
        budget=100,
        took_ms=1.0,
        status=ArmStatus.OK if error is None else ArmStatus.FAILED,
        detail=error,
    )


def ids(fused: list[FusedHit]) -> list[str]:
    return [hit.doc_id for hit in fused]


def scores(fused: list[FusedHit]) -> dict[str, float]:
    return {hit.doc_id: hit.score for hit in fused}


BM25 = result("bm25", ("a", 12.0), ("b", 9.0), ("c", 3.0))
KNN = result("knn", ("b", 0.9), ("d", 0.8))


# -- RRF --------------------------------------------------------------------------------------


def test_rrf_matches_hand_computed_example():
    fused = reciprocal_rank_fusion([BM25, KNN])
    assert ids(fused) == ["b", "a", "d", "c"]
    expected = {"a": 1 / 61, "b": 1 / 62 + 1 / 61, "c": 1 / 63, "d": 1 / 62}
    assert scores(fused) == pytest.approx(expected, rel=1e-12)


def test_rrf_k_changes_the_damping():
    fused = reciprocal_rank_fusion([BM25, KNN], k=1.0)
    assert scores(fused) == pytest.approx({"a": 1 / 2, "b": 1 / 3 + 1 / 2, "c": 1 / 4, "d": 1 / 3})


def test_rrf_weights_scale_each_strategy():
    fused = reciprocal_rank_fusion([BM25, KNN], weights={"bm25": 2.0, "knn": 0.5})
    expected = {"a": 2 / 61, "b": 2 / 62 + 0.5 / 61, "c": 2 / 63, "d": 0.5 / 62}
    assert scores(fused) == pytest.approx(expected)
    assert ids(fused) == ["b", "a", "c", "d"]


def test_strategies_missing_from_weights_default_to_one():
    assert scores(reciprocal_rank_fusion([BM25, KNN], weights={"bm25": 1.0})) == scores(reciprocal_rank_fusion([BM25, KNN]))


def test_zero_weight_keeps_documents_with_zero_score_and_provenance():
    fused = reciprocal_rank_fusion([BM25, KNN], weights={"knn": 0.0})
    assert ids(fused) == ["a", "b", "c", "d"]
    assert fused[-1].score == 0.0 and fused[-1].strategies == ("knn",)


def test_provenance_lists_every_strategy_in_input_order():
    fused = {hit.doc_id: hit for hit in reciprocal_rank_fusion([BM25, KNN])}
    assert fused["b"].provenance == (Provenance("bm25", 2, 9.0), Provenance("knn", 1, 0.9))
    assert fused["b"].strategies == ("bm25", "knn")
    reversed_input = {hit.doc_id: hit for hit in reciprocal_rank_fusion([KNN, BM25])}
    assert reversed_input["b"].strategies == ("knn", "bm25")


def test_limit_cuts_after_sorting():
    assert ids(reciprocal_rank_fusion([BM25, KNN], limit=2)) == ["b", "a"]
    assert reciprocal_rank_fusion([BM25, KNN], limit=0) == []
    assert len(reciprocal_rank_fusion([BM25, KNN], limit=100)) == 4


@pytest.mark.parametrize("k", [0, -1.0, math.nan, math.inf, "x", None])
def test_rrf_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k must"):
        reciprocal_rank_fusion([BM25], k=k)


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"bm25": -1.0}, ">= 0"),
        ({"bm25": math.nan}, "finite"),
        ({"bm25": math.inf}, "finite"),
        ({"bm25": "heavy"}, "number"),
        ({"bm25": None}, "number"),
        ({"bm25": 1.0, "sparse": 1.0}, "unknown strategies \\['sparse'\\]"),
        ([("bm25", 1.0)], "mapping"),
    ],
)
def test_bad_weights_are_rejected_by_both_methods(weights, message):
    for method in FUSION_METHODS:
        with pytest.raises(ValueError, match=message):
            fuse([BM25, KNN], method, weights=weights)


@pytest.mark.parametrize("limit", [-1, 1.5, "3", True])
def test_bad_limit_is_rejected(limit):
    with pytest.raises(ValueError, match="limit"):
        reciprocal_rank_fusion([BM25], limit=limit)


def test_duplicate_strategy_names_are_rejected():
    with pytest.raises(ValueError, match="more than once"):
        reciprocal_rank_fusion([BM25, BM25])
    with pytest.raises(ValueError, match="more than once"):
        union([BM25, BM25])


# -- failed strategies, duplicates, odd input ---------------------------------------------


def test_failed_strategy_contributes_nothing_even_with_hits():
    failed = result("knn", ("z", 1.0), ("b", 1.0), error="timeout after 50 ms")
    for method in FUSION_METHODS:
        fused = fuse([BM25, failed], method)
        assert ids(fused) == ["a", "b", "c"]
        assert all(hit.strategies == ("bm25",) for hit in fused)
    assert "z" not in union([BM25, failed])
    # Weights may still name the failed strategy: the bandit chose it before it failed.
    assert ids(reciprocal_rank_fusion([BM25, failed], weights={"knn": 3.0})) == ["a", "b", "c"]


def test_only_failed_or_no_strategies_give_an_empty_list():
    assert reciprocal_rank_fusion([]) == []
    assert weighted_score_fusion([result("bm25", error="boom")]) == []
    assert union([]) == {}


def test_duplicate_ids_inside_one_strategy_keep_the_best_rank():
    duplicated = StrategyResult("bm25", (Hit("a", 3, 1.0), Hit("b", 2, 2.0), Hit("a", 1, 5.0)), budget=3)
    fused = {hit.doc_id: hit for hit in reciprocal_rank_fusion([duplicated])}
    assert fused["a"].provenance == (Provenance("bm25", 1, 5.0),)
    assert fused["a"].score == pytest.approx(1 / 61)  # counted once, at its best rank
    assert union([duplicated])["a"] == (Provenance("bm25", 1, 5.0),)


def test_duplicates_at_the_same_rank_keep_the_higher_score_whatever_their_order():
    first = StrategyResult("s", (Hit("a", 1, 1.0), Hit("a", 1, 2.0)), budget=2)
    second = StrategyResult("s", (Hit("a", 1, 2.0), Hit("a", 1, 1.0)), budget=2)
    assert union([first]) == union([second]) == {"a": (Provenance("s", 1, 2.0),)}


def test_ranks_below_one_are_read_as_one():
    odd = StrategyResult("s", (Hit("a", 0, 1.0), Hit("b", -5, 1.0)), budget=2)
    fused = reciprocal_rank_fusion([odd], k=0.5)
    assert [hit.score for hit in fused] == pytest.approx([1 / 1.5, 1 / 1.5])
    assert all(math.isfinite(hit.score) for hit in fused)


# -- weighted score fusion ------------------------------------------------------------------


def test_minmax_weighted_fusion_matches_hand_computed_example():
    # bm25: a=(12-3)/9=1, b=(9-3)/9=2/3, c=0; knn: b=(0.9-0.8)/0.1=1, d=0
    fused = weighted_score_fusion([BM25, KNN], weights={"bm25": 1.0, "knn": 2.0})
    assert scores(fused) == pytest.approx({"a": 1.0, "b": 2 / 3 + 2.0, "c": 0.0, "d": 0.0})
    # c and d tie on 0: c has best rank 3, d best rank 2 -> d first.
    assert ids(fused) == ["b", "a", "d", "c"]


def test_minmax_single_hit_and_all_equal_scores_give_one():
    single = result("s", ("a", 42.0))
    flat = result("t", ("b", 7.0), ("c", 7.0))
    assert scores(weighted_score_fusion([single, flat])) == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_non_finite_scores_normalise_to_zero_and_do_not_distort_the_others():
    odd = StrategyResult("s", (Hit("a", 1, math.inf), Hit("b", 2, 4.0), Hit("c", 3, math.nan), Hit("d", 4, 2.0)), budget=4)
    for normalization in NORMALIZATIONS:
        fused = scores(weighted_score_fusion([odd], normalization=normalization))
        assert fused["a"] == fused["c"] == 0.0
        assert all(math.isfinite(value) for value in fused.values())
    assert scores(weighted_score_fusion([odd]))["b"] == 1.0


def test_zscore_normalisation():
    s = result("s", ("a", 3.0), ("b", 1.0))  # mean 2, population std 1
    assert scores(weighted_score_fusion([s], normalization="zscore")) == pytest.approx({"a": 1.0, "b": -1.0})
    flat = result("t", ("a", 5.0), ("b", 5.0))
    assert scores(weighted_score_fusion([flat], normalization="zscore")) == {"a": 0.0, "b": 0.0}


def test_max_normalisation_and_its_non_positive_fallback():
    s = result("s", ("a", 8.0), ("b", 2.0), ("c", -4.0))
    assert scores(weighted_score_fusion([s], normalization="max")) == pytest.approx({"a": 1.0, "b": 0.25, "c": -0.5})
    negative = result("n", ("a", -1.0), ("b", -3.0))  # max <= 0: min-max instead
    assert scores(weighted_score_fusion([negative], normalization="max")) == {"a": 1.0, "b": 0.0}
    zeros = result("z", ("a", 0.0), ("b", 0.0))
    assert scores(weighted_score_fusion([zeros], normalization="max")) == {"a": 1.0, "b": 1.0}


def test_none_normalisation_sums_raw_scores():
    fused = weighted_score_fusion([BM25, KNN], normalization="none", weights={"knn": 10.0})
    assert scores(fused) == pytest.approx({"a": 12.0, "b": 9.0 + 9.0, "c": 3.0, "d": 8.0})


def test_unknown_normalisation_is_rejected():
    with pytest.raises(ValueError, match="unknown normalization 'softmax'"):
        weighted_score_fusion([BM25], normalization="softmax")


# -- dispatcher -------------------------------------------------------------------------------


def test_fuse_dispatches_and_forwards_arguments():
    assert fuse([BM25, KNN]) == reciprocal_rank_fusion([BM25, KNN])
    assert fuse([BM25, KNN], "rrf", k=10, limit=2) == reciprocal_rank_fusion([BM25, KNN], k=10, limit=2)
    assert fuse([BM25, KNN], "weighted", normalization="max") == weighted_score_fusion([BM25, KNN], normalization="max")


@pytest.mark.parametrize("method", ["RRF", "borda", "", None])
def test_fuse_rejects_unknown_methods_clearly(method):
    with pytest.raises(ValueError, match="unknown fusion method .* choose one of \\['rrf', 'weighted'\\]"):
        fuse([BM25], method)


# -- deterministic ordering -------------------------------------------------------------------


def test_ties_break_on_best_rank_then_strategy_count_then_doc_id():
    # All four documents get a fused score of exactly 1.0 (raw scores, no normalisation).
    a = StrategyResult("a", (Hit("p", 2, 1.0),), budget=2)  # best rank 2
    b = StrategyResult("b", (Hit("r", 1, 1.0), Hit("t", 1, 0.5)), budget=2)
    c = StrategyResult("c", (Hit("t", 1, 0.5), Hit("s", 1, 1.0)), budget=2)
    fused = weighted_score_fusion([a, b, c], normalization="none")
    assert {hit.score for hit in fused} == {1.0}
    # t: rank 1 in two strategies; r and s: rank 1 in one (r < s by id); p: best rank 2.
    assert ids(fused) == ["t", "r", "s", "p"]


def test_shuffled_input_gives_identical_output():
    rng = random.Random(7)
    pool = [f"doc{i:03d}" for i in range(40)]
    results = []
    for s in range(6):
        docs = rng.sample(pool, 25)
        hits = tuple(Hit(doc, rng.randint(1, 10), round(rng.uniform(-2, 9), 1)) for doc in docs)  # rank and score ties
        results.append(StrategyResult(f"s{s}", hits, budget=25))
    results.append(result("broken", ("doc000", 1.0), error="HTTP 500"))
    weights = {f"s{s}": rng.choice([0.3, 0.7, 1.1]) for s in range(6)}

    def canonical(fused):
        return [(h.doc_id, h.score, sorted(h.provenance, key=lambda p: p.strategy)) for h in fused]

    for method, kwargs in [("rrf", {}), ("weighted", {"normalization": "minmax"}), ("weighted", {"normalization": "zscore"})]:
        expected = canonical(fuse(results, method, weights=weights, **kwargs))
        for _ in range(20):
            shuffled = [StrategyResult(r.strategy, tuple(rng.sample(r.hits, len(r.hits))), r.budget,
                                       status=r.status, detail=r.detail) for r in results]
            rng.shuffle(shuffled)
            assert canonical(fuse(shuffled, method, weights=weights, **kwargs)) == expected  # exact float equality


def test_union_keeps_first_seen_order_and_input_strategy_order():
    merged = union([KNN, BM25])
    assert list(merged) == ["b", "d", "a", "c"]
    assert merged["b"] == (Provenance("knn", 1, 0.9), Provenance("bm25", 2, 9.0))


def test_fused_types_are_frozen():
    hit = reciprocal_rank_fusion([BM25])[0]
    with pytest.raises(AttributeError):
        hit.score = 1.0  # type: ignore[misc]


def test_five_strategies_of_one_hundred_fuse_to_the_requested_limit():
    # Speed is measured by scripts/bench_search.py, not asserted here.
    rng = random.Random(1)
    results = [
        StrategyResult(f"s{s}", tuple(Hit(f"d{rng.randrange(300)}", i + 1, rng.random()) for i in range(100)), budget=100)
        for s in range(5)
    ]
    fused = reciprocal_rank_fusion(results, limit=100)
    assert len(fused) == 100
    assert [h.score for h in fused] == sorted((h.score for h in fused), reverse=True)


def test_fusion_objects_validate_at_construction_and_name_the_union():
    from orchestrator.fusion import RRF, WeightedScores, make_fusion

    assert RRF().label == "union (rrf k=60)" and RRF(k=10).label == "union (rrf k=10)"
    assert WeightedScores(normalization="zscore").label == "union (weighted zscore)"
    with pytest.raises(ValueError, match="k must be"):
        RRF(k=0)
    with pytest.raises(ValueError, match="normalization"):
        WeightedScores(normalization="softmax")
    with pytest.raises(ValueError, match="bad options"):
        make_fusion("rrf", normalization="minmax")
    with pytest.raises(ValueError, match="unknown fusion method"):
        make_fusion("borda")
    results = [result("a", ("x", 1.0), ("y", 0.5)), result("b", ("y", 3.0))]
    assert make_fusion("rrf", k=1).fuse(results) == reciprocal_rank_fusion(results, k=1)
    assert ids(RRF(weights={"a": 0.0}).fuse(results)) == ["y", "x"]  # weight 0 keeps provenance, adds nothing
