"""The gated delta rule on the GPU: one Triton program per (value head, block of value columns) walks the tokens,
keeping its slice of the state S [dk, BLOCK_V] in registers; the state is read once and written once per call.
Decode is one token; a prompt is the same walk over all its tokens in one launch (a chunked, tensor-core form for
long prompts is the next step, to be chosen by measurement). Reference: kernels/deltanet.delta_rule_reference."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_V = 32


@triton.jit
def delta_rule_kernel(q, k, v, g, beta, S, out, n_tokens, n_heads, DK: tl.constexpr, DV: tl.constexpr,
                      BLOCK_V: tl.constexpr):
    h = tl.program_id(0)
    i = tl.arange(0, DK)
    j = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    state = S + h * DK * DV + i[:, None] * DV + j[None, :]
    s = tl.load(state)
    for t in range(n_tokens):
        row = t * n_heads + h
        s = s * tl.exp(tl.load(g + row))
        kt = tl.load(k + row * DK + i)
        memory = tl.sum(kt[:, None] * s, axis=0)
        delta = tl.load(beta + row) * (tl.load(v + row * DV + j) - memory)
        s = s + kt[:, None] * delta[None, :]
        tl.store(out + row * DV + j, tl.sum(tl.load(q + row * DK + i)[:, None] * s, axis=0))
    tl.store(state, s)


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
               S: torch.Tensor) -> torch.Tensor:
    """out [T, nv, dv] of the recurrence over T tokens; q, k [T, nv, dk], v [T, nv, dv], g, beta [T, nv] (float32);
    S [nv, dk, dv] float32, updated in place. dk and dv must be powers of two (dv at least BLOCK_V)."""
    T, nv, dk = q.shape
    dv = v.shape[2]
    out = torch.empty((T, nv, dv), dtype=torch.float32, device=q.device)
    block = min(BLOCK_V, dv)
    delta_rule_kernel[(nv, dv // block)](*(a.contiguous().float() for a in (q, k, v, g, beta)), S, out, T, nv, dk, dv,
                                         block)
    return out
