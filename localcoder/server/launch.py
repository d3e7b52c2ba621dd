"""Start the server: load the model, print ready-to-paste client settings, serve with uvicorn."""

from __future__ import annotations

from pathlib import Path

from localcoder.errors import UserError

GIB = 1 << 30


def load_engine(model_path: Path | None, n_ctx: int | None, threads: int | None, cache_gib: float, max_queue: int,
                n_batch: int = 512, clamp_ctx: bool = False, engine: str = "localcoder", n_gpu_layers: int = 0,
                backend: str = "cpu", backend_options: dict | None = None):
    """(Engine, model name) for a GGUF, or for the embedded demo model when model_path is None. clamp_ctx: a
    context longer than the model was trained for (a profile's) becomes the trained length. engine: "localcoder"
    (localcoder's runtime on `backend`, cpu, cuda or hybrid, with Model.load's `backend_options`: gpus,
    expert_cache_gib, embedding_in_ram) or "llamacpp" (llama-cpp-python computes the logits; n_gpu_layers as
    llama.cpp's -ngl)."""
    from localcoder.gguf_model import load_fields
    from localcoder.prefix_cache import PrefixCache
    from localcoder.server.engine import Engine

    if model_path is None:
        from localcoder.demo import ensure_demo_gguf
        model_path = ensure_demo_gguf()
    if cache_gib < 0:
        raise UserError("--cache-ram must be >= 0 GiB")
    if clamp_ctx and n_ctx is not None:
        n_ctx = min(n_ctx, int(load_fields(Path(model_path))[0].get("qwen3next.context_length", n_ctx)))
    gpu = {"n_gpu_layers": n_gpu_layers} if engine == "llamacpp" else dict(backend_options or {})
    model = load_model(model_path, engine, backend, n_ctx=n_ctx, n_batch=n_batch, threads=threads, **gpu)
    return Engine(model, PrefixCache(int(cache_gib * GIB)), max_queue=max_queue), Path(model_path).stem


def load_model(path: Path, engine: str = "localcoder", backend: str = "cpu", **options):
    """A Model (localcoder's runtime on `backend`: cpu, cuda or hybrid) or a LlamaCppModel for `path`."""
    if engine == "llamacpp":
        from localcoder.llamacpp_engine import LlamaCppModel
        return LlamaCppModel.load(path, **options)
    if engine != "localcoder":
        from localcoder.profiles import ENGINES
        raise UserError(f"--engine {engine!r}: choose {' or '.join(ENGINES)}")
    from localcoder.model import Model
    return Model.load(path, backend=backend, **options)


def apply_profile(name: str, model_path: Path | None):
    """(Profile, why it was chosen) for `serve --profile NAME|auto`, refused with a UserError when this build or
    this machine cannot run it."""
    from localcoder.bench import auto_profile
    from localcoder.costmodel import unmet_requirements
    from localcoder.hardware import probe
    from localcoder.profiles import get_profile, not_built

    machine = probe(measure=False)
    if name == "auto":
        return auto_profile(model_path, machine)
    profile = get_profile(name)
    reason = not_built(profile) or unmet_requirements(profile, machine)
    if reason:
        raise UserError(f"profile {profile.name} cannot run here: {reason}; try --profile auto or cpu-only")
    return profile, "chosen with --profile"


def client_settings(url: str, model_name: str, api_key: str | None) -> str:
    """What to paste into Claude Code, OpenAI-compatible agents and curl to use this server."""
    key = api_key or "local"
    auth = f' -H "Authorization: Bearer {api_key}"' if api_key else ""
    return "\n".join([
        f"localcoder is serving {model_name} at {url}",
        "",
        "Claude Code (Anthropic API):",
        f"  export ANTHROPIC_BASE_URL={url} ANTHROPIC_AUTH_TOKEN={key} ANTHROPIC_MODEL={model_name}",
        "Qwen Code, Cline, OpenCode and other OpenAI-compatible agents:",
        f"  export OPENAI_BASE_URL={url}/v1 OPENAI_API_KEY={key} OPENAI_MODEL={model_name}",
        "curl:",
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\",
        f"    -d '{{\"model\": \"{model_name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hello\"}}]}}'",
    ])


def serve_forever(engine, model_name: str, host: str, port: int, api_key: str | None, max_body: int, echo) -> None:
    """Serve until Ctrl-C; `echo(text)` prints the client settings once the port is open."""
    import uvicorn

    from localcoder.server.app import create_app

    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a TCP port (1..65535)")
    app = create_app(engine, model_name, api_key, max_body)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    shown = f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    original = server.startup

    async def startup(sockets=None):  # uvicorn has no "listening" hook: print once its startup returns
        await original(sockets)
        if server.started:
            echo(client_settings(shown, model_name, api_key))

    server.startup = startup
    try:
        server.run()
    except SystemExit:
        raise UserError(f"could not listen on {host}:{port} (in use, or not allowed); pick another --port") from None
    finally:
        engine.close()


def demo_request(url: str, model_name: str, prompt: str, max_tokens: int = 32) -> dict:
    """One real chat request through the HTTP API (what `localcoder demo` shows)."""
    import httpx

    body = {"model": model_name, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    response.raise_for_status()
    return response.json()
