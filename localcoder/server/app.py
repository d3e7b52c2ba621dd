"""The FastAPI app: OpenAI and Anthropic routes, API key, request-size bound, errors in each API's format, /health,
/metrics (Prometheus text) and /apply-template; `run_server` serves it with uvicorn, `BackgroundServer` in a thread."""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from localcoder.server import anthropic_api, openai_api
from localcoder.server.engine import Engine
from localcoder.server.turns import APIError, render

DEFAULT_MAX_BODY = 32 << 20  # a 256K-token conversation is a few MB of JSON
ANTHROPIC_KINDS = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                   413: "request_too_large", 503: "overloaded_error"}


@dataclass
class ServerState:
    engine: Engine
    model_name: str
    api_key: str | None = None
    started: int = 0


def is_anthropic(request: Request) -> bool:
    return request.url.path.startswith("/v1/messages")


def error_response(request: Request, status: int, message: str, kind: str | None = None, param=None, code=None):
    """An error body in the format of the API the client called."""
    if is_anthropic(request):
        kind = ANTHROPIC_KINDS.get(status, "api_error") if kind in (None, "invalid_request_error") else kind
        return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status_code=status)
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(openai_api.error_body(message, kind, param, code), status_code=status)


def describe_validation(errors) -> str:
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    return f"{where}: {first.get('msg', 'invalid value')}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")


class BodyLimit:
    """ASGI middleware: a 413 for bodies over `limit` bytes, by Content-Length or while reading."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = length is not None and length.isdigit() and int(length) > self.limit
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, "body too large")
            return message

        if too_big:
            return await self._refuse(scope, send)
        try:
            await self.app(scope, limited_receive, send)
        except HTTPException as e:
            if e.status_code != 413:
                raise
            await self._refuse(scope, send)

    async def _refuse(self, scope, send):
        request = Request(scope)
        response = error_response(request, 413, f"the request body exceeds {self.limit} bytes (--max-body)",
                                  code="request_too_large")
        await response(scope, None, send)


def create_app(engine: Engine, model_name: str, api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY) -> FastAPI:
    """The server's app over a running Engine."""
    state = ServerState(engine, model_name, api_key, int(time.time()))
    app = FastAPI(title="localcoder", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.localcoder = state

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if state.api_key and request.url.path != "/health":
            bearer = request.headers.get("authorization", "")
            given = bearer[7:] if bearer.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), state.api_key.encode()):
                return error_response(request, 401, "invalid or missing API key (Authorization: Bearer KEY or "
                                      "x-api-key: KEY)", code="invalid_api_key")
        return await call_next(request)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return error_response(request, e.status, e.message, e.kind, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return error_response(request, 400, describe_validation(e.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error_response(request, e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        return error_response(request, 500, f"internal error: {type(e).__name__}: {e}")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": state.model_name, "waiting": engine.waiting,
                "busy": engine.running is not None}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(prometheus_text(engine), media_type="text/plain; version=0.0.4")

    @app.post("/apply-template")
    async def apply_template(body: openai_api.ChatRequest):
        """The prompt a chat request renders to (llama.cpp's server has the same endpoint)."""
        tools = body.tool_dicts() if openai_api.tool_mode(body.tool_choice) != "none" else None
        return {"prompt": render(engine, openai_api.template_messages(body.messages), tools)}

    app.include_router(openai_api.router(state))
    app.include_router(anthropic_api.router(state))
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    return app


def prometheus_text(engine: Engine) -> str:
    c, cache = engine.counters, engine.session.prefix_cache
    rows = [("requests_total", "counter", "requests run (or skipped, cancelled before running)", c.requests),
            ("requests_failed_total", "counter", "requests that ended in an error", c.failed),
            ("requests_cancelled_total", "counter", "requests cancelled by their client", c.cancelled),
            ("prompt_tokens_total", "counter", "prompt tokens of finished requests", c.prompt_tokens),
            ("prompt_tokens_cached_total", "counter", "prompt tokens reused from the prefix cache", c.cached_tokens),
            ("generated_tokens_total", "counter", "tokens generated", c.generated_tokens),
            ("prefill_seconds_total", "counter", "time spent on prompts", c.prefill_seconds),
            ("decode_seconds_total", "counter", "time spent generating", c.decode_seconds),
            ("prefill_tokens_per_second", "gauge", "prompt speed of the last request", c.last_prefill_tps),
            ("decode_tokens_per_second", "gauge", "generation speed of the last request", c.last_decode_tps),
            ("queue_waiting", "gauge", "requests waiting for the model", engine.waiting),
            ("busy", "gauge", "1 while a request runs", int(engine.running is not None)),
            ("prefix_cache_lookups_total", "counter", "prefix cache lookups", cache.stats.lookups),
            ("prefix_cache_hits_total", "counter", "lookups that found a reusable prefix", cache.stats.hits),
            ("prefix_cache_snapshots", "gauge", "snapshots held", len(cache.entries)),
            ("prefix_cache_bytes", "gauge", "memory held by snapshots", cache.nbytes),
            ("prefix_cache_evictions_total", "counter", "snapshots evicted for the budget", cache.stats.evictions)]
    lines = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP localcoder_{name} {help_text}", f"# TYPE localcoder_{name} {kind}",
                  f"localcoder_{name} {value}"]
    return "\n".join(lines + expert_cache_lines(engine.model)) + "\n"


def expert_cache_lines(model) -> list[str]:
    """The hybrid runtime's expert cache per layer (hits, misses, admissions, evictions) and its miss paths."""
    cache = getattr(model, "cache", None)
    if cache is None:
        return []
    lines = []
    for field in ("hits", "misses", "admissions", "evictions"):
        name = f"localcoder_expert_cache_{field}_total"
        lines += [f"# HELP {name} routed-expert lookups per layer: {field}", f"# TYPE {name} counter"]
        lines += [f'{name}{{layer="{layer}"}} {getattr(stats, field)}' for layer, stats in list(cache.stats.items())]
    for name, help_text, value in [
            ("expert_cache_slots", "expert slots on the device", cache.n_slots),
            ("expert_cache_copied_bytes_total", "bytes copied into slots", model.slots.bytes_copied),
            ("expert_misses_cpu_total", "missed experts computed on the CPU", model.misses.cpu_experts),
            ("expert_misses_streamed_total", "missed experts streamed to the device", model.misses.streamed_experts),
            ("expert_misses_cpu_seconds_total", "time computing missed experts on the CPU", model.misses.cpu_seconds),
            ("expert_copy_seconds_total", "time copying experts to the device", model.misses.copy_seconds)]:
        kind = "gauge" if name == "expert_cache_slots" else "counter"
        lines += [f"# HELP localcoder_{name} {help_text}", f"# TYPE localcoder_{name} {kind}",
                  f"localcoder_{name} {value}"]
    return lines


class BackgroundServer:
    """uvicorn serving `app` on a thread (tests, the demo): `with BackgroundServer(app) as url: ...`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


