"""Write a Qwen3-Next GGUF with random weights at any geometry, quantized with llama.cpp's type mix or a recipe
(benchmarks, and `localcoder bench`'s calibration models).

Real geometries are too large to build as float checkpoints, so tensors are written directly: metadata and
tokenizer come from the demo GGUF (vocabulary padded with [PAD] tokens to the geometry's size, as llama.cpp's
converter pads), geometry keys from the config, types from quant.mixes, data quantized by quant.quantize. Large
tensors repeat a pool of distinct random rows/experts: speed does not depend on the values, build time does.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFValueType, GGUFWriter

from localcoder.demo import ensure_demo_gguf
from localcoder.gguf_model import load_fields
from localcoder.progress import item_progress
from quant.mixes import ModelShape, choose_types, parse_overrides
from quant.quantize import quantize
from quant.recipes import QWEN3_CODER_NEXT, gguf_tensor_shapes, resolve

REAL_4_LAYERS = {**QWEN3_CODER_NEXT, "num_hidden_layers": 4,
                 "layer_types": ["linear_attention"] * 3 + ["full_attention"]}
SMALL_450M = {**QWEN3_CODER_NEXT, "hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 8,
              "num_key_value_heads": 2, "linear_num_key_heads": 8, "linear_num_value_heads": 16, "num_experts": 12,
              "num_experts_per_tok": 4, "moe_intermediate_size": 256, "shared_expert_intermediate_size": 512,
              "layer_types": ["linear_attention" if (i + 1) % 4 else "full_attention" for i in range(8)]}
POOL_ROWS = 4096  # distinct random rows per large 2-D tensor
POOL_EXPERTS = 16  # distinct random experts per expert tensor


def geometry_fields(cfg: dict) -> dict[str, object]:
    n = cfg["num_hidden_layers"]
    return {"block_count": n, "context_length": 32768, "embedding_length": cfg["hidden_size"],
            "feed_forward_length": cfg["intermediate_size"], "attention.head_count": cfg["num_attention_heads"],
            "attention.head_count_kv": cfg["num_key_value_heads"], "attention.key_length": cfg["head_dim"],
            "attention.value_length": cfg["head_dim"], "expert_count": cfg["num_experts"],
            "expert_used_count": cfg["num_experts_per_tok"], "expert_feed_forward_length": cfg["moe_intermediate_size"],
            "expert_shared_feed_forward_length": cfg["shared_expert_intermediate_size"],
            "ssm.state_size": cfg["linear_key_head_dim"], "ssm.group_count": cfg["linear_num_key_heads"],
            "ssm.time_step_rank": cfg["linear_num_value_heads"],
            "ssm.inner_size": cfg["linear_num_value_heads"] * cfg["linear_value_head_dim"],
            "attention.recurrent_layers": [t == "linear_attention" for t in cfg["layer_types"]],
            "rope.dimension_count": cfg["head_dim"] // 4}


def random_values(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Plausible values: unit norms, negative ssm_a, small conv kernels, 1/sqrt(fan-in) matrices."""
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * rng.standard_normal(shape, np.float32)
    if name.endswith("ssm_a"):
        return -rng.uniform(1, 16, shape).astype(np.float32)
    if name.endswith(("ssm_dt.bias", "ffn_gate_inp_shexp.weight")):
        return 0.5 * rng.standard_normal(shape, np.float32)
    return rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(shape[-1]))


def tensor_bytes(name: str, shape: tuple[int, ...], qtype: T, rng: np.random.Generator) -> np.ndarray:
    """The stored bytes (or float32 values) of one tensor of numpy shape `shape`."""
    if len(shape) == 3:  # experts: a pool of distinct ones, repeated
        pool = np.stack([tensor_bytes(name, shape[1:], qtype, rng) for _ in range(min(POOL_EXPERTS, shape[0]))])
        return np.concatenate([pool] * (-(-shape[0] // len(pool))))[:shape[0]]
    if len(shape) == 2 and shape[0] > POOL_ROWS:
        pool = tensor_bytes(name, (POOL_ROWS, shape[1]), qtype, rng)
        return np.concatenate([pool] * (-(-shape[0] // POOL_ROWS)))[:shape[0]]
    values = random_values(name, shape, rng)
    return values if qtype == T.F32 else quantize(values.reshape(-1, shape[-1]), qtype)


def skewed_router(values: np.ndarray, skew: float, rng: np.random.Generator) -> np.ndarray:
    """Router rows [experts, hidden] scaled so that routing is skewed: expert of popularity rank r (a random order
    per layer) gets its row times 1 + skew / r, so its logits spread wider and it lands in the top-k more often."""
    scale = 1.0 + skew / (1.0 + rng.permutation(values.shape[0]))
    return (values * scale[:, None]).astype(np.float32)


def write_synthetic(path, cfg: dict, file_type: str = "Q4_K_M", seed: int = 0, show_progress: bool = True,
                    router_skew: float = 0.0) -> None:
    """A complete random-weights Qwen3-Next GGUF at `cfg`'s geometry, in llama.cpp's `file_type` mix or a recipe.
    router_skew > 0 makes some experts popular (skewed_router), as trained routers are; 0 routes about uniformly."""
    fields, reader = load_fields(ensure_demo_gguf("F32", show_progress=show_progress))
    shapes = gguf_tensor_shapes(cfg)  # name -> ne (GGML order)
    model = ModelShape(cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_experts"],
                       cfg["num_hidden_layers"])
    base, overrides = resolve(file_type)
    types = {n: t or T.F32 for n, t in choose_types(shapes, base, model, parse_overrides(overrides)).items()}
    writer = GGUFWriter(path, arch="qwen3next")
    geometry = {f"qwen3next.{k}": v for k, v in geometry_fields(cfg).items()}
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = geometry.get(field.name, fields[field.name])
        if field.name == "tokenizer.ggml.tokens":
            value = value + [f"[PAD{i}]" for i in range(len(value), cfg["vocab_size"])]
        elif field.name == "tokenizer.ggml.token_type":
            value = value + [5] * (cfg["vocab_size"] - len(value))  # UNUSED, as the converter pads
        sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub)
    rng = np.random.default_rng(seed)
    names = list(shapes)
    with item_progress("random tensors", len(names), len(names), show_progress, count_bytes=False) as progress:
        for name in names:
            progress.start(name)
            shape = tuple(reversed(shapes[name]))
            if router_skew and name.endswith("ffn_gate_inp.weight"):
                values = skewed_router(random_values(name, shape, rng), router_skew, rng)
                data = values if types[name] == T.F32 else quantize(values, types[name])
            else:
                data = tensor_bytes(name, shape, types[name], rng)
            writer.add_tensor(name, data, raw_dtype=types[name] if types[name] != T.F32 else None)
            progress.advance(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
