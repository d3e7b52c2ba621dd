"""Quantized-activation matrix products: llama.cpp's CPU scheme, in numba.

Activations are rounded to 8 bits per block exactly as ggml does before its vec_dot kernels:
- Q8_K (for Q2_K..Q6_K weights): per 256 values one float32 scale d = max/-127 (max = the value of largest
  magnitude), q = round-half-even(x * -127/max) capped at 127, and the sums of q per 16 values (bsums).
- Q8_0 (for Q8_0, Q4_0, Q5_0 weights): per 32 values, q = round(x * 127/amax), scale amax/127 rounded to
  float16; Q8_1 (for Q5_1) is the same plus s = float16(amax/127 * sum q) per block, which the weights' offset
  multiplies. Both are one array set here (s is always made).
Each weight block is then dotted in integers (simd.make_block_accumulate: VPMADDUBSW + VPMADDWD on x86) and the
block's scales applied once: sum_blocks d_act * (d * sum_j sc_j * dot_j - dmin * sum_j m_j * bsum_j).
Integer sums are exact, so the results equal ggml_vec_dot_*_q8_K up to the order of float additions; the tests hold
them to ggml through ctypes and to `qmatmul_reference`, the numpy meaning of the whole scheme.

    acts = quantize_activations(x, qtype)           # x float32 [T, cols]
    y = grouped_qmatmul(raw, qtype, acts, experts, starts, src)   # raw uint8 [E, rows, bytes_per_row]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit, prange

from localcoder.kernels.simd import ACC_LANES, Block, Field, Scales, make_block_accumulate, make_q32_accumulate
from quant.ksearch import fp16_round
from quant.quantize import dequantize, qtype_of

T = GGMLQuantizationType
F = np.float32
KINDS = {T.Q2_K: 2, T.Q3_K: 3, T.Q4_K: 4, T.Q5_K: 5, T.Q6_K: 6, T.Q8_0: 8, T.Q4_0: 10, T.Q5_0: 11, T.Q5_1: 12}
Q32_KINDS = {8: "q8_0", 10: "q4_0", 11: "q5_0", 12: "q5_1"}  # 32-value blocks on Q8_0 / Q8_1 activations
TILE = 32  # weight rows per parallel job (fewer, larger jobs than 8 rows: MoE gate/up 135 -> 167 GMAC/s)
TOKENS = 4  # slots dotted together with one unpacking of each weight block (the tuples in _grouped are this long)


@dataclass
class QuantizedActivations:
    """Rows of activations in one of ggml's 8-bit activation formats: q int8 [T, cols], d float32 [T, blocks],
    bsums int32 [T, cols // 16] (Q8_K; zeros [T, 1] otherwise), s float32 [T, blocks] (Q8_0/Q8_1: Q8_1's
    float16 d * sum q; zeros [T, 1] for Q8_K)."""

    block: int
    q: np.ndarray
    d: np.ndarray
    bsums: np.ndarray
    s: np.ndarray


class Activations:
    """float32 activations [T, cols] and, made on first use, their Q8_K / Q8_0 forms: the weights that read the
    same input (q/k/v, gate/up) share one quantization."""

    def __init__(self, x: np.ndarray):
        self.x = np.ascontiguousarray(x, dtype=F)
        self._quantized: dict[int, QuantizedActivations] = {}

    def quantized(self, qtype) -> QuantizedActivations:
        block = activation_block(qtype)
        if block not in self._quantized:
            self._quantized[block] = quantize_activations(self.x, qtype)
        return self._quantized[block]


def supports(qtype, cols: int) -> bool:
    """Whether weights of `qtype` with `cols` columns run on quantized activations (the K-quants, Q8_0 and the
    Q4_0/Q5_0/Q5_1 fallbacks; float tensors stay float32)."""
    return qtype_of(qtype) in KINDS and cols % activation_block(qtype) == 0


def activation_block(qtype) -> int:
    """256 (Q8_K) for the K-quants, 32 (Q8_0 / Q8_1) for the 32-value formats."""
    return 32 if KINDS.get(qtype_of(qtype), 0) in Q32_KINDS else 256


_ROUNDER = F(12582912.0)  # 1.5 * 2**23: adding and subtracting it rounds a float32 below 2**22 half to even


@njit(parallel=True, cache=True)
def _quantize_q8_k(x, q, d, bsums):
    """ggml's quantize_row_q8_K_ref, row by row, in loops LLVM vectorises (the rounding is ggml's nearest_int
    trick done in float32 arithmetic)."""
    n_blocks = x.shape[1] // 256
    for job in prange(x.shape[0] * n_blocks):
        t, b = job // n_blocks, job % n_blocks
        xs = x[t, 256 * b:256 * b + 256]
        amax = F(0.0)
        for j in range(256):
            amax = max(amax, abs(xs[j]))
        if amax == 0:
            d[t, b] = 0
            q[t, 256 * b:256 * b + 256] = 0
            bsums[t, 16 * b:16 * b + 16] = 0
            continue
        j = 0
        while abs(xs[j]) != amax:  # ggml keeps the first value of the largest magnitude, with its sign
            j += 1
        iscale = F(-127.0) / xs[j]
        for j in range(256):
            v = (iscale * xs[j] + _ROUNDER) - _ROUNDER
            q[t, 256 * b + j] = np.int8(min(F(127.0), v))
        for k in range(16):
            s = 0
            for j in range(16):
                s += np.int32(q[t, 256 * b + 16 * k + j])
            bsums[t, 16 * b + k] = s
        d[t, b] = F(1.0) / iscale


@njit(parallel=True, cache=True)
def _quantize_q8_0(x, q, d, s):
    """ggml's x86 quantize_row_q8_0 / quantize_row_q8_1 (scale amax/127 stored as float16, values x * 127/amax
    rounded to even; Q8_1's s = float16(scale * sum of the values))."""
    n_blocks = x.shape[1] // 32
    for job in prange(x.shape[0] * n_blocks):
        t, b = job // n_blocks, job % n_blocks
        o = 32 * b
        amax = F(0.0)
        for j in range(32):
            amax = max(amax, abs(x[t, o + j]))
        inv = F(127.0) / amax if amax != 0 else F(0.0)
        scale = amax / F(127.0)
        d[t, b] = fp16_round(scale)
        total = 0
        for j in range(32):
            v = np.int8(np.rint(x[t, o + j] * inv))
            q[t, o + j] = v
            total += np.int32(v)
        s[t, b] = fp16_round(scale * F(total))


def quantize_activations(x: np.ndarray, qtype) -> QuantizedActivations:
    """x float32 [T, cols] in the activation format ggml pairs with weights of `qtype` (Q8_K, or Q8_0 / Q8_1)."""
    x = np.ascontiguousarray(x, dtype=F)
    block = activation_block(qtype)
    n, cols = x.shape
    if cols % block:
        raise ValueError(f"{cols} activations do not split into {block}-value blocks")
    q, d = np.empty((n, cols), np.int8), np.empty((n, cols // block), F)
    if block == 32:
        s = np.empty((n, cols // 32), F)
        _quantize_q8_0(x, q, d, s)
        return QuantizedActivations(32, q, d, np.zeros((n, 1), np.int32), s)
    bsums = np.empty((n, cols // 16), np.int32)
    _quantize_q8_k(x, q, d, bsums)
    return QuantizedActivations(256, q, d, bsums, np.zeros((n, 1), F))


# The 8 groups of 32 values of each K-quant block (simd.Field: byte offset, shift and mask of the low bits, and of
# the high bits where the format has them), in the order of ggml's dequantize_row_*.
LAYOUTS = {
    4: tuple(Field(16 + 32 * (g // 2), 4 * (g % 2), 15) for g in range(8)),  # Q4_K: qs @16, nibbles
    5: tuple(Field(48 + 32 * (g // 2), 4 * (g % 2), 15, 16, g, 1, 4) for g in range(8)),  # Q5_K: + qh @16 bit g
    6: tuple(Field(64 * (g // 4) + 32 * (g % 2), 4 * ((g % 4) // 2), 15, 128 + 32 * (g // 4), 2 * (g % 4), 3, 4)
             for g in range(8)),  # Q6_K: ql @0, qh @128 (2 bits)
    2: tuple(Field(16 + 32 * (g // 4), 2 * (g % 4), 3) for g in range(8)),  # Q2_K: qs @16, 2 bits
    3: tuple(Field(32 + 32 * (g // 4), 2 * (g % 4), 3, 0, g, 1, 2) for g in range(8)),  # Q3_K: qs @32 + hmask @0
}
# Each format as a simd.Block: where its integer scales live, the integers its activation sums are weighted by
# (mins, or the scale again where values carry an offset: Q6_K -32, Q3_K -4), and its float16 d / dmin. Q6_K and
# Q2_K scales are read in place; Q4_K/Q5_K/Q3_K pack theirs in 6 bits and are unpacked in registers.
_K4 = Scales(0, 8, packed="k4", packed_at=4), Scales(8, 8, packed="k4", packed_at=4)
BLOCKS = {
    4: Block(LAYOUTS[4], *_K4, d_at=0, m_at=2),
    5: Block(LAYOUTS[5], *_K4, d_at=0, m_at=2),
    6: Block(LAYOUTS[6], Scales(192, signed=True), Scales(192, signed=True), d_at=208, m_factor=32),
    2: Block(LAYOUTS[2], Scales(0, mask=0xF), Scales(0, shift=4, mask=0xF), d_at=80, m_at=82),
    3: Block(LAYOUTS[3], *(Scales(0, bias=32, packed="q3", packed_at=96),) * 2, d_at=108, m_factor=4),
}
BLOCK_BYTES_K = np.zeros(13, np.int64)  # bytes per block, by kind
for _qt, _kind in KINDS.items():
    BLOCK_BYTES_K[_kind] = GGML_QUANT_SIZES[_qt][1]
_q2_k, _q3_k, _q4_k, _q5_k, _q6_k = (make_block_accumulate(BLOCKS[k]) for k in (2, 3, 4, 5, 6))
_q8_0, _q4_0, _q5_0, _q5_1 = (make_q32_accumulate(Q32_KINDS[k]) for k in (8, 10, 11, 12))


@njit(cache=True)
def _q32_row(kind, w, o, n_blocks, q, d, sums, tokens, acc):
    """A row of a 32-value format (a function of its own: inlined, these loops slowed the K-quant path of the
    grouped kernel by a quarter)."""
    if kind == 8:
        _q8_0(w, o, q, d, sums, tokens, 0, acc, n_blocks)
    elif kind == 10:
        _q4_0(w, o, q, d, sums, tokens, 0, acc, n_blocks)
    elif kind == 11:
        _q5_0(w, o, q, d, sums, tokens, 0, acc, n_blocks)
    else:
        _q5_1(w, o, q, d, sums, tokens, 0, acc, n_blocks)


@njit(cache=True, inline="always")
def _row_dots(kind, w, o, n_blocks, q, d, bs, sums, tokens, acc, out, s, r):
    """One weight row (bytes from w[o]) dotted with the activations of each token in `tokens` (rows of q, d,
    bs, and sums: QuantizedActivations.s), into out[s + k, r]. Each block's scales are decoded right before its products, so a row streams
    from memory once and in order (a separate pass over the scales first left the hardware prefetcher behind: 13
    instead of 35 GB/s on a big matrix)."""
    acc[:] = 0
    if kind >= 8:
        _q32_row(kind, w, o, n_blocks, q, d, sums, tokens, acc)
    else:
        size = BLOCK_BYTES_K[kind]
        for b in range(n_blocks):
            ob = o + size * b
            if kind == 4:
                _q4_k(w, ob, q, d, bs, tokens, b, acc)
            elif kind == 6:
                _q6_k(w, ob, q, d, bs, tokens, b, acc)
            elif kind == 5:
                _q5_k(w, ob, q, d, bs, tokens, b, acc)
            elif kind == 2:
                _q2_k(w, ob, q, d, bs, tokens, b, acc)
            else:
                _q3_k(w, ob, q, d, bs, tokens, b, acc)
    for k in range(len(tokens)):
        out[s + k, r] = np.sum(acc[k])


@njit(parallel=True, cache=True, error_model="numpy")
def _grouped(kind, w, rows, row_bytes, experts, begins, ends, src, q, d, bs, sums, y):
    """y[s, r] = row r of expert experts[g] . activations src[s], for the slots s in begins[g]:ends[g].
    w: all weight bytes, flat ([E, rows, row_bytes] in C order). A job is TILE rows of one group: its weight
    bytes stay in L1/L2 while the group's slots pass over them, TOKENS at a time (each weight block is unpacked once
    per TOKENS slots), then one by one."""
    n_tiles = (rows + TILE - 1) // TILE
    for job in prange(experts.shape[0] * n_tiles):
        g, tile = job // n_tiles, job % n_tiles
        base = experts[g] * rows * row_bytes
        acc = np.empty((TOKENS, ACC_LANES), F)
        s = begins[g]
        while s < ends[g]:
            if s + TOKENS <= ends[g]:
                tokens = (src[s], src[s + 1], src[s + 2], src[s + 3])
                for r in range(tile * TILE, min(rows, tile * TILE + TILE)):
                    _row_dots(kind, w, base + r * row_bytes, d.shape[1], q, d, bs, sums, tokens, acc, y, s, r)
                s += TOKENS
            else:
                for r in range(tile * TILE, min(rows, tile * TILE + TILE)):
                    _row_dots(kind, w, base + r * row_bytes, d.shape[1], q, d, bs, sums, (src[s],), acc, y, s, r)
                s += 1


def grouped_qmatmul(raw: np.ndarray, qtype, acts: QuantizedActivations, experts, starts, src) -> np.ndarray:
    """y[s] = W[experts[g]] . acts[src[s]] for each slot s in starts[g]:starts[g+1] (float32 [slots, rows]).
    raw: uint8 [E, rows, bytes_per_row], C-contiguous, in block format `qtype` (one of KINDS)."""
    qt = qtype_of(qtype)
    block, type_size = GGML_QUANT_SIZES[qt]
    cols = acts.q.shape[1]
    if qt not in KINDS or acts.block != activation_block(qt) or raw.shape[-1] * block != cols * type_size:
        raise ValueError(f"{qt.name} rows of {raw.shape[-1]} bytes cannot take {cols} Q8 activations")
    experts, starts, src = (np.ascontiguousarray(a, dtype=np.int64) for a in (experts, starts, src))
    y = np.empty((int(starts[-1]), raw.shape[1]), F)
    _grouped(KINDS[qt], raw.reshape(-1), raw.shape[1], raw.shape[2], experts, starts[:-1], starts[1:], src,
             acts.q, acts.d, acts.bsums, acts.s, y)
    return y


def qmatmul(raw: np.ndarray, qtype, acts: QuantizedActivations) -> np.ndarray:
    """acts @ W.T for a 2-D weight (uint8 [rows, bytes_per_row]): float32 [T, rows]."""
    n = acts.q.shape[0]
    return grouped_qmatmul(raw[None], qtype, acts, np.zeros(1, np.int64), np.array([0, n]), np.arange(n))


def dequantize_activations(acts: QuantizedActivations) -> np.ndarray:
    """float64 [T, cols]: the values the quantized activations stand for (d * q per block)."""
    q = acts.q.astype(np.float64).reshape(acts.q.shape[0], -1, acts.block)
    return (q * acts.d.astype(np.float64)[:, :, None]).reshape(acts.q.shape)


def qmatmul_reference(raw: np.ndarray, qtype, x: np.ndarray) -> np.ndarray:
    """The whole scheme the plain way: activations quantized by `quantize_activations`, taken back to float64,
    multiplied by the gguf-py-dequantized weights in float64. Q5_1's offsets m meet the activations through
    Q8_1's float16 sums s, as in ggml."""
    acts = quantize_activations(x, qtype)
    w = dequantize(raw, qtype, (raw.shape[0], acts.q.shape[1])).astype(np.float64)
    if qtype_of(qtype) != T.Q5_1:
        return dequantize_activations(acts) @ w.T
    m = q5_1_offsets(raw)
    return dequantize_activations(acts) @ (w - np.repeat(m, 32, axis=1)).T + acts.s.astype(np.float64) @ m.T


def q5_1_offsets(raw: np.ndarray) -> np.ndarray:
    """The float16 offsets m of Q5_1 rows (uint8 [..., rows, bytes]) as float64 [..., rows, blocks]."""
    blocks = np.ascontiguousarray(raw).reshape(raw.shape[:-1] + (-1, 24))
    return np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0].astype(np.float64)
