"""The recurrent (numba) and chunked (numpy) gated delta rule equal the float64 recurrence, state included."""

from __future__ import annotations

import os

import numpy as np
import pytest

from localcoder.kernels.deltanet import delta_rule_chunked, delta_rule_recurrent, delta_rule_reference

SEED = int.from_bytes(os.urandom(4), "little")


def inputs(n_tok: int, nv: int = 3, dk: int = 32, dv: int = 16):
    rng = np.random.default_rng([SEED, n_tok])
    q, k = rng.standard_normal((2, n_tok, nv, dk))
    q /= np.linalg.norm(q, axis=-1, keepdims=True) * np.sqrt(dk)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((n_tok, nv, dv))
    g = -rng.uniform(0.0, 2.0, (n_tok, nv))
    beta = rng.uniform(0.0, 1.0, (n_tok, nv))
    S = rng.standard_normal((nv, dk, dv)) * 0.1
    return [a.astype(np.float32) for a in (q, k, v, g, beta)], S.astype(np.float32)


@pytest.mark.parametrize("kernel", [delta_rule_recurrent, delta_rule_chunked])
@pytest.mark.parametrize("n_tok", [1, 5, 64, 150])
def test_kernels_equal_the_float64_recurrence(kernel, n_tok):
    (q, k, v, g, beta), S = inputs(n_tok)
    S_ref = S.astype(np.float64)
    ref = delta_rule_reference(*(a.astype(np.float64) for a in (q, k, v, g, beta)), S_ref)
    out = kernel(q, k, v, g, beta, S)
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() < 1e-5 * scale, f"seed {SEED}"
    assert np.abs(S - S_ref).max() < 1e-5 * np.abs(S_ref).max(), f"seed {SEED}"
