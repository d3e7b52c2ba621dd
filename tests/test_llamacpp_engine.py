"""The llama.cpp engine: its greedy generation equals llama-cpp-python's own sampler, its snapshots restore the
exact state, sessions sharing the context rebuild theirs, and `run --engine llamacpp` works end to end."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from localcoder.demo import ensure_demo_gguf
from localcoder.errors import UserError

PROMPT = list(range(5, 40))


@pytest.fixture(scope="module")
def model():
    from localcoder.llamacpp_engine import LlamaCppModel

    return LlamaCppModel.load(ensure_demo_gguf(), n_ctx=512, threads=2)


def test_greedy_generation_equals_llama_cpp_python_sampling(model):
    import llama_cpp

    oracle = llama_cpp.Llama(str(ensure_demo_gguf()), n_ctx=512, n_threads=2, verbose=False)
    expected = []
    for token in oracle.generate(PROMPT, top_k=1, temp=0.0):
        expected.append(token)
        if len(expected) == 16:
            break
    generation = model.generate(None, prompt_tokens=PROMPT, max_tokens=16, temperature=0.0)
    list(generation)
    assert generation.generated == expected[:len(generation.generated)] and len(generation.generated) >= 8


def test_a_snapshot_restores_the_exact_state(model):
    session = model.new_session()
    cold = session.feed(PROMPT + list(range(200, 230)))
    session.reset()
    session.feed(PROMPT)
    snapshot = session.snapshot()
    session.feed(list(range(100, 120)))
    session.restore(snapshot)
    assert np.array_equal(session.feed(list(range(200, 230))), cold)


def test_sessions_taking_turns_on_one_context_keep_their_own_state(model):
    a, b = model.new_session(), model.new_session()
    a.feed(PROMPT)
    b.feed(list(range(300, 340)))  # b takes the context over
    continued = a.feed([7, 8, 9])  # a rebuilds its state first
    fresh = model.new_session().feed(PROMPT + [7, 8, 9])
    assert np.array_equal(continued, fresh)


def test_context_and_vocabulary_are_checked(model):
    with pytest.raises(UserError, match="exceed the context size 512"):
        model.new_session().feed(list(range(600)))
    with pytest.raises(UserError, match="token ids must be in"):
        model.new_session().feed([10 ** 6])


def test_run_with_the_llama_cpp_engine():
    done = CliRunner().invoke(app, ["run", str(ensure_demo_gguf()), "def add(a, b):", "-n", "6", "--temperature",
                                    "0", "--engine", "llamacpp"])
    assert done.exit_code == 0, done.output
    bad = CliRunner().invoke(app, ["run", str(ensure_demo_gguf()), "hi", "--engine", "vllm"])
    assert bad.exit_code == 1 and "choose localcoder or llamacpp" in bad.output


def test_n_cpu_moe_places_the_first_layers_experts_in_ram():
    """llama.cpp logs each tensor its buffer overrides move; the logits do not change."""
    import ctypes

    import llama_cpp
    import llama_cpp._logger as default_logging

    from localcoder.llamacpp_engine import LlamaCppModel, cpu_moe_pattern

    messages = []

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):
        messages.append(text.decode(errors="replace"))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        split = LlamaCppModel.load(ensure_demo_gguf(), n_ctx=256, threads=2, n_cpu_moe=2)
    finally:
        llama_cpp.llama_log_set(default_logging.llama_log_callback, ctypes.c_void_p(0))
    moved = sorted(m.split()[1] for m in messages if "buffer type overridden to CPU" in m)
    assert moved == [f"blk.{i}.ffn_{p}_exps.weight" for i in (0, 1) for p in ("down", "gate", "up")]
    plain = LlamaCppModel.load(ensure_demo_gguf(), n_ctx=256, threads=2)
    np.testing.assert_array_equal(split.logits(PROMPT), plain.logits(PROMPT))
    assert cpu_moe_pattern(3) == r"blk\.(0|1|2)\.ffn_(up|down|gate)_exps"
