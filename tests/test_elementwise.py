"""The fused element-wise kernels equal reference.py's float64 formulas."""

from __future__ import annotations

import os

import numpy as np
import pytest

from localcoder import reference
from localcoder.kernels import elementwise

SEED = int.from_bytes(os.urandom(4), "little")


def rng(*salt):
    return np.random.default_rng([SEED, *salt])


def close(ours: np.ndarray, exact: np.ndarray) -> bool:
    return ours.dtype == np.float32 and np.abs(ours - exact).max() <= 1e-5 * max(1.0, np.abs(exact).max())


@pytest.mark.parametrize("shape", [(1, 64), (7, 3, 128), (33, 2048)])
def test_rms_norm_plain_and_gated(shape):
    x = (rng(1).standard_normal(shape) * 3).astype(np.float32)
    w = rng(2).standard_normal(shape[-1]).astype(np.float32)
    z = (rng(3).standard_normal(shape) * 4).astype(np.float32)
    exact = reference.rms_norm(x.astype(np.float64), w.astype(np.float64), 1e-6)
    assert close(elementwise.rms_norm(x, w, 1e-6), exact), f"seed {SEED}"
    gated = elementwise.rms_norm(x, w, 1e-6, gate=z)
    assert close(gated, exact * reference.silu(z.astype(np.float64))), f"seed {SEED}"


def test_swiglu():
    gate, up = (rng(4).standard_normal((2, 19, 300)) * 5).astype(np.float32)
    exact = reference.silu(gate.astype(np.float64)) * up
    assert close(elementwise.swiglu(gate, up), exact), f"seed {SEED}"


@pytest.mark.parametrize("n_tok", [1, 40])
def test_causal_conv_silu(n_tok):
    channels, width = 96, 4
    padded = rng(5, n_tok).standard_normal((n_tok + width - 1, channels)).astype(np.float32)
    kernel = rng(6).standard_normal((channels, width)).astype(np.float32)
    conv = sum(padded[j:j + n_tok].astype(np.float64) * kernel[:, j] for j in range(width))
    assert close(elementwise.causal_conv_silu(padded, kernel), reference.silu(conv)), f"seed {SEED}"


def test_exp32_against_float64():
    from numba import njit

    @njit
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = elementwise.exp32(x[i])

    x = np.concatenate([np.linspace(-87, 88, 200001), rng(7).uniform(-10, 10, 10000)]).astype(np.float32)
    out = np.empty_like(x)
    run(x, out)
    relative = np.abs(out / np.exp(x.astype(np.float64)) - 1)
    assert relative[np.abs(x) < 10].max() < 1e-6
    assert relative.max() < 1e-5
    clamped = np.empty(2, np.float32)
    run(np.array([-200, 200], np.float32), clamped)
    assert clamped[0] == out[0] and clamped[1] == out[200000]  # as at -87 and 88
