"""The Qwen3-Next blocks in float32 on GGUF weights: the runtime's forward pass (reference.py is its float64 twin).

Each function takes the hidden states of a chunk of tokens [T, H], the layer's weights (name -> Weight, names
without the "blk.N." prefix) and the layer's slice of the session state, which it extends in place.
"""

from __future__ import annotations

import weakref

import numpy as np

from localcoder.gguf_model import ModelArgs
from localcoder.kernels.deltanet import delta_rule_recurrent
from localcoder.kernels.elementwise import causal_conv_silu, rms_norm, swiglu
from localcoder.kernels.qdot import Activations
from localcoder.reference import L2_EPS, rope_neox, sigmoid, softplus  # dtype-preserving

F = np.float32
SCORES_BUDGET = 1 << 24  # attention scores kept at once (64 MiB of float32): long contexts go by query blocks


class _Rows:
    """Key and value rows shared by a KV cache and the snapshots taken of it.

    Rows below `pinned` are read by snapshots and never change; rows from there on belong to `writer`, the one
    cache that may append in place. A cache that is not the writer (or sits below the pin) copies its rows first,
    so taking a snapshot costs nothing and restoring one costs a copy only when another state owns the rows."""

    def __init__(self, capacity: int, n_kv: int, d: int):
        self.k = np.empty((n_kv, capacity, d), F)  # head-major: each head's keys are one matrix for BLAS
        self.v = np.empty((n_kv, capacity, d), F)
        self.pinned = 0
        self.writer: weakref.ref | None = None

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @property
    def capacity(self) -> int:
        return self.k.shape[1]


class KVCache:
    """Post-RoPE keys and values of one attention layer, grown by doubling up to the session's context."""

    def __init__(self, n_kv: int, d: int, rows: _Rows | None = None, length: int = 0):
        self.rows = rows or _Rows(0, n_kv, d)
        self.length = length

    @property
    def keys(self) -> np.ndarray:
        """[n_kv, length, d] (a view)."""
        return self.rows.k[:, :self.length]

    @property
    def values(self) -> np.ndarray:
        return self.rows.v[:, :self.length]

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """Add the keys and values of len(k) tokens, each [T, n_kv, d]."""
        need, rows, n = self.length + len(k), self.rows, self.length
        owner = rows.writer() if rows.writer else None
        if need > rows.capacity or n < rows.pinned or owner not in (None, self):
            size = max(need, 2 * rows.capacity, 64) if need > rows.capacity else rows.capacity
            grown = _Rows(size, rows.k.shape[0], rows.k.shape[2])
            grown.k[:, :n], grown.v[:, :n] = rows.k[:, :n], rows.v[:, :n]
            self.rows = rows = grown
        rows.writer = weakref.ref(self)
        rows.k[:, n:need], rows.v[:, n:need] = k.transpose(1, 0, 2), v.transpose(1, 0, 2)
        self.length = need

    def share(self) -> "KVCache":
        """A snapshot of this cache: its rows are pinned, so later appends (here or elsewhere) never change them."""
        self.rows.pinned = max(self.rows.pinned, self.length)
        return KVCache(0, 0, self.rows, self.length)

    def copy(self) -> "KVCache":
        """A cache that continues from this one's rows (copied only when it first appends over someone's rows)."""
        return KVCache(0, 0, self.rows, self.length)


def attention(x: np.ndarray, w: dict, args: ModelArgs, cache: KVCache) -> np.ndarray:
    """Gated attention: q and its gate interleaved per head in attn_q, q/k RMS norms, partial NEOX RoPE, GQA."""
    n_tok, nh, nkv, d = x.shape[0], args.n_head, args.n_head_kv, args.head_dim
    x = Activations(x)  # one 8-bit rounding of x for q, k and v
    qg = w["attn_q.weight"].matmul(x).reshape(n_tok, nh, 2 * d)
    q, gate = qg[..., :d], qg[..., d:].reshape(n_tok, nh * d)
    k = w["attn_k.weight"].matmul(x).reshape(n_tok, nkv, d)
    v = w["attn_v.weight"].matmul(x).reshape(n_tok, nkv, d)
    q = rms_norm(q, w["attn_q_norm.weight"].vector(), args.eps)
    k = rms_norm(k, w["attn_k_norm.weight"].vector(), args.eps)
    past = cache.length
    positions = np.arange(past, past + n_tok)
    q = rope_neox(q, positions, args.rope_dim, args.rope_base)
    k = rope_neox(k, positions, args.rope_dim, args.rope_base)
    cache.append(k, v)
    out = _causal_attention(q, cache.keys, cache.values, past)
    return w["attn_output.weight"].matmul(out.reshape(n_tok, nh * d) * sigmoid(gate))


def _causal_attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, past: int) -> np.ndarray:
    """softmax(q k^T / sqrt(d)) v over keys 0..past+t for query t; q [T, nh, d], keys/values [nkv, S, d]
    (the cache's head-major views: no copy of the cache per call, which would make decode O(context))."""
    n_tok, nh, d = q.shape
    nkv, n_keys = keys.shape[0], keys.shape[1]
    group = nh // nkv  # query head h reads kv head h // group
    kt = keys[:, None].transpose(0, 1, 3, 2)  # [nkv, 1, d, S], a transposed view BLAS reads as is
    vt = values[:, None]  # [nkv, 1, S, d]
    out = np.empty((n_tok, nh, d), F)
    block = max(1, SCORES_BUDGET // (nh * n_keys))
    scale = F(1.0 / np.sqrt(d))
    for t0 in range(0, n_tok, block):
        t1 = min(n_tok, t0 + block)
        qb = q[t0:t1].reshape(t1 - t0, nkv, group, d).transpose(1, 2, 0, 3)  # [nkv, group, Tb, d]
        scores = (qb @ kt) * scale  # [nkv, group, Tb, S]
        visible = np.arange(n_keys)[None, :] <= (past + np.arange(t0, t1))[:, None]
        scores = np.where(visible, scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        out[t0:t1] = (scores @ vt).transpose(2, 0, 1, 3).reshape(t1 - t0, nh, d)
    return out


def gated_delta_net(x: np.ndarray, w: dict, args: ModelArgs, state: dict) -> np.ndarray:
    """Causal conv + SiLU over [q, k, v], L2-normed q/k, the gated delta rule, gated RMS norm.
    state["conv"]: the last K-1 conv inputs [K-1, channels]; state["S"]: [nv, dk, dv]."""
    n_tok, nk, nv, dk, dv = x.shape[0], args.nk, args.nv, args.dk, args.dv
    r = nv // nk
    x = Activations(x)
    mixed = w["attn_qkv.weight"].matmul(x)
    z = w["attn_gate.weight"].matmul(x).reshape(n_tok, nv, dv)
    ba = w["ssm_ba.weight"].matmul(x).reshape(n_tok, nk, 2 * r)
    b, a = ba[..., :r].reshape(n_tok, nv), ba[..., r:].reshape(n_tok, nv)
    kernel = w["ssm_conv1d.weight"].vector().reshape(-1, args.conv_kernel)
    padded = np.concatenate([state["conv"], mixed])
    state["conv"] = padded[-(args.conv_kernel - 1):].copy()
    conv = causal_conv_silu(padded, kernel)
    q = conv[:, :nk * dk].reshape(n_tok, nk, dk)
    k = conv[:, nk * dk:2 * nk * dk].reshape(n_tok, nk, dk)
    v = np.ascontiguousarray(conv[:, 2 * nk * dk:].reshape(n_tok, nv, dv))
    q = q / np.sqrt(np.sum(q * q, axis=-1, keepdims=True) + F(L2_EPS))
    k = k / np.sqrt(np.sum(k * k, axis=-1, keepdims=True) + F(L2_EPS))
    q = np.ascontiguousarray(np.repeat(q, r, axis=1) * F(1.0 / np.sqrt(dk)))  # value head j reads key head j // r
    k = np.ascontiguousarray(np.repeat(k, r, axis=1))
    beta = sigmoid(b)
    g = (w["ssm_a"].vector() * softplus(a + w["ssm_dt.bias"].vector())).astype(F)
    # recurrent at every length: on the CPU it beats the chunked matrix form 7x at 256 tokens (kernels/deltanet.py)
    out = delta_rule_recurrent(q, k, v, np.ascontiguousarray(g), np.ascontiguousarray(beta), state["S"])
    y = rms_norm(out, w["ssm_norm.weight"].vector(), args.eps, gate=z)
    return w["ssm_out.weight"].matmul(y.reshape(n_tok, nv * dv))


def moe(x: np.ndarray, w: dict, args: ModelArgs) -> np.ndarray:
    """Softmax router, top-k renormalised, SwiGLU experts (all selected experts in one grouped call per
    projection), plus the sigmoid-gated shared expert."""
    n_tok, k = x.shape[0], args.n_expert_used
    x = Activations(x)
    logits = w["ffn_gate_inp.weight"].matmul(x)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    weights = np.take_along_axis(probs, top, axis=-1)
    weights /= weights.sum(axis=-1, keepdims=True)
    # slots sorted by expert: slot s holds (token, expert) pair order[s]
    order = np.argsort(top.reshape(-1), kind="stable")
    chosen = top.reshape(-1)[order]
    experts, first = np.unique(chosen, return_index=True)
    starts = np.append(first, len(chosen))
    tokens = order // k
    gate = w["ffn_gate_exps.weight"].grouped_matmul(x, experts, starts, tokens)
    up = w["ffn_up_exps.weight"].grouped_matmul(x, experts, starts, tokens)
    down = w["ffn_down_exps.weight"].grouped_matmul(swiglu(gate, up), experts, starts, np.arange(len(chosen)))
    per_pair = np.empty_like(down)
    per_pair[order] = down  # back to (token, rank) order
    out = np.einsum("tkh,tk->th", per_pair.reshape(n_tok, k, -1), weights.astype(F))
    shared = swiglu(w["ffn_gate_shexp.weight"].matmul(x), w["ffn_up_shexp.weight"].matmul(x))
    shared = w["ffn_down_shexp.weight"].matmul(shared)
    shared_gate = sigmoid(x.x @ w["ffn_gate_inp_shexp.weight"].vector())
    return out + shared * shared_gate[:, None]
