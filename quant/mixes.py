"""Per-tensor GGML types of llama.cpp's K-quant file types ("Q4_K_M" ...), as llama_model_quantize picks them.

A port of src/llama-quant.cpp (llama-cpp-python 0.3.36: tensor_allows_quantization, tensor_get_category,
llama_tensor_get_type_impl for the non-IQ file types, tensor_type_fallback), restricted to what applies to
qwen3next (not Falcon, not a 70B). reference/kquants.md section 8 tabulates the result for Qwen3-Coder-Next.

Shapes here are GGML `ne` order: ne[0] is the row length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from localcoder.errors import UserError

T = GGMLQuantizationType
FT = LlamaFileType

# --type name -> (file type, default tensor type)
FILE_TYPES = {
    "Q2_K": (FT.MOSTLY_Q2_K, T.Q2_K), "Q3_K_S": (FT.MOSTLY_Q3_K_S, T.Q3_K), "Q3_K_M": (FT.MOSTLY_Q3_K_M, T.Q3_K),
    "Q3_K_L": (FT.MOSTLY_Q3_K_L, T.Q3_K), "Q4_K_S": (FT.MOSTLY_Q4_K_S, T.Q4_K), "Q4_K_M": (FT.MOSTLY_Q4_K_M, T.Q4_K),
    "Q5_K_S": (FT.MOSTLY_Q5_K_S, T.Q5_K), "Q5_K_M": (FT.MOSTLY_Q5_K_M, T.Q5_K), "Q6_K": (FT.MOSTLY_Q6_K, T.Q6_K),
    "Q8_0": (FT.MOSTLY_Q8_0, T.Q8_0),
}
# llama.cpp's fallbacks when a row is not a multiple of the type's block (LQ tensor_type_fallback)
FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


class Category(Enum):
    OUTPUT = "output"
    TOKEN_EMBD = "token_embd"
    ATTN_QKV = "attn_qkv"
    ATTN_KV_B = "attn_kv_b"
    ATTN_V = "attn_v"
    ATTN_K = "attn_k"
    ATTN_Q = "attn_q"
    ATTN_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OTHER = "other"


_CATEGORY_SUBSTRINGS = [("attn_qkv.weight", Category.ATTN_QKV), ("attn_kv_b.weight", Category.ATTN_KV_B),
                        ("attn_v.weight", Category.ATTN_V), ("attn_k.weight", Category.ATTN_K),
                        ("attn_q.weight", Category.ATTN_Q), ("attn_output.weight", Category.ATTN_OUTPUT),
                        ("ffn_up", Category.FFN_UP), ("ffn_gate", Category.FFN_GATE), ("ffn_down", Category.FFN_DOWN)]
_ATTN_V_LIKE = (Category.ATTN_V, Category.ATTN_QKV, Category.ATTN_KV_B)  # category_is_attn_v
_NEVER_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d")


def category(name: str) -> Category:
    """tensor_get_category: exact names first, then substring tests, first match wins."""
    if name == "output.weight":
        return Category.OUTPUT
    if name == "token_embd.weight":
        return Category.TOKEN_EMBD
    return next((cat for sub, cat in _CATEGORY_SUBSTRINGS if sub in name), Category.OTHER)


def allows_quantization(name: str, ne: tuple[int, ...]) -> bool:
    """tensor_allows_quantization for qwen3next: 2-D/3-D `*weight` tensors that are not norms, routers or conv."""
    n_dims = len(ne)
    while n_dims > 1 and ne[n_dims - 1] == 1:  # ggml_n_dims ignores trailing 1s
        n_dims -= 1
    return n_dims >= 2 and name.endswith("weight") and not any(s in name for s in _NEVER_QUANTIZED)


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def layer_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def weights_order(names: list[str]) -> list[str]:
    """llama.cpp's tensor processing (and output) order: non-layer tensors first, then by layer, then by name."""
    return sorted(names, key=lambda n: (layer_of(n), n))


@dataclass(frozen=True)
class ModelShape:
    """What the rules read from the model: heads (for n_gqa), experts, blocks (layers incl. MTP)."""

    n_head: int
    n_head_kv: int
    n_expert: int
    n_layer: int

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0


def _rule(cat: Category, name: str, ne, ftype: FT, new: T, model: ModelShape, i_wv: int, n_wv: int,
          tied: bool) -> T:
    """llama_tensor_get_type_impl for the non-IQ file types."""
    if cat == Category.OUTPUT or (tied and cat == Category.TOKEN_EMBD):
        if ne[0] % GGML_QUANT_SIZES[new][0]:
            return T.Q8_0
        return T.Q6_K if new != T.Q8_0 else new
    if cat == Category.TOKEN_EMBD:
        return new
    if cat in _ATTN_V_LIKE:
        if ftype == FT.MOSTLY_Q2_K:
            new = T.Q4_K if model.n_gqa >= 4 else T.Q3_K
        elif ftype == FT.MOSTLY_Q3_K_M:
            new = T.Q5_K if i_wv < 2 else T.Q4_K
        elif ftype == FT.MOSTLY_Q3_K_L:
            new = T.Q5_K
        elif ftype in (FT.MOSTLY_Q4_K_M, FT.MOSTLY_Q5_K_M) and use_more_bits(i_wv, n_wv):
            new = T.Q6_K
        elif ftype == FT.MOSTLY_Q4_K_S and i_wv < 4:
            new = T.Q5_K
        return T.Q8_0 if model.n_expert == 8 else new
    if cat == Category.ATTN_K:
        return T.Q8_0 if model.n_expert == 8 else new
    if cat == Category.FFN_DOWN:
        il, n = layer_of(name), model.n_layer
        if not 0 <= il < n:
            raise UserError(f"cannot place {name} in a layer of a {n}-layer model")
        if ftype == FT.MOSTLY_Q2_K:
            return T.Q3_K
        if ftype == FT.MOSTLY_Q3_K_M:
            return T.Q5_K if il < n // 16 else T.Q4_K
        if ftype == FT.MOSTLY_Q3_K_L:
            return T.Q5_K
        if ftype in (FT.MOSTLY_Q4_K_M, FT.MOSTLY_Q5_K_M):
            return T.Q6_K if use_more_bits(il, n) else new
        if ftype == FT.MOSTLY_Q4_K_S and il < n // 8:
            return T.Q5_K
        return new
    if cat == Category.ATTN_OUTPUT:
        if model.n_expert == 8:
            return T.Q5_K if ftype in (FT.MOSTLY_Q2_K, FT.MOSTLY_Q3_K_S, FT.MOSTLY_Q3_K_M, FT.MOSTLY_Q4_K_S,
                                       FT.MOSTLY_Q4_K_M) else new
        return {FT.MOSTLY_Q2_K: T.Q3_K, FT.MOSTLY_Q3_K_M: T.Q4_K, FT.MOSTLY_Q3_K_L: T.Q5_K}.get(ftype, new)
    return new


def fallback(ne0: int, qtype: T) -> T:
    """tensor_type_fallback: a compatible type when ne0 is not a multiple of the type's block."""
    if ne0 % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    alt = FALLBACK.get(qtype, qtype)
    return alt if ne0 % GGML_QUANT_SIZES[alt][0] == 0 else T.F16


def parse_overrides(specs: list[str]) -> list[tuple[re.Pattern, T]]:
    """`--tensor-type REGEX=TYPE` values, in order (the first matching pattern wins, as in llama.cpp)."""
    out = []
    for spec in specs:
        pattern, sep, type_name = spec.rpartition("=")
        if not sep or not pattern:
            raise UserError(f"--tensor-type {spec!r}: expected REGEX=TYPE, e.g. 'ffn_down_exps=Q6_K'")
        try:
            qtype = T[type_name.upper()]
            regex = re.compile(pattern)
        except KeyError:
            raise UserError(f"--tensor-type {spec!r}: unknown type {type_name}") from None
        except re.error as e:
            raise UserError(f"--tensor-type {spec!r}: bad regular expression ({e})") from None
        out.append((regex, qtype))
    return out


def choose_types(tensors: dict[str, tuple[int, ...]], file_type: str, model: ModelShape,
                 overrides: list[tuple[re.Pattern, T]] = ()) -> dict[str, T | None]:
    """GGML type for each tensor (name -> ne); None means "keep the source type" (not quantizable).

    Tensors are visited in llama.cpp's order, which matters for the attn_v counters."""
    ftype, default = FILE_TYPES[file_type]
    names = weights_order(list(tensors))
    n_wv = sum(category(n) in _ATTN_V_LIKE for n in names)
    tied = "output.weight" not in tensors
    chosen: dict[str, T | None] = {}
    i_wv = 0
    for name in names:
        ne = tensors[name]
        if not allows_quantization(name, ne):
            chosen[name] = None
            continue
        cat = category(name)
        manual = next((qtype for regex, qtype in overrides if regex.search(name)), None)
        new = manual if manual is not None else _rule(cat, name, ne, ftype, default, model, i_wv, n_wv, tied)
        if cat in _ATTN_V_LIKE and manual is None:
            i_wv += 1
        chosen[name] = fallback(ne[0], new)
    return chosen
