"""Host-side calls of the block-format kernels: dequantize rows, multiply one token by a quantized matrix."""

from __future__ import annotations

import os

import torch
import triton

from localcoder.cuda.blocks import (GROUP, GROUP_BYTES, TYPE_IDS, dequantize_kernel, gemv_kernel,
                                    grouped_gemv_kernel)
from localcoder.errors import UserError

# Work per program. Triton's interpreter (TRITON_INTERPRET=1, tests without a GPU) pays per program, so there
# programs are made large; on a GPU these are the starting points to tune against measurements.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
GEMV_ROWS = 64 if INTERPRETED else 4  # rows per program of the decode kernel
DEQUANT_GROUPS = 256 if INTERPRETED else 8  # 256-value groups per program of the dequantize kernel


def _check(raw: torch.Tensor, qtype: str, cols: int) -> int:
    """Groups per row, after checking the type and that rows hold whole groups."""
    if qtype not in TYPE_IDS:
        raise UserError(f"the CUDA backend has no kernel for {qtype} yet; it runs {', '.join(TYPE_IDS)}")
    if cols % GROUP:
        raise UserError(f"{qtype} rows of {cols} values are not whole groups of {GROUP} for the CUDA kernels")
    groups = cols // GROUP
    if raw.dtype != torch.uint8 or raw.dim() != 2 or raw.shape[1] != groups * GROUP_BYTES[qtype]:
        raise ValueError(f"expected uint8 rows of {groups * GROUP_BYTES[qtype]} bytes, got {tuple(raw.shape)} {raw.dtype}")
    return groups


def dequantize(raw: torch.Tensor, qtype: str, cols: int) -> torch.Tensor:
    """float32 [rows, cols] from uint8 rows in block format `qtype` (on raw's device)."""
    groups = _check(raw, qtype, cols)
    out = torch.empty((raw.shape[0], cols), dtype=torch.float32, device=raw.device)
    total = raw.shape[0] * groups
    dequantize_kernel[(triton.cdiv(total, DEQUANT_GROUPS),)](raw.contiguous(), out, total, TYPE_IDS[qtype],
                                                             GROUP_BYTES[qtype], DEQUANT_GROUPS)
    return out


def gemv(raw: torch.Tensor, qtype: str, x: torch.Tensor) -> torch.Tensor:
    """float32 [rows]: W @ x for one token x [cols] (float32), W in block format `qtype`."""
    groups = _check(raw, qtype, x.shape[-1])
    rows = raw.shape[0]
    y = torch.empty(rows, dtype=torch.float32, device=raw.device)
    gemv_kernel[(triton.cdiv(rows, GEMV_ROWS),)](raw.contiguous(), x.contiguous().float(), y, rows, raw.shape[1],
                                                 groups, TYPE_IDS[qtype], GROUP_BYTES[qtype], GEMV_ROWS)
    return y


def expert_rows(raw: torch.Tensor) -> torch.Tensor:
    """raw uint8 [E, rows, row_bytes] with each expert's rows contiguous, as the grouped kernels address it (an
    expert's start is raw.stride(0) bytes after the previous one's); copied only when its rows are not."""
    return raw if raw.stride(2) == 1 and raw.stride(1) == raw.shape[2] else raw.contiguous()


def grouped_gemv(raw: torch.Tensor, qtype: str, experts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """float32 [slots, rows]: W[experts[s]] @ x[s] for each slot; raw uint8 [E, rows, row_bytes] (each expert's rows
    contiguous; experts may sit further apart, as in the hybrid runtime's slot pool); x [cols] (the same input for
    every slot) or [slots, cols]."""
    rows, row_bytes = raw.shape[1], raw.shape[2]
    raw = expert_rows(raw)
    groups = _check(raw[0, :1], qtype, x.shape[-1])
    slots = experts.shape[0]
    x = x.contiguous().float()
    y = torch.empty((slots, rows), dtype=torch.float32, device=raw.device)
    grouped_gemv_kernel[(triton.cdiv(rows, GEMV_ROWS), slots)](
        raw, experts.to(torch.int32).contiguous(), x, y, rows, row_bytes, raw.stride(0),
        0 if x.dim() == 1 else x.shape[1], groups, TYPE_IDS[qtype], GROUP_BYTES[qtype], GEMV_ROWS)
    return y
