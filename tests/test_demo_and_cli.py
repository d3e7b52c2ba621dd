"""The demo model (real layout, deterministic), the main command, and `quantize` end to end."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from localcoder.demo import build_demo_checkpoint

runner = CliRunner()


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return build_demo_checkpoint(tmp_path_factory.mktemp("demo") / "hf")


def test_demo_checkpoint_has_the_real_layout(demo_dir):
    """transformers loads the demo folder with no missing or unexpected weights."""
    import torch
    from transformers import Qwen3NextForCausalLM

    model, info = Qwen3NextForCausalLM.from_pretrained(demo_dir, dtype=torch.float32, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.num_hidden_layers == 8 and model.config.layer_types.count("full_attention") == 2


def test_demo_is_deterministic(demo_dir, tmp_path):
    again = build_demo_checkpoint(tmp_path / "again")
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert digest(demo_dir / name) == digest(again / name), name


def test_main_command_builds_converts_and_inspects(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALCODER_HOME", str(tmp_path))
    result = runner.invoke(cli.app, ["demo"], terminal_width=200)
    assert result.exit_code == 0, result.output
    (gguf_path,) = tmp_path.glob("demo-*/localcoder-demo-Q8_0.gguf")
    assert "ffn_gate_exps" in result.output and "random weights" in result.output
    # the second run reuses the cached files
    before = gguf_path.stat().st_mtime_ns
    assert runner.invoke(cli.app, ["demo"]).exit_code == 0
    assert gguf_path.stat().st_mtime_ns == before


def test_llama_cpp_runs_the_demo_like_transformers(demo_dir, tmp_path):
    """The demo runs in llama.cpp: F32 at transformers' logits, Q8_0 (the main command's file) close to them."""
    from quant.convert import convert_hf
    from test_llama_cpp_runs_our_files import (llama_cpp_logits, max_relative_error, prompt_tokens,
                                               transformers_logits)

    tokens = prompt_tokens(demo_dir, 100)
    ref = transformers_logits(demo_dir, tokens)
    f32 = llama_cpp_logits(convert_hf(demo_dir, tmp_path / "f32.gguf", "F32", show_progress=False).out, tokens)
    assert max_relative_error(f32, ref) < 1e-4
    q8 = llama_cpp_logits(convert_hf(demo_dir, tmp_path / "q8.gguf", "Q8_0", show_progress=False).out, tokens)
    assert np.isfinite(q8).all()
    # Q8_0 weights and Q8_0-rounded activations move logits (measured correlation 0.993), they do not scramble them
    assert np.corrcoef(q8.ravel(), ref.ravel())[0, 1] > 0.98


def test_quantize_command_end_to_end(hf_model, tmp_path):
    out = tmp_path / "tiny-bf16.gguf"
    result = runner.invoke(cli.app, ["quantize", str(hf_model("tiny")), "--type", "bf16", "-o", str(out)],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert out.is_file()
    for text in ("token_embd", "BF16", "GB/s", "peak memory", "tensors"):
        assert text in result.output
