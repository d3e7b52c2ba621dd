"""A Qwen3-Next GGUF as the runtime sees it: validated hyper-parameters from metadata, and its tensors.

Unsupported values are errors, never guesses (reference/qwen3next.md 2.7 lists the keys llama.cpp reads).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localcoder.errors import UserError

ARCH = "qwen3next"


@dataclass(frozen=True)
class ModelArgs:
    """Qwen3-Next hyper-parameters, named as in the model math."""

    n_layer: int
    hidden: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_dim: int
    rope_base: float
    eps: float
    n_expert: int
    n_expert_used: int
    conv_kernel: int
    nk: int  # DeltaNet key heads (ssm.group_count)
    nv: int  # DeltaNet value heads (ssm.time_step_rank)
    dk: int  # DeltaNet key head size (ssm.state_size); llama.cpp requires dv == dk
    vocab: int
    recurrent: tuple[bool, ...]  # per layer: True = Gated DeltaNet, False = gated attention

    @property
    def dv(self) -> int:
        return self.dk


def _field(fields: dict, key: str, required: bool = True):
    if key in fields:
        return fields[key]
    if required:
        raise UserError(f"the GGUF has no {key}: it is not a complete {ARCH} file")
    return None


def model_args(fields: dict) -> ModelArgs:
    """ModelArgs from GGUF metadata (key -> value), with llama.cpp's loader constraints checked."""
    arch = fields.get("general.architecture")
    if arch != ARCH:
        raise UserError(f"the GGUF is a {arch!r} model; localcoder runs {ARCH} (Qwen3-Next, Qwen3-Coder-Next)")
    a = lambda key, required=True: _field(fields, f"{ARCH}.{key}", required)  # noqa: E731
    n_layer = a("block_count") - (a("nextn_predict_layers", False) or 0)
    recurrent = a("attention.recurrent_layers", False)
    if recurrent is None:
        interval = a("full_attention_interval")
        recurrent = [(i + 1) % interval != 0 for i in range(n_layer)]
    inner, nv, dk = a("ssm.inner_size"), a("ssm.time_step_rank"), a("ssm.state_size")
    if inner != nv * dk:
        raise UserError(f"ssm.inner_size {inner} != time_step_rank {nv} x state_size {dk}: DeltaNet value heads must "
                        "be as wide as key heads (as llama.cpp requires)")
    args = ModelArgs(
        n_layer=n_layer, hidden=a("embedding_length"), n_head=a("attention.head_count"),
        n_head_kv=a("attention.head_count_kv"), head_dim=a("attention.key_length"),
        rope_dim=a("rope.dimension_count"), rope_base=float(a("rope.freq_base")),
        eps=float(a("attention.layer_norm_rms_epsilon")), n_expert=a("expert_count"),
        n_expert_used=a("expert_used_count"), conv_kernel=a("ssm.conv_kernel"), nk=a("ssm.group_count"), nv=nv,
        dk=dk, vocab=len(_field(fields, "tokenizer.ggml.tokens")), recurrent=tuple(bool(r) for r in recurrent[:n_layer]))
    if args.nv % args.nk or args.n_head % args.n_head_kv or not 0 < args.n_expert_used <= args.n_expert:
        raise UserError("the GGUF's head or expert counts are inconsistent; re-convert it")
    return args


def open_gguf(path: Path):
    """gguf-py's reader for `path`, or a one-line UserError when the file is missing, truncated or not a GGUF."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, OSError, struct.error) as e:
        raise UserError(f"{path} is not a readable GGUF file ({e}); it may be truncated or corrupt") from None


def load_fields(path: Path) -> tuple[dict, object]:
    """(metadata key -> value, the gguf reader) for the GGUF at `path`."""
    reader = open_gguf(path)
    fields = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    return fields, reader


def load_float_weights(path: Path) -> tuple[ModelArgs, dict[str, np.ndarray]]:
    """ModelArgs and every tensor dequantized to float32 in numpy order (for the reference model and tests: the
    runtime kernels read the block formats directly instead)."""
    from quant.quantize import dequantize

    fields, reader = load_fields(Path(path))
    args = model_args(fields)
    weights = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        weights[t.name] = dequantize(np.asarray(t.data), t.tensor_type, shape)
    return args, weights
