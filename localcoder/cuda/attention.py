"""Attention over the KV cache on the device.

Decode reads the cache length from a device tensor, so a CUDA graph captured once replays at every position:
`decode_attention_kernel` splits the cached positions of each query head over SPLITS programs (flash-decoding:
each keeps a running max, sum and weighted value sum over its share), and a few torch ops merge the shares.
Grouped-query heads read their key/value head in place (no repeat). Prefill uses torch's fused
scaled_dot_product_attention. `attention_reference` is the plain softmax(QK^T)V both are tested against.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

SPLITS = 16  # programs per query head: enough to fill a GPU at 16 heads, each walking 1/16 of the cache
BLOCK_N = 32  # cached positions per step of a program


@triton.jit
def decode_attention_kernel(q, keys, values, length, acc_out, max_out, sum_out, group, row_stride, scale,
                            D: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr):
    h = tl.program_id(0)
    split = tl.program_id(1)
    n = tl.load(length)
    share = (n + SPLITS - 1) // SPLITS
    start = split * share
    end = tl.minimum(start + share, n)
    d = tl.arange(0, D)
    head = (h // group) * D + d  # the key/value head this query head reads
    qv = tl.load(q + h * D + d) * scale
    best = tl.full([], float("-inf"), tl.float32)
    total = tl.full([], 0.0, tl.float32)
    acc = tl.zeros([D], dtype=tl.float32)
    for s0 in range(start, end, BLOCK_N):
        pos = s0 + tl.arange(0, BLOCK_N)
        valid = pos < end
        k = tl.load(keys + pos[:, None] * row_stride + head[None, :], mask=valid[:, None], other=0.0)
        scores = tl.where(valid, tl.sum(k * qv[None, :], axis=1), float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, axis=0))
        p = tl.exp(scores - new_best)
        rescale = tl.exp(best - new_best)
        v = tl.load(values + pos[:, None] * row_stride + head[None, :], mask=valid[:, None], other=0.0)
        acc = acc * rescale + tl.sum(p[:, None] * v, axis=0)
        total = total * rescale + tl.sum(p, axis=0)
        best = new_best
    part = h * SPLITS + split
    tl.store(acc_out + part * D + d, acc)
    tl.store(max_out + part, best)
    tl.store(sum_out + part, total)


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """float32 [n_head, D]: one token's query heads q [n_head, D] over the first `length` (int64 [1] on the device)
    rows of the cache keys/values [capacity, n_kv, D]; query head h reads key/value head h // (n_head / n_kv)."""
    n_head, D = q.shape
    n_kv = keys.shape[1]
    acc = torch.empty((n_head, SPLITS, D), dtype=torch.float32, device=q.device)
    best = torch.empty((n_head, SPLITS), dtype=torch.float32, device=q.device)
    total = torch.empty((n_head, SPLITS), dtype=torch.float32, device=q.device)
    decode_attention_kernel[(n_head, SPLITS)](q.contiguous(), keys, values, length, acc, best, total,
                                              n_head // n_kv, n_kv * D, 1.0 / math.sqrt(D), D, BLOCK_N, SPLITS)
    weight = torch.exp(best - best.max(dim=1, keepdim=True).values)  # empty shares: exp(-inf) = 0
    return (weight[..., None] * acc).sum(dim=1) / (weight * total).sum(dim=1, keepdim=True)


def prefill_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """float32 [T, n_head, D]: the last T positions' queries q [T, n_head, D] over keys/values [S, n_kv, D]
    (S >= T, the cache up to and including these tokens), causal."""
    T, S = q.shape[0], keys.shape[0]
    visible = torch.ones((T, S), dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1), attn_mask=visible,
        enable_gqa=q.shape[1] != keys.shape[1])
    return out.transpose(0, 1)


def attention_reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """prefill_attention's contract as explicit scores and softmax (the tests' reference)."""
    T, n_head, D = q.shape
    S, group = keys.shape[0], n_head // keys.shape[1]
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q, keys) / math.sqrt(D)
    visible = torch.ones((T, S), dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    return torch.einsum("hts,shd->thd", probs, values)
