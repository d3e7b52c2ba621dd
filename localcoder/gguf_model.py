"""A Qwen3-Next GGUF as the runtime sees it: validated hyper-parameters from metadata, and its tensors.

Unsupported values are errors, never guesses (reference/qwen3next.md 2.7 lists the keys llama.cpp reads).
"""

from __future__ import annotations

import re
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


SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


class ModelFiles:
    """A GGUF model as one reader, whether it is one file or shards named as llama.cpp's gguf-split names them
    (NAME-00001-of-0000N.gguf, metadata in the first): `fields` are the first file's gguf-py fields, `tensors`
    every shard's, and `file_of[name]` the file a tensor's bytes are in."""

    def __init__(self, readers: list):
        self.paths = [Path(r.data.filename) for r in readers]
        self.fields = readers[0].fields
        self.tensors = [t for r in readers for t in r.tensors]
        self.file_of = {t.name: Path(r.data.filename) for r in readers for t in r.tensors}


def shard_paths(path: Path) -> list[Path]:
    """Every file of the model `path` names: itself, or all its shards when it is one (any of them may be given)."""
    m = SHARD_NAME.match(Path(path).name)
    if not m:
        return [Path(path)]
    count = int(m["count"])
    paths = [Path(path).with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{path} is shard {int(m['no'])} of {count}, but {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} missing beside it; download every shard")
    return paths


def open_model_files(path: Path) -> ModelFiles:
    """The model at `path` (one GGUF, or any shard of a split one), its shards checked against their split keys."""
    paths = shard_paths(Path(path))
    readers = [open_gguf(p) for p in paths]
    if len(paths) > 1:
        for i, (p, r) in enumerate(zip(paths, readers)):
            keys = {k: r.fields[k].contents() if k in r.fields else None for k in SPLIT_KEYS[:2]}
            if keys != {"split.no": i, "split.count": len(paths)}:
                raise UserError(f"{p} says it is shard {keys['split.no']} of {keys['split.count']}, but its name "
                                f"makes it {i} of {len(paths)} (counting from 0); the shards do not belong together")
        expected = readers[0].fields.get("split.tensors.count")
        total = sum(len(r.tensors) for r in readers)
        if expected is not None and expected.contents() != total:
            raise UserError(f"the shards of {paths[0].name} hold {total} tensors, their metadata says "
                            f"{expected.contents()}; a shard is from another split")
    return ModelFiles(readers)


def copy_metadata(files: ModelFiles, writer) -> None:
    """Every metadata key of `files` into a gguf-py writer made with the same architecture (which writes that key
    itself), except gguf-py's internal fields and the split keys (a writer adds its own)."""
    from gguf import GGUFValueType

    for f in files.fields.values():
        if f.name.startswith("GGUF.") or f.name in SPLIT_KEYS or f.name == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)


def load_fields(path: Path) -> tuple[dict, ModelFiles]:
    """(metadata key -> value, the model's files) for the GGUF at `path` (split GGUFs: any shard)."""
    files = open_model_files(path)
    fields = {f.name: f.contents() for f in files.fields.values()
              if not f.name.startswith("GGUF.") and f.name not in SPLIT_KEYS}
    return fields, files


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
