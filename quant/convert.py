"""HF safetensors -> GGUF conversion for Qwen3-Next, byte-identical to llama.cpp's convert_hf_to_gguf.py.

    convert_hf(Path("Qwen3-Coder-Next"), Path("model-f16.gguf"), "F16")

Streams row chunks (memory stays bounded whatever the model size), shows a progress bar, writes atomically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from localcoder.errors import UserError
from localcoder.progress import item_progress
from quant.ggml_types import encode_rows, parse_type, tensor_type
from quant.gguf_meta import ARCH, add_general, add_model_params
from quant.gguf_out import atomic_path, check_destination, write_gguf
from quant.hfconfig import Qwen3NextConfig, load_config
from quant.safetensors_src import open_checkpoint
from quant.tensor_plan import OutTensor, count_mtp_layers, plan_tensors
from quant.vocab import add_vocab

HEADER_ALLOWANCE = 64 << 20  # tokenizer + metadata + padding, generously


@dataclass
class ConvertResult:
    """What a conversion did, for the summary line."""

    out: Path
    n_tensors: int
    bytes_out: int
    seconds: float


def _check_shapes(cfg: Qwen3NextConfig, plan: list[OutTensor]) -> None:
    """Catch a checkpoint whose tensors disagree with its config.json before writing anything."""
    expected = {"token_embd.weight": (cfg.vocab_size, cfg.hidden_size),
                "output.weight": (cfg.vocab_size, cfg.hidden_size),
                "blk.0.ffn_gate_inp.weight": (cfg.num_experts, cfg.hidden_size)}
    for t in plan:
        if t.name in expected and t.shape != expected[t.name]:
            raise UserError(f"{t.hf_names[0]} has shape {list(t.shape)} but config.json implies "
                            f"{list(expected[t.name])}: the checkpoint and its config disagree")
    if not any(t.name == "token_embd.weight" for t in plan):
        raise UserError("the checkpoint has no model.embed_tokens.weight: it is incomplete, re-download it")


def prepare(src: Path, type_name: str, keep_mtp: bool = True) -> tuple[GGUFWriter, list[OutTensor]]:
    """Validate the source and build the writer (all metadata and tensor infos) without writing anything."""
    if not src.is_dir():
        raise UserError(f"{src} is not a folder: SRC must be a Hugging Face model folder (config.json, "
                        "*.safetensors, tokenizer.json)")
    qtype, file_type = parse_type(type_name)
    cfg = load_config(src)
    tensors = open_checkpoint(src)
    plan = plan_tensors(cfg, tensors, keep_mtp)
    _check_shapes(cfg, plan)
    writer = GGUFWriter(path=None, arch=ARCH)
    for t in plan:
        t.ggml_type = tensor_type(t.name, t.shape, qtype)
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes_out, raw_dtype=t.ggml_type)
    n_mtp = count_mtp_layers(list(tensors)) if keep_mtp else 0
    add_general(writer, src)
    add_model_params(writer, cfg, n_mtp, file_type)
    add_vocab(writer, src, cfg.vocab_size)
    return writer, plan


def _encode(t: OutTensor, start: int, stop: int) -> np.ndarray:
    return encode_rows(t.rows(start, stop), t.ggml_type)


def convert_hf(src: Path, out: Path, type_name: str = "F16", keep_mtp: bool = True,
               show_progress: bool = True) -> ConvertResult:
    """Convert the HF folder `src` to the GGUF `out` with big tensors in `type_name` (F32, F16, BF16, Q8_0).

    MTP tensors (`mtp.*`), when the checkpoint has them, are kept as llama.cpp keeps them (block L); pass
    keep_mtp=False to drop them. Raises UserError for every input or destination problem, before writing.
    """
    src, out = Path(src), Path(out)
    started = time.perf_counter()
    writer, plan = prepare(src, type_name, keep_mtp)
    total_out = sum(t.nbytes_out for t in plan)
    check_destination(out, total_out + HEADER_ALLOWANCE)
    with item_progress("converting", len(plan), total_out, show_progress) as progress, atomic_path(out) as tmp:
        write_gguf(writer, tmp, plan, _encode, progress)
    return ConvertResult(out, len(plan), out.stat().st_size, time.perf_counter() - started)
