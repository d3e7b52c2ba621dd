"""The gated delta rule, two ways: recurrent (numba; what the CPU runtime runs) and chunked (numpy BLAS).

Per value head h and token t, with S the [dk, dv] state, q already scaled by 1/sqrt(dk):

    S <- S * exp(g_t);  u = k_t^T S;  S <- S + k_t (beta_t (v_t - u))^T;  o_t = q_t^T S

`delta_rule_reference` is that loop in float64 numpy. The chunked form (transformers' torch_chunk_gated_delta_rule,
reference/qwen3next.md 3.3) processes 64 tokens at a time with matrix products: within a chunk the recurrence is a
unit lower-triangular system solved once, across chunks the state carries over. Both update S in place.
On the CPU the recurrent loop wins at every length (2 cores, 32 heads of 128: 256 tokens 9 ms against 66 ms,
1024 tokens 51 against 340): it does fewer operations per token (3 dk*dv against ~4.5) on a state that stays in
cache, so the runtime uses it for prefill too. The chunked form is the one matrix hardware wants (the GPU
backend's prefill), kept here as its tested float32 model.
Shapes: q, k [T, nv, dk]; v [T, nv, dv]; g, beta [T, nv]; S [nv, dk, dv]; returns o [T, nv, dv].
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from quant import jit  # noqa: F401  (numba cache location)

CHUNK = 64


@njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
def delta_rule_recurrent(q, k, v, g, beta, S):
    """Token by token, heads in parallel (decode and short feeds)."""
    n_tok, nv, dk = q.shape
    dv = v.shape[2]
    out = np.empty((n_tok, nv, dv), np.float32)
    for h in prange(nv):
        s = S[h]
        u = np.empty(dv, np.float32)
        for t in range(n_tok):
            decay = np.float32(np.exp(g[t, h]))
            u[:] = 0
            for i in range(dk):
                ki = k[t, h, i]
                for j in range(dv):
                    s[i, j] *= decay
                    u[j] += ki * s[i, j]
            for j in range(dv):
                u[j] = beta[t, h] * (v[t, h, j] - u[j])
            o = out[t, h]
            o[:] = 0
            for i in range(dk):
                ki, qi = k[t, h, i], q[t, h, i]
                for j in range(dv):
                    s[i, j] += ki * u[j]
                    o[j] += qi * s[i, j]
    return out


def delta_rule_chunked(q, k, v, g, beta, S):
    """64 tokens at a time with batched matrix products (float32; the triangular solve in float64)."""
    n_tok, nv, dk = q.shape
    pad = (-n_tok) % CHUNK
    # padding tokens have k = v = beta = 0 and g = 0: they leave the state and the real outputs unchanged
    q, k, v, g, beta = (np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
                        for a in (q, k, v, g, beta))
    n = (n_tok + pad) // CHUNK
    heads_first = lambda a: np.ascontiguousarray(  # noqa: E731  [T, nv, ...] -> [nv, n, C, ...]
        np.moveaxis(a.reshape((n, CHUNK) + a.shape[1:]), 2, 0))
    q, k, v, g, beta = (heads_first(a.astype(np.float32)) for a in (q, k, v, g, beta))
    g = np.cumsum(g, axis=-1)
    lower = np.tril(np.ones((CHUNK, CHUNK), bool))
    diff = g[..., :, None] - g[..., None, :]
    decay = np.exp(np.where(lower, diff, -np.inf)).astype(np.float32)  # exp(g_i - g_j), j <= i
    k_beta, v_beta = k * beta[..., None], v * beta[..., None]
    strict = (k_beta @ np.swapaxes(k, -1, -2)) * decay * ~np.eye(CHUNK, dtype=bool)
    system = np.eye(CHUNK) + strict.astype(np.float64)  # (I + L) W = rhs, L strictly lower
    rhs = np.concatenate([v_beta, k_beta * np.exp(g)[..., None]], axis=-1).astype(np.float64)
    solved = np.linalg.solve(system, rhs).astype(np.float32)
    value, k_cumdecay = solved[..., :v.shape[-1]], solved[..., v.shape[-1]:]
    intra = (q @ np.swapaxes(k, -1, -2)) * decay  # causal within the chunk, diagonal included
    out = np.empty_like(value)
    state = S.astype(np.float32)
    for c in range(n):
        v_new = value[:, c] - k_cumdecay[:, c] @ state
        out[:, c] = (q[:, c] * np.exp(g[:, c])[..., None]) @ state + intra[:, c] @ v_new
        last = g[:, c, -1]
        carry = k[:, c] * np.exp(last[:, None] - g[:, c])[..., None]
        state = state * np.exp(last)[:, None, None] + np.swapaxes(carry, -1, -2) @ v_new
    S[...] = state
    return np.moveaxis(out, 0, 2).reshape(n * CHUNK, nv, -1)[:n_tok]


def delta_rule_reference(q, k, v, g, beta, S):
    """The recurrence in float64 numpy (S is float64 here and updated in place)."""
    out = np.empty(v.shape)
    for t in range(q.shape[0]):
        S *= np.exp(g[t])[:, None, None]
        u = np.einsum("hkv,hk->hv", S, k[t])
        S += k[t][:, :, None] * (beta[t][:, None] * (v[t] - u))[:, None, :]
        out[t] = np.einsum("hkv,hk->hv", S, q[t])
    return out
