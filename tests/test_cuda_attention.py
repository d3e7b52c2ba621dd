"""Attention over the KV cache against explicit softmax(QKᵀ)V: the decode kernel (cache length read from the
device, positions split over programs, grouped-query heads) and the fused prefill (on a GPU, or through Triton's
interpreter)."""

from __future__ import annotations

import pytest

from cuda_setup import DEVICE, torch  # first: sets up the interpreter where there is no GPU
from localcoder.cuda.attention import SPLITS, attention_reference, decode_attention, prefill_attention


def cache(length: int, capacity: int, n_head: int, n_kv: int, d: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn((length, n_head, d), generator=gen)
    keys, values = (torch.randn((capacity, n_kv, d), generator=gen) for _ in range(2))
    return q.to(DEVICE), keys.to(DEVICE), values.to(DEVICE)


@pytest.mark.parametrize("length,n_head,n_kv,d", [(1, 4, 2, 32), (SPLITS - 3, 2, 2, 64), (5 * SPLITS + 7, 8, 2, 32),
                                                  (300, 4, 1, 256)])
def test_decode_reads_only_the_cached_length(length, n_head, n_kv, d):
    q, keys, values = cache(length, length + 40, n_head, n_kv, d, length)
    keys[length:], values[length:] = 1e4, -1e4  # rows past the length must not be read
    expected = attention_reference(q[-1:], keys[:length], values[:length])[0]
    got = decode_attention(q[-1], keys, values, torch.tensor([length], device=DEVICE))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T,past", [(1, 0), (6, 0), (5, 9)])
def test_prefill_is_causal_from_the_past(T, past):
    q, keys, values = cache(T, past + T, 4, 2, 32, T + past)
    torch.testing.assert_close(prefill_attention(q, keys, values), attention_reference(q, keys, values),
                               rtol=1e-5, atol=1e-5)


def test_reference_is_softmax_of_scores():
    """The reference itself, on one head by hand: the last query sees every key, the first only its own."""
    q, keys, values = cache(3, 3, 1, 1, 8, 0)
    out = attention_reference(q, keys, values)
    torch.testing.assert_close(out[0, 0], values[0, 0])
    weights = torch.softmax(keys[:, 0] @ q[2, 0] / 8 ** 0.5, dim=0)
    torch.testing.assert_close(out[2, 0], weights @ values[:, 0])
