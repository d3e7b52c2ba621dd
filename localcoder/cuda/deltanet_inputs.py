"""The Gated DeltaNet's inputs to the delta rule, from the input projections: causal conv over the last K
positions (kept as state), silu, l2-normalised queries and keys (queries also scaled by 1/sqrt(dk)) repeated from
key heads to value heads, and the gates beta = sigmoid(b) and g = ssm_a * softplus(a + dt_bias).

`prepare_reference` is the torch form (any number of tokens; prompts use it). A decode step runs
`prepare_step`: one program per value head does all of it for one token (~25 torch launches become two: the
kernel and the conv state's shift), reading and writing only device memory, so it fits a recorded graph."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from localcoder.reference import L2_EPS


def prepare_reference(mixed, ba, conv_state, conv_kernel, ssm_a, dt_bias, nk: int, dk: int, dv: int):
    """(q, k [T, nv, dk], v [T, nv, dv], g, beta [T, nv]) from mixed [T, channels] (the qkv projection) and
    ba [T, 2 nv] (key-head major: each key head's r b's then its r a's); conv_state [K-1, channels] is shifted
    in place; conv_kernel [channels, K]."""
    T, nv = mixed.shape[0], ssm_a.shape[0]
    r = nv // nk
    K = conv_kernel.shape[1]
    ba = ba.reshape(T, nk, 2 * r)
    b, a = ba[..., :r].reshape(T, nv), ba[..., r:].reshape(T, nv)
    padded = torch.cat([conv_state, mixed])
    conv_state.copy_(padded[-(K - 1):])
    conv = torch.nn.functional.silu(sum(padded[j:j + T] * conv_kernel[:, j] for j in range(K)))
    q = conv[:, :nk * dk].reshape(T, nk, dk)
    k = conv[:, nk * dk:2 * nk * dk].reshape(T, nk, dk)
    v = conv[:, 2 * nk * dk:].reshape(T, nv, dv)
    q = q / torch.sqrt((q * q).sum(dim=-1, keepdim=True) + L2_EPS)
    k = k / torch.sqrt((k * k).sum(dim=-1, keepdim=True) + L2_EPS)
    q, k = q.repeat_interleave(r, dim=1) / math.sqrt(dk), k.repeat_interleave(r, dim=1)
    return q, k, v, ssm_a * torch.nn.functional.softplus(a + dt_bias), torch.sigmoid(b)


@triton.jit
def _conv_silu(mixed, state, kernel, new_state, channels, c, K: tl.constexpr):
    """silu of the causal conv at channels c for the new token; writes the shifted state of those channels."""
    acc = tl.load(mixed + c) * tl.load(kernel + c * K + (K - 1))
    for j in range(K - 1):
        past = tl.load(state + j * channels + c)
        acc += past * tl.load(kernel + c * K + j)
        if j > 0:
            tl.store(new_state + (j - 1) * channels + c, past)
    tl.store(new_state + (K - 2) * channels + c, tl.load(mixed + c))
    return acc / (1.0 + tl.exp(-acc))


@triton.jit
def prepare_step_kernel(mixed, ba, state, kernel, ssm_a, dt_bias, new_state, q, k, v, g, beta, channels, r,
                        DK: tl.constexpr, DV: tl.constexpr, K: tl.constexpr, NK: tl.constexpr, eps):
    h = tl.program_id(0)
    key_head, j = h // r, h % r
    i = tl.arange(0, DK)
    qs = _conv_silu(mixed, state, kernel, new_state, channels, key_head * DK + i, K)
    ks = _conv_silu(mixed, state, kernel, new_state, channels, NK * DK + key_head * DK + i, K)
    vs = _conv_silu(mixed, state, kernel, new_state, channels, 2 * NK * DK + h * DV + tl.arange(0, DV), K)
    tl.store(q + h * DK + i, qs / tl.sqrt(tl.sum(qs * qs, axis=0) + eps) / tl.sqrt(DK * 1.0))
    tl.store(k + h * DK + i, ks / tl.sqrt(tl.sum(ks * ks, axis=0) + eps))
    tl.store(v + h * DV + tl.arange(0, DV), vs)
    b = tl.load(ba + key_head * 2 * r + j)
    a = tl.load(ba + key_head * 2 * r + r + j) + tl.load(dt_bias + h)
    softplus = tl.where(a > 20.0, a, tl.log(1.0 + tl.exp(tl.minimum(a, 20.0))))
    tl.store(g + h, tl.load(ssm_a + h) * softplus)
    tl.store(beta + h, 1.0 / (1.0 + tl.exp(-b)))


def prepare_step(mixed, ba, conv_state, conv_kernel, ssm_a, dt_bias, nk: int, dk: int, dv: int):
    """prepare_reference for one token (mixed [1, channels], ba [1, 2 nv]) in one kernel; dk and dv powers of
    two. The key heads' conv channels are computed by each of their r value heads (identical results), so the
    shifted state goes to a new buffer and is copied back after."""
    nv, channels = ssm_a.shape[0], mixed.shape[1]
    K = conv_kernel.shape[1]
    dev = mixed.device
    q, k = torch.empty((1, nv, dk), device=dev), torch.empty((1, nv, dk), device=dev)
    v = torch.empty((1, nv, dv), device=dev)
    g, beta = torch.empty((1, nv), device=dev), torch.empty((1, nv), device=dev)
    new_state = torch.empty_like(conv_state)
    prepare_step_kernel[(nv,)](mixed.contiguous(), ba.contiguous(), conv_state, conv_kernel.contiguous(), ssm_a,
                               dt_bias, new_state, q, k, v, g, beta, channels, nv // nk, dk, dv, K, nk, L2_EPS)
    conv_state.copy_(new_state)
    return q, k, v, g, beta
