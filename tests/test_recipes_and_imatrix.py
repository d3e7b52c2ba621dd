"""Recipes, 80B sizes against the reference tables, and the two imatrix file formats."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter
from typer.testing import CliRunner

import cli
from localcoder.errors import UserError
from quant.imatrix import load_imatrix, write_legacy_imatrix
from quant.jit import KERNEL_MODULES
from quant.mixes import ModelShape, choose_types
from quant.recipes import QWEN3_CODER_NEXT, gguf_tensor_shapes, load_recipes, model_size_bytes

# reference/kquants.md section 10(b): exact tensor data of Qwen3-Coder-Next, computed independently there
REFERENCE_GB = {"Q2_K": 29.26, "Q3_K_M": 38.27, "Q4_K_M": 48.48, "Q3_K_S": 34.54, "Q3_K_L": 41.38, "Q4_K_S": 45.49}


@pytest.mark.parametrize("file_type", sorted(REFERENCE_GB))
def test_80b_sizes_match_the_reference(file_type):
    assert round(model_size_bytes(file_type) / 1e9, 2) == REFERENCE_GB[file_type]


def test_80b_q4_k_m_layer_choices_match_the_reference():
    """reference/kquants.md 8.3: Q6_K ffn_down in the use_more_bits layers, attn_v Q6_K in 6 of 12 layers."""
    shapes = gguf_tensor_shapes(QWEN3_CODER_NEXT)
    chosen = choose_types(shapes, "Q4_K_M", ModelShape(16, 2, 512, 48))
    more_bits = {0, 1, 2, 3, 4, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35, 38, 41, 42, 43, 44, 45, 46, 47}
    for il in range(48):
        assert chosen[f"blk.{il}.ffn_down_exps.weight"].name == ("Q6_K" if il in more_bits else "Q4_K")
    attn_v = {il: chosen[f"blk.{il}.attn_v.weight"].name for il in range(3, 48, 4)}
    assert {il for il, t in attn_v.items() if t == "Q6_K"} == {3, 11, 23, 35, 43, 47}
    assert chosen["output.weight"].name == "Q6_K" and chosen["token_embd.weight"].name == "Q4_K"
    assert chosen["blk.0.ffn_gate_inp.weight"] is None and chosen["blk.0.ssm_conv1d.weight"] is None


def test_recipes_parse_and_are_listed():
    recipes = load_recipes()
    assert {"hybrid-q2k", "hybrid-q3k", "hybrid-q4k"} <= set(recipes)
    result = CliRunner().invoke(cli.app, ["quantize", "--list-recipes"], terminal_width=200)
    assert result.exit_code == 0
    for name in recipes:
        size = f"{model_size_bytes(name) / 2**30:.1f}"
        assert re.search(rf"{name}\s.*\s{re.escape(size)}\s", result.output), name


def test_hybrid_recipe_keeps_the_dense_path_precise():
    shapes = gguf_tensor_shapes(QWEN3_CODER_NEXT)
    from quant.recipes import resolve
    from quant.mixes import parse_overrides
    base, overrides = resolve("hybrid-q2k")
    chosen = choose_types(shapes, base, ModelShape(16, 2, 512, 48), parse_overrides(overrides))
    assert chosen["blk.0.ffn_gate_exps.weight"].name == "Q2_K" and chosen["blk.0.ffn_down_exps.weight"].name == "Q3_K"
    for name in ("blk.0.attn_qkv.weight", "blk.3.attn_q.weight", "blk.0.ssm_out.weight", "blk.0.ffn_down_shexp.weight"):
        assert chosen[name].name == "Q6_K", name


def test_broken_recipe_file_is_reported(tmp_path):
    bad = tmp_path / "recipes.toml"
    bad.write_text('[x]\nbase = "Q9_K"\n')
    with pytest.raises(UserError, match="base 'Q9_K'"):
        load_recipes(bad)
    bad.write_text('[x]\nbase = "Q2_K"\ntensor_types = ["no-equals-sign"]\n')
    with pytest.raises(UserError, match="REGEX=TYPE"):
        load_recipes(bad)


def test_every_numba_module_is_in_the_cache_key():
    quant_dir = Path(__file__).resolve().parent.parent / "quant"
    with_kernels = {p.name for p in quant_dir.glob("*.py") if "@njit" in p.read_text()}
    assert with_kernels <= set(KERNEL_MODULES)


def write_gguf_imatrix(path: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]], metadata: bool = True):
    writer = GGUFWriter(path, "imatrix")
    if metadata:
        writer.add_array("imatrix.datasets", ["wiki.train.raw"])
        writer.add_uint32("imatrix.chunk_count", 10)
        writer.add_uint32("imatrix.chunk_size", 512)
    for name, (sums, counts) in entries.items():
        writer.add_tensor(f"{name}.in_sum2", sums.astype(np.float32))
        writer.add_tensor(f"{name}.counts", counts.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_imatrix_is_normalised_per_expert(tmp_path):
    rng = np.random.default_rng(0)
    sums = (rng.random((3, 8)) * 50).astype(np.float32)
    counts = np.array([[4.0], [0.0], [7.0]], np.float32)
    write_gguf_imatrix(tmp_path / "m.gguf", {"blk.0.ffn_up_exps.weight": (sums, counts),
                                             "blk.0.attn_q.weight": (sums[0], counts[0])})
    loaded = load_imatrix(tmp_path / "m.gguf")
    expected = np.concatenate([sums[0] / np.float32(4), np.ones(8, np.float32), sums[2] / np.float32(7)])
    assert np.array_equal(loaded["blk.0.ffn_up_exps.weight"], expected)
    assert np.array_equal(loaded["blk.0.attn_q.weight"], sums[0] / np.float32(4))


def test_legacy_imatrix_divides_by_ncall(tmp_path):
    sums = np.arange(1, 9, dtype=np.float32) * 3
    write_legacy_imatrix(tmp_path / "m.dat", {"blk.0.attn_q.weight": (3, sums), "output.weight": (0, sums)})
    loaded = load_imatrix(tmp_path / "m.dat")
    assert np.array_equal(loaded["blk.0.attn_q.weight"], sums / np.float32(3))
    assert np.array_equal(loaded["output.weight"], sums)


@pytest.mark.parametrize("damage, message", [("truncated", "truncated"), ("no-metadata", "imatrix.* metadata"),
                                             ("nan", "non-finite"), ("empty", "not an imatrix")])
def test_bad_imatrix_files(tmp_path, damage, message):
    path = tmp_path / "bad.imatrix"
    sums = np.ones(8, np.float32)
    if damage == "truncated":
        write_legacy_imatrix(path, {"blk.0.attn_q.weight": (1, sums)})
        path.write_bytes(path.read_bytes()[:-5])
    elif damage == "no-metadata":
        write_gguf_imatrix(path, {"blk.0.attn_q.weight": (sums, np.ones(1, np.float32))}, metadata=False)
    elif damage == "nan":
        write_legacy_imatrix(path, {"blk.0.attn_q.weight": (1, sums * np.nan)})
    else:
        path.write_bytes(struct.pack("<i", 0))
    with pytest.raises(UserError, match=message):
        load_imatrix(path)


def test_cli_quantize_with_recipe_and_imatrix(hf_model, tmp_path):
    from test_quantize_file import random_imatrix
    from quant.convert import convert_hf
    from quant.imatrix import write_legacy_imatrix

    f32 = convert_hf(hf_model("k256"), tmp_path / "f32.gguf", "F32", show_progress=False).out
    write_legacy_imatrix(tmp_path / "m.dat", {k: (1, v) for k, v in random_imatrix(f32, 3).items()})
    out = tmp_path / "h.gguf"
    result = CliRunner().invoke(cli.app, ["quantize", str(hf_model("k256")), "-t", "hybrid-q3k", "--imatrix",
                                          str(tmp_path / "m.dat"), "-o", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "ffn_gate_exps" in result.output and "Q3_K" in result.output and out.is_file()
