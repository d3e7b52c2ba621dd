"""Generation on the CPU runtime: greedy decoding equals transformers', sampling follows its parameters, stop
strings, prefix reuse across turns, the `run` command and the memory check."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from localcoder.errors import UserError
from localcoder.memory import MemoryPlan, check_fits
from localcoder.model import Model
from localcoder.sampling import SamplingParams, Sampler, apply_penalties, candidates
from quant.convert import convert_hf

MESSAGES = [{"role": "system", "content": "You write Python."},
            {"role": "user", "content": "def add(a, b):\n    return a + b\n# now subtract"}]


@pytest.fixture(scope="module")
def model_and_dir(hf_model, tmp_path_factory):
    hf_dir = hf_model("k256")
    path = convert_hf(hf_dir, tmp_path_factory.mktemp("gen") / "m.gguf", "F32", show_progress=False).out
    return Model.load(path), hf_dir


def test_greedy_generation_equals_transformers(model_and_dir):
    import torch
    from transformers import Qwen3NextForCausalLM

    model, hf_dir = model_and_dir
    prompt = model.encode_prompt(MESSAGES)
    generation = model.generate(MESSAGES, max_tokens=24, temperature=0.0)
    steps = list(generation)
    hf = Qwen3NextForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(prompt):].tolist()
    ends = [i for i, t in enumerate(theirs) if t in model.end_ids]
    theirs = theirs[:ends[0]] if ends else theirs
    assert generation.generated == theirs
    assert "".join(s.text for s in steps) == generation.text == model.tokenizer.decode(theirs)


def test_stop_strings_cut_the_text(model_and_dir):
    model, _ = model_and_dir
    full = model.generate(MESSAGES, max_tokens=24, temperature=0.0)
    text = "".join(s.text for s in full)
    assert len(text) > 6 and full.finish_reason == "length"
    stop = text[3:6]
    cut = model.generate(MESSAGES, max_tokens=24, temperature=0.0, stop=[stop])
    assert "".join(s.text for s in cut) == text[:text.find(stop)] and cut.finish_reason == "stop"


def test_a_session_reuses_the_previous_turn(model_and_dir):
    model, _ = model_and_dir
    session = model.new_session()
    first = model.generate(MESSAGES, max_tokens=8, temperature=0.0, session=session)
    list(first)
    turn2 = MESSAGES + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "and multiply"}]
    again = model.generate(turn2, max_tokens=8, temperature=0.0, session=session)
    fresh = model.generate(turn2, max_tokens=8, temperature=0.0)
    assert [s.text for s in again] == [s.text for s in fresh]
    assert again.reused_tokens >= len(first.prompt_tokens) and fresh.reused_tokens == 0


def test_sampling_is_seeded_and_follows_the_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    draws = lambda **kw: [Sampler(SamplingParams(seed=7, **kw)).sample(logits, []) for _ in range(1)]  # noqa: E731
    assert draws(top_k=3) == draws(top_k=3)
    sampler = Sampler(SamplingParams(seed=1, top_k=2, top_p=1.0, min_p=0.0))
    counts = np.bincount([sampler.sample(logits, []) for _ in range(4000)], minlength=4)
    assert counts[2:].sum() == 0  # top_k = 2 keeps tokens 0 and 1, renormalised to 0.625 / 0.375
    assert abs(counts[0] / 4000 - 0.625) < 0.03
    ids, probs = candidates(logits, 0, 0.75, 0.0, 1.0)  # top_p 0.75: 0.5 + 0.3 reaches it
    assert ids.tolist() == [0, 1] and np.allclose(probs, [0.625, 0.375])
    ids, _ = candidates(logits, 0, 1.0, 0.2, 1.0)  # min_p 0.2: p >= 0.1 survive
    assert ids.tolist() == [0, 1, 2]
    ids, probs = candidates(logits, 0, 1.0, 0.0, 0.5)  # temperature 0.5 squares the odds
    assert np.allclose(probs, np.array([0.25, 0.09, 0.0225, 0.0025]) / 0.365)


def test_penalties():
    logits = np.array([2.0, -2.0, 1.0, 0.5])
    out = apply_penalties(logits, [0, 1, 1], repetition=2.0, presence=0.5, frequency=0.25)
    assert np.allclose(out, [2.0 / 2 - 0.25 - 0.5, -2.0 * 2 - 0.5 - 0.5, 1.0, 0.5])
    with pytest.raises(UserError, match="top_p"):
        SamplingParams(top_p=0)


def test_run_command_streams_and_reports_speed(model_and_dir):
    model, _ = model_and_dir
    result = CliRunner().invoke(cli.app, ["run", str(model.path), "hello", "-n", "5", "--temperature", "0"])
    assert result.exit_code == 0, result.output
    assert "tok/s" in result.output and "generated" in result.output
    missing = CliRunner().invoke(cli.app, ["run", str(model.path) + ".nope", "hello"])
    assert missing.exit_code == 1 and "does not exist" in missing.output and "Traceback" not in missing.output


def test_memory_check_refuses_what_does_not_fit():
    import psutil

    ram = psutil.virtual_memory().total
    with pytest.raises(UserError, match="smaller quantization"):
        check_fits(MemoryPlan(weights=ram, kv_cache=1 << 30, recurrent_state=0, scratch=0))
    check_fits(MemoryPlan(weights=1 << 20, kv_cache=1 << 20, recurrent_state=0, scratch=0))
