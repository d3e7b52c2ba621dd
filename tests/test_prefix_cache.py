"""Prefix reuse for the hybrid model: snapshots share KV rows without corrupting each other, a second turn computes
only its new tokens and gives the logits of a cold run, interleaved conversations each find their own checkpoint,
and the cache stays within its byte budget."""

from __future__ import annotations

import numpy as np
import pytest

from localcoder.layers import KVCache
from localcoder.model import Model
from localcoder.prefix_cache import PrefixCache
from quant.convert import convert_hf

TURN1 = [{"role": "system", "content": "You write Python."},
         {"role": "user", "content": "def add(a, b):\n    return a + b\n# now subtract"}]


@pytest.fixture(scope="module")
def model(hf_model, tmp_path_factory):
    path = convert_hf(hf_model("tiny"), tmp_path_factory.mktemp("prefix") / "m.gguf", "F32", show_progress=False).out
    return Model.load(path, n_batch=32)


def test_snapshots_share_rows_and_never_change():
    """Two caches continuing one snapshot, appended in turn, each see exactly their own rows."""
    rng = np.random.default_rng(0)
    rows = lambda n: rng.standard_normal((n, 2, 8)).astype(np.float32)  # noqa: E731
    live = KVCache(2, 8)
    base = rows(5)
    live.append(base, base)
    snap = live.share()
    assert snap.rows is live.rows  # taking a snapshot copies nothing
    extra_a, extra_b = rows(3), rows(4)
    live.append(extra_a, extra_a)  # the live cache owns the rows past the pin: appends in place
    other = snap.copy()
    other.append(extra_b, extra_b)  # someone else's rows lie past the pin: copies first
    assert other.rows is not live.rows
    head_major = lambda x: x.transpose(1, 0, 2)  # noqa: E731
    assert np.array_equal(snap.keys, head_major(base))
    assert np.array_equal(live.keys, head_major(np.concatenate([base, extra_a])))
    assert np.array_equal(other.values, head_major(np.concatenate([base, extra_b])))


def test_second_turn_computes_only_new_tokens_and_equals_a_cold_run(model):
    session = model.new_session()
    first = model.generate(TURN1, max_tokens=6, temperature=0.0, session=session)
    answer = "".join(step.text for step in first)
    turn2 = TURN1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "and multiply?"}]
    prompt2 = model.encode_prompt(turn2)
    before = model.computed_tokens
    warm_logits, reused = session.feed_prompt(prompt2)
    assert reused >= len(first.prompt_tokens) and model.computed_tokens - before == len(prompt2) - reused
    cold = model.logits(prompt2)[-1]
    assert np.max(np.abs(warm_logits - cold)) < 1e-4 * np.max(np.abs(cold))
    assert session.prefix_cache.stats.hits >= 1


def test_interleaved_conversations_each_resume_from_their_own_checkpoint(model):
    cache = PrefixCache(min_gap=4)
    session = model.new_session(cache)
    conv_a = model.encode_prompt(TURN1)
    conv_b = model.encode_prompt([{"role": "user", "content": "Something else entirely, in Rust."}])
    session.feed_prompt(conv_a)
    session.feed_prompt(conv_b)  # the session's live state now belongs to B
    extended_a = conv_a + model.tokenizer.encode("x = 1<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n")
    before = model.computed_tokens
    logits, reused = session.feed_prompt(extended_a)
    assert reused == len(conv_a) and model.computed_tokens - before == len(extended_a) - len(conv_a)
    cold = model.logits(extended_a)[-1]
    assert np.max(np.abs(logits - cold)) < 1e-4 * np.max(np.abs(cold))
    # B's state survived A's appends: resuming B extended equals its cold run too
    extended_b = conv_b + model.tokenizer.encode("fn main() {}")
    logits, reused = session.feed_prompt(extended_b)
    assert reused == len(conv_b)
    cold = model.logits(extended_b)[-1]
    assert np.max(np.abs(logits - cold)) < 1e-4 * np.max(np.abs(cold))


def test_checkpoints_at_message_starts_and_the_end(model):
    cache = PrefixCache(min_gap=1000)
    prompt = model.encode_prompt(TURN1)
    starts = [i for i, t in enumerate(prompt) if t == model.message_start_id]
    assert cache.checkpoints(prompt, 0, model.message_start_id) == [starts[-1], len(prompt)]
    dense = PrefixCache(min_gap=1).checkpoints(prompt, 0, model.message_start_id)
    assert dense == [p for p in starts if p > 0] + [len(prompt)]
    assert cache.checkpoints(prompt, len(prompt) - 1, model.message_start_id) == [len(prompt)]


def test_cache_stays_within_its_budget_least_recent_first(model):
    probe = model.new_session()
    probe.feed_prompt(model.encode_prompt(TURN1))
    one = probe.prefix_cache.nbytes  # the bytes of a conversation's checkpoints
    cache = PrefixCache(budget_bytes=int(2.5 * one), min_gap=1 << 20)
    session = model.new_session(cache)
    prompts = [model.encode_prompt([{"role": "user", "content": f"task number {i}"}]) for i in range(5)]
    for p in prompts:
        session.feed_prompt(p)
        assert cache.nbytes <= cache.budget_bytes
    assert cache.stats.evictions > 0
    assert cache.longest_prefix(prompts[-1] + [1]) is not None  # the newest stays
    assert cache.longest_prefix(prompts[0] + [1]) is None  # the oldest went first
