"""Every bad input gets a one-line error, exit code 1, and leaves nothing under (or beside) the output name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import namedtuple

import pytest
from typer.testing import CliRunner

import cli
import quant.convert
import quant.gguf_out

runner = CliRunner()


@pytest.fixture
def src(hf_model, tmp_path):
    """A private copy of the tiny checkpoint that a test may damage."""
    return shutil.copytree(hf_model("tiny"), tmp_path / "src")


@pytest.fixture
def sharded_src(hf_model, tmp_path):
    return shutil.copytree(hf_model("tiny", "bfloat16", mtp=True), tmp_path / "sharded")


def quantize(src, out, *extra):
    return runner.invoke(cli.app, ["quantize", str(src), "-o", str(out), "--type", "F16", *extra])


def assert_clean_failure(result, out, *phrases):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    # one error line, last (a progress bar may precede it when the failure comes mid-write)
    assert lines[-1].startswith("error:") and sum(line.startswith("error:") for line in lines) == 1, result.output
    message = lines[-1]
    for phrase in phrases:
        assert phrase in message, message
    assert not out.exists()
    if out.parent.is_dir():
        assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def edit_config(src, **changes):
    path = src / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_missing_shards(src, tmp_path):
    (src / "model.safetensors").unlink()
    assert_clean_failure(quantize(src, tmp_path / "o.gguf"), tmp_path / "o.gguf", "no model*.safetensors")


def test_index_names_missing_shard(sharded_src, tmp_path):
    (sharded_src / "model-00002-of-00002.safetensors").unlink()
    assert_clean_failure(quantize(sharded_src, tmp_path / "o.gguf"), tmp_path / "o.gguf",
                         "model-00002-of-00002.safetensors", "missing")


def test_index_names_missing_tensors(sharded_src, tmp_path):
    index = json.loads((sharded_src / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.mlp.extra.weight"] = "model-00001-of-00002.safetensors"
    (sharded_src / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_clean_failure(quantize(sharded_src, tmp_path / "o.gguf"), tmp_path / "o.gguf",
                         "does not match the shards", "model.layers.0.mlp.extra.weight")


def test_corrupt_shard_header(src, tmp_path):
    shard = src / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:40] = b"#" * 32
    shard.write_bytes(bytes(data))
    assert_clean_failure(quantize(src, tmp_path / "o.gguf"), tmp_path / "o.gguf", "corrupt header")


def test_truncated_shard(src, tmp_path):
    shard = src / "model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    assert_clean_failure(quantize(src, tmp_path / "o.gguf"), tmp_path / "o.gguf", "truncated")


def test_other_architecture(src, tmp_path):
    edit_config(src, architectures=["LlamaForCausalLM"])
    assert_clean_failure(quantize(src, tmp_path / "o.gguf"), tmp_path / "o.gguf", "LlamaForCausalLM",
                         "Qwen3NextForCausalLM")


@pytest.mark.parametrize("changes, phrases", [
    ({"linear_value_head_dim": 64}, ("linear_value_head_dim", "not supported")),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e7}}, ("rope_type", "not supported")),
    ({"mlp_only_layers": [1]}, ("dense-MLP", "not supported")),
    ({"num_experts_per_tok": 99}, ("num_experts_per_tok", "not supported")),
    ({"hidden_size": "wide"}, ("hidden_size", "positive integer")),
])
def test_unsupported_config_values(src, tmp_path, changes, phrases):
    edit_config(src, **changes)
    assert_clean_failure(quantize(src, tmp_path / "o.gguf"), tmp_path / "o.gguf", *phrases)


def test_checkpoint_disagreeing_with_config(src, tmp_path):
    edit_config(src, vocab_size=99999)
    assert_clean_failure(quantize(src, tmp_path / "o.gguf"), tmp_path / "o.gguf", "disagree")


def test_unknown_type(src, tmp_path):
    result = runner.invoke(cli.app, ["quantize", str(src), "-o", str(tmp_path / "o.gguf"), "--type", "Q1_X"])
    assert_clean_failure(result, tmp_path / "o.gguf", "Q1_X", "Q4_K_M", "--list-recipes")


def test_destination_folder_missing(src, tmp_path):
    out = tmp_path / "no" / "such" / "dir" / "o.gguf"
    assert_clean_failure(quantize(src, out), out, "does not exist")


def test_destination_not_writable(src, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "o.gguf"  # the parent is a file: unwritable even for root
    assert_clean_failure(quantize(src, out), out, "cannot write")


def test_too_little_free_disk(src, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(quant.gguf_out.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    assert_clean_failure(quantize(src, tmp_path / "o.gguf"), tmp_path / "o.gguf", "not enough free disk")


def fail_at_encode_call(monkeypatch, n: int, action) -> None:
    """Run `action()` when the converter encodes its n-th row chunk: a failure in the middle of writing."""
    real_encode, calls = quant.convert.encode_rows, []

    def encode(rows, qtype):
        calls.append(1)
        if len(calls) == n:
            action()
        return real_encode(rows, qtype)

    monkeypatch.setattr(quant.convert, "encode_rows", encode)


def test_source_truncated_while_writing(src, tmp_path, monkeypatch):
    """A shard that shrinks mid-conversion: the partial output is removed, the message names the shard."""
    shard = src / "model.safetensors"
    fail_at_encode_call(monkeypatch, 3, lambda: shard.write_bytes(shard.read_bytes()[:4096]))
    assert_clean_failure(quantize(src, tmp_path / "o.gguf"), tmp_path / "o.gguf", "truncated")


def test_interrupt_leaves_nothing(src, tmp_path, monkeypatch):
    def interrupt():
        raise KeyboardInterrupt

    fail_at_encode_call(monkeypatch, 5, interrupt)
    result = quantize(src, tmp_path / "o.gguf")
    assert result.exit_code == 130
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_existing_output_survives_a_failed_run(src, tmp_path):
    """Atomic output: a failure does not damage a file already at the destination."""
    out = tmp_path / "o.gguf"
    out.write_bytes(b"previous good file")
    edit_config(src, architectures=["MistralForCausalLM"])
    result = quantize(src, out)
    assert result.exit_code == 1
    assert out.read_bytes() == b"previous good file"


def test_real_command_prints_one_line(tmp_path):
    """Through the installed entry point, not just the Typer runner."""
    run = subprocess.run([sys.executable, "-m", "cli", "quantize", str(tmp_path / "nowhere"), "-o",
                          str(tmp_path / "o.gguf")], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.startswith("error:") and "Traceback" not in run.stderr
    assert run.stdout == ""
