"""Tiny random Qwen3-Next checkpoints built on the fly with HF transformers (the numerical oracle).

Three geometries (reference/testing.md): `tiny`; `k256`, whose row sizes are multiples of 256 except one tensor
(ffn_down_shexp, 96 wide) so K-quant fallbacks trigger; `realheads`, with the real head sizes (attention head_dim
256, DeltaNet dk = dv = 128). Never exactly 8 experts (llama.cpp's Mixtral rule). Parameters that initialise to
trivial values (norms, dt_bias, A_log, shared-expert gate, router) are randomised so every transform matters.
"""

from __future__ import annotations

import json
from pathlib import Path

from localcoder.demo_corpus import code_corpus
from localcoder.tokenizer_build import train_tokenizer, write_tokenizer

GEOMETRIES = {
    # tiny: shared ffn 80 is not a multiple of 32, so Q8_0 falls back to F16 on ffn_down_shexp
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32,
                 linear_value_head_dim=32, num_experts=16, num_experts_per_tok=2, moe_intermediate_size=64,
                 shared_expert_intermediate_size=80),
    "k256": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1, head_dim=64,
                 linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=64,
                 linear_value_head_dim=64, num_experts=12, num_experts_per_tok=3, moe_intermediate_size=256,
                 shared_expert_intermediate_size=96),
    "realheads": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=256, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=128,
                      linear_value_head_dim=128, num_experts=10, num_experts_per_tok=4, moe_intermediate_size=128,
                      shared_expert_intermediate_size=256),
}
TOKENIZER_VOCAB = 600  # regular tokens; the model's vocab_size adds room for [PAD] tokens


def build_tokenizer(model_dir: Path):
    tok = train_tokenizer(code_corpus(300, seed=1), TOKENIZER_VOCAB)
    write_tokenizer(tok, model_dir, max_length=4096)
    return tok


def build_model(model_dir: Path, geometry: str, dtype: str = "float32", seed: int = 0, mtp: bool = False) -> Path:
    """Write an HF checkpoint (config, safetensors, tokenizer, generation config, model card) to `model_dir`."""
    import torch
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    model_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(model_dir)
    vocab_size = (tok.get_vocab_size() + 63) // 64 * 64 + 64
    eos = tok.token_to_id("<|im_end|>")
    config = Qwen3NextConfig(
        vocab_size=vocab_size, linear_conv_kernel_dim=4, rms_norm_eps=1e-6, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25},
        bos_token_id=tok.token_to_id("<|endoftext|>"), eos_token_id=eos, intermediate_size=320,
        tie_word_embeddings=False, **GEOMETRIES[geometry])
    torch.manual_seed(seed)
    model = Qwen3NextForCausalLM(config).eval()
    _randomise(model)
    model.to(getattr(torch, dtype)).save_pretrained(model_dir)
    if mtp:
        _add_mtp_shard(model_dir, config, getattr(torch, dtype), seed)
    (model_dir / "README.md").write_text(
        "---\nlicense: apache-2.0\ntags:\n- code\n- test\n---\n# Tiny Qwen3-Next\nRandom weights for tests.\n")
    return model_dir


def _randomise(model) -> None:
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn_like(p) * (0.1 if "linear_attn.norm" not in name else 0.2)
                        + (1.0 if "linear_attn.norm" in name else 0.0))
            elif name.endswith(("dt_bias", "shared_expert_gate.weight")):
                p.copy_(torch.randn_like(p) * 0.5)
            elif name.endswith("A_log"):
                p.copy_(torch.log(torch.empty_like(p).uniform_(1, 16)))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(torch.randn_like(p) * 0.5)
        model.lm_head.weight.mul_(2.0 / max(1e-6, float(model.lm_head.weight.std()) * model.config.hidden_size ** 0.5))


def _add_mtp_shard(model_dir: Path, config, dtype, seed: int) -> None:
    """Synthetic MTP tensors (names and shapes of Qwen3-Next's `mtp.*`) as a second shard with an index."""
    import torch
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(seed + 1)
    h, d = config.hidden_size, config.head_dim
    shapes = {"mtp.fc.weight": (h, 2 * h), "mtp.pre_fc_norm_embedding.weight": (h,),
              "mtp.pre_fc_norm_hidden.weight": (h,), "mtp.norm.weight": (h,),
              "mtp.layers.0.input_layernorm.weight": (h,), "mtp.layers.0.post_attention_layernorm.weight": (h,),
              "mtp.layers.0.self_attn.q_proj.weight": (2 * config.num_attention_heads * d, h),
              "mtp.layers.0.self_attn.k_proj.weight": (config.num_key_value_heads * d, h),
              "mtp.layers.0.self_attn.v_proj.weight": (config.num_key_value_heads * d, h),
              "mtp.layers.0.self_attn.o_proj.weight": (h, config.num_attention_heads * d),
              "mtp.layers.0.self_attn.q_norm.weight": (d,), "mtp.layers.0.self_attn.k_norm.weight": (d,),
              "mtp.layers.0.mlp.gate.weight": (config.num_experts, h),
              "mtp.layers.0.mlp.shared_expert_gate.weight": (1, h)}
    for kind, shape in (("gate", (config.shared_expert_intermediate_size, h)),
                        ("up", (config.shared_expert_intermediate_size, h)),
                        ("down", (h, config.shared_expert_intermediate_size))):
        shapes[f"mtp.layers.0.mlp.shared_expert.{kind}_proj.weight"] = shape
        for e in range(config.num_experts):
            i = config.moe_intermediate_size
            shapes[f"mtp.layers.0.mlp.experts.{e}.{kind}_proj.weight"] = (h, i) if kind == "down" else (i, h)
    tensors = {n: (torch.randn(s, generator=g) * 0.05).to(dtype) for n, s in shapes.items()}
    save_file(tensors, str(model_dir / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    main = model_dir / "model.safetensors"
    first = model_dir / "model-00001-of-00002.safetensors"
    save_file(load_file(str(main)), str(first), metadata={"format": "pt"})
    main.unlink()
    weight_map = {n: first.name for n in load_file(str(first))} | {n: "model-00002-of-00002.safetensors"
                                                                   for n in tensors}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
