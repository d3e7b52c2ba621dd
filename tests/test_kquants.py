"""localcoder's quantizers produce llama.cpp's bytes (ggml_quantize_chunk through ctypes), for every type, with and
without importance weights, on fresh random data of many kinds each run."""

from __future__ import annotations

import os

import numba
import numpy as np
import pytest

from oracles.ggml import ggml_quantize
from quant.quantize import T, dequantize, quantize

SEED = int.from_bytes(os.urandom(4), "little")
K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
ALL_TYPES = K_TYPES + ["Q8_0", "Q4_0", "Q5_0", "Q5_1"]
KINDS = ["normal", "heavy_tailed", "sparse", "zero_blocks", "tiny", "bf16", "outlier_columns", "negative"]


def make_rows(kind: str, rows: int, cols: int, rng) -> np.ndarray:
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    if kind == "heavy_tailed":
        x = rng.standard_t(2, (rows, cols)).astype(np.float32)
    elif kind == "sparse":
        x *= rng.random((rows, cols)) < 0.3
    elif kind == "zero_blocks":
        x[:, :256] = 0  # a whole super-block
        x[:, 288:304] = 0  # one 16-value sub-block
    elif kind == "tiny":
        x *= np.float32(1e-6)
    elif kind == "bf16":
        x = (x.view(np.uint32) & 0xFFFF0000).view(np.float32)
    elif kind == "outlier_columns":
        x[:, 7] *= 100
        x[:, 300] *= 40
    elif kind == "negative":
        x = -np.abs(x)
    return x


def mismatching_blocks(ours: np.ndarray, ref: np.ndarray, type_size: int) -> int:
    return int((ours.reshape(-1, type_size) != ref.reshape(-1, type_size)).any(axis=1).sum())


@pytest.mark.parametrize("use_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_bytes_equal_ggml(qtype, kind, use_imatrix):
    rng = np.random.default_rng([SEED, ALL_TYPES.index(qtype), KINDS.index(kind), use_imatrix])
    x = make_rows(kind, 12, 768, rng)
    imatrix = (rng.random(768, dtype=np.float32) ** 2 * 20).astype(np.float32) if use_imatrix else None
    ours, ref = quantize(x, qtype, imatrix), ggml_quantize(x, int(T[qtype]), imatrix)
    type_size = {"Q8_0": 34, "Q4_0": 18, "Q5_0": 22, "Q5_1": 24}.get(qtype, ours.shape[1] // 3)
    assert ours.shape == ref.shape
    assert mismatching_blocks(ours, ref, type_size) == 0, f"seed {SEED}"


# Worst relative RMS error of quantize -> gguf-py dequantize on Gaussian rows (measured ~0.6-0.8x of these).
RMS_BOUND = {"Q2_K": 0.45, "Q3_K": 0.25, "Q4_K": 0.12, "Q5_K": 0.06, "Q6_K": 0.03, "Q8_0": 0.01,
             "Q4_0": 0.15, "Q5_0": 0.08, "Q5_1": 0.07}


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_round_trip_through_gguf_py(qtype):
    x = np.random.default_rng([SEED, 99]).standard_normal((16, 512)).astype(np.float32)
    back = dequantize(quantize(x, qtype), qtype, x.shape)
    rel = np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x ** 2))
    assert 0 < rel < RMS_BOUND[qtype]


def test_hand_built_q8_0_block():
    x = (np.arange(32, dtype=np.float32) - 16) / 4  # max |x| = 4 at the first value
    raw = quantize(x[None, :], "Q8_0")[0]
    d = np.float32(4.0) / np.float32(127.0)
    assert raw[:2].view(np.float16)[0] == np.float16(d)
    expected = np.sign(x) * np.floor(np.abs(x.astype(np.float64) * np.float64(np.float32(1) / d)) + 0.5)
    assert (raw[2:].view(np.int8) == expected).all()
    assert raw[2] == np.uint8(256 - 127)  # -4 / d = -127


def test_all_zero_q6_k_block_is_all_zero_bytes():
    assert not quantize(np.zeros((1, 256), np.float32), "Q6_K").any()


def test_thread_count_does_not_change_bytes():
    x = np.random.default_rng([SEED, 7]).standard_normal((64, 512)).astype(np.float32)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = quantize(x, "Q4_K")
    finally:
        numba.set_num_threads(threads)
    assert (one == quantize(x, "Q4_K")).all()


def test_rejects_rows_not_a_multiple_of_the_block():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize(np.zeros((2, 300), np.float32), "Q4_K")
