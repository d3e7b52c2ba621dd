"""The tokenizer and chat template stored in a Qwen3-Next GGUF, as llama.cpp uses them.

Tokenization is the `tokenizers` library configured from the GGUF vocabulary the way llama.cpp's "gpt2" / "qwen2"
tokenizer behaves: the Qwen2 split regex, byte-level BPE with the stored merges, no normalizer, user-defined tokens
(type 4, e.g. <tool_call>) always matched whole, control tokens (type 3, e.g. <|im_start|>) only when
`special=True`. The chat template is rendered with jinja2 in a sandbox set up as transformers sets it up.
"""

from __future__ import annotations

import json
from datetime import datetime

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from localcoder.errors import UserError
from quant.vocab import QWEN2_PRETOKENIZER_REGEX

CONTROL, USER_DEFINED = 3, 4


class GGUFTokenizer:
    """encode/decode with the GGUF's own vocabulary (`fields`: GGUF metadata key -> value)."""

    def __init__(self, fields: dict):
        if fields.get("tokenizer.ggml.model") != "gpt2" or fields.get("tokenizer.ggml.pre") != "qwen2":
            raise UserError("the GGUF's tokenizer is not Qwen2's byte-level BPE (tokenizer.ggml.model gpt2, pre "
                            f"qwen2); found {fields.get('tokenizer.ggml.model')!r}/{fields.get('tokenizer.ggml.pre')!r}")
        tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
        merges = [tuple(m.split(" ", 1)) for m in fields.get("tokenizer.ggml.merges", [])]
        self.tokenizer = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
        self.tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZER_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
        self.tokenizer.decoder = decoders.ByteLevel()
        self.tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                           for t, ty in zip(tokens, types) if ty == CONTROL])
        self.tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                                   for t, ty in zip(tokens, types) if ty == USER_DEFINED])
        self.eos_id = fields.get("tokenizer.ggml.eos_token_id")
        self.chat_template = fields.get("tokenizer.chat_template")

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of `text`; with special=False, control-token text such as <|im_end|> is plain text."""
        self.tokenizer.encode_special_tokens = not special
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None,
                    add_generation_prompt: bool = True, **extra) -> str:
        """The prompt for `messages` (and `tools`) by the GGUF's chat template."""
        if not self.chat_template:
            raise UserError("the GGUF has no tokenizer.chat_template; re-convert it with its tokenizer_config.json")
        return render_chat_template(self.chat_template, messages, tools, add_generation_prompt, **extra)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson escapes HTML characters; chat templates expect plain JSON (as in transformers)
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str):
    raise UserError(f"the chat template refused the conversation: {message}")


def _environment():
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env


def render_chat_template(template: str, messages: list[dict], tools: list[dict] | None = None,
                         add_generation_prompt: bool = True, **extra) -> str:
    """Render a Hugging Face chat template the way transformers' apply_chat_template(tokenize=False) does."""
    from jinja2 import TemplateError

    try:
        return _environment().from_string(template).render(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **extra)
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:  # a message the template can't read
        raise UserError(f"the chat template failed: {e}") from None
