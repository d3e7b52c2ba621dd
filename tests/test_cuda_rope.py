"""The RoPE kernel (tabulated angles, position read from the device) against plain torch ops with float64
angles, at partial and full rotary widths and far positions (on a GPU, or through Triton's interpreter)."""

from __future__ import annotations

import pytest

from cuda_setup import DEVICE, torch  # first: sets up the interpreter where there is no GPU
from localcoder.cuda.rope import rope, rope_reference, rope_tables


@pytest.mark.parametrize("D,rope_dim", [(256, 64), (32, 32), (96, 16)])
def test_rope_kernel_equals_the_torch_ops(D, rope_dim):
    gen = torch.Generator().manual_seed(D + rope_dim)
    x = torch.randn((5, 3, D), generator=gen).to(DEVICE)
    positions = torch.tensor([0, 1, 7, 4095, 30000], device=DEVICE)
    cos, sin = rope_tables(32768, rope_dim, 10_000_000.0, DEVICE)
    expected = rope_reference(x, positions, rope_dim, 10_000_000.0)
    torch.testing.assert_close(rope(x, positions, cos, sin), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(rope(x, positions, cos, sin)[..., rope_dim:], x[..., rope_dim:])  # the rest passes through


def test_reference_rotates_pairs_by_the_angle():
    x = torch.zeros((1, 1, 4))
    x[0, 0, 0] = 1.0  # pair (0, 2) at frequency 1: rotated by angle = position
    out = rope_reference(x, torch.tensor([2]), 4, 10000.0)
    torch.testing.assert_close(out[0, 0, [0, 2]], torch.tensor([torch.cos(torch.tensor(2.0)), torch.sin(torch.tensor(2.0))]))
