"""Tokenizer metadata for the GGUF, read from tokenizer.json / tokenizer_config.json / config.json.

Mirrors llama.cpp's converter (TextModel.get_vocab_base + _set_vocab_gpt2 + gguf-py SpecialVocab, the versions in
llama-cpp-python 0.3.36) without needing transformers: the files are plain JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, TokenType

from localcoder.errors import UserError

# The Qwen2 pre-tokenizer regex (tokenizer.json of every Qwen2/2.5/3 model); llama.cpp names it "qwen2".
QWEN2_PRETOKENIZER_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_TOKEN_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-download it") from None


def detect_pre_tokenizer(tok: dict) -> str:
    """llama.cpp's pre-tokenizer name. llama.cpp hashes the token ids of a test string, which only knows published
    tokenizers; the structure of the pre-tokenizer is what actually matters, so that is what is checked."""
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    split = [s for s in steps if s.get("type") == "Split"]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    if (tok.get("model", {}).get("type") == "BPE" and len(steps) == 2 and split and byte_level
            and split[0].get("pattern", {}).get("Regex") == QWEN2_PRETOKENIZER_REGEX
            and not byte_level[0].get("use_regex", True)):
        return "qwen2"
    raise UserError("tokenizer.json is not a Qwen2-style byte-level BPE tokenizer (Split with the Qwen2 regex, then "
                    "ByteLevel); localcoder converts Qwen3-Next tokenizers only")


def _looks_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") \
        or (token.startswith("<｜") and token.endswith("｜>")) or (token.startswith("<unused") and token.endswith(">"))


def vocab_tokens(tok: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and types padded to the model's vocab_size, as TextModel.get_vocab_base builds them."""
    vocab = dict(tok["model"]["vocab"])
    added = {a["content"]: a for a in tok.get("added_tokens", [])}
    vocab.update({content: a["id"] for content, a in added.items()})
    if vocab and max(vocab.values()) >= vocab_size:
        raise UserError(f"tokenizer.json has token id {max(vocab.values())} but config.json says vocab_size "
                        f"{vocab_size}; the tokenizer does not belong to this model")
    reverse = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif token in added:
            special = added[token].get("special") or _looks_special(token)
            tokens.append(token if special else token.replace("\u2581", " "))
            types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(TokenType.NORMAL)
    return tokens, types


def _merges(tok: dict) -> list[str]:
    merges = tok.get("model", {}).get("merges") or []
    if merges and isinstance(merges[0], list):
        # transformers >= 4.45 pairs: spaces inside a part are stored shifted by 256, as gguf-py does
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges]
    return list(merges)


def _chat_template(model_dir: Path, tok_config: dict) -> str | list | None:
    jinja, as_json = model_dir / "chat_template.jinja", model_dir / "chat_template.json"
    alt = None
    if jinja.is_file():
        alt = jinja.read_text(encoding="utf-8")
        extra = sorted((model_dir / "additional_chat_templates").glob("*.jinja"))
        if extra:
            alt = [{"name": "default", "template": alt}] + [
                {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra]
    elif as_json.is_file():
        alt = _read_json(as_json).get("chat_template")
    template = tok_config.get("chat_template", alt)
    return template if isinstance(template, (str, list)) else None


def special_vocab(model_dir: Path, tok: dict) -> tuple[dict[str, int], dict[str, bool], str | list | None]:
    """(special token ids, add_*_token flags, chat template) in the order gguf-py's SpecialVocab finds them."""
    cfg_path, tc_path = model_dir / "config.json", model_dir / "tokenizer_config.json"
    tok_config = _read_json(tc_path) if tc_path.is_file() else None
    ids: dict[str, int] = {}
    add: dict[str, bool] = {}
    post = tok.get("post_processor") or {}
    for proc in post.get("processors", [post]) if post else []:
        if proc.get("type") == "ByteLevel":
            add.setdefault("bos", False)
            add.setdefault("eos", False)
    template = None
    if tok_config:
        template = _chat_template(model_dir, tok_config)
        added = tok.get("added_tokens", [])
        for typ in SPECIAL_TOKEN_TYPES:
            if isinstance(flag := tok_config.get(f"add_{typ}_token"), bool):
                add.setdefault(typ, flag)
            entry = tok_config.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if isinstance(content, str):
                tid = next((a.get("id") for a in added if a.get("content") == content), None)
                if isinstance(tid, int) and typ not in ids:
                    ids[typ] = tid
    config = _read_json(cfg_path)
    for typ in SPECIAL_TOKEN_TYPES:
        tid = config.get(f"{typ}_token_id")
        if isinstance(tid, int) and tid >= 0 and typ not in ids:
            ids[typ] = tid
    return ids, add, template


def add_vocab(writer: GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    """Write the tokenizer keys in the order llama.cpp's converter writes them."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{model_dir} has no tokenizer.json; download it with the model")
    tok = _read_json(path)
    pre = detect_pre_tokenizer(tok)
    tokens, types = vocab_tokens(tok, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges := _merges(tok):
        writer.add_token_merges(merges)
    ids, add, template = special_vocab(model_dir, tok)
    for typ, tid in ids.items():
        getattr(writer, f"add_{typ}_token_id")(tid)
    for typ, flag in add.items():
        if handler := getattr(writer, f"add_add_{typ}_token", None):
            handler(flag)
    if template is not None:
        writer.add_chat_template(template)
