"""Build an offline byte-level BPE tokenizer in the Qwen2 style (the demo model's and the tests' tokenizer).

Same pipeline as Qwen's tokenizer.json: NFC, the Qwen2 split regex, byte-level BPE, the ChatML and tool-call
added tokens. Training is deterministic for a given corpus, so the demo model is reproducible.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from quant.vocab import QWEN2_PRETOKENIZER_REGEX

CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen marks the tool-call tags as added but not special (they are text the model writes).
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
CHAT_TEMPLATE_PATH = Path(__file__).parent / "data" / "qwen3_coder_chat_template.jinja"


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a Qwen2-style byte-level BPE of about `vocab_size` regular tokens, then add the special tokens."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZER_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, min_frequency=2)
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    return tok


def write_tokenizer(tok: Tokenizer, model_dir: Path, max_length: int) -> None:
    """Write tokenizer.json and a tokenizer_config.json with the Qwen3-Coder chat template."""
    tok.save(str(model_dir / "tokenizer.json"))
    decoder = {str(tok.token_to_id(t)): {"content": t, "special": t in CONTROL_TOKENS, "normalized": False,
                                         "lstrip": False, "rstrip": False, "single_word": False}
               for t in CONTROL_TOKENS + TOOL_TOKENS}
    config = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": decoder,
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "errors": "replace", "model_max_length": max_length, "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE_PATH.read_text(encoding="utf-8"),
    }
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
