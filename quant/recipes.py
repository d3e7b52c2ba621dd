"""Named quantization recipes (quant/recipes.toml) and file sizes of Qwen3-Coder-Next under any type or recipe."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from localcoder.errors import UserError
from quant.ggml_types import encoded_nbytes
from quant.mixes import FILE_TYPES, ModelShape, choose_types, parse_overrides

RECIPES_PATH = Path(__file__).with_name("recipes.toml")

# Qwen3-Coder-Next's config (reference/qwen3next.md section 1)
QWEN3_CODER_NEXT = {
    "architectures": ["Qwen3NextForCausalLM"], "hidden_size": 2048, "num_hidden_layers": 48,
    "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "linear_num_key_heads": 16,
    "linear_num_value_heads": 32, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4, "num_experts": 512, "num_experts_per_tok": 10, "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512, "vocab_size": 151936, "intermediate_size": 5120,
    "layer_types": ["linear_attention" if (i + 1) % 4 else "full_attention" for i in range(48)],
}


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    base: str
    tensor_types: tuple[str, ...]


def load_recipes(path: Path = RECIPES_PATH) -> dict[str, Recipe]:
    """All recipes, validated: a known base file type and parseable overrides."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    recipes = {}
    for name, entry in data.items():
        recipe = Recipe(name, entry.get("description", ""), entry.get("base", ""), tuple(entry.get("tensor_types", ())))
        if recipe.base not in FILE_TYPES:
            raise UserError(f"recipe {name} in {path}: base {recipe.base!r} is not one of {', '.join(FILE_TYPES)}")
        parse_overrides(list(recipe.tensor_types))
        recipes[name] = recipe
    return recipes


def resolve(type_or_recipe: str, extra_tensor_types: list[str] = ()) -> tuple[str, list[str]]:
    """(llama.cpp file type, overrides) for a --type value: a file type, or a recipe name. The user's own
    --tensor-type values come first, so they win over the recipe's."""
    if type_or_recipe.upper() in FILE_TYPES:
        return type_or_recipe.upper(), list(extra_tensor_types)
    recipes = load_recipes()
    if type_or_recipe in recipes:
        recipe = recipes[type_or_recipe]
        return recipe.base, list(extra_tensor_types) + list(recipe.tensor_types)
    raise UserError(f"--type {type_or_recipe}: not a file type ({', '.join(FILE_TYPES)}) nor a recipe "
                    f"({', '.join(recipes)}); see --list-recipes")


def gguf_tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """GGUF tensor names and ne shapes of a Qwen3-Next checkpoint, by running the converter's name table on the
    HF names and shapes (no weights needed)."""
    from localcoder.demo import hf_tensor_shapes
    from quant.hfconfig import parse_config
    from quant.safetensors_src import SourceTensor
    from quant.tensor_plan import plan_tensors

    cfg = parse_config(config)
    shapes = hf_tensor_shapes({**config, "layer_types": list(cfg.layer_types)})
    fake = {n: SourceTensor(n, "BF16", s, Path("-"), 0, 0) for n, s in sorted(shapes.items())}
    return {t.name: tuple(reversed(t.shape)) for t in plan_tensors(cfg, fake, keep_mtp=False)}


def tensor_types(type_or_recipe: str, config: dict = QWEN3_CODER_NEXT) -> dict[str, tuple]:
    """name -> (GGML type, ne shape) of every tensor of the model under a file type or recipe (non-quantizable
    tensors at F32, as converted)."""
    from gguf import GGMLQuantizationType as T

    file_type, overrides = resolve(type_or_recipe)
    shapes = gguf_tensor_shapes(config)
    model = ModelShape(config["num_attention_heads"], config["num_key_value_heads"], config["num_experts"],
                       config["num_hidden_layers"])
    chosen = choose_types(shapes, file_type, model, parse_overrides(overrides))
    return {n: (chosen[n] or T.F32, ne) for n, ne in shapes.items()}


def model_size_bytes(type_or_recipe: str, config: dict = QWEN3_CODER_NEXT) -> int:
    """Tensor bytes of the model under a file type or recipe."""
    return sum(encoded_nbytes(tuple(reversed(ne)), t) for t, ne in tensor_types(type_or_recipe, config).values())
