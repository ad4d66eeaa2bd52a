"""The textbook anchors: BM25 equal to rank_bm25's, exact cosine, RRF by hand."""

from __future__ import annotations

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from orchestrator.baselines import ExactDense, ReferenceBM25, rrf, textbook_tokens

DOCS = [
    ("d1", "The wing of an aircraft in a propeller slipstream"),
    ("d2", "Heat conduction in composite slabs, solved exactly"),
    ("d3", "Slipstream effects on wings: wings and more wings"),
    ("d4", ""),  # empty documents exist in real collections
    ("d5", "Boundary layer flow over a flat plate with heat transfer"),
    ("d6", "aircraft aircraft aircraft"),
]
QUERIES = ["wing slipstream", "heat transfer in slabs", "what is the", "aircraft wings heat", "zzz unknown"]


def test_textbook_tokens():
    assert textbook_tokens("The Wings, of aircraft-designs 2.5!") == ["wing", "aircraft", "design", "2", "5"]
    assert textbook_tokens("what is the") == []  # all stopwords


@pytest.mark.parametrize("k1,b", [(1.2, 0.75), (0.9, 0.4), (1.5, 0.0)])
def test_reference_bm25_equals_rank_bm25(k1, b):
    ours = ReferenceBM25(DOCS, k1=k1, b=b)
    oracle = BM25Okapi([textbook_tokens(text) for _, text in DOCS], k1=k1, b=b)
    for query in QUERIES:
        np.testing.assert_allclose(ours.scores(query), oracle.get_scores(textbook_tokens(query)), atol=1e-12)


def test_reference_bm25_run_leaves_out_zero_scores_and_breaks_ties_by_corpus_order():
    run = ReferenceBM25(DOCS + [("d7", "aircraft aircraft aircraft")]).run([("q", "aircraft"), ("none", "zzz")])
    ids = [d for d, _ in run["q"]]
    assert ids[:2] == ["d6", "d7"] and set(ids) == {"d1", "d6", "d7"}
    assert run["none"] == []


def test_exact_dense_and_rrf_by_hand():
    vectors = np.array([[1, 0], [0.6, 0.8], [0, 2], [-1, 0]], dtype=np.float32)
    dense = ExactDense(["a", "b", "c", "d"], vectors)
    run = dense.run(["q"], np.array([[0, 1]], dtype=np.float32), depth=3)
    assert [d for d, _ in run["q"]] == ["c", "b", "a"]
    assert run["q"][0][1] == pytest.approx(1.0) and run["q"][1][1] == pytest.approx(0.8)
    fused = rrf([{"q": [("a", 9), ("b", 8)]}, {"q": [("b", 1), ("c", 0.5)]}], k=60)
    assert fused["q"][0] == ("b", pytest.approx(1 / 62 + 1 / 61))
    assert [d for d, _ in fused["q"]] == ["b", "a", "c"]
