"""CPU kernels on GGUF block formats: the block decoders equal gguf-py's dequantizers, and matmul equals the
float64 reference."""

from __future__ import annotations

import os

import numpy as np
import pytest

from localcoder.kernels.cpu_matmul import decode_blocks, matmul, matmul_reference
from quant.quantize import dequantize, quantize

SEED = int.from_bytes(os.urandom(4), "little")
TYPES = ["Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def random_weights(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    w = np.random.default_rng([SEED, seed]).standard_t(4, (rows, cols)).astype(np.float32)
    return quantize(w, qtype)


@pytest.mark.parametrize("qtype", TYPES)
def test_block_decoders_equal_gguf_py(qtype):
    raw = random_weights(qtype, 16, 512, TYPES.index(qtype))
    ours = decode_blocks(raw, qtype)
    theirs = dequantize(raw, qtype, ours.shape)
    assert np.array_equal(ours, theirs), f"seed {SEED}"


@pytest.mark.parametrize("n_tokens", [1, 7])
@pytest.mark.parametrize("qtype", TYPES + ["F32", "F16", "BF16"])
def test_matmul_equals_reference(qtype, n_tokens):
    rng = np.random.default_rng([SEED, n_tokens])
    x = rng.standard_normal((n_tokens, 512)).astype(np.float32)
    if qtype in ("F32", "F16", "BF16"):
        raw = quantize(rng.standard_normal((48, 512)).astype(np.float32), qtype)
        raw = raw.view(np.float32) if qtype == "F32" else raw
    else:
        raw = random_weights(qtype, 48, 512, 100 + TYPES.index(qtype))
    ours, ref = matmul(raw, qtype, x), matmul_reference(raw, qtype, x)
    assert ours.shape == (n_tokens, 48)
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max(), f"seed {SEED}"
