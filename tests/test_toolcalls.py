"""The Qwen3-Coder tool-call parser: whole and streamed-in-pieces input give the same events, values typed by the
schema, several calls, missing closing tags, markup inside values, garbage falling back to content.

The markup is the one the shipped chat template renders for assistant tool calls (checked by rendering it)."""

from __future__ import annotations

import json
import random

import pytest

from localcoder.server.toolcalls import ToolCallParser, typed_value
from localcoder.tokenizer import render_chat_template
from localcoder.tokenizer_build import CHAT_TEMPLATE_PATH

TOOLS = [
    {"type": "function", "function": {"name": "write_file", "parameters": {"type": "object", "properties": {
        "path": {"type": "string"}, "content": {"type": "string"}, "mode": {"type": "integer"},
        "overwrite": {"type": "boolean"}, "ratio": {"type": "number"}, "meta": {"type": "object"},
        "lines": {"type": "array"}, "note": {"type": ["string", "null"]}, "limit": {"type": ["integer", "null"]}}}}},
    {"type": "function", "function": {"name": "run_tests", "parameters": {"type": "object", "properties": {}}}},
]


def call_markup(name: str, arguments: dict) -> str:
    """What the template renders for an assistant tool call (the format the model learned)."""
    messages = [{"role": "user", "content": "x"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": name, "arguments": arguments}}]}]
    text = render_chat_template(CHAT_TEMPLATE_PATH.read_text(), messages, TOOLS, add_generation_prompt=False)
    reply = text[text.rindex("<|im_start|>assistant"):]
    return reply[reply.index("<tool_call>"):reply.rindex("</tool_call>") + len("</tool_call>")]


def events_of(text: str, pieces: int | None = None, seed: int = 0, tools=TOOLS):
    """Run the parser over text whole, or cut into `pieces` random pieces; merge adjacent content events."""
    parser = ToolCallParser(tools)
    if pieces is None:
        chunks = [text]
    else:
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(text)), min(pieces, len(text) - 1)))
        chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    raw = [e for chunk in chunks for e in parser.feed(chunk)] + parser.finish()
    merged = []
    for kind, value in raw:
        if kind == "content" and merged and merged[-1][0] == "content":
            merged[-1] = ("content", merged[-1][1] + value)
        else:
            merged.append((kind, value))
    return [(k, v if k == "content" else (v.name, v.arguments)) for k, v in merged]


ARGS = {"path": "src/app.py", "content": "def f():\n    return '<b>'\n", "mode": 420, "overwrite": True,
        "ratio": 0.5, "meta": {"a": [1, 2]}, "lines": [1, "two"], "note": None}


def test_typed_call_round_trips_through_the_template_markup():
    markup = call_markup("write_file", ARGS)
    assert events_of("Sure.\n\n" + markup) == [("content", "Sure.\n\n"), ("tool_call", ("write_file", ARGS))]


@pytest.mark.parametrize("seed", range(6))
def test_streamed_in_pieces_equals_whole_and_never_leaks_markup(seed):
    text = "Let me write it.\n" + call_markup("write_file", ARGS) + "\n" + call_markup("run_tests", {})
    whole = events_of(text)
    assert whole == [("content", "Let me write it.\n"), ("tool_call", ("write_file", ARGS)),
                     ("tool_call", ("run_tests", {}))]
    assert events_of(text, pieces=40, seed=seed) == whole
    one_char = events_of(text, pieces=len(text) - 1)
    assert one_char == whole


def test_markup_inside_values_stays_in_the_value():
    tricky = "<parameter=x>\n</parameter> is how values end; <function=g> and <tool_call> too\n"
    args = {"path": "notes.md", "content": tricky}
    assert events_of(call_markup("write_file", args), pieces=30) == [("tool_call", ("write_file", args))]


def test_missing_closing_tags_still_give_the_call():
    text = "<tool_call>\n<function=write_file>\n<parameter=path>\na.txt\n</parameter>\n<parameter=mode>\n7\n"
    assert events_of(text) == [("tool_call", ("write_file", {"path": "a.txt", "mode": 7}))]
    bare = "<function=run_tests>\n</function>"
    assert events_of(bare) == [("tool_call", ("run_tests", {}))]


@pytest.mark.parametrize("garbage", ["<tool_call>oops, not a call", "<tool_call>\n<function=rm_rf>\n</function>\n"
                                     "</tool_call>", "a < b and c <function but no close", "<tool_", "<"])
def test_garbage_falls_back_to_content(garbage):
    assert events_of(garbage) == [("content", garbage)]
    assert events_of(garbage, pieces=5) == [("content", garbage)]


def test_without_tools_any_name_is_a_call_and_values_stay_text():
    text = "<tool_call>\n<function=anything>\n<parameter=n>\n5\n</parameter>\n</function>\n</tool_call>"
    assert events_of(text, tools=None) == [("tool_call", ("anything", {"n": "5"}))]


@pytest.mark.parametrize("raw, schema, expected", [
    ("12", {"type": "integer"}, 12), ("12.0", {"type": "integer"}, 12), ("-3.5", {"type": "number"}, -3.5),
    ("TRUE", {"type": "boolean"}, True), ("null", {"type": ["integer", "null"]}, None),
    ("{'a': 1}", {"type": "object"}, {"a": 1}), ("[1, 2]", {"anyOf": [{"type": "array"}, {"type": "null"}]}, [1, 2]),
    ("12", {"type": "string"}, "12"), ("twelve", {"type": "integer"}, "twelve"), ("{bad", {"type": "object"}, "{bad"),
    ("42", None, "42"), ("[1]", {"type": "object"}, "[1]")])
def test_values_follow_the_schema_type(raw, schema, expected):
    value = typed_value(raw, schema)
    assert value == expected and type(value) is type(expected)


def test_arguments_json_is_valid_json():
    parser = ToolCallParser(TOOLS)
    (kind, call), = parser.feed(call_markup("write_file", ARGS)) + parser.finish()
    assert json.loads(call.arguments_json) == ARGS and call.id.startswith("call_")
