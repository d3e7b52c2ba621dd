"""The legacy fused ssm_in layout: its rows are Hugging Face's in_proj_qkvz (the independent oracle), llama.cpp
runs the file with the same logits as the split layout, and localcoder loads it back to the same model."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from cli import app
from localcoder import __version__
from localcoder.demo import cache_root, ensure_demo_gguf
from localcoder.errors import UserError
from localcoder.model import Model

runner = CliRunner()
TOKENS = [3, 17, 99, 250, 7, 64]


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("legacy")
    files = {}
    for kind in ("F32", "Q8_0"):
        out = folder / f"legacy-{kind}.gguf"
        done = runner.invoke(app, ["legacy-layout", str(ensure_demo_gguf(kind)), "-o", str(out), "-q"])
        assert done.exit_code == 0, done.output
        files[kind] = out
    return files


def test_ssm_in_holds_the_checkpoint_in_proj_qkvz_rows(legacy):
    from gguf import GGUFReader

    hf = {}
    for shard in sorted((cache_root() / f"demo-{__version__}" / "hf").glob("*.safetensors")):
        hf |= load_file(shard)
    tensors = {t.name: t for t in GGUFReader(legacy["F32"]).tensors}
    layers = [n for n in tensors if n.endswith("ssm_in.weight")]
    assert layers and not [n for n in tensors if "attn_qkv" in n or "attn_gate" in n]
    for name in layers:
        i = int(name.split(".")[1])
        assert np.array_equal(np.asarray(tensors[name].data), hf[f"model.layers.{i}.linear_attn.in_proj_qkvz.weight"])


def llama_logits(path) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(TOKENS)
    return np.array(llm.scores[:len(TOKENS)])


def test_llama_cpp_runs_the_legacy_layout_like_the_split_one(legacy):
    assert np.array_equal(llama_logits(legacy["Q8_0"]), llama_logits(ensure_demo_gguf("Q8_0")))


def test_localcoder_loads_the_legacy_layout_back(legacy):
    assert np.array_equal(Model.load(legacy["Q8_0"]).logits(TOKENS), Model.load(ensure_demo_gguf()).logits(TOKENS))


def test_mixed_types_cannot_be_fused(tmp_path):
    from cli import run_quantize

    mixed = run_quantize(ensure_demo_gguf("F32"), tmp_path / "mix.gguf", "Q8_0",
                         ["attn_gate=F16"], None, False, True, False).out
    from localcoder.legacy_layout import write_legacy
    with pytest.raises(UserError, match="the fused ssm_in needs one type"):
        write_legacy(mixed, tmp_path / "out.gguf", show_progress=False)
    assert not (tmp_path / "out.gguf").exists() and not list(tmp_path.glob(".out.gguf*"))
