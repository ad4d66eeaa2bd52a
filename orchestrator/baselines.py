"""Textbook retrieval baselines, computed outside OpenSearch, that every evaluation table carries.

They are the anchors a reader compares ltrr's arms with ("is 0.36 good on this collection?"):

* :class:`ReferenceBM25` — Okapi BM25 exactly as ``rank_bm25.BM25Okapi`` computes it, over
  :func:`textbook_tokens` (lowercase, split on ``[^a-z0-9]+``, scikit-learn's English stopwords,
  NLTK's Porter stemmer)::

      score(d, q) = Σ_{t ∈ q} idf(t) · tf(t,d)·(k1 + 1) / (tf(t,d) + k1·(1 − b + b·|d| / avgdl))
      idf(t)      = ln(N − n_t + 0.5) − ln(n_t + 0.5), and ε·mean(idf) where that is negative

  (query terms count as often as they occur; ``N`` documents, ``n_t`` of them containing t).
  ``rank_bm25`` loops over every document in Python for each query term, far too slow for a
  100k catalogue; this is the same formula over a sparse matrix, checked against ``rank_bm25``
  in the tests.
* :class:`ExactDense` — exact cosine between the query's and every document's all-MiniLM-L6-v2
  vectors (the same document vectors the ``knn`` arm indexes), i.e. what HNSW approximates.
* :func:`rrf` — reciprocal rank fusion of runs, ``Σ 1 / (k + rank)`` with ranks from 1.

A *run* here is ``{query_id: [(doc_id, score), ...]}`` best first.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import sparse

Run = dict[str, list[tuple[str, float]]]

_SPLIT = re.compile(r"[^a-z0-9]+")


@functools.cache
def _stopwords() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


@functools.cache
def _stemmer():
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer()


@functools.lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _stemmer().stem(word)


def textbook_tokens(text: str) -> list[str]:
    """The classic IR pipeline: lowercase, split on non-alphanumerics, drop scikit-learn's 318
    English stopwords, Porter-stem (NLTK's default mode)."""
    stop = _stopwords()
    return [_stem(w) for w in _SPLIT.split(text.lower()) if w and w not in stop]


class ReferenceBM25:
    """Okapi BM25 with rank_bm25's formula (see the module docstring) over ``documents``.

    ``documents`` is ``[(doc_id, text), ...]``; ``run`` returns the top ``depth`` documents per
    query, leaving out documents that score 0 (they match no query term), ties in corpus order.
    """

    def __init__(self, documents: Sequence[tuple[str, str]], *, k1: float = 1.2, b: float = 0.75,
                 epsilon: float = 0.25):
        self.k1, self.b, self.epsilon = float(k1), float(b), float(epsilon)
        self.doc_ids = [doc_id for doc_id, _ in documents]
        vocabulary: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        for i, (_, text) in enumerate(documents):
            for token in textbook_tokens(text):
                rows.append(i)
                cols.append(vocabulary.setdefault(token, len(vocabulary)))
        n_docs = len(documents)
        # Duplicate (row, col) pairs add up to the term frequency when converted.
        n_terms = max(len(vocabulary), 1)
        tf = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_docs, n_terms))
        tf.sum_duplicates()
        self.vocabulary = vocabulary
        doc_len = np.asarray(tf.sum(axis=1)).ravel()
        avgdl = doc_len.sum() / n_docs if n_docs else 1.0
        df = np.bincount(tf.indices, minlength=n_terms).astype(np.float64)
        idf = np.log(n_docs - df + 0.5) - np.log(df + 0.5)
        eps = self.epsilon * (idf.sum() / len(idf)) if len(vocabulary) else 0.0
        self.idf = np.where(idf < 0, eps, idf)
        # The per-(document, term) factor of the formula, computed once; a query is then a sum of
        # columns weighted by idf x query-term count.
        norm = self.k1 * (1.0 - self.b + self.b * doc_len / avgdl)
        weights = tf.copy()
        row_norm = np.repeat(norm, np.diff(tf.indptr))
        weights.data = tf.data * (self.k1 + 1.0) / (tf.data + row_norm)
        self._weights = weights.tocsc()

    def scores(self, query: str) -> np.ndarray:
        """BM25 of every document for ``query`` (float64, in corpus order)."""
        counts: dict[int, int] = {}
        for token in textbook_tokens(query):
            column = self.vocabulary.get(token)
            if column is not None:
                counts[column] = counts.get(column, 0) + 1
        if not counts:
            return np.zeros(len(self.doc_ids))
        columns = np.fromiter(counts, dtype=np.int64)
        factors = self.idf[columns] * np.fromiter(counts.values(), dtype=np.float64)
        return np.asarray(self._weights[:, columns] @ factors).ravel()

    def run(self, queries: Iterable[tuple[str, str]], depth: int = 1000) -> Run:
        out: Run = {}
        for qid, text in queries:
            scores = self.scores(text)
            matched = np.flatnonzero(scores)
            top = matched[np.lexsort((matched, -scores[matched]))][:depth]  # ties: corpus order
            out[qid] = [(self.doc_ids[i], float(scores[i])) for i in top]
        return out


class ExactDense:
    """Exact cosine top-k over unit-normalised document vectors (``n x dim``)."""

    def __init__(self, doc_ids: Sequence[str], vectors: np.ndarray):
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.doc_ids = list(doc_ids)
        self.vectors = vectors / np.where(norms > 0, norms, 1.0)

    def run(self, query_ids: Sequence[str], query_vectors: np.ndarray, depth: int = 1000,
            batch: int = 256) -> Run:
        out: Run = {}
        q = np.asarray(query_vectors, dtype=np.float32)
        q = q / np.where((n := np.linalg.norm(q, axis=1, keepdims=True)) > 0, n, 1.0)
        k = min(depth, len(self.doc_ids))
        for start in range(0, len(query_ids), batch):
            sims = q[start:start + batch] @ self.vectors.T
            for row, qid in zip(sims, query_ids[start:start + batch]):
                top = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
                top = top[np.lexsort((top, -row[top]))]
                out[qid] = [(self.doc_ids[i], float(row[i])) for i in top]
        return out


def rrf(runs: Sequence[Mapping[str, Sequence[tuple[str, float]]]], *, k: float = 60.0, depth: int = 1000) -> Run:
    """Reciprocal rank fusion of ``runs``: ``score(d) = Σ_r 1 / (k + rank_r(d))``; ties by doc id."""
    out: Run = {}
    for qid in sorted({qid for run in runs for qid in run}):
        fused: dict[str, float] = {}
        for run in runs:
            for rank, (doc_id, _) in enumerate(run.get(qid, ()), start=1):
                fused[doc_id] = fused.get(doc_id, 0.0) + 1.0 / (k + rank)
        out[qid] = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:depth]
    return out


# ------------------------------------------------------------------------------------------------
# The anchors of an evaluation table

BM25_REF = "ref BM25 (rank_bm25 k1=1.2 b=0.75)"
DENSE_REF = "ref dense (exact cosine)"
RRF_REF = "ref RRF k=60 (BM25 + dense)"


def reference_systems(dataset, queries, query_vectors: np.ndarray | None, *, depth: int = 100,
                      encoder=None, embedding_cache=None) -> dict:
    """The textbook anchors as evaluation systems, on the same documents and queries as ltrr's
    arms: BM25 over ``title + ' ' + text``, exact cosine over the documents' vectors (those
    ``ltrr load`` indexes: precomputed ``embedding`` fields, else the encoder through its cache),
    and their RRF. Each keeps its top ``depth``; the RRF's candidate pool is the union of both
    top-``depth`` lists (what an ideal reranker of two arms could reach). Without an encoder or
    query vectors there is no dense anchor and no RRF."""
    from .catalog import embedding_text
    from .datasets import RowError
    from .evaluate import RunSystem

    rows = [row for row in dataset.iter_corpus() if not isinstance(row, RowError)]
    pairs = [(q.id, q.text) for q in queries]
    bm25 = ReferenceBM25([(row.id, f"{row.title} {row.text}".strip()) for row in rows]).run(pairs, depth)
    systems = {BM25_REF: RunSystem({qid: [d for d, _ in hits] for qid, hits in bm25.items()})}
    if encoder is None or query_vectors is None:
        return systems
    vectors = np.empty((len(rows), encoder.dim), dtype=np.float32)
    need = [i for i, row in enumerate(rows) if "embedding" not in row.fields]
    for i, row in enumerate(rows):
        if "embedding" in row.fields:
            vectors[i] = np.asarray(row.fields["embedding"], dtype=np.float32)
    if need:
        texts = [embedding_text(rows[i]) for i in need]
        if embedding_cache is not None:
            from .embeddings import encode_cached

            vectors[need] = encode_cached(encoder, embedding_cache, texts)
        else:
            vectors[need] = encoder.encode(texts)
    dense = ExactDense([row.id for row in rows], vectors).run([q.id for q in queries], query_vectors, depth)
    fused = rrf([bm25, dense], k=60.0, depth=depth)
    pools = {qid: {d for d, _ in bm25.get(qid, ())} | {d for d, _ in dense.get(qid, ())} for qid in fused}
    systems[DENSE_REF] = RunSystem({qid: [d for d, _ in hits] for qid, hits in dense.items()})
    systems[RRF_REF] = RunSystem({qid: [d for d, _ in hits] for qid, hits in fused.items()}, pools)
    return systems
