"""The CUDA backend's delta-rule kernel against the float64 numpy recurrence (kernels/deltanet.py), for one
decode token and for a prompt, continuing a state (on a GPU, or through Triton's interpreter)."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_setup import DEVICE, torch  # first: sets up the interpreter where there is no GPU
from localcoder.cuda.deltanet import delta_rule
from localcoder.kernels.deltanet import delta_rule_reference



def inputs(T: int, nv: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    q, k = (rng.standard_normal((T, nv, d)).astype(np.float32) / np.float32(np.sqrt(d)) for _ in range(2))
    v = rng.standard_normal((T, nv, d)).astype(np.float32)
    g = -rng.uniform(0.01, 1.0, (T, nv)).astype(np.float32)
    beta = rng.uniform(0, 1, (T, nv)).astype(np.float32)
    return q, k, v, g, beta


@pytest.mark.parametrize("T,nv,d", [(1, 4, 64), (7, 2, 32), (5, 4, 128)])
def test_delta_rule_equals_the_float64_recurrence(T, nv, d):
    start = np.random.default_rng(9).standard_normal((nv, d, d)) * 0.1
    q, k, v, g, beta = inputs(T, nv, d, T)
    state = torch.from_numpy(start.astype(np.float32)).to(DEVICE)
    got = delta_rule(*(torch.from_numpy(a).to(DEVICE) for a in (q, k, v, g, beta)), state)
    S = start.copy()
    expected = delta_rule_reference(*(a.astype(np.float64) for a in (q, k, v, g, beta)), S)
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.cpu().numpy(), S, rtol=1e-4, atol=1e-5)
