"""RMSNorm as one kernel: a decode step normalises 2-5 vectors per layer (attention or DeltaNet input, the MoE
input, query and key heads, the DeltaNet output), and as separate torch ops each is five launches (square, mean,
rsqrt, two products). One program per row reads it once and writes it once; the DeltaNet output's gate
(norm(x) * silu(z)) is fused in the same pass. Reference: `rms_norm_reference` beside it."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def rms_norm_kernel(x, w, gate, out, cols, eps, BLOCK: tl.constexpr, GATED: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    valid = c < cols
    v = tl.load(x + row * cols + c, mask=valid, other=0.0)
    scale = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / cols + eps)
    y = v * scale * tl.load(w + c, mask=valid, other=0.0)
    if GATED:
        z = tl.load(gate + row * cols + c, mask=valid, other=0.0)
        y = y * z / (1.0 + tl.exp(-z))
    tl.store(out + row * cols + c, y, mask=valid)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, gate: torch.Tensor | None = None) -> torch.Tensor:
    """x / rms(x) * w over the last axis (w [cols]), times silu(gate) when a gate of x's shape is given."""
    cols = x.shape[-1]
    x = x.contiguous()
    out = torch.empty_like(x)
    gated = gate is not None
    rms_norm_kernel[(x.numel() // cols,)](x, w.contiguous(), gate.contiguous() if gated else x, out, cols, eps,
                                          triton.next_power_of_2(cols), gated)
    return out


def rms_norm_reference(x: torch.Tensor, w: torch.Tensor, eps: float, gate: torch.Tensor | None = None) -> torch.Tensor:
    """The same in plain torch ops."""
    y = x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + eps) * w
    return y if gate is None else y * torch.nn.functional.silu(gate)
