"""localcoder's converter output equals llama.cpp's convert_hf_to_gguf.py, byte for byte and key by key."""

from __future__ import annotations

import pytest

from conftest import llama_convert
from gguf_compare import field_differences, tensor_differences
from quant.convert import convert_hf

TYPES = ["F32", "F16", "BF16", "Q8_0"]


def assert_same_as_llama_cpp(hf_dir, tmp_path, out_type, mtp=False, keep_mtp=True):
    ours = convert_hf(hf_dir, tmp_path / "ours.gguf", out_type, keep_mtp=keep_mtp, show_progress=False).out
    ref = llama_convert(hf_dir, tmp_path / "ref.gguf", out_type, mtp=mtp)
    assert tensor_differences(ours, ref) == []
    assert field_differences(ours, ref) == []
    # nothing else differs either: same key order, alignment and padding
    assert ours.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("geometry", ["tiny", "k256", "realheads"])
@pytest.mark.parametrize("out_type", TYPES)
def test_f32_checkpoint(hf_model, tmp_path, geometry, out_type):
    assert_same_as_llama_cpp(hf_model(geometry), tmp_path, out_type)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("out_type", TYPES)
def test_half_precision_checkpoint(hf_model, tmp_path, dtype, out_type):
    assert_same_as_llama_cpp(hf_model("tiny", dtype), tmp_path, out_type)


def test_mtp_block_kept_like_llama_cpp(hf_model, tmp_path):
    """A sharded checkpoint (with index) carrying `mtp.*` tensors: the MTP block becomes blk.L, as in llama.cpp."""
    assert_same_as_llama_cpp(hf_model("tiny", "bfloat16", mtp=True), tmp_path, "Q8_0", mtp=True)


def test_mtp_block_dropped_on_request(hf_model, tmp_path):
    assert_same_as_llama_cpp(hf_model("tiny", "bfloat16", mtp=True), tmp_path, "F16", mtp=False, keep_mtp=False)


@pytest.mark.parametrize("out_type", ["F16", "Q8_0"])
def test_demo_checkpoint(tmp_path, out_type):
    """The demo model (written with numpy, sharded with an index) converts exactly like llama.cpp converts it."""
    from localcoder.demo import build_demo_checkpoint

    assert_same_as_llama_cpp(build_demo_checkpoint(tmp_path / "demo"), tmp_path, out_type)
