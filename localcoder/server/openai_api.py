"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import json
import time
from typing import Literal, Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from localcoder.server.toolcalls import new_call_id
from localcoder.server.turns import (APIError, Loose, Turn, build_turn, checked_stops, raise_if_failed, run_turn,
                                     sampling_params)

MAX_TOP_LOGPROBS = 20


class ContentPart(Loose):
    type: str
    text: Optional[str] = None


class FunctionCall(Loose):
    name: str
    arguments: Union[str, dict] = "{}"


class ToolCallIn(Loose):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Loose):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCallIn]] = None
    tool_call_id: Optional[str] = None


class FunctionDef(Loose):
    name: str = Field(min_length=1, max_length=256)
    description: Optional[str] = None
    parameters: Optional[dict] = None


class ToolDef(Loose):
    type: Literal["function"]
    function: FunctionDef


class NamedChoiceFunction(Loose):
    name: str


class NamedChoice(Loose):
    type: Literal["function"]
    function: NamedChoiceFunction


class StreamOptions(Loose):
    include_usage: bool = False


class ResponseFormat(Loose):
    type: Literal["text", "json_object", "json_schema"]


class SamplingFields(Loose):
    model: Optional[str] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    top_k: Optional[int] = Field(None, ge=-1)
    min_p: Optional[float] = Field(None, ge=0, lt=1)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    repetition_penalty: Optional[float] = Field(None, gt=0)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None

    def sampling(self):
        return sampling_params(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                               presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                               repetition_penalty=self.repetition_penalty, seed=self.seed)

    def stops(self) -> list[str]:
        if self.n != 1:
            raise APIError(400, "only n=1 is supported", param="n")
        return checked_stops([self.stop] if isinstance(self.stop, str) else list(self.stop or []), "stop")


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
    tools: Optional[list[ToolDef]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedChoice, None] = None
    parallel_tool_calls: bool = True
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: Optional[ResponseFormat] = None

    def tool_dicts(self) -> list[dict] | None:
        """The tools as plain dicts (what the chat template and the tool-call parser read)."""
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int]]
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False


def template_messages(messages: list[ChatMessage]) -> list[dict]:
    """OpenAI messages -> what the chat template reads (developer is system; text parts joined; tool-call
    arguments as mappings)."""
    out = []
    for m in messages:
        entry = {"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)}
        if m.tool_calls:
            entry["tool_calls"] = [{"type": "function", "id": c.id, "function": {
                "name": c.function.name, "arguments": _arguments(c.function.arguments)}} for c in m.tool_calls]
        if m.tool_call_id:
            entry["tool_call_id"] = m.tool_call_id
        out.append(entry)
    return out


def _text(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    for part in content:
        if part.type not in ("text", "input_text"):
            raise APIError(400, f"content parts of type {part.type!r} are not supported (text only)", param="messages")
    return "\n".join(part.text or "" for part in content)


def _arguments(arguments) -> dict:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        raise APIError(400, "a tool call's function.arguments is not valid JSON", param="messages") from None
    if not isinstance(value, dict):
        raise APIError(400, "a tool call's function.arguments must be a JSON object", param="messages")
    return value


def tool_mode(choice) -> str:
    if choice is None:
        return "auto"
    return choice if isinstance(choice, str) else f"function:{choice.function.name}"


def usage(outcome) -> dict:
    return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens}}


def logprob_entries(tokenizer, step, top: int | None) -> list[dict]:
    if step is None or step.logprob is None:
        return []
    text = tokenizer.decode([step.token])
    alternatives = [{"token": tokenizer.decode([i]), "logprob": lp, "bytes": list(tokenizer.decode([i]).encode())}
                    for i, lp in (step.top_logprobs or [])][:top or 0]
    return [{"token": text, "logprob": step.logprob, "bytes": list(text.encode()), "top_logprobs": alternatives}]


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def router(state) -> APIRouter:
    """The OpenAI routes over `state` (engine, model name)."""
    api = APIRouter()

    @api.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.started,
                                            "owned_by": "localcoder"}]}

    @api.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        if body.response_format is not None and body.response_format.type != "text":
            raise APIError(400, "response_format json_object/json_schema is not supported yet (no constrained "
                           "decoding); ask for JSON in the prompt", param="response_format")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        turn = build_turn(state.engine, template_messages(body.messages), body.tool_dicts(), tool_mode(body.tool_choice),
                          max_tokens, body.stops(), body.sampling(), parallel_tool_calls=body.parallel_tool_calls,
                          logprobs=(body.top_logprobs or 0) if body.logprobs else None)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream_chat(turn, request, include_usage, body.top_logprobs),
                                     media_type="text/event-stream")
        return await complete_chat(turn, request, body.top_logprobs)

    async def complete_chat(turn: Turn, request: Request, top: int | None):
        content, calls, logprobs = [], [], []
        async for kind, value, step in run_turn(state.engine, turn, request.is_disconnected):
            if kind == "content":
                content.append(value)
                logprobs += logprob_entries(state.engine.model.tokenizer, step, top)
            elif kind == "tool_call":
                calls.append({"id": value.id, "type": "function",
                              "function": {"name": value.name, "arguments": value.arguments_json}})
            else:
                outcome = value
        raise_if_failed(outcome, "server_error")
        message = {"role": "assistant", "content": "".join(content) or (None if calls else "")}
        if calls:
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "finish_reason": finish_reason(outcome, calls),
                  "logprobs": {"content": logprobs} if turn.logprobs is not None else None}
        return {"id": "chatcmpl-" + new_call_id(""), "object": "chat.completion", "created": int(time.time()),
                "model": state.model_name, "choices": [choice], "usage": usage(outcome)}

    async def stream_chat(turn: Turn, request: Request, include_usage: bool, top: int | None):
        base = {"id": "chatcmpl-" + new_call_id(""), "object": "chat.completion.chunk", "created": int(time.time()),
                "model": state.model_name}

        def chunk(delta: dict, finish=None, logprobs=None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            if logprobs is not None:
                choice["logprobs"] = {"content": logprobs}
            return sse(base | {"choices": [choice]} | ({"usage": None} if include_usage else {}))

        yield chunk({"role": "assistant", "content": ""})
        calls = []
        try:
            async for kind, value, step in run_turn(state.engine, turn, request.is_disconnected):
                if kind == "content":
                    entries = logprob_entries(state.engine.model.tokenizer, step, top)
                    if value or entries:
                        yield chunk({"content": value}, logprobs=entries if turn.logprobs is not None else None)
                elif kind == "tool_call":
                    calls.append(value)
                    yield chunk({"tool_calls": [{"index": len(calls) - 1, "id": value.id, "type": "function",
                                                 "function": {"name": value.name,
                                                              "arguments": value.arguments_json}}]})
                else:
                    outcome = value
        except APIError as e:
            yield sse(error_body(e.message, e.kind, e.param, e.code))
            return
        if outcome.finish_reason == "error":
            yield sse(error_body(outcome.error, "server_error"))
            return
        yield chunk({}, finish_reason(outcome, calls))
        if include_usage:
            yield sse(base | {"choices": [], "usage": usage(outcome)})
        yield "data: [DONE]\n\n"

    @api.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "only one prompt per request is supported", param="prompt")
            prompt = prompt[0]
        tokenizer = state.engine.model.tokenizer
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        vocab = state.engine.model.args.vocab
        if not ids or min(ids) < 0 or max(ids) >= vocab:
            raise APIError(400, f"the prompt must be non-empty text or token ids in 0..{vocab - 1}", param="prompt")
        turn = build_turn(state.engine, None, None, "none", body.max_tokens if body.max_tokens is not None else 16,
                          body.stops(), body.sampling(), raw_prompt=ids)
        echo = tokenizer.decode(ids) if body.echo else ""
        base = {"id": "cmpl-" + new_call_id(""), "object": "text_completion", "created": int(time.time()),
                "model": state.model_name}
        if body.stream:
            async def stream():
                if echo:
                    yield sse(base | {"choices": [{"index": 0, "text": echo, "finish_reason": None}]})
                async for kind, value, _ in run_turn(state.engine, turn, request.is_disconnected):
                    if kind == "content" and value:
                        yield sse(base | {"choices": [{"index": 0, "text": value, "finish_reason": None}]})
                    elif kind == "done":
                        if value.finish_reason == "error":
                            yield sse(error_body(value.error, "server_error"))
                            return
                        yield sse(base | {"choices": [{"index": 0, "text": "", "finish_reason":
                                                       finish_reason(value, [])}], "usage": usage(value)})
                yield "data: [DONE]\n\n"
            return StreamingResponse(stream(), media_type="text/event-stream")
        text = []
        async for kind, value, _ in run_turn(state.engine, turn, request.is_disconnected):
            if kind == "content":
                text.append(value)
            elif kind == "done":
                outcome = value
        raise_if_failed(outcome, "server_error")
        return {**base, "choices": [{"index": 0, "text": echo + "".join(text), "logprobs": None,
                                     "finish_reason": finish_reason(outcome, [])}], "usage": usage(outcome)}

    return api


def finish_reason(outcome, calls) -> str:
    if calls:
        return "tool_calls"
    return "length" if outcome.finish_reason == "length" else "stop"


