"""GGUF block formats decoded inside Triton kernels: each `_values_*` turns one 256-value group of a row
(a K-quant super-block, or eight Q8_0 blocks) into float32 values, with the byte layouts of ggml-common.h and
the arithmetic of ggml's dequantize_row_* (reference/kquants.md). Elements are computed independently from their
index, so a kernel decodes a whole group as one vector.

Two kernels use them: `dequantize_kernel` (rows to float, for prefill GEMMs on tensor cores) and `gemv_kernel`
(decode: one token against BLOCK_ROWS rows per program, the weights read once, never written out as floats).
The reference beside them is gguf-py's dequantize (quant.quantize.dequantize), an implementation independent of
these formulas; tests/test_cuda_blocks.py holds every type to it, on a GPU or through TRITON_INTERPRET=1.
"""

from __future__ import annotations

import triton
import triton.language as tl

GROUP = 256  # values decoded at once
GROUP_BYTES = {"Q8_0": 8 * 34, "Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
TYPE_IDS = {"Q8_0": 0, "Q2_K": 2, "Q3_K": 3, "Q4_K": 4, "Q5_K": 5, "Q6_K": 6}


@triton.jit
def _u8(p, i):
    return tl.load(p + i).to(tl.int32)


@triton.jit
def _f16(p, i):
    """The float16 stored little-endian at byte offsets i, as float32."""
    bits = (_u8(p, i) | (_u8(p, i + 1) << 8)).to(tl.uint16)
    return bits.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _values_q8_0(p, e):
    block = e // 32
    d = _f16(p, block * 34)
    q = _u8(p, block * 34 + 2 + e % 32).to(tl.int8).to(tl.float32)
    return d * q


@triton.jit
def _scale_min_k4(p, j):
    """Q4_K/Q5_K 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes at p."""
    lo = j < 4
    jj = tl.where(lo, j, j - 4)
    sc = tl.where(lo, _u8(p, jj) & 63, (_u8(p, jj + 8) & 0xF) | ((_u8(p, jj) >> 6) << 4))
    m = tl.where(lo, _u8(p, jj + 4) & 63, (_u8(p, jj + 8) >> 4) | ((_u8(p, jj + 4) >> 6) << 4))
    return sc.to(tl.float32), m.to(tl.float32)


@triton.jit
def _values_q4_k(p, e):
    c, h, l = e // 64, (e % 64) // 32, e % 32
    q = (_u8(p, 16 + 32 * c + l) >> (4 * h)) & 0xF
    sc, m = _scale_min_k4(p + 4, 2 * c + h)
    return _f16(p, e * 0) * sc * q.to(tl.float32) - _f16(p, e * 0 + 2) * m


@triton.jit
def _values_q5_k(p, e):
    c, h, l = e // 64, (e % 64) // 32, e % 32
    q = ((_u8(p, 48 + 32 * c + l) >> (4 * h)) & 0xF) | (((_u8(p, 16 + l) >> (2 * c + h)) & 1) << 4)
    sc, m = _scale_min_k4(p + 4, 2 * c + h)
    return _f16(p, e * 0) * sc * q.to(tl.float32) - _f16(p, e * 0 + 2) * m


@triton.jit
def _values_q6_k(p, e):
    n, w = e // 128, e % 128
    quarter, l = w // 32, w % 32
    low = (_u8(p, 64 * n + l + 32 * (quarter % 2)) >> (4 * (quarter // 2))) & 0xF
    high = (_u8(p, 128 + 32 * n + l) >> (2 * quarter)) & 3
    q = (low | (high << 4)) - 32
    scale = _u8(p, 192 + 8 * n + l // 16 + 2 * quarter).to(tl.int8).to(tl.float32)
    return _f16(p, e * 0 + 208) * scale * q.to(tl.float32)


@triton.jit
def _values_q2_k(p, e):
    n, w = e // 128, e % 128
    j, h, l = w // 32, (w % 32) // 16, w % 16
    q = (_u8(p, 16 + 32 * n + 16 * h + l) >> (2 * j)) & 3
    sc = _u8(p, 8 * n + 2 * j + h)
    return _f16(p, e * 0 + 80) * (sc & 0xF).to(tl.float32) * q.to(tl.float32) - \
        _f16(p, e * 0 + 82) * (sc >> 4).to(tl.float32)


@triton.jit
def _values_q3_k(p, e):
    n, w = e // 128, e % 128
    j, h, l = w // 32, (w % 32) // 16, w % 16
    q = (_u8(p, 32 + 32 * n + 16 * h + l) >> (2 * j)) & 3
    has_high = (_u8(p, 16 * h + l) >> (4 * n + j)) & 1
    s = 8 * n + 2 * j + h  # scale index 0..15: low 4 bits and high 2 bits packed in 12 bytes
    group, k = s // 4, s % 4
    low = (_u8(p, 96 + k + 4 * (group % 2)) >> (4 * (group // 2))) & 0xF
    high = (_u8(p, 104 + k) >> (2 * group)) & 3
    scale = (low | (high << 4)) - 32
    return _f16(p, e * 0 + 108) * scale.to(tl.float32) * (q - 4 * (1 - has_high)).to(tl.float32)


@triton.jit
def values(p, e, TYPE: tl.constexpr):
    """float32 values of elements e (0..255) of the group whose bytes start at p."""
    if TYPE == 0:
        return _values_q8_0(p, e)
    elif TYPE == 2:
        return _values_q2_k(p, e)
    elif TYPE == 3:
        return _values_q3_k(p, e)
    elif TYPE == 4:
        return _values_q4_k(p, e)
    elif TYPE == 5:
        return _values_q5_k(p, e)
    else:
        return _values_q6_k(p, e)


@triton.jit
def dequantize_kernel(w, out, n_groups, TYPE: tl.constexpr, GROUP_BYTES: tl.constexpr, BLOCK_GROUPS: tl.constexpr):
    """out[g*256 : (g+1)*256] = the values of group g, for BLOCK_GROUPS groups per program."""
    g = tl.program_id(0) * BLOCK_GROUPS + tl.arange(0, BLOCK_GROUPS)
    valid = g < n_groups
    e = tl.arange(0, 256)
    base = w + tl.where(valid, g, 0).to(tl.int64)[:, None] * GROUP_BYTES
    tl.store(out + g.to(tl.int64)[:, None] * 256 + e[None, :], values(base, e[None, :], TYPE), mask=valid[:, None])


@triton.jit
def gemv_kernel(w, x, y, n_rows, row_bytes, n_groups, TYPE: tl.constexpr, GROUP_BYTES: tl.constexpr,
                BLOCK_ROWS: tl.constexpr):
    """y[r] = W[r] . x for BLOCK_ROWS rows per program: groups decoded in registers, summed in float32."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    valid = rows < n_rows
    e = tl.arange(0, 256)
    acc = tl.zeros((BLOCK_ROWS,), tl.float32)
    for g in range(n_groups):
        xs = tl.load(x + g * 256 + e)
        base = w + tl.where(valid, rows, 0).to(tl.int64)[:, None] * row_bytes + g * GROUP_BYTES
        acc += tl.sum(values(base, e[None, :], TYPE) * xs[None, :], axis=1)
    tl.store(y + rows, acc, mask=valid)


@triton.jit
def grouped_gemv_kernel(w, experts, x, y, n_rows, row_bytes, expert_bytes, x_stride, n_groups, TYPE: tl.constexpr,
                        GROUP_BYTES: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """y[s, r] = W[experts[s]][r] . x[s] for the selected experts' slots s (program axis 1), BLOCK_ROWS rows per
    program (axis 0): a decode step's routed experts in one launch. x_stride 0 gives every slot the same input."""
    s = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    valid = rows < n_rows
    e = tl.arange(0, 256)
    expert = tl.load(experts + s).to(tl.int64)
    acc = tl.zeros((BLOCK_ROWS,), tl.float32)
    for g in range(n_groups):
        xs = tl.load(x + s * x_stride + g * 256 + e)
        base = w + expert * expert_bytes + tl.where(valid, rows, 0).to(tl.int64)[:, None] * row_bytes + g * GROUP_BYTES
        acc += tl.sum(values(base, e[None, :], TYPE) * xs[None, :], axis=1)
    tl.store(y + s * n_rows + rows, acc, mask=valid)
