"""The numpy reference forward pass (what the runtime's kernels will be held against) equals transformers."""

from __future__ import annotations

import numpy as np
import pytest

from localcoder.errors import UserError
from localcoder.gguf_model import load_fields, load_float_weights, model_args
from localcoder.reference import forward
from quant.convert import convert_hf
from test_llama_cpp_runs_our_files import N_TOKENS, max_relative_error, prompt_tokens, transformers_logits


@pytest.mark.parametrize("geometry", ["tiny", "k256", "realheads"])
def test_reference_logits_match_transformers(hf_model, tmp_path, geometry):
    hf_dir = hf_model(geometry)
    path = convert_hf(hf_dir, tmp_path / "m.gguf", "F32", show_progress=False).out
    tokens = prompt_tokens(hf_dir, N_TOKENS)
    args, weights = load_float_weights(path)
    assert max_relative_error(forward(args, weights, tokens), transformers_logits(hf_dir, tokens)) < 1e-4


def test_mtp_block_does_not_change_logits(hf_model, tmp_path):
    hf_dir = hf_model("tiny", "bfloat16", mtp=True)
    with_mtp = convert_hf(hf_dir, tmp_path / "a.gguf", "F32", show_progress=False).out
    without = convert_hf(hf_dir, tmp_path / "b.gguf", "F32", keep_mtp=False, show_progress=False).out
    tokens = prompt_tokens(hf_dir, 20)
    (args_a, w_a), (args_b, w_b) = load_float_weights(with_mtp), load_float_weights(without)
    assert args_a == args_b and "blk.4.nextn.eh_proj.weight" in w_a
    assert np.array_equal(forward(args_a, w_a, tokens), forward(args_b, w_b, tokens))


def test_model_args_refuse_other_architectures_and_missing_keys(hf_model, tmp_path):
    path = convert_hf(hf_model("tiny"), tmp_path / "m.gguf", "F32", show_progress=False).out
    fields, _ = load_fields(path)
    args = model_args(fields)
    assert args.recurrent == (True, True, True, False) and args.dv == args.dk == 32
    with pytest.raises(UserError, match="'llama' model"):
        model_args({**fields, "general.architecture": "llama"})
    broken = {k: v for k, v in fields.items() if k != "qwen3next.ssm.state_size"}
    with pytest.raises(UserError, match="ssm.state_size"):
        model_args(broken)


def test_feeding_in_pieces_equals_one_prefill_and_snapshots_restore(hf_model, tmp_path):
    """Prefill, token-by-token decode across the 64-token chunk boundary, more prefill: the same logits as one
    call; and a snapshot taken midway replays the rest identically."""
    from localcoder.reference import new_state, snapshot

    hf_dir = hf_model("realheads")
    args, weights = load_float_weights(convert_hf(hf_dir, tmp_path / "m.gguf", "F32", show_progress=False).out)
    tokens = prompt_tokens(hf_dir, 110)
    whole = forward(args, weights, tokens)
    state = new_state(args)
    pieces = [forward(args, weights, tokens[:50], state)]
    pieces += [forward(args, weights, [t], state) for t in tokens[50:80]]
    saved = snapshot(state)
    pieces.append(forward(args, weights, tokens[80:], state))
    assert max_relative_error(np.concatenate(pieces), whole) < 1e-12
    replay = forward(args, weights, tokens[80:], saved)
    assert np.array_equal(replay, pieces[-1])
    assert max_relative_error(whole, transformers_logits(hf_dir, tokens)) < 1e-4
