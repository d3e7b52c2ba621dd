"""The forward pass's element-wise steps, fused, in numba: one pass over the data on every core, where numpy
makes several passes (and temporaries) on one. float32 in and out; reference.py's float64 rms_norm / silu are
their meaning (tests/test_elementwise.py).

    rms_norm(x, w, eps)            x / sqrt(mean(x^2) + eps) * w over the last axis
    rms_norm(x, w, eps, gate=z)    the same times silu(z)  (DeltaNet's gated norm)
    swiglu(gate, up)               silu(gate) * up
    causal_conv_silu(padded, kernel)   silu of the depthwise causal conv: out[t, c] = sum_j padded[t + j, c] * kernel[c, j]
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from localcoder.kernels.simd import pow2
from quant import jit  # noqa: F401  (numba cache location)

F = np.float32
_LOG2E = F(1.4426950408889634)
_POW2_TAYLOR = tuple(F(np.log(2.0) ** k / np.prod(np.arange(1, k + 1, dtype=np.float64))) for k in range(7))


@njit(inline="always", fastmath=True)
def exp32(x):
    """exp(x) in float32 arithmetic that LLVM vectorises (numba's np.exp is a scalar libm call per value, 4x
    slower than numpy here): x * log2(e) = n + f with |f| <= 1/2, 2**f by its degree-6 Taylor polynomial
    (error < 3e-9), 2**n from its bits. Relative error < 1e-6 for |x| < 10, growing to ~6e-6 at |x| = 87 (the
    rounding of x * log2(e)); x is clamped to [-87, 88], the float32 range."""
    t = min(max(x, F(-87.0)), F(88.0)) * _LOG2E
    n = np.floor(t + F(0.5))
    f = t - n
    c = _POW2_TAYLOR
    poly = c[0] + f * (c[1] + f * (c[2] + f * (c[3] + f * (c[4] + f * (c[5] + f * c[6])))))
    return poly * pow2(np.int32(n))


@njit(inline="always", fastmath=True)
def _silu(v):
    return v / (F(1.0) + exp32(-v))


@njit(parallel=True, fastmath=True, cache=True)
def _rms_norm_rows(x, w, eps, gate, gated, out):
    n = x.shape[1]
    for t in prange(x.shape[0]):
        squares = F(0.0)
        for j in range(n):
            squares += x[t, j] * x[t, j]
        inv = F(1.0) / np.sqrt(squares / F(n) + eps)
        for j in range(n):
            out[t, j] = x[t, j] * inv * w[j]
        if gated:
            for j in range(n):
                out[t, j] *= _silu(gate[t, j])


def _rows(a: np.ndarray, width: int) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=F).reshape(-1, width)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float, gate: np.ndarray | None = None) -> np.ndarray:
    """RMS norm over the last axis of x (any leading shape) with weight w; times silu(gate) when given."""
    width = x.shape[-1]
    rows = _rows(x, width)
    out = np.empty_like(rows)
    gate_rows = _rows(gate, width) if gate is not None else rows
    _rms_norm_rows(rows, np.ascontiguousarray(w, dtype=F), F(eps), gate_rows, gate is not None, out)
    return out.reshape(x.shape)


@njit(parallel=True, fastmath=True, cache=True)
def _swiglu_rows(gate, up, out):
    for t in prange(gate.shape[0]):
        for j in range(gate.shape[1]):
            out[t, j] = _silu(gate[t, j]) * up[t, j]


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up, float32 [T, n]."""
    gate, up = _rows(gate, gate.shape[-1]), _rows(up, up.shape[-1])
    out = np.empty_like(gate)
    _swiglu_rows(gate, up, out)
    return out


@njit(parallel=True, fastmath=True, cache=True)
def _conv_rows(padded, taps, out):
    """taps [K, C] (the kernel transposed: channels innermost, so each tap is one vectorised pass)."""
    for t in prange(out.shape[0]):
        for c in range(out.shape[1]):
            out[t, c] = padded[t, c] * taps[0, c]
        for j in range(1, taps.shape[0]):
            for c in range(out.shape[1]):
                out[t, c] += padded[t + j, c] * taps[j, c]
        for c in range(out.shape[1]):
            out[t, c] = _silu(out[t, c])


def causal_conv_silu(padded: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """padded: the K-1 previous inputs then the T new ones [T + K - 1, C]; kernel [C, K]: silu(conv) [T, C]."""
    padded, taps = np.ascontiguousarray(padded, dtype=F), np.ascontiguousarray(kernel.T, dtype=F)
    out = np.empty((padded.shape[0] - taps.shape[0] + 1, padded.shape[1]), F)
    _conv_rows(padded, taps, out)
    return out
