"""Files made by llama.cpp's own tools run in localcoder: its converter's F32 GGUF and llama_model_quantize's
Q4_K_M of it give the same logits as localcoder's own conversion and quantization of the same checkpoint (the
files are byte-identical, tested elsewhere; here the runtime loads llama.cpp's files themselves)."""

from __future__ import annotations

import numpy as np

from conftest import llama_convert
from localcoder.costmodel import Footprint
from localcoder.model import Model
from oracles.llama_quantize import llama_quantize
from quant.convert import convert_hf
from quant.quantize_file import quantize_model

TOKENS = [3, 17, 99, 250, 7, 64, 5]


def test_llama_cpp_made_files_run_like_ours(hf_model, tmp_path):
    hf_dir = hf_model("k256")
    theirs = llama_convert(hf_dir, tmp_path / "llama-f32.gguf", "f32")
    ours = convert_hf(hf_dir, tmp_path / "ours-f32.gguf", "F32", show_progress=False).out
    assert np.array_equal(Model.load(theirs).logits(TOKENS), Model.load(ours).logits(TOKENS))
    theirs_q = llama_quantize(theirs, tmp_path / "llama-q4km.gguf", "Q4_K_M")
    ours_q = quantize_model(ours, tmp_path / "ours-q4km.gguf", "Q4_K_M", show_progress=False).out
    assert np.array_equal(Model.load(theirs_q).logits(TOKENS), Model.load(ours_q).logits(TOKENS))
    assert Footprint.from_gguf(theirs_q).nbytes == Footprint.from_gguf(ours_q).nbytes
