"""Public quantization API: `quantize(x, qtype, imatrix=None)` and `dequantize(raw, qtype, shape)`.

    raw = quantize(weights_f32, "Q4_K")            # uint8 (rows, bytes_per_row), the bytes llama.cpp writes
    back = dequantize(raw, "Q4_K", weights_f32.shape)

Rows are independent and quantized in parallel (numba prange); the bytes do not depend on the thread count. The
per-block kernels are in quant/kblocks.py; dequantization is gguf-py's vectorised numpy reference.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants
from numba import njit, prange

from localcoder.errors import UserError
from quant import kblocks

T = GGMLQuantizationType
# numba dispatches on these small ids (it cannot pass functions through prange cheaply)
_KERNEL_IDS = {T.Q2_K: 0, T.Q3_K: 1, T.Q4_K: 2, T.Q5_K: 3, T.Q6_K: 4, T.Q8_0: 5, T.Q4_0: 6, T.Q5_0: 7, T.Q5_1: 8}
QUANTIZABLE = tuple(_KERNEL_IDS)


@njit(cache=True, error_model="numpy")
def _block(kernel, x, y, qw, use_qw, row_sigma2, fs, js):
    if kernel == 0:
        kblocks.q2_k_block(x, y, qw, use_qw, fs, js)
    elif kernel == 1:
        kblocks.q3_k_block(x, y, qw, use_qw, fs, js)
    elif kernel == 2:
        kblocks.q4_k_block(x, y, qw, use_qw, fs, js)
    elif kernel == 3:
        kblocks.q5_k_block(x, y, qw, use_qw, fs, js)
    elif kernel == 4:
        kblocks.q6_k_block(x, y, qw, use_qw, fs, js)
    elif kernel == 5:
        kblocks.q8_0_block(x, y, qw, use_qw, fs, js)
    elif kernel == 6:
        kblocks.q4_0_block(x, y, qw, use_qw, row_sigma2, fs, js)
    elif kernel == 7:
        kblocks.q5_0_block(x, y, qw, use_qw, row_sigma2, fs, js)
    else:
        kblocks.q5_1_block(x, y, qw, use_qw, row_sigma2, fs, js)


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, out, kernel, block, type_size, imatrix, use_qw):
    n_rows, n_cols = x.shape
    for r in prange(n_rows):
        fs = np.empty((4, 256), np.float32)
        js = np.empty((4, 256), np.int32)
        row_sigma2 = np.float32(0.0)
        if use_qw and block == 32:  # the 32-wide types weight by the whole row's mean square
            for c in range(n_cols):
                row_sigma2 += x[r, c] * x[r, c]
            row_sigma2 = row_sigma2 / np.float32(n_cols)
        for b in range(n_cols // block):
            _block(kernel, x[r, b * block:(b + 1) * block], out[r, b * type_size:(b + 1) * type_size],
                   imatrix[b * block:(b + 1) * block], use_qw, row_sigma2, fs, js)


def qtype_of(qtype) -> GGMLQuantizationType:
    """A GGMLQuantizationType from a member, its name ("Q4_K") or its number."""
    if isinstance(qtype, GGMLQuantizationType):
        return qtype
    try:
        return T[qtype.upper()] if isinstance(qtype, str) else T(qtype)
    except (KeyError, ValueError):
        raise UserError(f"unknown GGML type {qtype!r}") from None


def quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize float32 rows (rows, cols) to `qtype` exactly as ggml_quantize_chunk does; returns uint8
    (rows, bytes_per_row). `imatrix` (cols,) are importance weights (llama.cpp's quant_weights); Q8_0 ignores
    them, as llama.cpp does. F32/F16/BF16 are plain conversions."""
    qt = qtype_of(qtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"quantize expects (rows, cols), got shape {x.shape}")
    block, type_size = GGML_QUANT_SIZES[qt]
    if x.shape[1] % block:
        raise ValueError(f"{qt.name} needs rows that are a multiple of {block}, got {x.shape[1]}")
    if qt in (T.F32, T.F16, T.BF16):
        return gguf_quants.quantize(x, qt).view(np.uint8).reshape(x.shape[0], -1)
    if qt not in _KERNEL_IDS:
        raise ValueError(f"quantizing to {qt.name} is not supported")
    use_qw = imatrix is not None and qt != T.Q8_0
    qw = np.ascontiguousarray(imatrix, dtype=np.float32) if use_qw else np.ones(x.shape[1], np.float32)
    if qw.shape != (x.shape[1],):
        raise ValueError(f"imatrix has {qw.size} values for rows of {x.shape[1]}")
    out = np.empty((x.shape[0], x.shape[1] // block * type_size), np.uint8)
    _quantize_rows(x, out, _KERNEL_IDS[qt], block, type_size, qw, use_qw)
    return out


def dequantize(raw: np.ndarray, qtype, shape) -> np.ndarray:
    """float32 array of `shape` from the GGML bytes `raw` of type `qtype` (gguf-py's reference dequantizers)."""
    qt = qtype_of(qtype)
    values = gguf_quants.dequantize(np.ascontiguousarray(raw).view(np.uint8).reshape(-1), qt)
    return np.asarray(values, dtype=np.float32).reshape(shape)
