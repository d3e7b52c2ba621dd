"""The chat template localcoder ships renders exactly what llama.cpp's Qwen3-Coder template renders.

Both are rendered by transformers' apply_chat_template (the renderer HF users get) on conversations with a system
prompt, tools, assistant tool calls (string, number, object and list arguments), consecutive tool results and a
generation prompt.
"""

from __future__ import annotations

import pytest

from conftest import LLAMA_CONVERTER

TOOLS = [
    {"type": "function", "function": {
        "name": "read_file", "description": "  Read a file from the workspace.  ",
        "parameters": {"type": "object", "required": ["path"], "properties": {
            "path": {"type": "string", "description": "Path relative to the repository root"},
            "max_lines": {"type": "integer", "minimum": 1},
            "encoding": {"type": "string", "enum": ["utf-8", "latin-1"]}}}}},
    {"type": "function", "function": {"name": "run_tests", "parameters": {"type": "object", "properties": {}}}},
]
CALL = {"role": "assistant", "content": "Let me look.", "tool_calls": [
    {"type": "function", "function": {"name": "read_file",
                                      "arguments": {"path": "src/app.py", "max_lines": 40,
                                                    "options": {"strip": True}, "ranges": [[1, 5], [9, 12]]}}},
    {"type": "function", "function": {"name": "run_tests", "arguments": {}}}]}
CONVERSATIONS = {
    "plain": [{"role": "user", "content": "Write a function that reverses a list."}],
    "system": [{"role": "system", "content": "You are a careful engineer."},
               {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
               {"role": "user", "content": "Explain <tool_call> tags."}],
    "tools": [{"role": "user", "content": "What does app.py do?"}],
    "tool_round_trip": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Check app.py."},
                        CALL, {"role": "tool", "content": "def main():\n    print('hi')"},
                        {"role": "tool", "content": "3 passed"}, {"role": "user", "content": "And now?"}],
}


@pytest.fixture(scope="module")
def tokenizer(hf_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_model("tiny"))


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_renders_like_llama_cpp_qwen3_coder_template(tokenizer, name):
    reference = (LLAMA_CONVERTER / "models" / "templates" / "Qwen3-Coder.jinja").read_text()
    tools = TOOLS if name.startswith("tool") else None
    kwargs = dict(tools=tools, tokenize=False, add_generation_prompt=True)
    ours = tokenizer.apply_chat_template(CONVERSATIONS[name], **kwargs)
    theirs = tokenizer.apply_chat_template(CONVERSATIONS[name], chat_template=reference, **kwargs)
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\n")
    if tools:
        assert "<tools>" in ours and "<name>read_file</name>" in ours
