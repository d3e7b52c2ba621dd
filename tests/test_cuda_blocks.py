"""The CUDA backend's block-format kernels against gguf-py's dequantize (an independent decoder), for every type
it runs: on a GPU when there is one, otherwise through Triton's interpreter on small shapes."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_setup import DEVICE, torch  # first: sets up the interpreter where there is no GPU
from gguf import GGMLQuantizationType as T

from localcoder.cuda.quant import dequantize, gemv
from localcoder.errors import UserError
from quant.quantize import dequantize as gguf_dequantize, quantize

TYPES = ["Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
ROWS, COLS = 6, 512


def random_rows(qtype: str, seed: int):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((ROWS, COLS)).astype(np.float32) * rng.uniform(0.01, 3, (ROWS, 1)).astype(np.float32)
    raw = quantize(values, T[qtype])
    return raw, gguf_dequantize(raw, T[qtype], (ROWS, COLS)).astype(np.float32)


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_equals_gguf_py(qtype):
    raw, expected = random_rows(qtype, 1)
    got = dequantize(torch.from_numpy(raw).to(DEVICE), qtype, COLS).cpu().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("qtype", TYPES)
def test_gemv_equals_the_dequantized_product(qtype):
    raw, weights = random_rows(qtype, 2)
    x = np.random.default_rng(3).standard_normal(COLS).astype(np.float32)
    got = gemv(torch.from_numpy(raw).to(DEVICE), qtype, torch.from_numpy(x).to(DEVICE)).cpu().numpy()
    expected = weights.astype(np.float64) @ x.astype(np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_unsupported_types_and_shapes_are_clear_errors():
    raw, _ = random_rows("Q4_K", 4)
    with pytest.raises(UserError, match="no kernel for Q4_0"):
        dequantize(torch.from_numpy(raw).to(DEVICE), "Q4_0", COLS)
    with pytest.raises(UserError, match="not whole groups"):
        dequantize(torch.from_numpy(raw).to(DEVICE), "Q4_K", 300)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q8_0"])
def test_grouped_gemv_runs_each_slot_on_its_expert(qtype):
    from localcoder.cuda.quant import grouped_gemv

    n_expert, rows = 5, 96
    rng = np.random.default_rng(5)
    values = rng.standard_normal((n_expert * rows, 256)).astype(np.float32)
    raw = quantize(values, T[qtype])
    weights = gguf_dequantize(raw, T[qtype], (n_expert * rows, 256)).reshape(n_expert, rows, 256).astype(np.float64)
    stacked = torch.from_numpy(raw.reshape(n_expert, rows, -1)).to(DEVICE)
    experts = np.array([3, 0, 4])
    x = rng.standard_normal((3, 256)).astype(np.float32)
    got = grouped_gemv(stacked, qtype, torch.from_numpy(experts).to(DEVICE), torch.from_numpy(x).to(DEVICE))
    expected = np.stack([weights[e] @ x[s] for s, e in enumerate(experts)])
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    shared = grouped_gemv(stacked, qtype, torch.from_numpy(experts).to(DEVICE), torch.from_numpy(x[0]).to(DEVICE))
    np.testing.assert_allclose(shared.cpu().numpy(), np.stack([weights[e] @ x[0] for e in experts]), rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
