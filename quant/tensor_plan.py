"""The HF -> GGUF name table and per-tensor transforms for Qwen3-Next, exactly as llama.cpp's converter does them.

Every Qwen3-Next quirk lives here (reference/qwen3next.md section 2): 1+w norms, ssm_a = -exp(A_log), the qkvz
de-interleave, expert stacking, the conv squeeze, MTP renaming. The output is a plan: a list of `OutTensor`s whose
rows can be produced chunk by chunk, so that no tensor is ever held whole (an output tensor is a concatenation of
contiguous row ranges of source tensors, optionally followed by an elementwise function).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType

from localcoder.errors import UserError
from quant.ggml_types import encoded_nbytes
from quant.hfconfig import Qwen3NextConfig
from quant.safetensors_src import SourceTensor

GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "linear_attn.in_proj_ba.weight": "ssm_ba.weight",
    "linear_attn.conv1d.weight": "ssm_conv1d.weight",
    "linear_attn.dt_bias": "ssm_dt.bias",
    "linear_attn.A_log": "ssm_a",
    "linear_attn.norm.weight": "ssm_norm.weight",
    "linear_attn.out_proj.weight": "ssm_out.weight",
    "mlp.experts.down_proj": "ffn_down_exps.weight",  # transformers-5 fused layout [E, H, I]
    # MTP block (renamed to layer L by `_mtp_rename` first)
    "eh_proj.weight": "nextn.eh_proj.weight",
    "enorm.weight": "nextn.enorm.weight",
    "hnorm.weight": "nextn.hnorm.weight",
    "shared_head.norm.weight": "nextn.shared_head_norm.weight",
    "shared_head.head.weight": "nextn.shared_head_head.weight",
    "embed_tokens.weight": "nextn.embed_tokens.weight",
}
_MTP_GLOBALS = {"fc": "eh_proj", "pre_fc_norm_embedding": "enorm", "pre_fc_norm_hidden": "hnorm",
                "norm": "shared_head.norm"}
_EXPERT = re.compile(r"mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)$")


@dataclass
class RowRange:
    source: SourceTensor
    start: int
    stop: int


@dataclass
class OutTensor:
    """A GGUF tensor to write: numpy-order shape, the dtype llama.cpp computes it in, and how to make its rows."""

    name: str
    shape: tuple[int, ...]
    work_dtype: np.dtype
    ranges: list[RowRange]
    elementwise: Callable[[np.ndarray], np.ndarray] | None = None
    hf_names: list[str] = field(default_factory=list)
    ggml_type: GGMLQuantizationType | None = None  # chosen by the caller (quant.ggml_types.tensor_type)

    @property
    def nbytes_out(self) -> int:
        return encoded_nbytes(self.shape, self.ggml_type)

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1

    @property
    def row_len(self) -> int:
        return self.shape[-1]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the output's 2-D view."""
        parts, pos = [], 0
        for r in self.ranges:
            n = r.stop - r.start
            lo, hi = max(start, pos), min(stop, pos + n)
            if lo < hi:
                parts.append(r.source.rows(r.start + lo - pos, r.start + hi - pos))
            pos += n
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        out = out.reshape(stop - start, self.row_len)
        return self.elementwise(out) if self.elementwise else out


def _whole(src: SourceTensor) -> list[RowRange]:
    return [RowRange(src, 0, src.n_rows)]


def plus_one(x: np.ndarray) -> np.ndarray:
    """HF stores RMSNorm weights zero-centred; GGUF stores 1 + w (computed in the work dtype, as torch does)."""
    return x + x.dtype.type(1)


def neg_exp(x: np.ndarray) -> np.ndarray:
    """ssm_a = -exp(A_log). torch's exp is used when installed because llama.cpp's converter uses it and torch's
    float32 exp differs from the correctly rounded value in about 1% of inputs (by 1 ulp); without torch the
    correctly rounded value is written."""
    try:
        import torch
    except ImportError:
        return (-np.exp(x.astype(np.float64))).astype(x.dtype)
    return (-torch.exp(torch.from_numpy(np.ascontiguousarray(x)))).numpy()


def _mtp_rename(name: str, n_layers: int) -> str:
    """llama.cpp's renaming of `mtp.*` tensors to layer index n_layers (QW _QwenMtpMixin.filter_tensors)."""
    name = name.replace("model.mtp.", "mtp.", 1) if name.startswith("model.mtp.") else name
    if not name.startswith("mtp."):
        return name
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[1] == "layers" and parts[2].isdecimal():
        return f"model.layers.{n_layers + int(parts[2])}.{parts[3]}"
    if len(parts) == 3 and parts[1] in _MTP_GLOBALS:
        return f"model.layers.{n_layers}.{_MTP_GLOBALS[parts[1]]}.{parts[2]}"
    return name


def _qkvz_split(src: SourceTensor, cfg: Qwen3NextConfig) -> tuple[list[RowRange], list[RowRange]]:
    """De-interleave in_proj_qkvz rows [q_g, k_g, v_g, z_g] per key head g into qkv = [q.., k.., v..] and z."""
    r_dv = cfg.nv // cfg.nk * cfg.dv
    sizes = (cfg.dk, cfg.dk, r_dv, r_dv)
    group = sum(sizes)
    if src.shape != (cfg.nk * group, cfg.hidden_size):
        raise UserError(f"{src.name} has shape {list(src.shape)}, config.json implies "
                        f"{[cfg.nk * group, cfg.hidden_size]}: the checkpoint and its config disagree")
    offsets = np.cumsum((0,) + sizes)
    pieces = [[RowRange(src, g * group + offsets[p], g * group + offsets[p + 1]) for g in range(cfg.nk)]
              for p in range(4)]
    return pieces[0] + pieces[1] + pieces[2], pieces[3]


class _Planner:
    """Walks the checkpoint in llama.cpp's order and emits output tensors in the order llama.cpp writes them."""

    def __init__(self, cfg: Qwen3NextConfig, n_blocks: int):
        self.cfg = cfg
        self.n_blocks = n_blocks
        self.out: list[OutTensor] = []
        self.experts: dict[int, dict[tuple[int, str], SourceTensor]] = defaultdict(dict)

    def add(self, name: str, hf_name: str, src: SourceTensor, shape=None, ranges=None, elementwise=None):
        shape = tuple(shape or src.shape)
        self.out.append(OutTensor(name, shape, src.work_dtype, ranges or _whole(src), elementwise, [hf_name]))

    def tensor(self, hf_name: str, src: SourceTensor) -> None:
        if hf_name in GLOBAL_NAMES:
            self.add(GLOBAL_NAMES[hf_name], hf_name, src,
                     elementwise=plus_one if hf_name.endswith("norm.weight") else None)
            return
        m = _LAYER.match(hf_name)
        if not m or int(m.group(1)) >= self.n_blocks:
            raise UserError(f"the checkpoint has an unexpected tensor {hf_name}: it is not a Qwen3-Next tensor")
        bid, rest = int(m.group(1)), m.group(2)
        if (e := _EXPERT.match(rest)) is not None:
            self.expert(bid, int(e.group(1)), e.group(2), src)
        elif rest == "mlp.experts.gate_up_proj":
            self.fused_gate_up(bid, hf_name, src)
        elif rest == "linear_attn.in_proj_qkvz.weight":
            qkv, z = _qkvz_split(src, self.cfg)
            rows_qkv = sum(r.stop - r.start for r in qkv)
            self.add(f"blk.{bid}.attn_qkv.weight", hf_name, src, (rows_qkv, src.shape[1]), qkv)
            self.add(f"blk.{bid}.attn_gate.weight", hf_name, src, (src.shape[0] - rows_qkv, src.shape[1]), z)
        elif rest in LAYER_NAMES:
            self.layer_tensor(bid, rest, hf_name, src)
        else:
            raise UserError(f"the checkpoint has an unexpected tensor {hf_name}: it is not a Qwen3-Next tensor")

    def layer_tensor(self, bid: int, rest: str, hf_name: str, src: SourceTensor) -> None:
        name, shape, fn = f"blk.{bid}.{LAYER_NAMES[rest]}", src.shape, None
        if rest == "linear_attn.A_log":
            fn = neg_exp
        elif rest == "linear_attn.conv1d.weight":
            shape = tuple(d for d in src.shape if d != 1)  # torch squeeze()
        elif rest.endswith("norm.weight") and rest != "linear_attn.norm.weight":
            fn = plus_one
        self.add(name, hf_name, src, shape, elementwise=fn)

    def expert(self, bid: int, e: int, kind: str, src: SourceTensor) -> None:
        """Collect per-expert tensors; when a layer has all 3*E, emit the stacked down, gate, up tensors."""
        layer = self.experts[bid]
        layer[(e, kind)] = src
        if len(layer) < 3 * self.cfg.num_experts:
            return
        for k in ("down", "gate", "up"):
            parts = [layer.get((x, k)) for x in range(self.cfg.num_experts)]
            if any(p is None or p.shape != parts[0].shape for p in parts):
                raise UserError(f"layer {bid} has missing or mismatched '{k}_proj' experts; re-download the model")
            shape = (self.cfg.num_experts, *parts[0].shape)
            ranges = [RowRange(p, 0, p.n_rows) for p in parts]
            self.out.append(OutTensor(f"blk.{bid}.ffn_{k}_exps.weight", shape, parts[0].work_dtype, ranges,
                                      hf_names=[p.name for p in parts]))
        del self.experts[bid]

    def fused_gate_up(self, bid: int, hf_name: str, src: SourceTensor) -> None:
        """transformers-5 fused experts [E, 2I, H]: gate = [:, :I], up = [:, I:]."""
        n_exp, two_i, hidden = src.shape
        half = two_i // 2
        for k, off in (("gate", 0), ("up", half)):
            ranges = [RowRange(src, e * two_i + off, e * two_i + off + half) for e in range(n_exp)]
            self.add(f"blk.{bid}.ffn_{k}_exps.weight", hf_name, src, (n_exp, half, hidden), ranges)

    def finish(self) -> list[OutTensor]:
        if self.experts:
            bid = min(self.experts)
            raise UserError(f"layer {bid} has {len(self.experts[bid])} of {3 * self.cfg.num_experts} expert "
                            "tensors; the checkpoint is incomplete, re-download it")
        return self.out


def count_mtp_layers(names: list[str]) -> int:
    """MTP blocks in the checkpoint (Qwen3-Next configs do not say; llama.cpp counts `mtp.layers.N`)."""
    found = [int(m.group(1)) for n in names if (m := re.match(r"(?:model\.)?mtp\.layers\.(\d+)\.", n))]
    return max(found) + 1 if found else 0


def plan_tensors(cfg: Qwen3NextConfig, tensors: dict[str, SourceTensor], keep_mtp: bool) -> list[OutTensor]:
    """The GGUF tensors for this checkpoint, in the order llama.cpp's converter writes them."""
    n_mtp = count_mtp_layers(list(tensors)) if keep_mtp else 0
    planner = _Planner(cfg, cfg.num_hidden_layers + n_mtp)
    for hf_name, src in tensors.items():
        if hf_name.startswith(("mtp.", "model.mtp.")) and not keep_mtp:
            continue
        if hf_name.endswith((".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")):
            continue
        planner.tensor(_mtp_rename(hf_name, cfg.num_hidden_layers), src)
    return planner.finish()
