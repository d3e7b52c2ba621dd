"""The CUDA backend's delta rule against the float64 numpy recurrence (kernels/deltanet.py): the token-walking
kernel and the chunked matrix form, for one decode token and for prompts (padded to whole chunks or not),
continuing a state (on a GPU, or through Triton's interpreter)."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_setup import DEVICE, torch  # first: sets up the interpreter where there is no GPU
from localcoder.cuda.deltanet import delta_rule, delta_rule_chunked
from localcoder.kernels.deltanet import delta_rule_reference


def inputs(T: int, nv: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((T, nv, d)).astype(np.float32) / np.float32(np.sqrt(d))
    k = rng.standard_normal((T, nv, d))
    k = (k / np.linalg.norm(k, axis=-1, keepdims=True)).astype(np.float32)  # the model l2-normalizes keys
    v = rng.standard_normal((T, nv, d)).astype(np.float32)
    g = -rng.uniform(0.01, 3.0, (T, nv)).astype(np.float32)
    beta = rng.uniform(0, 1, (T, nv)).astype(np.float32)
    return q, k, v, g, beta


def check(rule, T: int, nv: int, d: int, **options) -> None:
    start = np.random.default_rng(9).standard_normal((nv, d, d)) * 0.1
    q, k, v, g, beta = inputs(T, nv, d, T)
    state = torch.from_numpy(start.astype(np.float32)).to(DEVICE)
    got = rule(*(torch.from_numpy(a).to(DEVICE) for a in (q, k, v, g, beta)), state, **options)
    S = start.copy()
    expected = delta_rule_reference(*(a.astype(np.float64) for a in (q, k, v, g, beta)), S)
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(state.cpu().numpy(), S, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("T,nv,d", [(1, 4, 64), (7, 2, 32), (5, 4, 128)])
def test_kernel_equals_the_float64_recurrence(T, nv, d):
    check(delta_rule, T, nv, d)


@pytest.mark.parametrize("T,chunk", [(1, 64), (64, 64), (130, 64), (13, 4)])
def test_chunked_form_equals_the_float64_recurrence(T, chunk):
    check(delta_rule_chunked, T, 2, 32, chunk=chunk)
