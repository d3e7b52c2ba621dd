"""The CUDA backend's torch forward against the CPU runtime: F32 files within 1e-3 of the largest logit, quantized
files within the same bound of the runtime's exact-activation mode (both multiply float activations by the same
decoded weights), prefill and token-by-token decode alike. On a GPU when there is one, else on the CPU through
Triton's interpreter (small models)."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_setup import DEVICE, torch  # first: sets up the interpreter where there is no GPU
from localcoder.cuda.model import TorchModel
from localcoder.errors import UserError
from localcoder.model import Model
from quant.convert import convert_hf

TOKENS = [3, 17, 99, 250, 7, 64, 5, 300]
BOUND = 1e-3


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    err = np.abs(got - expected).max() / np.abs(expected).max()
    assert err < BOUND, err


def test_f32_logits_equal_the_cpu_runtime(hf_model, tmp_path):
    path = convert_hf(hf_model("realheads"), tmp_path / "f32.gguf", "F32", show_progress=False).out
    expected = Model.load(path).logits(TOKENS)
    model = TorchModel.load(path, DEVICE, exact=True)
    assert_close(model.logits(TOKENS), expected)
    session = model.new_session()
    stepped = [session.feed(TOKENS[:3])] + [session.feed([t]) for t in TOKENS[3:]]
    assert_close(np.stack(stepped), expected[2:])


def test_quantized_prefill_and_decode_equal_the_cpu_runtime(tmp_path):
    from localcoder.synth import write_synthetic
    from quant.recipes import QWEN3_CODER_NEXT
    from test_bench import KQUANT_TEST_MODEL

    path = tmp_path / "q4km.gguf"
    write_synthetic(path, {**QWEN3_CODER_NEXT, **KQUANT_TEST_MODEL}, "Q4_K_M", show_progress=False)
    expected = Model.load(path, activations="f32").logits(TOKENS)
    model = TorchModel.load(path, DEVICE, exact=True)
    assert_close(model.logits(TOKENS), expected)
    session = model.new_session()
    stepped = [session.feed(TOKENS[:5])] + [session.feed([t]) for t in TOKENS[5:]]  # the GEMV path
    assert_close(np.stack(stepped), expected[4:])


def test_loading_errors_are_clear(tmp_path):
    reason = "does not exist" if torch.cuda.is_available() else "no CUDA device"  # checked before the file
    with pytest.raises(UserError, match=reason):
        TorchModel.load(tmp_path / "missing.gguf", "cuda")


@pytest.mark.parametrize("file_type", ["Q8_0", "Q4_K_M"])
def test_files_with_narrow_and_fallback_tensors_run(hf_model, tmp_path, file_type):
    """k256 has a 96-wide shared-expert projection: llama.cpp's mixes give it Q5_0/Q5_1/Q8_0 fallbacks."""
    from quant.quantize_file import quantize_model

    f32 = convert_hf(hf_model("k256"), tmp_path / "f32.gguf", "F32", show_progress=False).out
    path = quantize_model(f32, tmp_path / "q.gguf", file_type, show_progress=False).out
    assert_close(TorchModel.load(path, DEVICE, exact=True).logits(TOKENS), Model.load(path, activations="f32").logits(TOKENS))


def test_long_prompts_take_the_chunked_delta_rule(hf_model, tmp_path, monkeypatch):
    """CHUNKED_FROM lowered so a short prompt takes the chunked form (chunks of 4, the last one padded)."""
    from localcoder.cuda import deltanet, layers

    path = convert_hf(hf_model("realheads"), tmp_path / "f32.gguf", "F32", show_progress=False).out
    expected = Model.load(path).logits(TOKENS)
    calls = []
    monkeypatch.setattr(layers, "CHUNKED_FROM", 2)
    monkeypatch.setattr(layers, "delta_rule_chunked",
                        lambda *a: calls.append(len(a[0])) or deltanet.delta_rule_chunked(*a, chunk=3))
    session = TorchModel.load(path, DEVICE, exact=True).new_session()
    stepped = [session.feed(TOKENS[:5])] + [session.feed([t]) for t in TOKENS[5:]]
    assert calls and set(calls) == {5}  # prompts only: decode steps keep the kernel
    assert_close(np.stack(stepped), expected[4:])


def test_layers_split_over_two_devices_give_the_same_logits(hf_model, tmp_path):
    path = convert_hf(hf_model("realheads"), tmp_path / "f32.gguf", "F32", show_progress=False).out
    expected = Model.load(path).logits(TOKENS)
    model = TorchModel.load(path, [DEVICE, DEVICE], exact=True)
    first, second = model.layer_devices[0], model.layer_devices[-1]
    assert len(model.devices) == 2 and not model.graphs
    assert model.w["blk.0.attn_norm.weight"].device == first and model.output.device == second
    session = model.new_session()
    stepped = [session.feed(TOKENS[:4])] + [session.feed([t]) for t in TOKENS[4:]]
    assert_close(np.stack(stepped), expected[3:])


def test_sessions_restore_snapshots_and_grow_their_cache(hf_model, tmp_path, monkeypatch):
    """A session restored to a snapshot continues as one that never left it; the KV cache grows mid-decode."""
    from localcoder.cuda.model import TorchSession

    monkeypatch.setattr(TorchSession, "MIN_CAPACITY", 2)
    path = convert_hf(hf_model("realheads"), tmp_path / "f32.gguf", "F32", show_progress=False).out
    expected = Model.load(path).logits(TOKENS)
    session = TorchModel.load(path, DEVICE, exact=True).new_session()
    session.feed(TOKENS[:3])
    kept = session.snapshot()
    assert {t.device.type for layer in kept.layers for t in layer.values()} == {"cpu"}  # RAM, not VRAM
    session.feed([1, 2, 3, 4])
    session.restore(kept)
    stepped = [session.feed([t]) for t in TOKENS[3:]]
    assert_close(np.stack(stepped), expected[3:])
    assert max(layer["k"].shape[0] for layer in session.layers if "k" in layer) >= len(TOKENS)
    session.reset()
    assert_close(session.feed(TOKENS[:2]), expected[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_decode_graphs_replay_the_eager_steps(tmp_path):
    from localcoder.synth import write_synthetic
    from quant.recipes import QWEN3_CODER_NEXT
    from test_bench import KQUANT_TEST_MODEL

    path = tmp_path / "q4km.gguf"
    write_synthetic(path, {**QWEN3_CODER_NEXT, **KQUANT_TEST_MODEL}, "Q4_K_M", show_progress=False)
    runs = []
    for graphs in (False, True):
        session = TorchModel.load(path, DEVICE, graphs=graphs, exact=True).new_session()
        runs.append([session.feed(TOKENS[:2])] + [session.feed([t]) for t in TOKENS[2:]] * 1)
        assert (session.graph is not None) == graphs
    np.testing.assert_allclose(np.stack(runs[1]), np.stack(runs[0]), rtol=0, atol=1e-5)


def test_float16_kv_cache_stays_close_and_other_types_are_refused(hf_model, tmp_path):
    """Keys and values rounded to float16 (the default off the tests' exact mode) move logits by ~1e-3 relative."""
    path = convert_hf(hf_model("realheads"), tmp_path / "f32.gguf", "F32", show_progress=False).out
    expected = Model.load(path).logits(TOKENS)
    model = TorchModel.load(path, DEVICE, kv_type="f16")
    session = model.new_session()
    stepped = [session.feed(TOKENS[:3])] + [session.feed([t]) for t in TOKENS[3:]]
    assert {layer["k"].dtype for layer in session.layers if "k" in layer} == {torch.float16}
    got = np.stack(stepped)
    assert np.abs(got - expected[2:]).max() / np.abs(expected).max() < 1e-2
    with pytest.raises(UserError, match="f16 or f32"):
        TorchModel.load(path, DEVICE, kv_type="q8_0")


def test_legacy_fused_layout_loads_to_the_same_model(tmp_path):
    """Loading goes through weights.load_weights, which splits a legacy file's fused ssm_in back."""
    from localcoder.demo import ensure_demo_gguf
    from localcoder.legacy_layout import write_legacy

    legacy = write_legacy(ensure_demo_gguf("F32"), tmp_path / "legacy.gguf", show_progress=False)
    np.testing.assert_array_equal(TorchModel.load(legacy, DEVICE, exact=True).logits(TOKENS[:4]),
                                  TorchModel.load(ensure_demo_gguf("F32"), DEVICE, exact=True).logits(TOKENS[:4]))
