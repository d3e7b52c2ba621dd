"""The CPU runtime (localcoder.Model) against independent oracles: transformers' logits for F32 files, the float64
numpy reference on the dequantized weights for quantized files, llama.cpp on the same quantized file."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader

from localcoder.errors import UserError
from localcoder.kernels import qdot
from localcoder.gguf_model import load_float_weights
from localcoder.model import Model
from localcoder.reference import forward
from quant.convert import convert_hf
from quant.quantize_file import quantize_model
from test_llama_cpp_runs_our_files import (N_TOKENS, llama_cpp_logits, llama_for_logits, max_relative_error,
                                           prompt_tokens, transformers_logits)

BOUND = 1e-4


@pytest.fixture(scope="module")
def f32_files(hf_model, tmp_path_factory):
    """geometry -> (HF folder, F32 GGUF, transformers' logits over N_TOKENS prompt tokens)."""
    cache = {}

    def get(geometry: str):
        if geometry not in cache:
            hf_dir = hf_model(geometry)
            path = convert_hf(hf_dir, tmp_path_factory.mktemp(geometry) / "m.gguf", "F32", show_progress=False).out
            tokens = prompt_tokens(hf_dir, N_TOKENS)
            cache[geometry] = (path, tokens, transformers_logits(hf_dir, tokens))
        return cache[geometry]
    return get


@pytest.mark.parametrize("geometry", ["tiny", "k256", "realheads"])
def test_f32_prefill_decode_and_mixed_equal_transformers(f32_files, geometry):
    path, tokens, ref = f32_files(geometry)
    model = Model.load(path)
    assert max_relative_error(model.logits(tokens), ref) < BOUND  # one prefill, crossing the 64-token chunks
    session = model.new_session()
    decoded = np.stack([session.feed([t]) for t in tokens])  # token by token: the recurrent delta rule
    assert max_relative_error(decoded, ref) < BOUND
    session = model.new_session()
    mixed = [session.feed(tokens[:70], all_logits=True)]  # prefill, then decode, then prefill again
    mixed += [session.feed([t])[None] for t in tokens[70:90]]
    mixed.append(session.feed(tokens[90:], all_logits=True))
    assert max_relative_error(np.concatenate(mixed), ref) < BOUND


def test_small_batches_and_snapshots(f32_files):
    """A prefill split into n_batch chunks equals one call; a snapshot replays the rest identically."""
    path, tokens, ref = f32_files("realheads")
    model = Model.load(path, n_batch=48)
    session = model.new_session()
    first = session.feed(tokens[:100], all_logits=True)
    assert max_relative_error(first, ref[:100]) < BOUND
    saved = session.snapshot()
    rest = session.feed(tokens[100:], all_logits=True)
    session.feed([1, 2, 3])
    session.restore(saved)
    assert session.tokens == tokens[:100]
    assert np.array_equal(session.feed(tokens[100:], all_logits=True), rest)


def q5_1_offsets_of(path) -> dict[str, np.ndarray]:
    """Tensor name -> the block offsets m of the file's Q5_1 tensors (they meet Q8_1's float16 sums)."""
    return {t.name: qdot.q5_1_offsets(np.asarray(t.data)) for t in GGUFReader(path).tensors
            if T(t.tensor_type) == T.Q5_1}


def activation_blocks(path) -> dict[str, int]:
    """Which tensors the "q8" runtime feeds 8-bit activations, from the file's tensor types: K-quants take Q8_K
    (256 values a block), Q8_0 and the Q4_0/Q5_0/Q5_1 fallbacks Q8_0 or Q8_1 (32); float tensors take float32."""
    k_quants = {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K}
    return {t.name: 256 if T(t.tensor_type) in k_quants else 32 for t in GGUFReader(path).tensors
            if T(t.tensor_type) in k_quants | {T.Q8_0, T.Q4_0, T.Q5_0, T.Q5_1}}


def mean_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).mean())


@pytest.mark.parametrize("file_type", ["Q4_K_M", "Q2_K", "Q3_K_M", "Q5_K_M", "Q6_K", "Q8_0"])
def test_quantized_files_equal_the_reference_on_dequantized_weights(f32_files, tmp_path, file_type):
    """Every block format, through llama.cpp's mixes (k256 has K-quant fallbacks to Q4_0/Q5_0/Q5_1/Q8_0).

    activations="f32": exact math, held to the float64 reference within 1e-4.
    activations="q8" (the default): held to the same reference with the inputs of the quantized weights rounded
    as ggml rounds them (reference.round_activations). That comparison cannot be tight on whole models: an
    activation that float32 and float64 put on opposite sides of a rounding boundary moves by 1/254 of its block's
    range, and these random models amplify such flips layer after layer (they are 1-5% of the largest logit
    here). So the check is relative: the runtime must sit at most half as far from the 8-bit reference as the
    8-bit reference is from exact math (a wrong scheme - block size, rounding, sums, scales - lands as far or
    further). The kernels themselves are held tightly to ggml's in test_qdot.py."""
    f32, tokens, _ = f32_files("k256")
    path = quantize_model(f32, tmp_path / "q.gguf", file_type, show_progress=False).out
    args, weights = load_float_weights(path)
    exact = forward(args, weights, tokens[:80])
    rounded = forward(args, weights, tokens[:80], activation_blocks=activation_blocks(path),
                      block_offsets=q5_1_offsets_of(path))
    for activations, ref in (("f32", exact), ("q8", rounded)):
        model = Model.load(path, activations=activations)
        prefill = model.logits(tokens[:80])
        session = model.new_session()
        session.feed(tokens[:60])
        decoded = np.stack([session.feed([t]) for t in tokens[60:80]])
        if activations == "f32":
            assert max_relative_error(prefill, ref) < BOUND
            assert max_relative_error(decoded, ref[60:80]) < BOUND
        else:
            assert mean_error(prefill, ref) < 0.5 * mean_error(ref, exact)
            assert mean_error(decoded, ref[60:80]) < 0.5 * mean_error(ref[60:80], exact[60:80])


def test_quantized_logits_against_llama_cpp_on_the_same_file(f32_files, tmp_path):
    """llama.cpp rounds activations to 8 bits (Q8_K / Q8_0 / Q8_1) in its CPU dot products, as the default "q8"
    runtime does. On the same Q4_K_M file (Q4_K/Q6_K with Q5_0/Q8_0 fallbacks here) the issue's bar: our prefill
    is as close to llama.cpp's prefill, and our decode to its decode, as llama.cpp's own prefill and decode are
    to each other (measured: 0.022 and 0.0245 against 0.0251, mean |logit difference|; exact math is 0.118 away,
    and before the fallbacks ran on 8-bit activations we were 0.089 away). The exact ("f32") runtime equals exact
    math."""
    f32, tokens, _ = f32_files("realheads")
    path = quantize_model(f32, tmp_path / "q.gguf", "Q4_K_M", show_progress=False).out
    tokens = tokens[:80]
    args, weights = load_float_weights(path)
    exact = forward(args, weights, tokens)
    theirs, theirs_decoded = llama_cpp_logits(path, tokens), llama_cpp_decoded_logits(path, tokens)
    assert max_relative_error(Model.load(path, activations="f32").logits(tokens), exact) < BOUND
    model = Model.load(path)
    ours = model.logits(tokens)
    session = model.new_session()
    ours_decoded = np.stack([session.feed([t]) for t in tokens])
    llama_gap = mean_error(theirs, theirs_decoded)
    assert mean_error(ours, theirs) <= llama_gap
    assert mean_error(ours_decoded, theirs_decoded) <= llama_gap
    assert mean_error(exact, theirs) > 2 * llama_gap  # the bar is meaningful: exact math is far outside it


def llama_cpp_decoded_logits(path, tokens) -> np.ndarray:
    """llama.cpp's logits fed one token at a time (its decode path)."""
    llm = llama_for_logits(path)
    rows = []
    for t in tokens:
        llm.eval([t])
        rows.append(np.array(llm.scores[llm.n_tokens - 1], np.float32))
    llm.close()
    return np.stack(rows)


def test_bad_inputs_are_clear_errors(f32_files, tmp_path):
    path, tokens, _ = f32_files("tiny")
    model = Model.load(path, n_ctx=64)
    with pytest.raises(UserError, match="exceed the context size 64"):
        model.logits(tokens[:65])
    with pytest.raises(UserError, match="token ids must be in"):
        model.logits([model.args.vocab])
    with pytest.raises(UserError, match="empty"):
        model.new_session().feed([])
    with pytest.raises(UserError, match="outside 1.."):
        Model.load(path, n_ctx=10 ** 9)
    with pytest.raises(UserError, match="activations must be"):
        Model.load(path, activations="int4")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError):
        Model.load(truncated)
