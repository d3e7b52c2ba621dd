"""Read and validate a Qwen3-Next `config.json` (reference/qwen3next.md section 1).

Values the runtime (and llama.cpp's loader) cannot handle are refused here, before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcoder.errors import UserError

SUPPORTED_ARCH = "Qwen3NextForCausalLM"

# transformers' Qwen3NextConfig defaults: llama.cpp's converter reads AutoConfig(...).to_dict(), so a key missing
# from config.json takes these values there, and must here too.
DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 48,
    "num_attention_heads": 16, "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": False, "head_dim": 256,
    "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
    "linear_num_key_heads": 16, "linear_num_value_heads": 32, "decoder_sparse_step": 1,
    "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512, "num_experts_per_tok": 10,
    "num_experts": 512, "norm_topk_prob": True, "mlp_only_layers": [],
}

_REQUIRED_INTS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
    "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
    "linear_conv_kernel_dim", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
    "shared_expert_intermediate_size",
)


@dataclass(frozen=True)
class Qwen3NextConfig:
    """The validated config; `hparams` is config.json over transformers' defaults, as llama.cpp's converter sees it."""

    hparams: dict[str, Any]
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    nk: int  # linear_num_key_heads
    nv: int  # linear_num_value_heads
    dk: int  # linear_key_head_dim
    dv: int  # linear_value_head_dim
    conv_kernel: int
    num_experts: int
    top_k: int
    expert_ffn: int
    shared_ffn: int
    layer_types: tuple[str, ...]
    rope_theta: float
    partial_rotary_factor: float

    @property
    def rope_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


def rope_parameters(raw: dict[str, Any]) -> dict[str, Any]:
    """rope settings as transformers 5 standardises them (rope_parameters, else rope_scaling, plus root keys)."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    if "rope_type" not in params:
        params["rope_type"] = params.pop("type", "default")
    params.setdefault("rope_theta", raw.get("rope_theta") or 10000.0)
    params.setdefault("partial_rotary_factor", raw.get("partial_rotary_factor") or 0.25)
    return params


def default_layer_types(n_layers: int, interval: int) -> tuple[str, ...]:
    """HF's rule when `layer_types` is absent: every `interval`-th layer is full attention."""
    return tuple("linear_attention" if (i + 1) % interval else "full_attention" for i in range(n_layers))


def load_config(model_dir: Path) -> Qwen3NextConfig:
    """Load `config.json` from `model_dir` and validate it; raises UserError with a one-line reason."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir} has no config.json: point SRC at a Hugging Face model folder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-download the model") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} does not hold a JSON object; re-download the model")
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], where: Path | str = "config.json") -> Qwen3NextConfig:
    """Validate a config dict (see load_config)."""
    archs = raw.get("architectures") or []
    if SUPPORTED_ARCH not in archs:
        found = ", ".join(map(str, archs)) or "none"
        raise UserError(f"{where}: architecture {found} is not supported; localcoder converts {SUPPORTED_ARCH} "
                        "(Qwen3-Next / Qwen3-Coder-Next) only")
    hp = {**DEFAULTS, **raw}
    for key in _REQUIRED_INTS:
        value = hp.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UserError(f"{where}: '{key}' must be a positive integer, found {value!r}")
    hp["rope_parameters"] = rope = rope_parameters(raw)
    _check_supported_values(hp, rope, where)
    n_layers = hp["num_hidden_layers"]
    layer_types = hp.get("layer_types") or default_layer_types(n_layers, hp.pop("full_attention_interval", 4))
    if len(layer_types) != n_layers or set(layer_types) - {"linear_attention", "full_attention"}:
        raise UserError(f"{where}: 'layer_types' must list {n_layers} entries of 'linear_attention' or "
                        "'full_attention'")
    hp["layer_types"] = list(layer_types)
    return Qwen3NextConfig(
        hparams=hp, hidden_size=hp["hidden_size"], num_hidden_layers=n_layers,
        num_attention_heads=hp["num_attention_heads"], num_key_value_heads=hp["num_key_value_heads"],
        head_dim=hp["head_dim"], vocab_size=hp["vocab_size"], nk=hp["linear_num_key_heads"],
        nv=hp["linear_num_value_heads"], dk=hp["linear_key_head_dim"], dv=hp["linear_value_head_dim"],
        conv_kernel=hp["linear_conv_kernel_dim"], num_experts=hp["num_experts"],
        top_k=hp["num_experts_per_tok"], expert_ffn=hp["moe_intermediate_size"],
        shared_ffn=hp["shared_expert_intermediate_size"], layer_types=tuple(layer_types),
        rope_theta=float(rope["rope_theta"]), partial_rotary_factor=float(rope["partial_rotary_factor"]),
    )


def _check_supported_values(hp: dict[str, Any], rope: dict[str, Any], where: Path | str) -> None:
    """Refuse configs that llama.cpp's qwen3next loader or the runtime would mis-handle."""
    def refuse(what: str) -> None:
        raise UserError(f"{where}: {what} is not supported by localcoder (nor by llama.cpp's qwen3next loader)")

    if hp["linear_key_head_dim"] != hp["linear_value_head_dim"]:
        refuse(f"linear_key_head_dim {hp['linear_key_head_dim']} != linear_value_head_dim "
               f"{hp['linear_value_head_dim']}")
    if hp["linear_num_value_heads"] % hp["linear_num_key_heads"]:
        refuse("linear_num_value_heads not a multiple of linear_num_key_heads")
    if hp["num_attention_heads"] % hp["num_key_value_heads"]:
        refuse("num_attention_heads not a multiple of num_key_value_heads")
    if hp["num_experts_per_tok"] > hp["num_experts"]:
        refuse(f"num_experts_per_tok {hp['num_experts_per_tok']} > num_experts {hp['num_experts']}")
    if hp.get("mlp_only_layers") or hp.get("decoder_sparse_step", 1) != 1:
        refuse("a dense-MLP layer (mlp_only_layers / decoder_sparse_step)")
    if hp.get("norm_topk_prob", True) is not True:
        refuse("norm_topk_prob = false")
    if hp.get("attention_bias", False):
        refuse("attention_bias = true")
    if hp.get("hidden_act", "silu") != "silu":
        refuse(f"hidden_act {hp.get('hidden_act')!r}")
    if rope["rope_type"] != "default":
        refuse(f"rope_type {rope.get('rope_type')!r}")
    factor = rope["partial_rotary_factor"]
    head_dim = hp["head_dim"]
    rope_dim = int(head_dim * factor)
    if not 0 < rope_dim <= head_dim or rope_dim % 2:
        refuse(f"partial_rotary_factor {factor} (gives {rope_dim} rotary dims for head_dim {head_dim})")
