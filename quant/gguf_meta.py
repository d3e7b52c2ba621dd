"""Architecture and general.* metadata of a Qwen3-Next GGUF, in the order llama.cpp's converter writes them."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
from gguf import GGUFWriter, LlamaFileType

from quant.hfconfig import Qwen3NextConfig

ARCH = "qwen3next"
# llama.cpp's converter reads `full_attention_interval` from AutoConfig.to_dict(), which never keeps it, so it
# always writes 4; `recurrent_layers` (also written) is what loaders use.
WRITTEN_FULL_ATTENTION_INTERVAL = 4


def add_general(writer: GGUFWriter, model_dir: Path) -> None:
    """general.type, sampling defaults, name, size label, model card fields: gguf-py's Metadata heuristics."""
    total, shared, expert, n_expert = writer.get_total_parameter_count()
    meta = gguf.Metadata.load(None, model_dir, None, total)
    gen_config = model_dir / "generation_config.json"
    if meta.sampling_penalty_repeat is None and gen_config.is_file():
        # the converter's newer gguf-py also reads HF's name for it
        meta.sampling_penalty_repeat = json.loads(gen_config.read_text()).get("repetition_penalty")
    if meta.name is None:
        meta.name = model_dir.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)


def add_model_params(writer: GGUFWriter, cfg: Qwen3NextConfig, n_mtp: int, file_type: LlamaFileType) -> None:
    """The `qwen3next.*` keys (reference/qwen3next.md 2.7) and general.file_type / quantization_version."""
    hp = cfg.hparams
    writer.add_block_count(cfg.num_hidden_layers + n_mtp)
    writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    writer.add_expert_count(cfg.num_experts)
    writer.add_expert_used_count(cfg.top_k)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_file_type(file_type)
    writer.add_expert_feed_forward_length(cfg.expert_ffn)
    writer.add_expert_shared_feed_forward_length(cfg.shared_ffn)
    if n_mtp:
        writer.add_nextn_predict_layers(n_mtp)
    writer.add_ssm_conv_kernel(cfg.conv_kernel)
    writer.add_ssm_state_size(cfg.dk)
    writer.add_ssm_group_count(cfg.nk)
    writer.add_ssm_time_step_rank(cfg.nv)
    writer.add_ssm_inner_size(cfg.dv * cfg.nv)
    # PyPI gguf 0.19.0 has no add_recurrent_layers; the key is written by hand (True = Gated DeltaNet layer).
    recurrent = [t == "linear_attention" for t in cfg.layer_types] + [False] * n_mtp
    writer.add_array(f"{ARCH}.attention.recurrent_layers", recurrent)
    writer.add_full_attention_interval(WRITTEN_FULL_ATTENTION_INTERVAL)
    writer.add_rope_dimension_count(cfg.rope_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
