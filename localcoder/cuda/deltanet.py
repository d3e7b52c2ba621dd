"""The gated delta rule on the GPU: one Triton program per (value head, block of value columns) walks the tokens,
keeping its slice of the state S [dk, BLOCK_V] in registers; the state is read once and written once per call.
Decode is one token; a prompt is the same walk over all its tokens in one launch.

`delta_rule_chunked` is the same recurrence in chunks of CHUNK tokens on matrix products (tensor cores): within a
chunk the corrections form a unit lower-triangular system (the WY form), solved at once for every chunk; only the
state hand-over between chunks is sequential. Which form a prompt takes is decided by its length against
CHUNKED_FROM, a threshold to be set from benchmarks/cuda_bench.py's measurement on a GPU.
Reference for both: kernels/deltanet.delta_rule_reference (float64 numpy, token by token)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_V = 32
CHUNK = 64
CHUNKED_FROM = 64  # prompt tokens from which the chunked form is used


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


def delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                       S: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """delta_rule's contract, computed chunk by chunk. Within a chunk, with Γ the cumulative log decay, the
    corrections Δ = β(v - memory) solve (I + A)Δ = βV - diag(β e^Γ) K S0 with A[t,s] = β_t e^(Γt-Γs) k_t·k_s (s < t);
    outputs are e^Γ Q S0 + (QKᵀ ⊙ e^(Γt-Γs))_(s<=t) Δ and the state e^Γlast S0 + (K ⊙ e^(Γlast-Γ))ᵀ Δ.
    Every exponent is <= 0, so nothing overflows; padding tokens (k = v = 0, β = 0, no decay) change nothing."""
    T, nv, dk = q.shape
    pad = (-T) % chunk
    n = (T + pad) // chunk

    def by_chunk(x: torch.Tensor) -> torch.Tensor:  # [T, nv, ...] -> [nv, n, chunk, ...]
        x = torch.nn.functional.pad(x.float(), (0, 0) * (x.dim() - 1) + (0, pad))
        return x.reshape(n, chunk, *x.shape[1:]).movedim(2, 0)

    q, k, v, g, beta = (by_chunk(a) for a in (q, k, v, g, beta))
    gamma = g.cumsum(dim=-1)
    causal = torch.ones((chunk, chunk), dtype=torch.bool, device=q.device).tril()
    decay = torch.exp((gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, float("-inf")))
    k_beta = k * beta[..., None]
    A = (k_beta @ k.transpose(-1, -2)) * decay  # only its strict lower part is read: the diagonal is taken as 1
    U = torch.linalg.solve_triangular(A, v * beta[..., None], upper=False, unitriangular=True)
    W = torch.linalg.solve_triangular(A, k_beta * torch.exp(gamma)[..., None], upper=False, unitriangular=True)
    scores = (q @ k.transpose(-1, -2)) * decay
    out = torch.empty_like(v)
    state = S
    for c in range(n):
        delta = U[:, c] - W[:, c] @ state
        out[:, c] = (q[:, c] * torch.exp(gamma[:, c])[..., None]) @ state + scores[:, c] @ delta
        last = gamma[:, c, -1]
        carried = k[:, c] * torch.exp(last[:, None] - gamma[:, c])[..., None]
        state = state * torch.exp(last)[:, None, None] + carried.transpose(-1, -2) @ delta
    S.copy_(state)
    return out.movedim(0, 2).reshape(n * chunk, nv, -1)[:T]
