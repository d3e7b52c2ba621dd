"""The grouped quantized GEMM (prompt-time experts in one launch) against dequantize-then-matmul per group, for
every block format, uneven groups (empty, one slot, more than a tile), and a strided expert pool (on a GPU, or
through Triton's interpreter)."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_setup import DEVICE, torch  # first: sets up the interpreter where there is no GPU
from localcoder.cuda.gemm import BLOCK_T, grouped_gemm, grouped_gemm_reference
from quant.quantize import quantize


def stacked(qtype: str, n_expert: int, rows: int, cols: int, seed: int) -> torch.Tensor:
    from gguf import GGMLQuantizationType as T

    rng = np.random.default_rng(seed)
    raw = [quantize(rng.standard_normal((rows, cols)).astype(np.float32), T[qtype]) for _ in range(n_expert)]
    return torch.from_numpy(np.stack(raw)).to(DEVICE)


def routing(n_tokens: int, per_group: list[int], seed: int):
    rng = np.random.default_rng(seed)
    starts = np.concatenate([[0], np.cumsum(per_group)])
    return starts, rng.integers(0, n_tokens, starts[-1])


@pytest.mark.parametrize("qtype", ["Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_grouped_gemm_equals_dequantize_then_matmul(qtype):
    raw = stacked(qtype, 4, 40, 512, 1)
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((9, 512)).astype(np.float32)).to(DEVICE)
    experts = np.array([3, 0, 2])
    starts, src = routing(9, [BLOCK_T + 3, 0, 1], 3)
    got = grouped_gemm(raw, qtype, x, experts, starts, src, exact=True)
    expected = grouped_gemm_reference(raw, qtype, x, experts, starts, src)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_a_strided_pool_of_slots_reads_each_slot():
    raw = stacked("Q4_K", 3, 16, 256, 4)
    pool = torch.zeros((3, raw[0].numel() + 100), dtype=torch.uint8, device=DEVICE)  # slots larger than one expert
    pool[:, :raw[0].numel()] = raw.reshape(3, -1)
    view = pool.as_strided((3, 16, raw.shape[2]), (pool.shape[1], raw.shape[2], 1))
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((4, 256)).astype(np.float32)).to(DEVICE)
    starts, src = routing(4, [2, 3], 6)
    got = grouped_gemm(view, "Q4_K", x, [2, 1], starts, src, exact=True)
    torch.testing.assert_close(got, grouped_gemm_reference(raw, "Q4_K", x, [2, 1], starts, src), rtol=1e-4, atol=1e-4)
