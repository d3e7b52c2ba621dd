"""Anthropic-compatible endpoints: /v1/messages (streaming and not) and /v1/messages/count_tokens."""

from __future__ import annotations

import json
from typing import Literal, Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from localcoder.server.toolcalls import ToolCall, new_call_id
from localcoder.server.turns import (APIError, Loose, Turn, build_turn, checked_stops, raise_if_failed, render,
                                     run_turn, sampling_params)


class Block(Loose):
    type: str
    text: Optional[str] = None
    id: Optional[str] = None
    name: Optional[str] = None
    input: Optional[dict] = None
    tool_use_id: Optional[str] = None
    content: Union[str, list["Block"], None] = None
    is_error: Optional[bool] = None


class Message(Loose):
    role: Literal["user", "assistant"]
    content: Union[str, list[Block]]


class Tool(Loose):
    name: str = Field(min_length=1, max_length=256)
    description: Optional[str] = None
    input_schema: Optional[dict] = None
    type: Optional[str] = None


class ToolChoice(Loose):
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = None
    disable_parallel_tool_use: bool = False


class CountRequest(Loose):
    model: Optional[str] = None
    messages: list[Message] = Field(min_length=1)
    system: Union[str, list[Block], None] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[ToolChoice] = None


class MessagesRequest(CountRequest):
    max_tokens: int
    stop_sequences: Optional[list[str]] = None
    stream: bool = False
    temperature: Optional[float] = Field(None, ge=0, le=1)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)


def openai_tools(tools: list[Tool] | None) -> list[dict] | None:
    """Anthropic tool definitions as the chat template reads them; server tools (web search...) are dropped."""
    if not tools:
        return None
    return [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                              "parameters": t.input_schema or {"type": "object", "properties": {}}}}
            for t in tools if t.type in (None, "custom")] or None


def template_messages(system, messages: list[Message]) -> list[dict]:
    """Anthropic conversation -> chat-template messages: tool_use blocks become tool_calls, tool_result blocks
    become tool messages (in order), text blocks are joined."""
    out = []
    if system:
        out.append({"role": "system", "content": system if isinstance(system, str) else _join(system)})
    for m in messages:
        blocks = [Block(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        text, calls = [], []
        for b in blocks:
            if b.type == "text":
                text.append(b.text or "")
            elif b.type == "tool_use" and m.role == "assistant":
                calls.append({"type": "function", "id": b.id, "function": {"name": b.name, "arguments": b.input or {}}})
            elif b.type == "tool_result" and m.role == "user":
                if text:
                    out.append({"role": "user", "content": "\n".join(text)})
                    text = []
                result = b.content if isinstance(b.content, str) else _join(b.content or [])
                out.append({"role": "tool", "content": ("Error: " if b.is_error else "") + result,
                            "tool_call_id": b.tool_use_id})
            elif b.type in ("thinking", "redacted_thinking"):
                continue
            else:
                raise APIError(400, f"content blocks of type {b.type!r} are not supported here", param="messages")
        if text or calls or not blocks:
            entry = {"role": m.role, "content": "\n".join(text)}
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
    return out


def _join(blocks: list[Block]) -> str:
    for b in blocks:
        if b.type != "text":
            raise APIError(400, f"content blocks of type {b.type!r} are not supported here", param="messages")
    return "\n".join(b.text or "" for b in blocks)


def tool_mode(choice: ToolChoice | None) -> str:
    if choice is None or choice.type == "auto":
        return "auto"
    return {"any": "required", "none": "none"}.get(choice.type) or f"function:{choice.name}"


def tool_use_id(call: ToolCall) -> str:
    """Anthropic's id form (toolu_...) for a parsed call."""
    return "toolu_" + call.id.removeprefix("call_")


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def stop_reason(outcome, calls) -> str:
    if calls:
        return "tool_use"
    if outcome.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if outcome.stop_sequence else "end_turn"


def usage(outcome) -> dict:
    return {"input_tokens": outcome.prompt_tokens - outcome.cached_tokens, "output_tokens": outcome.completion_tokens,
            "cache_read_input_tokens": outcome.cached_tokens, "cache_creation_input_tokens": 0}


def router(state) -> APIRouter:
    """The Anthropic routes over `state` (engine, model name)."""
    api = APIRouter()

    @api.post("/v1/messages/count_tokens")
    async def count_tokens(body: CountRequest):
        tools = openai_tools(body.tools) if tool_mode(body.tool_choice) != "none" else None
        text = render(state.engine, template_messages(body.system, body.messages), tools)
        return {"input_tokens": len(state.engine.model.tokenizer.encode(text))}

    @api.post("/v1/messages")
    async def messages(body: MessagesRequest, request: Request):
        stops = checked_stops(body.stop_sequences or [], "stop_sequences")
        sampling = sampling_params(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k)
        parallel = not (body.tool_choice and body.tool_choice.disable_parallel_tool_use)
        turn = build_turn(state.engine, template_messages(body.system, body.messages), openai_tools(body.tools),
                          tool_mode(body.tool_choice), body.max_tokens, stops, sampling, parallel_tool_calls=parallel)
        if body.stream:
            return StreamingResponse(stream(turn, request), media_type="text/event-stream")
        content, calls = [], []
        async for kind, value, _ in run_turn(state.engine, turn, request.is_disconnected):
            if kind == "content" and value:
                if content and content[-1]["type"] == "text":
                    content[-1]["text"] += value
                else:
                    content.append({"type": "text", "text": value})
            elif kind == "tool_call":
                calls.append(value)
                content.append({"type": "tool_use", "id": tool_use_id(value), "name": value.name,
                                "input": value.arguments})
            elif kind == "done":
                outcome = value
        raise_if_failed(outcome, "api_error")
        return {"id": "msg_" + new_call_id(""), "type": "message", "role": "assistant", "model": state.model_name,
                "content": content, "stop_reason": stop_reason(outcome, calls),
                "stop_sequence": outcome.stop_sequence, "usage": usage(outcome)}

    async def stream(turn: Turn, request: Request):
        message = {"id": "msg_" + new_call_id(""), "type": "message", "role": "assistant", "model": state.model_name,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": len(turn.prompt), "output_tokens": 0}}
        yield sse("message_start", {"type": "message_start", "message": message})
        index, open_text, calls = -1, False, []
        try:
            async for kind, value, _ in run_turn(state.engine, turn, request.is_disconnected):
                if kind == "content" and value:
                    if not open_text:
                        index, open_text = index + 1, True
                        yield sse("content_block_start", {"type": "content_block_start", "index": index,
                                                          "content_block": {"type": "text", "text": ""}})
                    yield sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                      "delta": {"type": "text_delta", "text": value}})
                elif kind == "tool_call":
                    if open_text:
                        yield sse("content_block_stop", {"type": "content_block_stop", "index": index})
                        open_text = False
                    index += 1
                    calls.append(value)
                    block = {"type": "tool_use", "id": tool_use_id(value), "name": value.name, "input": {}}
                    yield sse("content_block_start", {"type": "content_block_start", "index": index,
                                                      "content_block": block})
                    yield sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                        "type": "input_json_delta", "partial_json": value.arguments_json}})
                    yield sse("content_block_stop", {"type": "content_block_stop", "index": index})
                elif kind == "done":
                    outcome = value
        except APIError as e:
            yield sse("error", {"type": "error", "error": {"type": e.kind, "message": e.message}})
            return
        if outcome.finish_reason == "error":
            yield sse("error", {"type": "error", "error": {"type": "api_error", "message": outcome.error}})
            return
        if open_text:
            yield sse("content_block_stop", {"type": "content_block_stop", "index": index})
        yield sse("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": stop_reason(outcome, calls), "stop_sequence": outcome.stop_sequence}, "usage": usage(outcome)})
        yield sse("message_stop", {"type": "message_stop"})

    return api
Block.model_rebuild()
