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


def attention(x: np.ndarray, w: dict, mm: "Projection", p: str, args: ModelArgs, state: dict) -> np.ndarray:
    """Gated full attention: q and its sigmoid gate interleaved per head in attn_q; q/k RMS norms; GQA.
    state["k"], state["v"]: [past, nkv, d], extended in place."""
    T, nh, nkv, d = x.shape[0], args.n_head, args.n_head_kv, args.head_dim
    past = state["k"].shape[0]
    qg = mm(x, p + "attn_q.weight").reshape(T, nh, 2 * d)
    q, gate = qg[..., :d], qg[..., d:].reshape(T, nh * d)
    k = mm(x, p + "attn_k.weight").reshape(T, nkv, d)
    v = mm(x, p + "attn_v.weight").reshape(T, nkv, d)
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
    return mm(out * sigmoid(gate), p + "attn_output.weight")


def gated_delta_net(x: np.ndarray, w: dict, mm: "Projection", p: str, args: ModelArgs,
                    state: dict) -> np.ndarray:
    """Gated DeltaNet: causal conv + SiLU over [q, k, v], L2-normed q/k, the gated delta rule, gated RMS norm.
    state["conv"]: the last K-1 conv inputs [K-1, channels]; state["S"]: [nv, dk, dv]; both updated."""
    T, nk, nv, dk, dv = x.shape[0], args.nk, args.nv, args.dk, args.dv
    r = nv // nk
    mixed = mm(x, p + "attn_qkv.weight")  # [T, 2*nk*dk + nv*dv], channels [q, k, v]
    z = mm(x, p + "attn_gate.weight").reshape(T, nv, dv)
    ba = mm(x, p + "ssm_ba.weight").reshape(T, nk, 2 * r)  # per key head: [b (r), a (r)]
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
    return mm(y.reshape(T, nv * dv), p + "ssm_out.weight")


def moe(x: np.ndarray, w: dict, mm: "Projection", p: str, args: ModelArgs) -> np.ndarray:
    """Softmax router, top-k renormalised, SwiGLU experts, plus the sigmoid-gated shared expert."""
    logits = mm(x, p + "ffn_gate_inp.weight")  # [T, E]
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :args.n_expert_used]
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        weights = probs[t, top[t]] / probs[t, top[t]].sum()
        xt = x[t:t + 1]
        for e, weight in zip(top[t], weights):
            hidden = silu(mm(xt, p + "ffn_gate_exps.weight", e)) * mm(xt, p + "ffn_up_exps.weight", e)
            out[t] += weight * mm(hidden, p + "ffn_down_exps.weight", e)[0]
    shared = silu(mm(x, p + "ffn_gate_shexp.weight")) * mm(x, p + "ffn_up_shexp.weight")
    shared = mm(shared, p + "ffn_down_shexp.weight")
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
            state: list[dict] | None = None, activation_blocks: dict[str, int] | None = None,
            block_offsets: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Logits [T, vocab] (float64) of `tokens`, continuing `state` (updated in place) or from position 0.
    activation_blocks: tensor name -> 256 or 32 for the weights whose inputs are rounded to 8 bits first (Q8_K or
    Q8_0, as llama.cpp and localcoder's "q8" runtime do); the others see exact inputs. block_offsets: tensor name
    -> the per-32-value offsets m of Q5_1 weights ([..., rows, cols / 32]), which meet the activations through
    Q8_1's float16 block sums as in ggml (see Projection)."""
    state = new_state(args) if state is None else state
    w = {name: np.asarray(t, dtype=np.float64) for name, t in weights.items()}
    mm = Projection(w, activation_blocks or {}, block_offsets or {})
    h = w["token_embd.weight"][np.asarray(tokens)]
    for i in range(args.n_layer):
        p = f"blk.{i}."
        x = rms_norm(h, w[p + "attn_norm.weight"], args.eps)
        mixer = gated_delta_net if args.recurrent[i] else attention
        h = h + mixer(x, w, mm, p, args, state[i])
        h = h + moe(rms_norm(h, w[p + "post_attention_norm.weight"], args.eps), w, mm, p, args)
    output = "output.weight" if "output.weight" in w else "token_embd.weight"  # tied: llama.cpp reuses token_embd
    return mm(rms_norm(h, w["output_norm.weight"], args.eps), output)


class Projection:
    """x @ W.T for a named weight (one expert of it with `expert`), the input first rounded as the weight's
    activation block says. A weight with block offsets m (Q5_1: W = d q + m per 32 values) takes its offsets
    through the activations' Q8_1 sums s = float16(scale * sum q) instead of the exact sums, as ggml does."""

    def __init__(self, weights: dict[str, np.ndarray], activation_blocks: dict[str, int],
                 block_offsets: dict[str, np.ndarray]):
        self.weights, self.blocks, self.offsets = weights, activation_blocks, block_offsets

    def __call__(self, x: np.ndarray, name: str, expert: int | None = None) -> np.ndarray:
        w = self.weights[name] if expert is None else self.weights[name][expert]
        block = self.blocks.get(name)
        if block is None:
            return x @ w.T
        if name not in self.offsets:
            return round_activations(x, block) @ w.T
        m = self.offsets[name] if expert is None else self.offsets[name][expert]
        m = np.asarray(m, np.float64)
        return round_activations(x, 32) @ (w - np.repeat(m, 32, axis=-1)).T + q8_1_sums(x) @ m.T


def round_activations(x: np.ndarray, block: int) -> np.ndarray:
    """x (float64 [T, n]) as ggml's 8-bit activation formats hold it, computed in float32 as ggml does:
    block 256 = Q8_K (scale max/-127 of the largest-magnitude value, round half to even, capped at 127),
    block 32 = Q8_0 (x * 127/amax rounded half to even, scale amax/127 stored as float16)."""
    x32 = np.asarray(x, np.float32).reshape(x.shape[0], -1, block)
    if block == 256:
        at = np.abs(x32).argmax(axis=-1)[..., None]
        vmax = np.take_along_axis(x32, at, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = np.float32(-127.0) / vmax
            q = np.minimum(np.rint(iscale * x32), 127)
            scale = np.where(vmax == 0, 0, np.float32(1.0) / iscale)
        q = np.where(vmax == 0, 0, q)
    else:
        q, amax = _q8_0_values(x32)
        scale = (amax / np.float32(127.0)).astype(np.float16)
    return (q.astype(np.float64) * scale.astype(np.float64)).reshape(x.shape)


def _q8_0_values(x32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's Q8_0 / Q8_1 values of float32 blocks [..., 32] (x * 127/amax rounded half to even) and amax."""
    amax = np.abs(x32).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.rint(x32 * np.where(amax == 0, 0, np.float32(127.0) / amax)), amax


def q8_1_sums(x: np.ndarray) -> np.ndarray:
    """ggml's Q8_1 block sums of x (float64 [T, n]): float16(amax/127 * sum of the rounded values) per 32 values,
    [T, n / 32], computed in float32 as ggml does."""
    q, amax = _q8_0_values(np.asarray(x, np.float32).reshape(x.shape[0], -1, 32))
    total = q.sum(axis=-1, dtype=np.float32)
    return ((amax[..., 0] / np.float32(127.0)) * total).astype(np.float16).astype(np.float64)
