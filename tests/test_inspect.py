"""`localcoder inspect`: metadata and per-kind tables, on our files and on llama.cpp's."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import cli
from conftest import llama_convert
from tinymodels import GEOMETRIES

runner = CliRunner()


@pytest.fixture(scope="module")
def q8_file(hf_model, tmp_path_factory):
    """llama.cpp's own Q8_0 conversion of the tiny model: inspect must read files it did not write."""
    return llama_convert(hf_model("tiny"), tmp_path_factory.mktemp("inspect") / "tiny-q8.gguf", "Q8_0")


def test_json_report(q8_file, hf_model):
    result = runner.invoke(cli.app, ["inspect", str(q8_file), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    g = GEOMETRIES["tiny"]
    n_layers, n_attn = g["num_hidden_layers"], g["num_hidden_layers"] // 4
    kinds = {k["kind"]: k for k in report["tensor_kinds"]}
    assert report["metadata"]["general.architecture"] == "qwen3next"
    assert report["metadata"]["qwen3next.expert_count"] == g["num_experts"]
    assert report["metadata"]["general.file_type"] == 7  # MOSTLY_Q8_0
    gate = kinds["ffn_gate_exps"]
    assert gate["count"] == n_layers and gate["types"] == {"Q8_0": n_layers}
    assert gate["params"] == n_layers * g["num_experts"] * g["moe_intermediate_size"] * g["hidden_size"]
    assert gate["bytes"] == gate["params"] // 32 * 34
    assert kinds["attn_q"]["count"] == n_attn and kinds["attn_qkv"]["count"] == n_layers - n_attn
    assert kinds["ffn_down_shexp"]["types"] == {"F16": n_layers}  # 80-wide rows: Q8_0 falls back to F16
    assert kinds["attn_norm"]["types"] == {"F32": n_layers}
    assert report["n_tensors"] == sum(k["count"] for k in kinds.values())
    assert report["file_bytes"] == q8_file.stat().st_size
    vocab_size = json.loads((hf_model("tiny") / "config.json").read_text())["vocab_size"]
    assert report["metadata"]["tokenizer.ggml.tokens"]["array_length"] == vocab_size


def test_table_report(q8_file):
    result = runner.invoke(cli.app, ["inspect", str(q8_file)], terminal_width=200)
    assert result.exit_code == 0, result.output
    for text in ("general.architecture", "qwen3next", "ffn_gate_exps", "Q8_0", "tokenizer.chat_template", "total"):
        assert text in result.output


@pytest.mark.parametrize("damage", ["not-gguf", "truncated"])
def test_bad_files(q8_file, tmp_path, damage):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file at all" if damage == "not-gguf" else q8_file.read_bytes()[:5000])
    result = runner.invoke(cli.app, ["inspect", str(bad)])
    assert result.exit_code == 1
    assert result.output.startswith("error:") and "Traceback" not in result.output
