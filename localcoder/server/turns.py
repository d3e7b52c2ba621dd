"""What the OpenAI and Anthropic endpoints share: build a prompt from chat messages and tools, run it on the engine,
and turn the model's text into content and tool-call events."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from localcoder.errors import UserError
from localcoder.sampling import SamplingParams
from localcoder.server.engine import Engine, Job, Outcome, events
from localcoder.server.toolcalls import ToolCallParser


class APIError(Exception):
    """An HTTP error with a message for the client, rendered in the format of the API that was called."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


MAX_STOP = 16


class Loose(BaseModel):
    """Request models of both APIs: fields this server does not use are accepted and ignored (clients send many)."""

    model_config = ConfigDict(extra="allow")


def checked_stops(stops: list[str], param: str) -> list[str]:
    """The non-empty stop strings; too many is a 400."""
    if len(stops) > MAX_STOP:
        raise APIError(400, f"{param}: at most {MAX_STOP} strings", param=param)
    return [s for s in stops if s]


def raise_if_failed(outcome: Outcome, kind: str) -> None:
    """A 500 (error type `kind`) when the generation behind a non-streaming response failed."""
    if outcome.finish_reason == "error":
        raise APIError(500, f"generation failed: {outcome.error}", kind=kind)


@dataclass
class Turn:
    """One request in API-neutral terms. tools: parse tool calls against these (None: no parsing);
    forced_prefix: text placed at the start of the reply (tool_choice required or named)."""

    prompt: list[int]
    max_tokens: int
    stop: list[str]
    sampling: SamplingParams
    tools: list[dict] | None = None
    forced_prefix: str = ""
    parallel_tool_calls: bool = True
    logprobs: int | None = None


def build_turn(engine: Engine, messages: list[dict] | None, tools: list[dict] | None, tool_mode: str,
               max_tokens: int | None, stop: list[str], sampling: SamplingParams, raw_prompt: list[int] | None = None,
               **options) -> Turn:
    """Render messages with the chat template (tools included unless tool_mode is "none"), force the reply to
    open a tool call for tool_mode "required" or "function:NAME", and fit max_tokens into the context."""
    model = engine.model
    prefix = ""
    if raw_prompt is not None:
        prompt = raw_prompt
    else:
        offered = tools if tools and tool_mode != "none" else None
        if tool_mode.startswith("function:"):
            name = tool_mode.split(":", 1)[1]
            if name not in {t["function"]["name"] for t in tools or []}:
                raise APIError(400, f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
            prefix = f"<tool_call>\n<function={name}>\n"
        elif tool_mode == "required" and offered:
            prefix = "<tool_call>\n<function="
        text = render(engine, messages, offered) + prefix
        prompt = model.tokenizer.encode(text)
    room = model.n_ctx - len(prompt)
    if room < 1:
        raise APIError(400, f"the prompt has {len(prompt)} tokens but the context holds {model.n_ctx}; shorten the "
                       "conversation or start the server with a larger --ctx", param="messages",
                       code="context_length_exceeded")
    if max_tokens is not None and max_tokens < 1:
        raise APIError(400, "max_tokens must be at least 1", param="max_tokens")
    limit = room if max_tokens is None else min(max_tokens, room)
    parse = tools if tools and tool_mode != "none" else None
    return Turn(prompt, limit, stop, sampling, parse, prefix, **options)


def render(engine: Engine, messages: list[dict], tools: list[dict] | None) -> str:
    try:
        return engine.model.tokenizer.render_chat(messages, tools)
    except UserError as e:
        raise APIError(400, str(e), param="messages") from None


def sampling_params(**values) -> SamplingParams:
    """SamplingParams from request fields (None: the model card's default); a bad value is a 400."""
    given = {k: v for k, v in values.items() if v is not None}
    if given.get("top_p") == 0:  # some clients mean "greedy"
        given["top_p"], given["temperature"] = 1.0, 0.0
    if given.get("top_k", 0) < 0:  # -1 means "off" for several clients
        given["top_k"] = 0
    try:
        return SamplingParams(**given)
    except UserError as e:
        raise APIError(400, str(e)) from None


async def run_turn(engine: Engine, turn: Turn, is_disconnected=None):
    """Yield ("content", text, step), ("tool_call", ToolCall, None) and finally ("done", Outcome, None); steps
    with no visible text still come as content "" (they carry logprobs)."""
    try:
        job = engine.submit(Job(turn.prompt, turn.max_tokens, turn.stop, turn.sampling, turn.logprobs))
    except UserError as e:
        raise APIError(503, str(e), kind="overloaded_error") from None
    parser = ToolCallParser(turn.tools) if turn.tools is not None else None
    calls = 0

    def convert(parsed, step):
        nonlocal calls
        out = []
        for kind, value in parsed:
            if kind == "tool_call":
                calls += 1
                if calls > 1 and not turn.parallel_tool_calls:
                    continue
            out.append((kind, value, step))
        return out

    if parser and turn.forced_prefix:
        for item in convert(parser.feed(turn.forced_prefix), None):
            yield item
    async for event in events(job, is_disconnected):
        if isinstance(event, Outcome):
            if parser:
                for item in convert(parser.finish(), None):
                    yield item
            yield "done", event, None
            return
        parsed = parser.feed(event.text) if parser else [("content", event.text)]
        items = convert(parsed, event)
        if not any(kind == "content" for kind, _, _ in items):
            items.insert(0, ("content", "", event))
        for item in items:
            yield item
