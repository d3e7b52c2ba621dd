"""Qwen3-Coder tool calls: split streamed model text into content and structured calls.

The model writes calls as XML-like markup (the chat template teaches it this form):

    <tool_call>
    <function=read_file>
    <parameter=path>
    src/app.py
    </parameter>
    </function>
    </tool_call>

Text arrives a token at a time, so the parser holds back any tail that may begin an opener and never lets partial
markup into content. A value ends at `</parameter>` only when the next markup (`<parameter=` or `</function>`)
follows, so values may contain markup-like text. Values are typed by the tool's JSON schema; strings stay text.
Output that never becomes a valid call falls back to content.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from dataclasses import dataclass

OPENERS = ("<tool_call>", "<function=")
CALL_END = re.compile(r"</function>\s*</tool_call>")
BARE_END = re.compile(r"</function>(\s*</tool_call>)?")
FUNCTION = re.compile(r"<function=([^>\n]+)>")
PARAMETER = re.compile(r"<parameter=([^>\n]+)>")
VALUE_END = re.compile(r"</parameter>\s*(?=<parameter=|</function>|$)")
VALUE_END_LENIENT = re.compile(r"</parameter>|(?=<parameter=)|(?=</function>)")


@dataclass
class ToolCall:
    name: str
    arguments: dict
    id: str

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


def new_call_id(prefix: str = "call_") -> str:
    return prefix + secrets.token_hex(12)


class ToolCallParser:
    """Feed model text piece by piece; get back ("content", text) and ("tool_call", ToolCall) events in order.

    `tools`: the request's tools in OpenAI form ({"type": "function", "function": {"name", "parameters"}}) or
    None; when given, a call to a name not among them is content."""

    def __init__(self, tools: list[dict] | None = None):
        self.schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools or []}
        self.known_names = tools is not None
        self.buffer = ""
        self.in_call = False
        self.after_call = False  # whitespace between and after calls is not content

    def feed(self, text: str) -> list[tuple[str, object]]:
        self.buffer += text
        events: list[tuple[str, object]] = []
        while True:
            if self.in_call:
                end = (CALL_END if self.buffer.startswith("<tool_call>") else BARE_END).search(self.buffer)
                if not end:
                    return events
                events += self._close(self.buffer[:end.end()], strict=True)
                self.buffer = self.buffer[end.end():]
                continue
            starts = [i for i in (self.buffer.find(o) for o in OPENERS) if i >= 0]
            if starts:
                events += self._content(self.buffer[:min(starts)])
                self.buffer, self.in_call = self.buffer[min(starts):], True
                continue
            keep = _partial_opener_length(self.buffer)
            events += self._content(self.buffer[:len(self.buffer) - keep])
            self.buffer = self.buffer[len(self.buffer) - keep:]
            return events

    def finish(self) -> list[tuple[str, object]]:
        """The end of generation: an unclosed call is parsed leniently, else it is content."""
        rest, self.buffer = self.buffer, ""
        if self.in_call:
            return self._close(rest, strict=False)
        return self._content(rest)

    def _content(self, text: str) -> list[tuple[str, object]]:
        if self.after_call:
            if not text.strip():
                return []
            text, self.after_call = text.lstrip(), False
        return [("content", text)] if text else []

    def _close(self, markup: str, strict: bool) -> list[tuple[str, object]]:
        self.in_call = False
        call = self.parse_call(markup, strict)
        if call is None:
            self.after_call = False
            return self._content(markup)
        self.after_call = True
        return [("tool_call", call)]

    def parse_call(self, markup: str, strict: bool = True) -> ToolCall | None:
        """One call's markup -> ToolCall, or None when it is not a call to a known tool."""
        head = FUNCTION.search(markup)
        if not head or (self.known_names and head.group(1).strip() not in self.schemas):
            return None
        name = head.group(1).strip()
        body = markup[head.end():]
        properties = (self.schemas.get(name) or {}).get("properties") or {}
        arguments = {}
        pos = 0
        while (opener := PARAMETER.search(body, pos)) is not None:
            key = opener.group(1).strip()
            end = (VALUE_END if strict else VALUE_END_LENIENT).search(body, opener.end())
            if end is None and strict:
                return None
            stop = end.start() if end else len(body)
            raw = body[opener.end():stop]
            arguments[key] = typed_value(_strip_one_newline(raw), properties.get(key))
            pos = end.end() if end and end.end() > opener.end() else stop
        return ToolCall(name, arguments, new_call_id())


def _partial_opener_length(text: str) -> int:
    """Length of the longest tail of `text` that may begin an opener."""
    for n in range(min(len(text), max(map(len, OPENERS)) - 1), 0, -1):
        if any(o.startswith(text[-n:]) for o in OPENERS):
            return n
    return 0


def _strip_one_newline(value: str) -> str:
    value = value.removeprefix("\n")
    if value.endswith("\n"):
        value = value[:-1]
    return value


def _schema_types(schema) -> list[str]:
    if not isinstance(schema, dict):
        return []
    kind = schema.get("type")
    types = kind if isinstance(kind, list) else [kind] if kind else []
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key) or []:
            types += _schema_types(option)
    return types


def typed_value(raw: str, schema) -> object:
    """A parameter's text as the JSON type its schema asks for; the text itself when it does not convert."""
    types = _schema_types(schema)
    if not types or "string" in types and len(types) == 1:
        return raw
    text = raw.strip()
    for kind in types:
        if kind == "null" and text.lower() in ("null", "none"):
            return None
        if kind == "boolean" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind in ("integer", "number"):
            try:
                number = json.loads(text)
            except ValueError:
                try:
                    number = float(text)
                except ValueError:
                    continue
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                continue
            if kind == "integer" and isinstance(number, float) and number.is_integer():
                return int(number)
            return number
        if kind in ("object", "array"):
            wanted = dict if kind == "object" else list
            for parse in (json.loads, ast.literal_eval):
                try:
                    value = parse(text)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    continue
                if isinstance(value, wanted):
                    return value
    return raw
