"""The Qwen3-Next layers in float32 torch on the device: a port of localcoder/reference.py (same math, same state
layout) whose quantized projections run on the block formats (weights.DeviceWeight).

A decode step (one token, `Positions.host_start` None) never reads anything back to the host: the cache length
is a device tensor and every shape is fixed, so the step can be captured once as a CUDA graph and replayed at
every position (graphs.py). A prompt knows its start on the host and uses the whole-prompt forms: fused
scaled-dot-product attention, the chunked delta rule, experts grouped by the tokens that chose them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from localcoder.cuda.attention import decode_attention, prefill_attention
from localcoder.cuda.deltanet import CHUNKED_FROM, delta_rule, delta_rule_chunked
from localcoder.cuda.deltanet_inputs import prepare_reference, prepare_step
from localcoder.cuda.norms import rms_norm
from localcoder.cuda.rope import rope


@dataclass
class Positions:
    """Where a call's `count` tokens go: from `start` (int64 [1] on the device: the session's length), which the
    host also knows as `host_start` for a prompt, and does not read (None) in a decode step."""

    start: torch.Tensor
    count: int
    host_start: int | None
    _moved: dict = field(default_factory=dict)

    def on(self, device: torch.device) -> "Positions":
        """These positions with `start` on `device` (layers split over several GPUs)."""
        if device == self.start.device:
            return self
        if device not in self._moved:
            self._moved[device] = Positions(self.start.to(device), self.count, self.host_start)
        return self._moved[device]

    def all(self) -> torch.Tensor:
        return self.start + torch.arange(self.count, device=self.start.device)


def attention(x, w, p, args, state, pos: Positions, rope_tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Gated attention; state["k"], state["v"] [capacity, n_kv, head_dim] hold the session's keys and values;
    rope_tables: rope.rope_tables for the model's context on this device."""
    T, nh, nkv, d = x.shape[0], args.n_head, args.n_head_kv, args.head_dim
    qg = w[p + "attn_q.weight"].matmul(x).reshape(T, nh, 2 * d)
    q, gate = qg[..., :d], qg[..., d:].reshape(T, nh * d)
    k = w[p + "attn_k.weight"].matmul(x).reshape(T, nkv, d)
    v = w[p + "attn_v.weight"].matmul(x).reshape(T, nkv, d)
    q = rms_norm(q, w[p + "attn_q_norm.weight"].vector(), args.eps)
    k = rms_norm(k, w[p + "attn_k_norm.weight"].vector(), args.eps)
    positions = pos.all()
    q, k = rope(q, positions, *rope_tables), rope(k, positions, *rope_tables)
    if pos.host_start is None:  # decode: the cache row and its length come from the device
        state["k"].index_copy_(0, pos.start, k.to(state["k"].dtype))
        state["v"].index_copy_(0, pos.start, v.to(state["v"].dtype))
        out = decode_attention(q[0], state["k"], state["v"], pos.start + 1)[None]
    else:
        end = pos.host_start + T
        state["k"][pos.host_start:end] = k
        state["v"][pos.host_start:end] = v
        out = prefill_attention(q, state["k"][:end].float(), state["v"][:end].float())
    return w[p + "attn_output.weight"].matmul(out.reshape(T, nh * d) * torch.sigmoid(gate))


def gated_delta_net(x, w, p, args, state) -> torch.Tensor:
    """Gated DeltaNet; state["conv"] [K-1, channels] and state["S"] [nv, dk, dv] are updated in place."""
    T, nv, dv = x.shape[0], args.nv, args.dv
    mixed = w[p + "attn_qkv.weight"].matmul(x)
    z = w[p + "attn_gate.weight"].matmul(x).reshape(T, nv, dv)
    ba = w[p + "ssm_ba.weight"].matmul(x)
    kernel = w[p + "ssm_conv1d.weight"].values.reshape(-1, args.conv_kernel)  # [channels, K]
    prepare = prepare_step if T == 1 else prepare_reference
    q, k, v, g, beta = prepare(mixed, ba, state["conv"], kernel, w[p + "ssm_a"].vector(),
                               w[p + "ssm_dt.bias"].vector(), args.nk, args.dk, dv)
    rule = delta_rule_chunked if T >= CHUNKED_FROM else delta_rule
    out = rule(q, k, v, g, beta, state["S"])
    y = rms_norm(out, w[p + "ssm_norm.weight"].vector(), args.eps, gate=z)
    return w[p + "ssm_out.weight"].matmul(y.reshape(T, nv * dv))


def moe(x, w, p, args, routed=None) -> torch.Tensor:
    """Top-k routed experts (renormalized weights) plus the gated shared expert. routed(x, w, p, top, weights)
    computes the routed part (default: device_experts, every expert on the device)."""
    logits = w[p + "ffn_gate_inp.weight"].matmul(x)
    probs = torch.softmax(logits, dim=-1)
    weights, top = torch.topk(probs, args.n_expert_used, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    out = (routed or device_experts)(x, w, p, top, weights)
    shared = torch.nn.functional.silu(w[p + "ffn_gate_shexp.weight"].matmul(x)) * w[p + "ffn_up_shexp.weight"].matmul(x)
    shared = w[p + "ffn_down_shexp.weight"].matmul(shared)
    return out + shared * torch.sigmoid(x @ w[p + "ffn_gate_inp_shexp.weight"].vector())[:, None]


def device_experts(x, w, p, top, weights) -> torch.Tensor:
    """The routed experts' weighted sum [T, H], every expert's weights on the device."""
    if x.shape[0] == 1:  # decode: every chosen expert in one launch per projection, no host reads
        hidden = torch.nn.functional.silu(w[p + "ffn_gate_exps.weight"].grouped(x[0], top[0])) * \
            w[p + "ffn_up_exps.weight"].grouped(x[0], top[0])
        return (weights[0][:, None] * w[p + "ffn_down_exps.weight"].grouped(hidden, top[0])).sum(dim=0, keepdim=True)
    return _experts_by_group(x, w, p, top, weights)


def _experts_by_group(x, w, p, top, weights) -> torch.Tensor:
    """Prefill: every (token, expert) pair sorted by expert, each projection one grouped launch."""
    tokens, ranks, experts, starts = routing_pairs(top.cpu().numpy())
    gate, up, down = (w[p + f"ffn_{proj}_exps.weight"] for proj in ("gate", "up", "down"))
    hidden = torch.nn.functional.silu(gate.grouped_gemm(x, experts, starts, tokens)) * \
        up.grouped_gemm(x, experts, starts, tokens)
    y = down.grouped_gemm(hidden, experts, starts, np.arange(len(tokens)))
    t, r = torch.from_numpy(tokens).to(x.device), torch.from_numpy(ranks).to(x.device)
    return torch.zeros_like(x).index_add_(0, t, weights[t, r][:, None] * y)


def routing_pairs(chosen: np.ndarray, keep=None):
    """The (token, rank) pairs of the router's choices chosen [T, k] (those whose expert is in `keep`, when
    given), sorted by expert as grouped products take them: (tokens, ranks, group experts, group starts)."""
    tokens, ranks = np.nonzero(np.ones(chosen.shape, bool) if keep is None else np.isin(chosen, keep))
    order = np.argsort(chosen[tokens, ranks], kind="stable")
    tokens, ranks = tokens[order], ranks[order]
    experts, first = np.unique(chosen[tokens, ranks], return_index=True)
    return tokens, ranks, experts, np.append(first, len(tokens))
