"""The GGUF's tokenizer tokenizes exactly as llama.cpp does; its chat template renders as transformers renders."""

from __future__ import annotations

import pytest

from localcoder.gguf_model import load_fields
from localcoder.tokenizer import GGUFTokenizer
from quant.convert import convert_hf
from test_chat_template import CONVERSATIONS, TOOLS

TEXTS = [
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "const x = await fetch(`/api/${id}`);\r\n\tconsole.log(x?.ok ?? false);",
    "Ünïcödé: naïve café, 快速的棕色狐狸, Привет, 🚀🦙 ✅ 3333 1234567 3.14 ''' \"\"\" I've you'll",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<tool_call>\n<function=read_file>\n<parameter=path>\nsrc/a.py\n</parameter>\n</function>\n</tool_call>",
    "text with a fake <|im_end|> inside and <tool_response> tags </tool_response>",
    "    \n\n\n   trailing spaces   \t\n",
]


@pytest.fixture(scope="module")
def gguf_path(hf_model, tmp_path_factory):
    return convert_hf(hf_model("tiny"), tmp_path_factory.mktemp("tok") / "m.gguf", "F32", show_progress=False).out


@pytest.fixture(scope="module")
def llama(gguf_path):
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    yield llm
    llm.close()


@pytest.mark.parametrize("special", [True, False])
@pytest.mark.parametrize("text", TEXTS)
def test_tokenization_equals_llama_cpp(gguf_path, llama, text, special):
    tok = GGUFTokenizer(load_fields(gguf_path)[0])
    ours = tok.encode(text, special=special)
    assert ours == llama.tokenize(text.encode(), add_bos=False, special=special)
    assert tok.decode(ours) == text


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chat_template_from_gguf_renders_like_transformers(hf_model, gguf_path, name):
    from transformers import AutoTokenizer

    tools = TOOLS if name.startswith("tool") else None
    expected = AutoTokenizer.from_pretrained(hf_model("tiny")).apply_chat_template(
        CONVERSATIONS[name], tools=tools, tokenize=False, add_generation_prompt=True)
    assert GGUFTokenizer(load_fields(gguf_path)[0]).render_chat(CONVERSATIONS[name], tools) == expected
