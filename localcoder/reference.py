"""The Qwen3-Next forward pass in plain numpy (float64): the reference every fast kernel is held against.

Slow and obvious on purpose. The math is reference/qwen3next.md section 3, written on GGUF tensors (so norms are
already 1 + w, ssm_a is already -exp(A_log), and attn_qkv rows are [q heads, k heads, v heads]). DeltaNet runs in
its recurrent form token by token, as llama.cpp's CPU backend does.

State between calls (a session) is a list with one dict per layer: attention layers keep post-RoPE keys and values,
DeltaNet layers the last K-1 conv inputs and the recurrent state. Feeding tokens in pieces gives the same logits as
one call on all of them.

Shapes: T tokens, H hidden; per-head sizes d (attention), dk = dv (DeltaNet).
"""

from __future__ import annotations

import numpy as np

from localcoder.gguf_model import ModelArgs
from localcoder.kernels.deltanet import delta_rule_reference

L2_EPS = 1e-6  # transformers hard-codes this for the DeltaNet q/k L2 norm (llama.cpp uses rms eps, also 1e-6)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """RMS norm over the last axis (keeps float32 inputs float32: the runtime's layers share these helpers)."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x: np.ndarray) -> np.ndarray:
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))  # torch/ggml threshold 20


def rope_neox(x: np.ndarray, positions: np.ndarray, rope_dim: int, base: float) -> np.ndarray:
    """Rotate-half RoPE on the first rope_dim dims of each head (a new array of x's dtype; angles in float64).
    x: [T, heads, d]."""
    half = rope_dim // 2
    inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2.0 / rope_dim)
    angle = np.asarray(positions, np.float64)[:, None, None] * inv_freq  # [T, 1, half]
    cos, sin = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
    out = x.copy()
    a, b = x[..., :half], x[..., half:rope_dim]
    out[..., :half] = a * cos - b * sin
    out[..., half:rope_dim] = b * cos + a * sin
    return out


def attention(x: np.ndarray, w: dict, p: str, args: ModelArgs, state: dict) -> np.ndarray:
    """Gated full attention: q and its sigmoid gate interleaved per head in attn_q; q/k RMS norms; GQA.
    state["k"], state["v"]: [past, nkv, d], extended in place."""
    T, nh, nkv, d = x.shape[0], args.n_head, args.n_head_kv, args.head_dim
    past = state["k"].shape[0]
    qg = (x @ w[p + "attn_q.weight"].T).reshape(T, nh, 2 * d)
    q, gate = qg[..., :d], qg[..., d:].reshape(T, nh * d)
    k = (x @ w[p + "attn_k.weight"].T).reshape(T, nkv, d)
    v = (x @ w[p + "attn_v.weight"].T).reshape(T, nkv, d)
    q = rms_norm(q, w[p + "attn_q_norm.weight"], args.eps)
    k = rms_norm(k, w[p + "attn_k_norm.weight"], args.eps)
    pos = np.arange(past, past + T, dtype=np.float64)
    q, k = rope_neox(q, pos, args.rope_dim, args.rope_base), rope_neox(k, pos, args.rope_dim, args.rope_base)
    state["k"], state["v"] = np.concatenate([state["k"], k]), np.concatenate([state["v"], v])
    k, v = np.repeat(state["k"], nh // nkv, axis=1), np.repeat(state["v"], nh // nkv, axis=1)  # head h -> h // g
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(d)
    scores = np.where(np.tril(np.ones((T, past + T), bool), k=past), scores, -np.inf)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.einsum("hts,shd->thd", probs, v).reshape(T, nh * d)
    return (out * sigmoid(gate)) @ w[p + "attn_output.weight"].T


def gated_delta_net(x: np.ndarray, w: dict, p: str, args: ModelArgs, state: dict) -> np.ndarray:
    """Gated DeltaNet: causal conv + SiLU over [q, k, v], L2-normed q/k, the gated delta rule, gated RMS norm.
    state["conv"]: the last K-1 conv inputs [K-1, channels]; state["S"]: [nv, dk, dv]; both updated."""
    T, nk, nv, dk, dv = x.shape[0], args.nk, args.nv, args.dk, args.dv
    r = nv // nk
    mixed = x @ w[p + "attn_qkv.weight"].T  # [T, 2*nk*dk + nv*dv], channels [q, k, v]
    z = (x @ w[p + "attn_gate.weight"].T).reshape(T, nv, dv)
    ba = (x @ w[p + "ssm_ba.weight"].T).reshape(T, nk, 2 * r)  # per key head: [b (r), a (r)]
    b, a = ba[..., :r].reshape(T, nv), ba[..., r:].reshape(T, nv)
    kernel = w[p + "ssm_conv1d.weight"]  # [channels, K]
    K = kernel.shape[1]
    padded = np.concatenate([state["conv"], mixed])
    state["conv"] = padded[-(K - 1):]
    conv = silu(sum(padded[j:j + T] * kernel[:, j] for j in range(K)))
    q = conv[:, :nk * dk].reshape(T, nk, dk)
    k = conv[:, nk * dk:2 * nk * dk].reshape(T, nk, dk)
    v = conv[:, 2 * nk * dk:].reshape(T, nv, dv)
    q = q / np.sqrt(np.sum(q * q, axis=-1, keepdims=True) + L2_EPS)
    k = k / np.sqrt(np.sum(k * k, axis=-1, keepdims=True) + L2_EPS)
    q, k = np.repeat(q, r, axis=1) / np.sqrt(dk), np.repeat(k, r, axis=1)  # value head j uses key head j // r
    beta = sigmoid(b)
    g = w[p + "ssm_a"] * softplus(a + w[p + "ssm_dt.bias"])  # [T, nv], ssm_a = -exp(A_log)
    out = delta_rule_reference(q, k, v, g, beta, state["S"])
    y = rms_norm(out, w[p + "ssm_norm.weight"], args.eps) * silu(z)
    return y.reshape(T, nv * dv) @ w[p + "ssm_out.weight"].T


def moe(x: np.ndarray, w: dict, p: str, args: ModelArgs) -> np.ndarray:
    """Softmax router, top-k renormalised, SwiGLU experts, plus the sigmoid-gated shared expert."""
    logits = x @ w[p + "ffn_gate_inp.weight"].T  # [T, E]
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :args.n_expert_used]
    gate_w, up_w, down_w = (w[p + f"ffn_{n}_exps.weight"] for n in ("gate", "up", "down"))
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        weights = probs[t, top[t]] / probs[t, top[t]].sum()
        for e, weight in zip(top[t], weights):
            out[t] += weight * ((silu(gate_w[e] @ x[t]) * (up_w[e] @ x[t])) @ down_w[e].T)
    shared = (silu(x @ w[p + "ffn_gate_shexp.weight"].T) * (x @ w[p + "ffn_up_shexp.weight"].T))
    shared = shared @ w[p + "ffn_down_shexp.weight"].T
    shared_gate = sigmoid(x @ w[p + "ffn_gate_inp_shexp.weight"].reshape(-1))
    return out + shared * shared_gate[:, None]


def new_state(args: ModelArgs) -> list[dict]:
    """An empty session: one dict per layer (see the module docstring)."""
    conv_channels = 2 * args.nk * args.dk + args.nv * args.dv
    return [{"conv": np.zeros((args.conv_kernel - 1, conv_channels)), "S": np.zeros((args.nv, args.dk, args.dv))}
            if recurrent else {"k": np.zeros((0, args.n_head_kv, args.head_dim)),
                               "v": np.zeros((0, args.n_head_kv, args.head_dim))}
            for recurrent in args.recurrent]


def snapshot(state: list[dict]) -> list[dict]:
    """A copy of a session that later feeding does not change (what prefix reuse restores)."""
    return [{key: value.copy() for key, value in layer.items()} for layer in state]


def forward(args: ModelArgs, weights: dict[str, np.ndarray], tokens: list[int],
            state: list[dict] | None = None) -> np.ndarray:
    """Logits [T, vocab] (float64) of `tokens`, continuing `state` (updated in place) or from position 0."""
    state = new_state(args) if state is None else state
    w = {name: np.asarray(t, dtype=np.float64) for name, t in weights.items()}
    h = w["token_embd.weight"][np.asarray(tokens)]
    for i in range(args.n_layer):
        p = f"blk.{i}."
        x = rms_norm(h, w[p + "attn_norm.weight"], args.eps)
        mixer = gated_delta_net if args.recurrent[i] else attention
        h = h + mixer(x, w, p, args, state[i])
        h = h + moe(rms_norm(h, w[p + "post_attention_norm.weight"], args.eps), w, p, args)
    output = w.get("output.weight", w["token_embd.weight"])  # tied embeddings: llama.cpp reuses token_embd
    return rms_norm(h, w["output_norm.weight"], args.eps) @ output.T
