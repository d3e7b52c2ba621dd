"""Whole files: localcoder's K-quant mixes equal llama_model_quantize's output from the same F32 GGUF."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader

from gguf_compare import field_differences, tensor_differences
from localcoder.errors import UserError
from oracles.llama_quantize import llama_quantize
from quant.convert import convert_hf
from quant.mixes import FILE_TYPES, allows_quantization
from quant.quantize_file import quantize_model
from quant.recipes import load_recipes

FILE_TYPE_NAMES = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]


@pytest.fixture(scope="module")
def f32_gguf(hf_model, tmp_path_factory):
    """build(geometry) -> the F32 GGUF of that tiny model (k256: rows of 256 but one; tiny: all fallbacks)."""
    cache = {}

    def build(geometry):
        if geometry not in cache:
            out = tmp_path_factory.mktemp(f"f32-{geometry}") / "model-f32.gguf"
            cache[geometry] = convert_hf(hf_model(geometry), out, "F32", show_progress=False).out
        return cache[geometry]
    return build


def assert_same_file(ours, ref):
    assert tensor_differences(ours, ref) == []
    assert field_differences(ours, ref) == []
    assert ours.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("geometry", ["k256", "tiny"])
@pytest.mark.parametrize("file_type", FILE_TYPE_NAMES)
def test_file_equals_llama_model_quantize(f32_gguf, tmp_path, geometry, file_type):
    src = f32_gguf(geometry)
    ours = quantize_model(src, tmp_path / "ours.gguf", file_type, show_progress=False).out
    ref = llama_quantize(src, tmp_path / "ref.gguf", file_type)
    assert_same_file(ours, ref)
    assert GGUFReader(ours).fields["general.file_type"].contents() == int(FILE_TYPES[file_type][0])


def random_imatrix(gguf_path, seed: int) -> dict[str, np.ndarray]:
    """Importance weights for every quantizable tensor: ne[0] values per expert, as llama.cpp expects."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in GGUFReader(gguf_path).tensors:
        ne = [int(d) for d in t.shape]
        if allows_quantization(t.name, tuple(ne)):
            out[t.name] = (rng.random(ne[0] * (ne[2] if len(ne) > 2 else 1)) ** 2 * 10 + 0.01).astype(np.float32)
    return out


@pytest.mark.parametrize("geometry, file_type", [("k256", "Q4_K_M"), ("k256", "Q2_K"), ("k256", "Q3_K_L"),
                                                 ("tiny", "Q4_K_M"), ("tiny", "Q3_K_M")])
def test_imatrix_used_exactly_as_llama_cpp_uses_it(f32_gguf, tmp_path, geometry, file_type):
    src = f32_gguf(geometry)
    weights = random_imatrix(src, seed=len(file_type))
    ours = quantize_model(src, tmp_path / "ours.gguf", file_type, weights, show_progress=False).out
    ref = llama_quantize(src, tmp_path / "ref.gguf", file_type, imatrix=weights)
    assert_same_file(ours, ref)
    plain = quantize_model(src, tmp_path / "plain.gguf", file_type, show_progress=False).out
    assert plain.read_bytes() != ours.read_bytes()  # the weights really changed the result


def test_tensor_type_overrides_like_llama_cpp(f32_gguf, tmp_path):
    src = f32_gguf("k256")
    overrides = ["ffn_down_exps=Q6_K", r"blk\.[01]\.attn_gate=Q8_0", "ffn_up=Q5_K"]
    ours = quantize_model(src, tmp_path / "ours.gguf", "Q3_K_M", tensor_types=overrides, show_progress=False).out
    ref = llama_quantize(src, tmp_path / "ref.gguf", "Q3_K_M",
                         tensor_types=[("ffn_down_exps", T.Q6_K), (r"blk\.[01]\.attn_gate", T.Q8_0),
                                       ("ffn_up", T.Q5_K)])
    assert_same_file(ours, ref)


def test_hf_folder_source_equals_f32_gguf_source(hf_model, f32_gguf, tmp_path):
    from_gguf = quantize_model(f32_gguf("k256"), tmp_path / "a.gguf", "Q4_K_M", show_progress=False).out
    from_hf = quantize_model(hf_model("k256"), tmp_path / "b.gguf", "Q4_K_M", show_progress=False).out
    assert from_hf.read_bytes() == from_gguf.read_bytes()


def test_requantizing_is_refused_unless_allowed(f32_gguf, tmp_path):
    q4 = quantize_model(f32_gguf("k256"), tmp_path / "q4.gguf", "Q4_K_M", show_progress=False).out
    with pytest.raises(UserError, match="already quantized.*--allow-requantize"):
        quantize_model(q4, tmp_path / "q2.gguf", "Q2_K", show_progress=False)
    assert not (tmp_path / "q2.gguf").exists()
    again = quantize_model(q4, tmp_path / "q2.gguf", "Q2_K", allow_requantize=True, show_progress=False)
    assert again.types["blk.0.ffn_gate_exps.weight"] == "Q2_K"


def test_imatrix_for_another_model_is_refused(f32_gguf, tmp_path):
    weights = {"blk.0.ffn_gate_exps.weight": np.ones(7, np.float32)}
    with pytest.raises(UserError, match="computed for another model"):
        quantize_model(f32_gguf("k256"), tmp_path / "o.gguf", "Q4_K_M", weights, show_progress=False)
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("recipe", sorted(load_recipes()))
def test_llama_cpp_runs_every_recipe(hf_model, f32_gguf, tmp_path, recipe):
    """Recipe files load in llama.cpp and its logits track those of the F32 file. Measured correlations on this
    random model: hybrid-q4k 0.956, hybrid-q3k 0.913, hybrid-q2k 0.724 (plain Q2_K 0.562, Q8_0 0.999); a file
    whose bytes were misread would be near 0."""
    from test_llama_cpp_runs_our_files import llama_cpp_logits, prompt_tokens

    from quant.recipes import resolve

    base, overrides = resolve(recipe)
    out = quantize_model(f32_gguf("k256"), tmp_path / f"{recipe}.gguf", base, tensor_types=overrides,
                         show_progress=False).out
    tokens = prompt_tokens(hf_model("k256"), 40)
    quantized, full = llama_cpp_logits(out, tokens), llama_cpp_logits(f32_gguf("k256"), tokens)
    assert np.isfinite(quantized).all()
    assert np.corrcoef(quantized.ravel(), full.ravel())[0, 1] > 0.5


@pytest.mark.parametrize("file_type", ["Q2_K", "Q4_K_M", "Q8_0"])
def test_llama_cpp_runs_the_mixes(hf_model, f32_gguf, tmp_path, file_type):
    from test_llama_cpp_runs_our_files import llama_cpp_logits, prompt_tokens

    out = quantize_model(f32_gguf("tiny"), tmp_path / "q.gguf", file_type, show_progress=False).out
    assert np.isfinite(llama_cpp_logits(out, prompt_tokens(hf_model("tiny"), 40))).all()
