"""The runtime's view of GGUF tensors: memory-mapped, validated against the model geometry, multiplied in place.

A `Weight` wraps one tensor as stored (block format bytes, or F32/F16/BF16 values) without copying it: the bytes
stay in the page cache of the memory-mapped file and the kernels decode them as they go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from localcoder.errors import UserError
from localcoder.gguf_model import ModelArgs, ModelFiles
from localcoder.kernels import cpu_matmul as K
from localcoder.kernels import qdot as Q
from localcoder.kernels.qdot import Activations

T = GGMLQuantizationType


@dataclass
class Weight:
    """One GGUF tensor: `raw` as gguf-py maps it, its type, and its logical shape in numpy order
    ((rows, cols) or (experts, rows, cols))."""

    name: str
    raw: np.ndarray
    qtype: T
    shape: tuple[int, ...]
    int8_activations: bool = True  # run on ggml's 8-bit activation formats where the type has a kernel for them
    _vector: np.ndarray | None = field(default=None, repr=False)

    @property
    def cols(self) -> int:
        return self.shape[-1]

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)

    def matmul(self, x: "np.ndarray | Activations") -> np.ndarray:
        """x [T, cols] @ W.T -> [T, rows] (float32). Pass an Activations to share its quantization."""
        acts = x if isinstance(x, Activations) else Activations(x)
        if self._int8():
            return Q.qmatmul(self._rows_2d(), self.qtype, acts.quantized(self.qtype))
        return K.matmul(self._rows_2d(), self.qtype, acts.x)

    def rows(self, ids) -> np.ndarray:
        """float32 rows `ids` (the embedding lookup)."""
        return K.decode_rows(self._rows_2d(), self.qtype, np.asarray(ids), self.cols)

    def vector(self) -> np.ndarray:
        """A small tensor as float32 values (norm weights, biases, ssm_a, conv kernels), decoded once."""
        if self._vector is None:
            n = int(np.prod(self.shape))
            self._vector = K.float_weights(self.raw.reshape(1, -1), self.qtype, n).reshape(-1).copy()
        return self._vector

    def grouped_matmul(self, x: "np.ndarray | Activations", experts, starts, src) -> np.ndarray:
        """Per expert group g and slot s in starts[g]:starts[g+1]: W[experts[g]] @ x[src[s]] -> [slots, rows]."""
        acts = x if isinstance(x, Activations) else Activations(x)
        if self._int8():
            return Q.grouped_qmatmul(self.raw, self.qtype, acts.quantized(self.qtype), experts, starts, src)
        x = acts.x
        if self.qtype in K.FLOAT_TYPES:
            y = np.empty((int(starts[-1]), self.shape[1]), np.float32)
            for g, e in enumerate(experts):
                slots = np.arange(starts[g], starts[g + 1])
                if len(slots):
                    w = K.float_weights(self.raw[e].reshape(self.shape[1], -1), self.qtype, self.cols)
                    y[slots] = np.asarray(x, np.float32)[src[slots]] @ w.T
            return y
        return K.grouped_matmul(self.raw, self.qtype, x, experts, starts, src)

    def _int8(self) -> bool:
        return self.int8_activations and Q.supports(self.qtype, self.cols)

    def _rows_2d(self) -> np.ndarray:
        return self.raw.reshape(self.shape[0], -1)


def expected_shapes(args: ModelArgs, ff_expert: int, ff_shared: int) -> dict[str, tuple[int, ...]]:
    """Every tensor the forward pass reads, with its numpy-order shape (output.weight is optional: tied)."""
    H, E = args.hidden, args.n_expert
    shapes = {"token_embd.weight": (args.vocab, H), "output_norm.weight": (H,)}
    for i in range(args.n_layer):
        p = f"blk.{i}."
        shapes |= {p + "attn_norm.weight": (H,), p + "post_attention_norm.weight": (H,),
                   p + "ffn_gate_inp.weight": (E, H), p + "ffn_gate_exps.weight": (E, ff_expert, H),
                   p + "ffn_up_exps.weight": (E, ff_expert, H), p + "ffn_down_exps.weight": (E, H, ff_expert),
                   p + "ffn_gate_inp_shexp.weight": (H,), p + "ffn_gate_shexp.weight": (ff_shared, H),
                   p + "ffn_up_shexp.weight": (ff_shared, H), p + "ffn_down_shexp.weight": (H, ff_shared)}
        if args.recurrent[i]:
            conv = 2 * args.nk * args.dk + args.nv * args.dv
            shapes |= {p + "attn_qkv.weight": (conv, H), p + "attn_gate.weight": (args.nv * args.dv, H),
                       p + "ssm_ba.weight": (2 * args.nv, H), p + "ssm_conv1d.weight": (conv, args.conv_kernel),
                       p + "ssm_a": (args.nv,), p + "ssm_dt.bias": (args.nv,), p + "ssm_norm.weight": (args.dv,),
                       p + "ssm_out.weight": (H, args.nv * args.dv)}
        else:
            d = args.head_dim
            shapes |= {p + "attn_q.weight": (2 * args.n_head * d, H), p + "attn_k.weight": (args.n_head_kv * d, H),
                       p + "attn_v.weight": (args.n_head_kv * d, H), p + "attn_output.weight": (H, args.n_head * d),
                       p + "attn_q_norm.weight": (d,), p + "attn_k_norm.weight": (d,)}
    return shapes


def map_prefaulted(path) -> np.ndarray:
    """The whole file as a read-only uint8 array, mapped with MAP_POPULATE where the OS has it.

    gguf-py's np.memmap maps pages lazily: every first touch of a 4 KiB page is a page fault, and a decode step
    touches ~10 new experts per layer (measured: decode 13% faster with the prefault on the 4-layer
    real-geometry benchmark model). llama.cpp prefaults its mapping the same way."""
    import mmap

    with open(path, "rb") as f:
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapped = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    return np.frombuffer(mapped, dtype=np.uint8)


def load_weights(reader: ModelFiles, args: ModelArgs, populate: bool = True,
                 int8_activations: bool = True) -> dict[str, Weight]:
    """The tensors of a model's files as Weights, checked against the geometry; a UserError names the first
    missing, misshapen or unsupported tensor. With `populate`, the file is mapped again with its pages
    prefaulted (see map_prefaulted); `int8_activations` as in Weight."""
    from localcoder.legacy_layout import unfuse

    tensors = {t.name: t for t in reader.tensors}
    whole = {p: map_prefaulted(p) for p in reader.paths} if populate else None

    def stored(name: str, t) -> np.ndarray:
        if whole is None or isinstance(t, SimpleNamespace):
            return t.data
        mapped = whole[reader.file_of[name]]
        return mapped[t.data_offset:t.data_offset + t.n_bytes].view(t.data.dtype).reshape(t.data.shape)

    tensors |= unfuse(tensors, args, lambda t: stored(t.name, t))  # a legacy file's fused ssm_in, split
    for name in ("blk.0.ffn_gate_exps.weight", "blk.0.ffn_gate_shexp.weight"):
        if name not in tensors:
            raise UserError(f"the GGUF has no {name}: it is not a complete Qwen3-Next model")
    ff_expert = int(tensors["blk.0.ffn_gate_exps.weight"].shape[1])
    ff_shared = int(tensors["blk.0.ffn_gate_shexp.weight"].shape[1])
    expected = expected_shapes(args, ff_expert, ff_shared)
    if "output.weight" in tensors:
        expected["output.weight"] = (args.vocab, args.hidden)
    weights = {}
    for name, shape in expected.items():
        t = tensors.get(name)
        if t is None:
            raise UserError(f"the GGUF has no {name}: the file is incomplete or not a Qwen3-Next model")
        found = tuple(int(d) for d in reversed(t.shape))
        if _squeeze(found) != _squeeze(shape):
            raise UserError(f"{name} has shape {found}, expected {shape} from the GGUF's metadata; re-convert the file")
        qtype = T(t.tensor_type)
        if qtype not in K.SUPPORTED:
            raise UserError(f"{name} is {qtype.name}; localcoder runs F32, F16, BF16, Q8_0 and Q2_K..Q6_K tensors")
        if qtype not in K.FLOAT_TYPES and shape[-1] % GGML_QUANT_SIZES[qtype][0]:
            raise UserError(f"{name}: {shape[-1]} columns are not whole {qtype.name} blocks; the file is corrupt")
        weights[name] = Weight(name, stored(name, t), qtype, shape, int8_activations)
    return weights


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shapes compared without size-1 dims (llama.cpp writes [n] and [1, n] for the same vector)."""
    return tuple(d for d in shape if d != 1)


def weights_bytes(weights: dict[str, Weight]) -> int:
    return sum(w.nbytes for w in weights.values())
