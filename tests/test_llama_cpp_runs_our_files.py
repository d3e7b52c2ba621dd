"""llama.cpp loads localcoder's files and computes the same logits as HF transformers."""

from __future__ import annotations

import numpy as np
import pytest

from localcoder.demo_corpus import code_corpus
from quant.convert import convert_hf

N_TOKENS = 140  # crosses transformers' 64-token DeltaNet chunk boundary twice


def prompt_tokens(hf_dir, n: int) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    ids = tok.encode("<|im_start|>user\n" + "\n".join(code_corpus(40, seed=7))).ids
    assert len(ids) >= n
    return ids[:n]


def transformers_logits(hf_dir, tokens: list[int]) -> np.ndarray:
    import torch
    from transformers import Qwen3NextForCausalLM

    model = Qwen3NextForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def llama_for_logits(gguf_path):
    """llama.cpp on a file, keeping every position's logits, with a float32 KV cache (like localcoder's)."""
    import llama_cpp

    return llama_cpp.Llama(str(gguf_path), n_ctx=512, n_batch=512, logits_all=True, n_threads=2, verbose=False,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def llama_cpp_logits(gguf_path, tokens: list[int]) -> np.ndarray:
    llm = llama_for_logits(gguf_path)
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    llm.close()
    return logits


def max_relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| over all tokens and vocab entries, relative to the largest reference logit."""
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("geometry", ["tiny", "k256", "realheads"])
def test_f32_file_logits_match_transformers(hf_model, tmp_path, geometry):
    hf_dir = hf_model(geometry)
    gguf_path = convert_hf(hf_dir, tmp_path / "model-f32.gguf", "F32", show_progress=False).out
    tokens = prompt_tokens(hf_dir, N_TOKENS)
    ref = transformers_logits(hf_dir, tokens)
    ours = llama_cpp_logits(gguf_path, tokens)
    assert ours.shape == ref.shape
    assert float(ref.std()) > 0.5, "the tiny model's logits should not be near-constant"
    assert max_relative_error(ours, ref) < 1e-4
