"""Rotary position embedding (rotate-half, on the first rope_dim dims of each head) as one kernel.

As torch ops RoPE is ~15 launches per call (angles, cos, sin, halves, products, concatenation), twice per
attention layer per decode step. Here the angles' cos and sin are tabulated once per model (computed in float64
like reference.py, stored float32) for every position up to the context length, and one program per (token, head)
reads its position from the device, so the kernel fits a recorded decode graph. Reference: `rope_reference`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def rope_tables(n_positions: int, rope_dim: int, base: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos and sin [n_positions, rope_dim / 2] of position x base^(-2i / rope_dim)."""
    half = rope_dim // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64) * 2.0 / rope_dim)
    angle = torch.arange(n_positions, dtype=torch.float64)[:, None] * inv_freq
    return torch.cos(angle).float().to(device), torch.sin(angle).float().to(device)


@triton.jit
def rope_kernel(x, cos, sin, positions, out, n_heads, D: tl.constexpr, HALF: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # token * n_heads + head
    pos = tl.load(positions + row // n_heads).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    valid = d < D
    rotated = d < 2 * HALF
    first = d < HALF
    partner = tl.where(first, d + HALF, d - HALF)
    f = tl.where(first, d, d - HALF)
    c = tl.load(cos + pos * HALF + f, mask=rotated, other=1.0)
    s = tl.load(sin + pos * HALF + f, mask=rotated, other=0.0)
    v = tl.load(x + row * D + d, mask=valid, other=0.0)
    w = tl.load(x + row * D + partner, mask=rotated & valid, other=0.0)
    sign = tl.where(first, -1.0, 1.0)
    tl.store(out + row * D + d, v * c + sign * w * s, mask=valid)


def rope(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D] rotated at positions [T] (int64 on the device) with rope_tables' cos and sin."""
    T, heads, D = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    rope_kernel[(T * heads,)](x, cos, sin, positions.contiguous(), out, heads, D, cos.shape[1],
                              triton.next_power_of_2(D))
    return out


def rope_reference(x: torch.Tensor, positions: torch.Tensor, rope_dim: int, base: float) -> torch.Tensor:
    """Rotate-half RoPE as plain torch ops, angles in float64 (reference.py's formula)."""
    half = rope_dim // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) * 2.0 / rope_dim)
    angle = positions.to(torch.float64)[:, None, None] * inv_freq
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    a, b = x[..., :half], x[..., half:rope_dim]
    return torch.cat([a * cos - b * sin, b * cos + a * sin, x[..., rope_dim:]], dim=-1)
