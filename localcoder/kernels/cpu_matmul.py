"""CPU matrix multiplication against weights kept in their GGUF block formats (no whole-tensor dequantization).

    y = matmul(raw, qtype, x)      # raw: uint8 [rows, bytes_per_row] (a GGUF tensor), x: float32 [T, cols]
                                   # y: float32 [T, rows] = x @ dequantize(raw).T

This is the float32-activation path: F32/F16/BF16 tensors, and every type when a model is loaded with
activations="f32" (exact math). Quantized weights otherwise run on 8-bit activations in qdot.py. Two paths, chosen by the number of tokens:
- few tokens (decode): each thread decodes a tile of weight rows into a float32 buffer and takes long dot
  products with the tokens' activations.
- many tokens (prefill): a few hundred rows at a time are decoded in parallel and multiplied by BLAS, so the
  decode cost is shared by all tokens and only a slice of the tensor is ever float32.

Mixture-of-experts uses the same machinery (`grouped_matmul`): weights [experts, rows, bytes]; a call names
groups (expert, token slots) and for each slot the activation row it reads, so all experts a chunk selects run in
one parallel call. The block decoders follow ggml's dequantize_row_* operation by operation (they equal gguf-py's
dequantizers exactly); `grouped_matmul_reference` beside them is the plain numpy version.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit, prange

from localcoder.kernels.simd import f16_at
from quant import jit  # noqa: F401  (numba cache location; must precede the cached kernels below)
from quant.quantize import dequantize, qtype_of

T = GGMLQuantizationType
F = np.float32
KINDS = {T.Q4_0: 0, T.Q5_0: 1, T.Q5_1: 2, T.Q8_0: 3, T.Q2_K: 4, T.Q3_K: 5, T.Q4_K: 6, T.Q5_K: 7, T.Q6_K: 8}
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
SUPPORTED = tuple(KINDS) + FLOAT_TYPES
TILE = 8  # rows a thread decodes before its dot products (8 x 2048 float32 = 64 KiB)
BLAS_MIN_TOKENS = 16  # from this many tokens, decode slices of the tensor and multiply with BLAS
BLAS_SLICE_VALUES = 1 << 20  # float32 values decoded per BLAS slice (4 MiB)


@njit(cache=True, inline="always")
def _i8(v):
    """float32 of the byte v read as int8."""
    return F(np.int8(v))


@njit(cache=True, inline="always")
def _k4(b, j):
    """get_scale_min_k4 on the 12 scale bytes at b[4:16] (Q4_K, Q5_K): (scale, min) of sub-block j."""
    if j < 4:
        return F(b[4 + j] & 63), F(b[8 + j] & 63)
    return F((b[8 + j] & 0xF) | ((b[j] >> 6) << 4)), F((b[8 + j] >> 4) | ((b[4 + j] >> 6) << 4))


@njit(cache=True, error_model="numpy")
def _decode_block(kind, b, y):
    """The float32 values of one K-quant block (bytes b) into y, as ggml's dequantize_row_*:
    (d * scale) * q - dmin * min."""
    if kind == 4:  # Q2_K: scales[16] @0, qs[64] @16, d @80, dmin @82
        d, dmin = f16_at(b, 80), f16_at(b, 82)
        for n in range(2):
            for k in range(4):
                for h in range(2):
                    sc = b[8 * n + 2 * k + h]
                    dl, ml = d * F(sc & 0xF), dmin * F(sc >> 4)
                    o, src = 128 * n + 32 * k + 16 * h, 16 + 32 * n + 16 * h
                    for l in range(16):
                        y[o + l] = dl * F((b[src + l] >> (2 * k)) & 3) - ml
    elif kind == 5:  # Q3_K: hmask[32] @0, qs[64] @32, scales[12] @96, d @108
        d = f16_at(b, 108)
        for n in range(2):
            for k in range(4):
                for h in range(2):
                    j = 8 * n + 2 * k + h
                    s = np.int32(b[96 + j] & 0xF) if j < 8 else np.int32(b[88 + j] >> 4)
                    dl = d * F((s | (np.int32((b[104 + j % 4] >> (2 * (j // 4))) & 3) << 4)) - 32)
                    o, src = 128 * n + 32 * k + 16 * h, 32 + 32 * n + 16 * h
                    for l in range(16):
                        low = np.int32((b[src + l] >> (2 * k)) & 3)
                        high = np.int32((b[16 * h + l] >> (4 * n + k)) & 1)
                        y[o + l] = dl * F(low - 4 + 4 * high)
    elif kind == 6:  # Q4_K: d @0, dmin @2, scales[12] @4, qs[128] @16
        d, dmin = f16_at(b, 0), f16_at(b, 2)
        for n in range(4):
            s0, m0 = _k4(b, 2 * n)
            s1, m1 = _k4(b, 2 * n + 1)
            d0, d1, m0, m1 = d * s0, d * s1, dmin * m0, dmin * m1
            for l in range(32):
                byte = b[16 + 32 * n + l]
                y[64 * n + l] = d0 * F(byte & 0xF) - m0
                y[64 * n + 32 + l] = d1 * F(byte >> 4) - m1
    elif kind == 7:  # Q5_K: d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48
        # kept apart from Q4_K on purpose: one branch with the fifth bit masked off cost Q4_K decode ~15%
        d, dmin = f16_at(b, 0), f16_at(b, 2)
        for n in range(4):
            s0, m0 = _k4(b, 2 * n)
            s1, m1 = _k4(b, 2 * n + 1)
            d0, d1, m0, m1 = d * s0, d * s1, dmin * m0, dmin * m1
            for l in range(32):
                byte, high = b[48 + 32 * n + l], b[16 + l]
                y[64 * n + l] = d0 * F((byte & 0xF) | (((high >> (2 * n)) & 1) << 4)) - m0
                y[64 * n + 32 + l] = d1 * F((byte >> 4) | (((high >> (2 * n + 1)) & 1) << 4)) - m1
    else:  # Q6_K: ql[128] @0, qh[64] @128, scales int8[16] @192, d @208
        d = f16_at(b, 208)
        for n in range(2):
            for h in range(2):
                s0, s1, s2, s3 = (d * _i8(b[192 + 8 * n + h]), d * _i8(b[194 + 8 * n + h]),
                                  d * _i8(b[196 + 8 * n + h]), d * _i8(b[198 + 8 * n + h]))
                for l in range(16 * h, 16 * h + 16):
                    lo0, lo1, hi = b[64 * n + l], b[64 * n + 32 + l], b[128 + 32 * n + l]
                    y[128 * n + l] = s0 * F(np.int32((lo0 & 0xF) | ((hi & 3) << 4)) - 32)
                    y[128 * n + 32 + l] = s1 * F(np.int32((lo1 & 0xF) | (((hi >> 2) & 3) << 4)) - 32)
                    y[128 * n + 64 + l] = s2 * F(np.int32((lo0 >> 4) | (((hi >> 4) & 3) << 4)) - 32)
                    y[128 * n + 96 + l] = s3 * F(np.int32((lo1 >> 4) | (((hi >> 6) & 3) << 4)) - 32)


@njit(cache=True, error_model="numpy", inline="always")
def _decode_block32(kind, b, y):
    """A 32-value block as ggml's dequantize_row_q4_0 / q5_0 / q5_1 / q8_0 (nibble j: values j and j + 16)."""
    d = f16_at(b, 0)
    if kind == 3:  # Q8_0: d, qs int8[32]
        for l in range(32):
            y[l] = _i8(b[2 + l]) * d
    elif kind == 0:  # Q4_0: d, qs[16]
        for l in range(16):
            y[l] = F(np.int32(b[2 + l] & 0xF) - 8) * d
            y[l + 16] = F(np.int32(b[2 + l] >> 4) - 8) * d
    else:  # Q5_0: d, qh u32, qs[16];  Q5_1: d, m, qh u32, qs[16]
        o = 2 if kind == 1 else 4
        qh = np.int64(b[o]) | (np.int64(b[o + 1]) << 8) | (np.int64(b[o + 2]) << 16) | (np.int64(b[o + 3]) << 24)
        shift = 16 if kind == 1 else 0
        m = f16_at(b, 2) if kind == 2 else F(0.0)
        for l in range(16):
            lo = np.int32(b[o + 4 + l] & 0xF) | np.int32(((qh >> l) << 4) & 0x10)
            hi = np.int32(b[o + 4 + l] >> 4) | np.int32((qh >> (l + 12)) & 0x10)
            if kind == 1:
                y[l], y[l + 16] = F(lo - shift) * d, F(hi - shift) * d
            else:
                y[l], y[l + 16] = F(lo) * d + m, F(hi) * d + m


@njit(cache=True, error_model="numpy", nogil=True)
def _decode_row(kind, B, row, y):
    tsize = row.shape[0] // (y.shape[0] // B)
    if kind <= 3:  # 32-value blocks are short: decode them here rather than through a call per block
        for blk in range(y.shape[0] // 32):
            _decode_block32(kind, row[blk * tsize:(blk + 1) * tsize], y[32 * blk:32 * blk + 32])
        return
    for blk in range(y.shape[0] // B):
        _decode_block(kind, row[blk * tsize:(blk + 1) * tsize], y[blk * B:(blk + 1) * B])


@njit(parallel=True, cache=True, error_model="numpy")
def _decode_rows(kind, B, raw, rows, out):
    """out[i] = decoded raw[rows[i]] (raw: [n, bytes]); rows may repeat (embedding lookups)."""
    for i in prange(rows.shape[0]):
        _decode_row(kind, B, raw[rows[i]], out[i])


@njit(cache=True, error_model="numpy", nogil=True)
def _decode_range(kind, B, raw, r0, r1, out):
    """out[i] = decoded raw[r0 + i], serially and without the GIL (one BLAS worker thread's share)."""
    for i in range(r1 - r0):
        _decode_row(kind, B, raw[r0 + i], out[i])


@njit(cache=True, error_model="numpy", fastmath=True, inline="always")
def _dot(w, x):
    acc = F(0.0)
    for l in range(w.shape[0]):
        acc += w[l] * x[l]
    return acc


@njit(parallel=True, cache=True, error_model="numpy", fastmath=True)
def _grouped(kind, B, raw, experts, begins, ends, src, x, y):
    """y[s, r] = decoded row r of expert experts[g] . x[src[s]], for the slots s in begins[g]:ends[g]."""
    rows, cols = raw.shape[1], x.shape[1]
    n_tiles = (rows + TILE - 1) // TILE
    for job in prange(experts.shape[0] * n_tiles):
        g, tile = job // n_tiles, job % n_tiles
        if ends[g] == begins[g]:
            continue
        r0 = tile * TILE
        r1 = min(rows, r0 + TILE)
        w = np.empty((TILE, cols), F)
        for i in range(r1 - r0):
            _decode_row(kind, B, raw[experts[g], r0 + i], w[i])
        for s in range(begins[g], ends[g]):
            for i in range(r1 - r0):
                y[s, r0 + i] = _dot(w[i], x[src[s]])


def _block(qt) -> int:
    return GGML_QUANT_SIZES[qt][0]


def _check(raw: np.ndarray, qt, cols: int) -> None:
    if qt not in KINDS:
        raise ValueError(f"no CPU kernel for {qt.name}")
    block, type_size = GGML_QUANT_SIZES[qt]
    if cols % block or raw.shape[-1] != cols // block * type_size:
        raise ValueError(f"{qt.name} rows of {raw.shape[-1]} bytes do not hold {cols} values")


def decode_rows(raw: np.ndarray, qtype, rows: np.ndarray, cols: int) -> np.ndarray:
    """float32 [len(rows), cols]: the given rows of a 2-D tensor (block format or F32/F16/BF16)."""
    qt = qtype_of(qtype)
    rows = np.asarray(rows, dtype=np.int64)
    if qt in FLOAT_TYPES:
        return float_weights(raw[rows], qt, cols)
    _check(raw, qt, cols)
    out = np.empty((len(rows), cols), F)
    _decode_rows(KINDS[qt], _block(qt), raw, rows, out)
    return out


def float_weights(raw: np.ndarray, qtype, cols: int) -> np.ndarray:
    """float32 [rows, cols] of an F32/F16/BF16 tensor (a view when it already is float32)."""
    if qtype_of(qtype) == T.F32:
        return raw.view(F).reshape(-1, cols)
    return dequantize(raw, qtype, (raw.shape[0], cols))


def matmul(raw: np.ndarray, qtype, x: np.ndarray) -> np.ndarray:
    """x @ W.T for W stored as GGML `qtype` rows in `raw` (uint8 [rows, bytes_per_row], or a float array for
    F32/F16/BF16). x: float32 [T, cols]. Returns float32 [T, rows]."""
    qt = qtype_of(qtype)
    x = np.ascontiguousarray(x, dtype=F)
    if qt in FLOAT_TYPES:
        return x @ float_weights(raw, qt, x.shape[1]).T
    n = x.shape[0]
    return grouped_matmul(raw[None], qt, x, np.zeros(1, np.int64), np.array([0, n]), np.arange(n))


def grouped_matmul(raw: np.ndarray, qtype, x: np.ndarray, experts: np.ndarray, starts: np.ndarray,
                   src: np.ndarray) -> np.ndarray:
    """y[s] = W[experts[g]] @ x[src[s]] for each slot s in starts[g]:starts[g+1] of each group g.

    raw: uint8 [E, rows, bytes_per_row] in block format `qtype`; x: float32 [n, cols]. Returns float32 [slots, rows].
    Groups with many slots go through BLAS on decoded slices, the rest through one parallel numba call."""
    qt = qtype_of(qtype)
    x = np.ascontiguousarray(x, dtype=F)
    _check(raw, qt, x.shape[1])
    experts, starts, src = (np.ascontiguousarray(a, dtype=np.int64) for a in (experts, starts, src))
    y = np.empty((int(starts[-1]), raw.shape[1]), F)
    big = np.diff(starts) >= BLAS_MIN_TOKENS
    ends = np.where(big, starts[:-1], starts[1:])  # big groups get an empty span here and go through BLAS below
    _grouped(KINDS[qt], _block(qt), raw, experts, starts[:-1], ends, src, x, y)
    for g in np.flatnonzero(big):
        slots = np.arange(starts[g], starts[g + 1])
        y[slots] = _blas_matmul(raw[experts[g]], qt, x[src[slots]])
    return y


def _blas_matmul(raw2d: np.ndarray, qt, x: np.ndarray) -> np.ndarray:
    """x @ W.T by slices of rows decoded to float32 and multiplied by single-threaded BLAS, one worker thread per
    core (numba's spinning worker threads and OpenBLAS's own would otherwise fight over the cores)."""
    rows, cols = raw2d.shape[0], x.shape[1]
    step = max(TILE, min(BLAS_SLICE_VALUES // cols, -(-rows // numba.get_num_threads())))
    y_t = np.empty((rows, x.shape[0]), F)  # BLAS writes contiguous row blocks of y.T
    x_t = np.ascontiguousarray(x.T)

    def work(r0: int) -> None:
        r1 = min(rows, r0 + step)
        buf = np.empty((r1 - r0, cols), F)
        _decode_range(KINDS[qt], _block(qt), raw2d, r0, r1, buf)
        np.matmul(buf, x_t, out=y_t[r0:r1])

    single_threaded_blas()
    list(_pool().map(work, range(0, rows, step)))
    return y_t.T


_POOL: ThreadPoolExecutor | None = None
_BLAS_LIMITED = False


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(numba.get_num_threads(), thread_name_prefix="localcoder-blas")
    return _POOL


def single_threaded_blas() -> None:
    """Limit BLAS to one thread for the rest of the process (threadpoolctl). Its worker threads spin after each
    call and numba's spin between parallel regions: with both on the same cores, a decode step ran 2.5x slower.
    Parallel BLAS work goes through this module's own thread pool instead."""
    global _BLAS_LIMITED
    if not _BLAS_LIMITED:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
        _BLAS_LIMITED = True


def decode_blocks(raw: np.ndarray, qtype) -> np.ndarray:
    """All values of `raw` (uint8 [rows, bytes_per_row]) decoded by the block decoders above (for tests)."""
    qt = qtype_of(qtype)
    block, type_size = GGML_QUANT_SIZES[qt]
    return decode_rows(raw, qt, np.arange(raw.shape[0]), raw.shape[1] // type_size * block)


def grouped_matmul_reference(raw: np.ndarray, qtype, x: np.ndarray, experts, starts, src) -> np.ndarray:
    """The plain version: dequantize each expert with gguf-py, multiply in float64."""
    qt = qtype_of(qtype)
    x = np.asarray(x, np.float64)
    y = np.empty((int(starts[-1]), raw.shape[1]))
    for g, e in enumerate(experts):
        w = dequantize(raw[e], qt, (raw.shape[1], x.shape[1])).astype(np.float64)
        for s in range(starts[g], starts[g + 1]):
            y[s] = w @ x[src[s]]
    return y.astype(F)


def matmul_reference(raw: np.ndarray, qtype, x: np.ndarray) -> np.ndarray:
    """Dense x @ W.T the plain way (gguf-py dequantization, float64)."""
    w = dequantize(raw, qtype, (raw.shape[0], x.shape[1])).astype(np.float64)
    return (np.asarray(x, np.float64) @ w.T).astype(F)
