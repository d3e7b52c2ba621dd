"""The Qwen3-Next forward pass in torch on one device, with quantized weights kept in their GGUF block formats.

A port of localcoder/reference.py (same math, same state layout) in float32 torch: quantized projections go
through the Triton kernels of blocks.py (decode: the fused GEMV; prefill: dequantize then torch.matmul), float
weights through torch.matmul. This is the correctness baseline of the CUDA backend; fused kernels, CUDA graphs
and multi-GPU split come on top of it and are measured against it.

`TorchModel` has Model's interface (tokenizer, generate, new_session, n_ctx, args), so `run` and the server work on
it unchanged. On a machine without CUDA it runs on the CPU through Triton's interpreter (tests only: slow).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from localcoder.cuda.deltanet import delta_rule
from localcoder.errors import UserError
from localcoder.gguf_model import load_fields
from localcoder.model import LanguageModel, PrefixReuse, checked_ids, context_size
from localcoder.prefix_cache import PrefixCache, Snapshot
from localcoder.reference import L2_EPS

FLOAT_TYPES = ("F32", "F16", "BF16")


class DeviceWeight:
    """One tensor on the device: float32 values, or uint8 rows in a block format (`qtype`) of `cols` values.
    Block formats without a kernel here (llama.cpp's Q4_0/Q5_0/Q5_1 fallbacks, Q8_0 rows not a multiple of 256
    wide) are decoded once on load and kept as float32: in the K-quant mixes they are the few narrow tensors."""

    def __init__(self, raw: np.ndarray, qtype: str, shape: tuple[int, ...], device: torch.device):
        from localcoder.cuda.blocks import GROUP, TYPE_IDS
        from localcoder.kernels import cpu_matmul as K

        self.qtype, self.shape = qtype, shape
        if qtype not in FLOAT_TYPES and (qtype not in TYPE_IDS or shape[-1] % GROUP):
            from quant.quantize import dequantize
            rows = raw.reshape(-1, raw.shape[-1])
            decoded = dequantize(rows, _ggml(qtype), (rows.shape[0], shape[-1]))
            self.qtype, self.values = "F32", torch.from_numpy(np.array(decoded, np.float32).reshape(shape)).to(device)
        elif qtype in FLOAT_TYPES:
            values = K.float_weights(raw.reshape(-1, raw.shape[-1]), _ggml(qtype), shape[-1])
            self.values = torch.from_numpy(np.array(values, np.float32).reshape(shape)).to(device)
        else:
            self.raw = torch.from_numpy(np.array(raw)).to(device)  # a copy: the mapping is read-only

    def matmul(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        """x [T, cols] @ W.T (of one expert of a stacked expert tensor)."""
        from localcoder.cuda.quant import dequantize, gemv

        if self.qtype in FLOAT_TYPES:
            w = self.values if expert is None else self.values[expert]
            return x @ w.T
        raw = self.raw if expert is None else self.raw[expert]
        raw = raw.reshape(raw.shape[0], -1)
        if x.shape[0] == 1:
            return gemv(raw, self.qtype, x[0])[None]
        return x @ dequantize(raw, self.qtype, self.shape[-1]).T

    def grouped(self, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """[slots, rows]: expert experts[s] of this stacked tensor times x (one input [cols], or one per slot)."""
        from localcoder.cuda.quant import grouped_gemv

        if self.qtype in FLOAT_TYPES:
            inputs = x.expand(len(experts), -1) if x.dim() == 1 else x
            return torch.einsum("sc,src->sr", inputs, self.values[experts])
        return grouped_gemv(self.raw, self.qtype, experts, x)

    def vector(self) -> torch.Tensor:
        return self.values.reshape(-1)


def _ggml(name: str):
    from gguf import GGMLQuantizationType as T
    return T[name]


class TorchModel(LanguageModel):
    """A GGUF on one torch device (see the module docstring)."""

    def __init__(self, path: Path, device: str = "cuda", n_ctx: int | None = None):
        from gguf import GGMLQuantizationType as T

        from localcoder.weights import expected_shapes

        fields, files = load_fields(Path(path))
        super().__init__(path, fields, context_size(fields, n_ctx))
        self.device = torch.device(device)
        tensors = {t.name: t for t in files.tensors}
        ff_expert = int(tensors["blk.0.ffn_gate_exps.weight"].shape[1])
        ff_shared = int(tensors["blk.0.ffn_gate_shexp.weight"].shape[1])
        shapes = expected_shapes(self.args, ff_expert, ff_shared)
        if "output.weight" in tensors:
            shapes["output.weight"] = (self.args.vocab, self.args.hidden)
        self.w = {}
        for name, shape in shapes.items():
            t = tensors.get(name)
            if t is None:
                raise UserError(f"the GGUF has no {name}: the file is incomplete or not a Qwen3-Next model")
            self.w[name] = DeviceWeight(np.asarray(t.data), T(t.tensor_type).name, shape, self.device)
        self.output = self.w.get("output.weight", self.w["token_embd.weight"])

    @classmethod
    def load(cls, path, device: str = "cuda", n_ctx: int | None = None) -> "TorchModel":
        """Put a GGUF's weights on `device` (block formats stay as bytes)."""
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise UserError("no CUDA device: torch sees none (install torch with CUDA, or use the CPU runtime)")
        return cls(path, device, n_ctx)

    def new_session(self, prefix_cache: PrefixCache | None = None) -> "TorchSession":
        return TorchSession(self, prefix_cache)

    def logits(self, token_ids) -> np.ndarray:
        """float32 [n_tokens, vocab] from one prefill at position 0."""
        return self.new_session().feed(token_ids, all_logits=True)

    def forward(self, state: list[dict], tokens: torch.Tensor, all_logits: bool) -> torch.Tensor:
        a, w = self.args, self.w
        self.computed_tokens += len(tokens)
        h = _rows(w["token_embd.weight"], tokens)
        for i in range(a.n_layer):
            p = f"blk.{i}."
            x = _rms_norm(h, w[p + "attn_norm.weight"].vector(), a.eps)
            mixer = _gated_delta_net if a.recurrent[i] else _attention
            h = h + mixer(x, w, p, a, state[i])
            h = h + _moe(_rms_norm(h, w[p + "post_attention_norm.weight"].vector(), a.eps), w, p, a)
        h = h if all_logits else h[-1:]
        return self.output.matmul(_rms_norm(h, w["output_norm.weight"].vector(), a.eps))


class TorchSession(PrefixReuse):
    """A sequence on the device: per layer keys/values or conv and delta-rule state (reference.py's layout)."""

    def __init__(self, model: TorchModel, prefix_cache: PrefixCache | None = None):
        self.model = model
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache()
        self.reset()

    def feed(self, token_ids, all_logits: bool = False) -> np.ndarray:
        """Continue with token_ids: logits of the last token (float32 [vocab]), or of all with all_logits."""
        ids = checked_ids(token_ids, len(self.tokens), self.model.args.vocab, self.model.n_ctx)
        with torch.no_grad():
            logits = self.model.forward(self.layers, torch.from_numpy(ids).to(self.model.device), all_logits)
        self.tokens.extend(int(t) for t in ids)
        out = logits.float().cpu().numpy()
        return out if all_logits else out[-1]

    def snapshot(self) -> Snapshot:
        return Snapshot(tuple(self.tokens), [{k: v.clone() for k, v in layer.items()} for layer in self.layers])

    def restore(self, snapshot: Snapshot) -> None:
        self.tokens = list(snapshot.tokens)
        self.layers = [{k: v.clone() for k, v in layer.items()} for layer in snapshot.layers]

    def reset(self) -> None:
        a, dev = self.model.args, self.model.device
        channels = 2 * a.nk * a.dk + a.nv * a.dv
        self.tokens = []
        self.layers = [{"conv": torch.zeros((a.conv_kernel - 1, channels), device=dev),
                        "S": torch.zeros((a.nv, a.dk, a.dv), device=dev)} if recurrent else
                       {"k": torch.zeros((0, a.n_head_kv, a.head_dim), device=dev),
                        "v": torch.zeros((0, a.n_head_kv, a.head_dim), device=dev)} for recurrent in a.recurrent]


def _rows(weight: DeviceWeight, tokens: torch.Tensor) -> torch.Tensor:
    """Embedding rows of `tokens` (float32 [T, H])."""
    from localcoder.cuda.quant import dequantize

    if weight.qtype in FLOAT_TYPES:
        return weight.values[tokens]
    return dequantize(weight.raw[tokens], weight.qtype, weight.shape[-1])


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + eps) * w


def _rope_neox(x: torch.Tensor, positions: torch.Tensor, rope_dim: int, base: float) -> torch.Tensor:
    """Rotate-half RoPE on the first rope_dim dims of each head; angles in float64 as reference.py."""
    half = rope_dim // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) * 2.0 / rope_dim)
    angle = positions.to(torch.float64)[:, None, None] * inv_freq
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    a, b = x[..., :half], x[..., half:rope_dim]
    return torch.cat([a * cos - b * sin, b * cos + a * sin, x[..., rope_dim:]], dim=-1)


def _attention(x, w, p, args, state) -> torch.Tensor:
    T, nh, nkv, d = x.shape[0], args.n_head, args.n_head_kv, args.head_dim
    past = state["k"].shape[0]
    qg = w[p + "attn_q.weight"].matmul(x).reshape(T, nh, 2 * d)
    q, gate = qg[..., :d], qg[..., d:].reshape(T, nh * d)
    k = w[p + "attn_k.weight"].matmul(x).reshape(T, nkv, d)
    v = w[p + "attn_v.weight"].matmul(x).reshape(T, nkv, d)
    q = _rms_norm(q, w[p + "attn_q_norm.weight"].vector(), args.eps)
    k = _rms_norm(k, w[p + "attn_k_norm.weight"].vector(), args.eps)
    pos = torch.arange(past, past + T, device=x.device)
    q, k = _rope_neox(q, pos, args.rope_dim, args.rope_base), _rope_neox(k, pos, args.rope_dim, args.rope_base)
    state["k"], state["v"] = torch.cat([state["k"], k]), torch.cat([state["v"], v])
    keys = state["k"].repeat_interleave(nh // nkv, dim=1)  # query head h reads kv head h // group
    values = state["v"].repeat_interleave(nh // nkv, dim=1)
    scores = torch.einsum("thd,shd->hts", q, keys) / math.sqrt(d)
    visible = torch.ones((T, past + T), dtype=torch.bool, device=x.device).tril(diagonal=past)
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    out = torch.einsum("hts,shd->thd", probs, values).reshape(T, nh * d)
    return w[p + "attn_output.weight"].matmul(out * torch.sigmoid(gate))


def _gated_delta_net(x, w, p, args, state) -> torch.Tensor:
    T, nk, nv, dk, dv = x.shape[0], args.nk, args.nv, args.dk, args.dv
    r = nv // nk
    mixed = w[p + "attn_qkv.weight"].matmul(x)
    z = w[p + "attn_gate.weight"].matmul(x).reshape(T, nv, dv)
    ba = w[p + "ssm_ba.weight"].matmul(x).reshape(T, nk, 2 * r)
    b, a = ba[..., :r].reshape(T, nv), ba[..., r:].reshape(T, nv)
    kernel = w[p + "ssm_conv1d.weight"].values.reshape(-1, args.conv_kernel)  # [channels, K]
    K = kernel.shape[1]
    padded = torch.cat([state["conv"], mixed])
    state["conv"] = padded[-(K - 1):].clone()
    conv = torch.nn.functional.silu(sum(padded[j:j + T] * kernel[:, j] for j in range(K)))
    q = conv[:, :nk * dk].reshape(T, nk, dk)
    k = conv[:, nk * dk:2 * nk * dk].reshape(T, nk, dk)
    v = conv[:, 2 * nk * dk:].reshape(T, nv, dv)
    q = q / torch.sqrt((q * q).sum(dim=-1, keepdim=True) + L2_EPS)
    k = k / torch.sqrt((k * k).sum(dim=-1, keepdim=True) + L2_EPS)
    q, k = q.repeat_interleave(r, dim=1) / math.sqrt(dk), k.repeat_interleave(r, dim=1)
    beta = torch.sigmoid(b)
    g = w[p + "ssm_a"].vector() * torch.nn.functional.softplus(a + w[p + "ssm_dt.bias"].vector())
    out = delta_rule(q, k, v, g, beta, state["S"])
    y = _rms_norm(out, w[p + "ssm_norm.weight"].vector(), args.eps) * torch.nn.functional.silu(z)
    return w[p + "ssm_out.weight"].matmul(y.reshape(T, nv * dv))


def _moe(x, w, p, args) -> torch.Tensor:
    logits = w[p + "ffn_gate_inp.weight"].matmul(x)
    probs = torch.softmax(logits, dim=-1)
    weights, top = torch.topk(probs, args.n_expert_used, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    if x.shape[0] == 1:  # decode: every chosen expert in one launch per projection
        hidden = torch.nn.functional.silu(w[p + "ffn_gate_exps.weight"].grouped(x[0], top[0])) * \
            w[p + "ffn_up_exps.weight"].grouped(x[0], top[0])
        out = (weights[0][:, None] * w[p + "ffn_down_exps.weight"].grouped(hidden, top[0])).sum(dim=0, keepdim=True)
    else:
        out = _experts_by_group(x, w, p, top, weights)
    shared = torch.nn.functional.silu(w[p + "ffn_gate_shexp.weight"].matmul(x)) * w[p + "ffn_up_shexp.weight"].matmul(x)
    shared = w[p + "ffn_down_shexp.weight"].matmul(shared)
    return out + shared * torch.sigmoid(x @ w[p + "ffn_gate_inp_shexp.weight"].vector())[:, None]


def _experts_by_group(x, w, p, top, weights) -> torch.Tensor:
    """Prefill: each chosen expert once, over the tokens that chose it."""
    out = torch.zeros_like(x)
    for e in torch.unique(top).tolist():
        tokens, slot = (top == e).nonzero(as_tuple=True)
        xe = x[tokens]
        hidden = torch.nn.functional.silu(w[p + "ffn_gate_exps.weight"].matmul(xe, e)) * \
            w[p + "ffn_up_exps.weight"].matmul(xe, e)
        out.index_add_(0, tokens, weights[tokens, slot][:, None] * w[p + "ffn_down_exps.weight"].matmul(hidden, e))
    return out
