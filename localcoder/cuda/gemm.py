"""Prompt-time products of quantized weights without writing them out as floats: a grouped GEMM whose tiles
decode 256-value groups of the block format in registers (blocks.values) and multiply them with tl.dot (tensor
cores; TF32 unless exact), for all chosen experts of a layer in one launch.

The contract is the CPU runtime's grouped matmul: per expert group g and slot s in starts[g]:starts[g+1],
y[s] = W[experts[g]] @ x[src[s]]. Tiles are (group, BLOCK_T consecutive slots) x BLOCK_R rows; each weight group
is decoded once per tile of tokens. Reference: `grouped_gemm_reference` (dequantize, then torch.matmul per group).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from localcoder.cuda.blocks import GROUP_BYTES, TYPE_IDS, values
from localcoder.cuda.quant import INTERPRETED, _check, dequantize, expert_rows

BLOCK_T = 32  # slots (tokens) per tile
BLOCK_R = 128 if INTERPRETED else 64  # weight rows per tile


@triton.jit
def grouped_gemm_kernel(w, x, y, tile_expert, tile_start, tile_end, src, n_rows, row_bytes, expert_bytes, x_stride,
                        n_groups, TYPE: tl.constexpr, GROUP_BYTES: tl.constexpr, BLOCK_T: tl.constexpr,
                        BLOCK_R: tl.constexpr, PRECISION: tl.constexpr):
    tile = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    expert = tl.load(tile_expert + tile).to(tl.int64)
    slots = tl.load(tile_start + tile) + tl.arange(0, BLOCK_T)
    slot_ok = slots < tl.load(tile_end + tile)
    tokens = tl.load(src + slots, mask=slot_ok, other=0).to(tl.int64)
    e = tl.arange(0, 256)
    acc = tl.zeros((BLOCK_T, BLOCK_R), tl.float32)
    for g in range(n_groups):
        xs = tl.load(x + tokens[:, None] * x_stride + g * 256 + e[None, :], mask=slot_ok[:, None], other=0.0)
        base = w + expert * expert_bytes + tl.where(row_ok, rows, 0).to(tl.int64)[:, None] * row_bytes + g * GROUP_BYTES
        acc += tl.dot(xs, tl.trans(values(base, e[None, :], TYPE)), input_precision=PRECISION)
    out = y + slots.to(tl.int64)[:, None] * n_rows + rows[None, :]
    tl.store(out, acc, mask=slot_ok[:, None] & row_ok[None, :])


def grouped_gemm(raw: torch.Tensor, qtype: str, x: torch.Tensor, experts, starts, src, exact: bool | None = None
                 ) -> torch.Tensor:
    """float32 [slots, rows] (see the module docstring). raw uint8 [E, rows, row_bytes] (experts may sit apart, as
    in the hybrid runtime's slot pool); x float32 [T, cols]; experts, starts, src host integer arrays. exact:
    float32 products; by default whatever torch allows matmuls (TorchModel.precision sets it)."""
    if exact is None:
        exact = not torch.backends.cuda.matmul.allow_tf32
    rows, row_bytes = raw.shape[1], raw.shape[2]
    raw = expert_rows(raw)
    groups = _check(raw[0, :1], qtype, x.shape[-1])
    experts, starts, src = (np.asarray(a, np.int64) for a in (experts, starts, src))
    counts = np.diff(starts)
    per_group = -(-counts // BLOCK_T)
    group_of_tile = np.repeat(np.arange(len(experts)), per_group)
    first_tile = np.cumsum(per_group) - per_group
    tile_start = starts[group_of_tile] + (np.arange(len(group_of_tile)) - first_tile[group_of_tile]) * BLOCK_T
    device = raw.device
    as_device = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.int32)).to(device)  # noqa: E731
    y = torch.empty((int(starts[-1]), rows), dtype=torch.float32, device=device)
    if len(group_of_tile):
        x = x.contiguous().float()
        grouped_gemm_kernel[(triton.cdiv(rows, BLOCK_R), len(group_of_tile))](
            raw, x, y, as_device(experts[group_of_tile]), as_device(tile_start), as_device(starts[group_of_tile + 1]),
            as_device(src), rows, row_bytes, raw.stride(0), x.shape[1], groups, TYPE_IDS[qtype], GROUP_BYTES[qtype],
            BLOCK_T, BLOCK_R, "ieee" if exact else "tf32")
    return y


def grouped_gemm_reference(raw: torch.Tensor, qtype: str, x: torch.Tensor, experts, starts, src) -> torch.Tensor:
    """The same, one dequantized expert and one torch.matmul per group."""
    y = torch.empty((int(starts[-1]), raw.shape[1]), dtype=torch.float32, device=raw.device)
    for g, e in enumerate(experts):
        slots = torch.arange(int(starts[g]), int(starts[g + 1]), device=raw.device)
        w = dequantize(raw[int(e)].contiguous(), qtype, x.shape[-1])
        y[slots] = x[torch.as_tensor(np.asarray(src)[slots.cpu().numpy()], device=raw.device)] @ w.T
    return y
