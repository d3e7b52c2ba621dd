"""The fused RMSNorm kernel (with and without the DeltaNet output's silu gate) against plain torch ops, on rows of
power-of-two and other widths (on a GPU, or through Triton's interpreter)."""

from __future__ import annotations

import pytest

from cuda_setup import DEVICE, torch  # first: sets up the interpreter where there is no GPU
from localcoder.cuda.norms import rms_norm, rms_norm_reference


@pytest.mark.parametrize("shape", [(1, 2048), (3, 64), (5, 4, 128), (2, 96)])
@pytest.mark.parametrize("gated", [False, True])
def test_fused_norm_equals_the_torch_ops(shape, gated):
    gen = torch.Generator().manual_seed(len(shape) * 100 + shape[-1])
    x, gate = (torch.randn(shape, generator=gen).to(DEVICE) * 3 for _ in range(2))
    w = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(DEVICE)
    got = rms_norm(x, w, 1e-6, gate if gated else None)
    expected = rms_norm_reference(x, w, 1e-6, gate if gated else None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_reference_normalises_to_unit_rms():
    x = torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(rms_norm_reference(x, torch.ones(2), 0.0), x / (12.5 ** 0.5))
