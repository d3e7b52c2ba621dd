"""CPU kernels on GGUF block formats: the block decoders equal gguf-py's dequantizers, and the matmuls (decode
path, BLAS path, grouped experts) equal the float64 reference."""

from __future__ import annotations

import os

import numpy as np
import pytest

from localcoder.kernels.cpu_matmul import (BLAS_MIN_TOKENS, decode_blocks, decode_rows, grouped_matmul,
                                           grouped_matmul_reference, matmul, matmul_reference)
from quant.quantize import dequantize, quantize

SEED = int.from_bytes(os.urandom(4), "little")
TYPES = ["Q4_0", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def random_weights(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    w = np.random.default_rng([SEED, seed]).standard_t(4, (rows, cols)).astype(np.float32)
    return quantize(w, qtype)


def assert_close(ours, ref):
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max(), f"seed {SEED}"


@pytest.mark.parametrize("qtype", TYPES)
def test_block_decoders_equal_gguf_py(qtype):
    raw = random_weights(qtype, 16, 512, TYPES.index(qtype))
    ours = decode_blocks(raw, qtype)
    assert np.array_equal(ours, dequantize(raw, qtype, ours.shape)), f"seed {SEED}"
    rows = np.array([5, 0, 5, 15])
    assert np.array_equal(decode_rows(raw, qtype, rows, 512), ours[rows])


@pytest.mark.parametrize("n_tokens", [1, 7, BLAS_MIN_TOKENS + 3])
@pytest.mark.parametrize("qtype", TYPES + ["F32", "F16", "BF16"])
def test_matmul_equals_reference(qtype, n_tokens):
    rng = np.random.default_rng([SEED, n_tokens])
    x = rng.standard_normal((n_tokens, 512)).astype(np.float32)
    if qtype in ("F32", "F16", "BF16"):
        raw = quantize(rng.standard_normal((50, 512)).astype(np.float32), qtype)
        raw = raw.view(np.float32) if qtype == "F32" else raw
    else:
        raw = random_weights(qtype, 50, 512, 100 + TYPES.index(qtype))  # 50: the last row tile is partial
    assert_close(matmul(raw, qtype, x), matmul_reference(raw, qtype, x))


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_grouped_matmul_equals_reference(qtype):
    """Experts in any order, one of them reached by enough slots to take the BLAS path, one by none."""
    rng = np.random.default_rng([SEED, 3])
    raw = np.stack([random_weights(qtype, 24, 256, 200 + e) for e in range(5)])
    x = rng.standard_normal((40, 256)).astype(np.float32)
    experts = np.array([3, 0, 4, 1])
    sizes = np.array([2, BLAS_MIN_TOKENS + 1, 0, 5])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    src = rng.integers(0, len(x), starts[-1])
    ours = grouped_matmul(raw, qtype, x, experts, starts, src)
    assert_close(ours, grouped_matmul_reference(raw, qtype, x, experts, starts, src))


def test_wrong_row_size_is_refused():
    raw = random_weights("Q4_K", 4, 512, 9)
    with pytest.raises(ValueError, match="do not hold 768 values"):
        matmul(raw, "Q4_K", np.zeros((1, 768), np.float32))
