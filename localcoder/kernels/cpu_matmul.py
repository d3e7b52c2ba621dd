"""CPU matrix multiplication against weights kept in their GGUF block formats (no whole-tensor dequantization).

    y = matmul(raw, qtype, x)      # raw: uint8 [rows, bytes_per_row] (a GGUF tensor), x: float32 [T, cols]
                                   # y: float32 [T, rows] = x @ dequantize(raw).T

Each weight block is decoded once into a small float32 buffer and used for all T tokens, so decode (T = 1) and
prefill (T > 1) share one kernel; rows run in parallel. The block decoders follow ggml's dequantize_row_* in float32
(reference/kquants.md section 6) and are held to gguf-py's numpy dequantizers in the tests; `matmul_reference`
beside them is the plain numpy version.

Not yet: llama.cpp's activation quantization (Q8_K / Q8_0 dot products), SIMD-friendly repacking, expert batching.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit, prange

from quant.kblocks import scale_min_k4
from quant.ksearch import fp16_bits_to_fp32
from quant.quantize import qtype_of

T = GGMLQuantizationType
_DECODERS = {T.F32: 0, T.F16: 1, T.BF16: 2, T.Q8_0: 3, T.Q2_K: 4, T.Q3_K: 5, T.Q4_K: 6, T.Q5_K: 7, T.Q6_K: 8}
SUPPORTED = tuple(_DECODERS)


@njit(cache=True)
def _f16(b, i):
    """float32 of the little-endian binary16 at b[i:i+2]."""
    return fp16_bits_to_fp32(np.int64(b[i]) | (np.int64(b[i + 1]) << 8))


@njit(cache=True)
def _i8(v):
    return np.int64(v) - 256 if v > 127 else np.int64(v)


@njit(cache=True)
def _decode_q8_0(b, out):
    d = _f16(b, 0)
    for j in range(32):
        out[j] = np.float32(_i8(b[2 + j])) * d


@njit(cache=True)
def _decode_q2_k(b, out):
    d, dmin = _f16(b, 80), _f16(b, 82)
    for e in range(256):
        sc = np.int64(b[e // 16])
        q = (np.int64(b[16 + 32 * (e // 128) + e % 32]) >> (2 * ((e % 128) // 32))) & 3
        out[e] = (d * np.float32(sc & 0xF)) * np.float32(q) - dmin * np.float32(sc >> 4)


@njit(cache=True)
def _decode_q3_k(b, out):
    d = _f16(b, 108)
    for e in range(256):
        j = e // 16
        s = np.int64(b[96 + j]) & 0xF if j < 8 else np.int64(b[96 + j - 8]) >> 4
        s = (s | (((np.int64(b[104 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32
        low = (np.int64(b[32 + 32 * (e // 128) + e % 32]) >> (2 * ((e % 128) // 32))) & 3
        high = (np.int64(b[e % 32]) >> (e // 32)) & 1
        out[e] = (d * np.float32(s)) * np.float32(low - (0 if high else 4))


@njit(cache=True)
def _decode_q4_k(b, out):
    d, dmin = _f16(b, 0), _f16(b, 2)
    for e in range(256):
        sc, m = scale_min_k4(b, e // 32)
        byte = np.int64(b[16 + 32 * (e // 64) + e % 32])
        q = byte & 0xF if e % 64 < 32 else byte >> 4
        out[e] = (d * np.float32(sc)) * np.float32(q) - dmin * np.float32(m)


@njit(cache=True)
def _decode_q5_k(b, out):
    d, dmin = _f16(b, 0), _f16(b, 2)
    for e in range(256):
        sc, m = scale_min_k4(b, e // 32)
        byte = np.int64(b[48 + 32 * (e // 64) + e % 32])
        q = (byte & 0xF if e % 64 < 32 else byte >> 4) + 16 * ((np.int64(b[16 + e % 32]) >> (e // 32)) & 1)
        out[e] = (d * np.float32(sc)) * np.float32(q) - dmin * np.float32(m)


@njit(cache=True)
def _decode_q6_k(b, out):
    d = _f16(b, 208)
    for e in range(256):
        h, r = e // 128, e % 128
        g, l = r // 32, r % 32
        low = np.int64(b[64 * h + l + 32 * (g & 1)])
        low = low & 0xF if g < 2 else low >> 4
        high = (np.int64(b[128 + 32 * h + l]) >> (2 * g)) & 3
        out[e] = (d * np.float32(_i8(b[192 + e // 16]))) * np.float32((low | (high << 4)) - 32)


@njit(cache=True)
def _decode(kind, b, out):
    if kind == 3:
        _decode_q8_0(b, out)
    elif kind == 4:
        _decode_q2_k(b, out)
    elif kind == 5:
        _decode_q3_k(b, out)
    elif kind == 6:
        _decode_q4_k(b, out)
    elif kind == 7:
        _decode_q5_k(b, out)
    else:
        _decode_q6_k(b, out)


@njit(parallel=True, cache=True)
def _matmul_blocks(raw, kind, block, type_size, x, y):
    n_rows = raw.shape[0]
    n_tok, n_cols = x.shape
    for r in prange(n_rows):
        buf = np.empty(block, np.float32)
        acc = np.zeros(n_tok, np.float32)
        for b in range(n_cols // block):
            _decode(kind, raw[r, b * type_size:(b + 1) * type_size], buf)
            for t in range(n_tok):
                s = np.float32(0.0)
                for j in range(block):
                    s += buf[j] * x[t, b * block + j]
                acc[t] += s
        for t in range(n_tok):
            y[t, r] = acc[t]


def decode_blocks(raw: np.ndarray, qtype) -> np.ndarray:
    """All values of `raw` (uint8 [rows, bytes_per_row]) decoded by the block decoders above (for tests)."""
    qt = qtype_of(qtype)
    block, type_size = GGML_QUANT_SIZES[qt]
    rows = raw.shape[0]
    out = np.empty((rows, raw.shape[1] // type_size * block), np.float32)
    _decode_all(np.ascontiguousarray(raw), _DECODERS[qt], block, type_size, out)
    return out


@njit(cache=True)
def _decode_all(raw, kind, block, type_size, out):
    for r in range(raw.shape[0]):
        for b in range(raw.shape[1] // type_size):
            _decode(kind, raw[r, b * type_size:(b + 1) * type_size], out[r, b * block:(b + 1) * block])


def matmul(raw: np.ndarray, qtype, x: np.ndarray) -> np.ndarray:
    """x @ W.T for W stored as GGML `qtype` rows in `raw` (uint8 [rows, bytes_per_row], or the float array for
    F32/F16/BF16). x: float32 [T, cols]. Returns float32 [T, rows]."""
    qt = qtype_of(qtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qt in (T.F32, T.F16, T.BF16):
        from quant.quantize import dequantize
        w = raw if qt == T.F32 and raw.dtype == np.float32 else dequantize(raw, qt, (raw.shape[0], x.shape[1]))
        return x @ np.asarray(w, np.float32).T
    if qt not in _DECODERS:
        raise ValueError(f"no CPU kernel for {qt.name} yet")
    block, type_size = GGML_QUANT_SIZES[qt]
    y = np.empty((x.shape[0], raw.shape[0]), np.float32)
    _matmul_blocks(np.ascontiguousarray(raw), _DECODERS[qt], block, type_size, x, y)
    return y


def matmul_reference(raw: np.ndarray, qtype, x: np.ndarray) -> np.ndarray:
    """The plain version: dequantize the whole tensor with gguf-py, multiply in float64."""
    from quant.quantize import dequantize

    w = dequantize(raw, qtype, (raw.shape[0], x.shape[1])).astype(np.float64)
    return (np.asarray(x, np.float64) @ w.T).astype(np.float32)
