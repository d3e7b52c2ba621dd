"""The demo model: a small Qwen3-Next of the real architecture with a code tokenizer, built deterministically.

Its weights are random (seeded), so it writes gibberish; it exists so that every command can run end to end on
any machine without downloading anything. It is written as a Hugging Face folder in the real checkpoint layout
(per-expert tensors, the same names and shapes transformers saves) and converted with the real converter.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from localcoder import __version__

DEMO_GEOMETRY = dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=64, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=64,
                     linear_value_head_dim=64, linear_conv_kernel_dim=4, num_experts=16, num_experts_per_tok=4,
                     moe_intermediate_size=128, shared_expert_intermediate_size=128, intermediate_size=512)
DEMO_TOKENIZER_VOCAB = 1024  # the synthetic corpus yields about 770 merges
SEED = 20261125
INIT_STD = 0.02  # transformers' initializer_range: a calm residual stream, so rounding is not amplified


def cache_root() -> Path:
    """Where localcoder keeps generated files: $LOCALCODER_HOME, else ~/.cache/localcoder."""
    return Path(os.environ.get("LOCALCODER_HOME") or Path.home() / ".cache" / "localcoder")


def demo_config(vocab_size: int, bos: int, eos: int, geometry: dict | None = None) -> dict:
    geometry = geometry or DEMO_GEOMETRY
    return {"architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next", "vocab_size": vocab_size,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
            "layer_types": ["linear_attention" if (i + 1) % 4 else "full_attention"
                            for i in range(geometry["num_hidden_layers"])],
            "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True, "attention_bias": False,
            "tie_word_embeddings": False, "bos_token_id": bos, "eos_token_id": eos, "torch_dtype": "float32",
            **geometry}


def hf_tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a Qwen3NextForCausalLM checkpoint as transformers saves it (per-expert layout)."""
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    nk, nv, dk, dv = (cfg[k] for k in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                                      "linear_value_head_dim"))
    nh, nkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    i_exp, i_sh, n_exp = cfg["moe_intermediate_size"], cfg["shared_expert_intermediate_size"], cfg["num_experts"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i, kind in enumerate(cfg["layer_types"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                   p + "mlp.gate.weight": (n_exp, h), p + "mlp.shared_expert_gate.weight": (1, h),
                   p + "mlp.shared_expert.gate_proj.weight": (i_sh, h), p + "mlp.shared_expert.up_proj.weight": (i_sh, h),
                   p + "mlp.shared_expert.down_proj.weight": (h, i_sh)}
        for e in range(n_exp):
            shapes |= {f"{p}mlp.experts.{e}.gate_proj.weight": (i_exp, h),
                       f"{p}mlp.experts.{e}.up_proj.weight": (i_exp, h),
                       f"{p}mlp.experts.{e}.down_proj.weight": (h, i_exp)}
        if kind == "full_attention":
            shapes |= {p + "self_attn.q_proj.weight": (2 * nh * d, h), p + "self_attn.k_proj.weight": (nkv * d, h),
                       p + "self_attn.v_proj.weight": (nkv * d, h), p + "self_attn.o_proj.weight": (h, nh * d),
                       p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)}
        else:
            conv_dim = 2 * nk * dk + nv * dv
            shapes |= {p + "linear_attn.in_proj_qkvz.weight": (2 * nk * dk + 2 * nv * dv, h),
                       p + "linear_attn.in_proj_ba.weight": (2 * nv, h),
                       p + "linear_attn.conv1d.weight": (conv_dim, 1, cfg["linear_conv_kernel_dim"]),
                       p + "linear_attn.dt_bias": (nv,), p + "linear_attn.A_log": (nv,),
                       p + "linear_attn.norm.weight": (dv,), p + "linear_attn.out_proj.weight": (h, nv * dv)}
    return shapes


def _init(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random weights with the scales of a trained model's parameter kinds (norms near their identity value)."""
    if name.endswith("linear_attn.norm.weight"):
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if name.endswith("norm.weight"):  # zero-centred RMSNorm weights
        return 0.1 * rng.standard_normal(shape)
    if name.endswith("A_log"):
        return np.log(rng.uniform(1, 16, shape))
    if name.endswith("dt_bias"):
        return rng.uniform(0.5, 2.0, shape)
    if name == "lm_head.weight":  # logits with a standard deviation near 2, like a trained model's
        return rng.standard_normal(shape) * 2.0 / np.sqrt(shape[-1])
    return rng.standard_normal(shape) * INIT_STD


def build_demo_checkpoint(model_dir: Path, geometry: dict | None = None) -> Path:
    """Write the demo model's HF folder (config, safetensors, tokenizer) to `model_dir`; same bytes every time.

    `geometry` overrides DEMO_GEOMETRY (the conversion benchmark builds a larger model this way)."""
    from safetensors.numpy import save_file

    from localcoder.demo_corpus import code_corpus
    from localcoder.tokenizer_build import train_tokenizer, write_tokenizer

    model_dir.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(code_corpus(400, seed=0), DEMO_TOKENIZER_VOCAB)
    write_tokenizer(tok, model_dir, max_length=8192)
    vocab_size = (tok.get_vocab_size() + 127) // 128 * 128
    cfg = demo_config(vocab_size, tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>"), geometry)
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (model_dir / "generation_config.json").write_text(json.dumps(
        {"temperature": 1.0, "top_p": 0.95, "top_k": 40, "min_p": 0.01, "eos_token_id": cfg["eos_token_id"]}))
    (model_dir / "README.md").write_text(
        f"---\nlicense: apache-2.0\ntags:\n- code\n- demo\n---\n# localcoder demo model {__version__}\n"
        "Qwen3-Next architecture, random weights: it runs everywhere and writes nonsense.\n")
    rng = np.random.default_rng(SEED)
    shapes = hf_tensor_shapes(cfg)
    layers = [name for name in shapes if name.startswith("model.layers.")]
    save_file({n: _init(n, shapes[n], rng).astype(np.float32) for n in shapes if n not in layers},
              str(model_dir / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file({n: _init(n, shapes[n], rng).astype(np.float32) for n in layers},
              str(model_dir / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    weight_map = {n: f"model-0000{1 + (n in layers)}-of-00002.safetensors" for n in sorted(shapes)}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return model_dir


def ensure_demo_gguf(type_name: str = "Q8_0", show_progress: bool = True) -> Path:
    """The demo GGUF, built and converted on first use under cache_root()/demo-VERSION."""
    from quant.convert import convert_hf

    root = cache_root() / f"demo-{__version__}"
    out = root / f"localcoder-demo-{type_name}.gguf"
    hf_dir = root / "hf"
    if not hf_dir.is_dir():
        staging = root / f"hf.{os.getpid()}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        build_demo_checkpoint(staging)
        staging.replace(hf_dir)  # whole folder or nothing: an interrupted build is never reused
    if not out.is_file():
        convert_hf(hf_dir, out, type_name, show_progress=show_progress)
    return out
