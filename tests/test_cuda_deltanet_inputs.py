"""The DeltaNet's fused decode-step preparation (conv, silu, l2 norms, head repeat, gates) against the torch form,
including the conv state it leaves (on a GPU, or through Triton's interpreter)."""

from __future__ import annotations

import pytest

from cuda_setup import DEVICE, torch  # first: sets up the interpreter where there is no GPU
from localcoder.cuda.deltanet_inputs import prepare_reference, prepare_step


@pytest.mark.parametrize("nk,nv,dk,dv,K", [(2, 4, 32, 32, 4), (1, 2, 64, 16, 3), (2, 2, 16, 64, 4)])
def test_fused_step_equals_the_torch_form(nk, nv, dk, dv, K):
    gen = torch.Generator().manual_seed(nk * 100 + nv * 10 + K)
    channels = 2 * nk * dk + nv * dv
    mixed = torch.randn((1, channels), generator=gen).to(DEVICE)
    ba = (torch.randn((1, 2 * nv), generator=gen) * 10).to(DEVICE)  # softplus's large branch too
    state = torch.randn((K - 1, channels), generator=gen).to(DEVICE)
    kernel = torch.randn((channels, K), generator=gen).to(DEVICE)
    ssm_a = -torch.rand(nv, generator=gen).to(DEVICE) * 8
    dt_bias = torch.randn(nv, generator=gen).to(DEVICE)
    state_ref = state.clone()
    expected = prepare_reference(mixed, ba, state_ref, kernel, ssm_a, dt_bias, nk, dk, dv)
    got = prepare_step(mixed, ba, state, kernel, ssm_a, dt_bias, nk, dk, dv)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, state_ref)
