"""The `localcoder` command: thin Typer wrappers over library calls that the tests also import."""

from __future__ import annotations

import json
import sys
from functools import wraps
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from localcoder import __version__
from localcoder.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Run Qwen3-Coder-Next on hardware you own.")
out = Console()
err = Console(stderr=True)


def user_errors(fn):
    """Turn UserError into `error: ...` on stderr with exit code 1, Ctrl-C into exit code 130, no traceback."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]: nothing was left under the output name", soft_wrap=True)
            raise typer.Exit(130)
    return wrapper


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # Windows: current RSS is the best available
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def kinds_table(info, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col, justify in (("tensor kind", "left"), ("count", "right"), ("types", "left"), ("params", "right"),
                         ("MiB", "right")):
        table.add_column(col, justify=justify)
    for k in info.kinds:
        types = ", ".join(f"{t}×{n}" if n > 1 else t for t, n in sorted(k.types.items()))
        table.add_row(k.kind, str(k.count), types, f"{k.params:,}", f"{k.nbytes / 2**20:,.1f}")
    table.add_row("[bold]total", f"[bold]{info.n_tensors}", "", f"[bold]{info.n_params:,}",
                  f"[bold]{info.file_bytes / 2**20:,.1f}")
    return table


@app.command()
@user_errors
def quantize(
    src: Optional[Path] = typer.Argument(None, help="Hugging Face model folder, a GGUF (F32/F16/BF16/Q8_0), or a "
                                                    "Hub id (owner/name, owner/name-GGUF:QUANT)."),
    type_name: str = typer.Option("Q4_K_M", "--type", "-t",
                                  help="F32, F16, BF16, Q8_0, a llama.cpp K-quant mix (Q2_K, Q3_K_S/M/L, Q4_K_S/M, "
                                       "Q5_K_S/M, Q6_K) or a recipe (--list-recipes)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output .gguf file."),
    tensor_type: list[str] = typer.Option([], "--tensor-type", help="REGEX=TYPE override (repeatable; first match "
                                                                      "wins), as llama-quantize's --tensor-type."),
    imatrix: Optional[Path] = typer.Option(None, "--imatrix", help="llama.cpp importance matrix (GGUF or .dat)."),
    allow_requantize: bool = typer.Option(False, "--allow-requantize", help="Accept an already K-quantized source."),
    no_mtp: bool = typer.Option(False, "--no-mtp", help="Drop the multi-token-prediction block (kept by default, "
                                                        "as llama.cpp does)."),
    list_recipes: bool = typer.Option(False, "--list-recipes", help="List the named recipes and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Convert or quantize Hugging Face weights (or a GGUF) to a GGUF file that llama.cpp also runs."""
    if list_recipes:
        out.print(recipes_table())
        return
    if src is None or output is None:
        raise UserError("give SRC and -o OUTPUT, e.g. localcoder quantize ./Qwen3-Coder-Next -t Q4_K_M -o model.gguf")
    from localcoder.hub import resolve_model

    src = resolve_model(str(src), show_progress=not quiet)
    result = run_quantize(src, output, type_name, tensor_type, imatrix, allow_requantize, not no_mtp, not quiet)
    if not quiet:
        from localcoder.gguf_info import read_gguf_info

        out.print(kinds_table(read_gguf_info(result.out), f"{result.out}"))
        rate = result.bytes_out / 1e9 / max(result.seconds, 1e-9)
        out.print(f"{result.n_tensors} tensors, {result.bytes_out / 1e9:.3f} GB written in {result.seconds:.1f} s "
                  f"({rate:.2f} GB/s), peak memory {_peak_rss_mb():,.0f} MiB")


def run_quantize(src: Path, output: Path, type_name: str, tensor_types: list[str], imatrix_path: Optional[Path],
                 allow_requantize: bool, keep_mtp: bool, show_progress: bool):
    """Plain conversion (HF folder to F32/F16/BF16/Q8_0, exactly llama.cpp's converter) or a K-quant mix /
    recipe (exactly llama_model_quantize)."""
    from quant.convert import convert_hf
    from quant.ggml_types import CONVERT_TYPES
    from quant.quantize_file import quantize_model
    from quant.recipes import resolve

    plain = type_name.upper() in CONVERT_TYPES and not tensor_types and imatrix_path is None
    if plain and Path(src).is_dir():
        return convert_hf(src, output, type_name, keep_mtp=keep_mtp, show_progress=show_progress)
    if type_name.upper() in ("F32", "F16", "BF16"):
        raise UserError(f"--type {type_name} converts a Hugging Face folder; {src} is not one")
    if not Path(src).exists():
        raise UserError(f"{src} does not exist")
    file_type, overrides = resolve(type_name, tensor_types)
    weights = None
    if imatrix_path is not None:
        from quant.imatrix import load_imatrix
        weights = load_imatrix(imatrix_path)
    return quantize_model(src, output, file_type, weights, overrides, allow_requantize, keep_mtp, show_progress)


def recipes_table() -> Table:
    from quant.recipes import load_recipes, model_size_bytes
    from quant.mixes import FILE_TYPES

    table = Table(title="quantization types and recipes (size of Qwen3-Coder-Next, 80B)", title_justify="left")
    for col, justify in (("--type", "left"), ("base", "left"), ("GiB", "right"), ("what", "left")):
        table.add_column(col, justify=justify)
    for name in FILE_TYPES:
        table.add_row(name, "llama.cpp", f"{model_size_bytes(name) / 2**30:.1f}", "llama.cpp's own mix")
    for recipe in load_recipes().values():
        table.add_row(recipe.name, recipe.base, f"{model_size_bytes(recipe.name) / 2**30:.1f}", recipe.description)
    return table


@app.command()
@user_errors
def inspect(
    file: Path = typer.Argument(..., help="A .gguf file (any shard of a split one), or a Hub id owner/name:QUANT."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Show a GGUF's metadata and a per-tensor-kind table of types and sizes."""
    from localcoder.gguf_info import read_gguf_info
    from localcoder.hub import resolve_model

    info = read_gguf_info(resolve_model(str(file), need_gguf=True))
    if as_json:
        sys.stdout.write(json.dumps(info.to_json(), indent=2, ensure_ascii=False) + "\n")
        return
    meta = Table(title="metadata", title_justify="left", show_header=False)
    meta.add_column("key")
    meta.add_column("value", overflow="fold")
    for key, value in info.metadata.items():
        shown = value
        if isinstance(value, list) and len(value) > 8:
            shown = f"[{len(value)} values] " + ", ".join(map(repr, value[:8])) + ", …"
        elif isinstance(value, str) and len(value) > 200:
            shown = value[:200].replace("\n", "⏎") + f"… ({len(value)} chars)"
        meta.add_row(key, str(shown))
    out.print(meta)
    out.print(kinds_table(info, "tensors"))


@app.command()
@user_errors
def pull(
    ref: str = typer.Argument(..., help="owner/name (safetensors, config and tokenizer files) or owner/name-GGUF:QUANT "
                                        "(that quant's GGUF, every shard)."),
    revision: Optional[str] = typer.Option(None, help="A branch, tag or commit (default: main)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Download a model from the Hugging Face Hub into its cache (resumable; HF_HOME, HF_TOKEN and HF_HUB_OFFLINE
    apply) and print its local path. quantize, run, serve, bench and inspect take the same ids."""
    from localcoder.hub import pull as hub_pull

    sys.stdout.write(f"{hub_pull(ref, revision, show_progress=not quiet)}\n")


@app.command()
@user_errors
def split(
    src: Path = typer.Argument(..., help="A GGUF file."),
    output: Path = typer.Option(..., "--output", "-o", help="NAME.gguf: the shards become NAME-00001-of-0000N.gguf."),
    max_size: str = typer.Option("2G", "--max-size", help="Most tensor bytes per shard (500M, 2G, ...)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Split a GGUF into shards named and tagged as llama.cpp's gguf-split does; localcoder and llama.cpp load
    them from any shard's path."""
    from localcoder.gguf_split import parse_size, split_gguf

    shards = split_gguf(src, output, parse_size(max_size), show_progress=not quiet)
    if not quiet:
        for shard in shards:
            out.print(f"{shard}  {shard.stat().st_size / 1e9:.3f} GB", highlight=False)


@app.command("legacy-layout")
@user_errors
def legacy_layout(
    src: Path = typer.Argument(..., help="A Qwen3-Next GGUF."),
    output: Path = typer.Option(..., "--output", "-o", help="The GGUF to write."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write a copy with each DeltaNet layer's attn_qkv + attn_gate fused into the legacy ssm_in tensor, the layout
    Ollama's loader expects (llama.cpp and localcoder run both)."""
    from localcoder.legacy_layout import write_legacy

    written = write_legacy(src, output, show_progress=not quiet)
    if not quiet:
        out.print(f"{written}  {written.stat().st_size / 1e9:.3f} GB", highlight=False)


@app.command()
@user_errors
def demo(
    type_name: str = typer.Option("Q8_0", "--type", "-t", help="Type of the demo GGUF."),
    generate: bool = typer.Option(True, help="Also serve it and send one chat request through the API."),
) -> None:
    """Build the embedded demo model (random weights), convert it to GGUF, show what is inside, serve it and send
    it one chat request through the OpenAI-compatible API."""
    from localcoder.demo import ensure_demo_gguf
    from localcoder.gguf_info import read_gguf_info

    path = ensure_demo_gguf(type_name)
    info = read_gguf_info(path)
    out.print(kinds_table(info, f"demo model: {path}"))
    out.print("The demo model has the Qwen3-Coder-Next architecture at a small size with random weights: it "
              "exercises every command, it does not write useful code.", soft_wrap=True)
    if generate:
        from localcoder.server.app import BackgroundServer, create_app
        from localcoder.server.launch import demo_request, load_engine

        engine, name = load_engine(path, n_ctx=4096, threads=None, cache_gib=0.25, max_queue=4)
        prompt = "Write a Python function that reverses a string."
        with BackgroundServer(create_app(engine, name)) as url:
            out.print(f"[bold]localcoder serve[/] is up at {url}; POST {url}/v1/chat/completions "
                      f"\"{prompt}\" (greedy, 32 tokens):", soft_wrap=True, highlight=False)
            reply = demo_request(url, name, prompt)
        engine.close()
        sys.stdout.write(reply["choices"][0]["message"]["content"] + "\n")
        usage = reply["usage"]
        err.print(f"[dim]finish: {reply['choices'][0]['finish_reason']} · usage: {usage['prompt_tokens']} prompt + "
                  f"{usage['completion_tokens']} completion tokens[/]", soft_wrap=True, highlight=False)


def print_plan(model) -> None:
    """The hybrid runtime's placement (what is on the GPU, in RAM, the expert cache), on stderr."""
    if not hasattr(model, "plan"):
        return
    from rich.table import Table

    table = Table(title="placement", title_justify="left", show_header=False)
    for what, where in model.plan():
        table.add_row(what, where)
    err.print(table)


def stream_completion(model, messages: list[dict], session, **options):
    """Print a completion as it is generated, then its speed on stderr; returns the Generation."""
    generation = model.generate(messages, session=session, **options)
    for step in generation:
        sys.stdout.write(step.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    fed = len(generation.prompt_tokens) - generation.reused_tokens
    err.print(f"[dim]prompt {fed} tokens ({generation.reused_tokens} reused), {generation.prompt_tokens_per_second:.1f} "
              f"tok/s · generated {len(generation.generated)} tokens, {generation.tokens_per_second:.1f} tok/s · "
              f"finish: {generation.finish_reason}[/]", soft_wrap=True, highlight=False)
    return generation


@app.command()
@user_errors
def run(
    model_path: Path = typer.Argument(..., help="A Qwen3-Next GGUF (localcoder's or llama.cpp's), or a Hub id "
                                                "owner/name:QUANT."),
    prompt: Optional[str] = typer.Argument(None, help="One prompt; without it, an interactive chat starts."),
    system: Optional[str] = typer.Option(None, help="A system message."),
    max_tokens: int = typer.Option(512, "--max-tokens", "-n", min=1, help="Most tokens generated per answer."),
    temperature: float = typer.Option(1.0, help="0 = greedy."),
    top_p: float = typer.Option(0.95, "--top-p"),
    top_k: int = typer.Option(40, "--top-k"),
    min_p: float = typer.Option(0.01, "--min-p"),
    repetition_penalty: float = typer.Option(1.0, "--repeat-penalty"),
    presence_penalty: float = typer.Option(0.0, "--presence-penalty"),
    frequency_penalty: float = typer.Option(0.0, "--frequency-penalty"),
    seed: Optional[int] = typer.Option(None, help="Random seed for reproducible sampling."),
    ctx_size: Optional[int] = typer.Option(None, "--ctx-size", "-c", min=1,
                                           help="Longest conversation in tokens (default: the model's, at most 32768)."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", min=1, help="CPU threads (default: all)."),
    engine: str = typer.Option("localcoder", "--engine", help="localcoder (CPU runtime) or llamacpp (llama-cpp-python)."),
    backend: str = typer.Option("cpu", "--backend", help="localcoder's backend: cpu; cuda (the first GPU; layers split over every GPU when one is too small); hybrid (routed experts in RAM, a VRAM cache of them)."),
    expert_cache: float = typer.Option(8.0, "--expert-cache", min=0,
                                       help="GiB of VRAM for the hybrid backend's expert cache."),
) -> None:
    """Chat with a model, streaming text, with prompt and generation speed at the end."""
    from localcoder.server.launch import load_model

    options = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                   repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                   frequency_penalty=frequency_penalty, seed=seed)
    from localcoder.hub import resolve_model

    hybrid = {"expert_cache_gib": expert_cache} if backend == "hybrid" else {}
    model = load_model(resolve_model(str(model_path), need_gguf=True), engine, backend, n_ctx=ctx_size,
                       threads=threads, **hybrid)
    print_plan(model)
    messages = [{"role": "system", "content": system}] if system else []
    session = model.new_session()
    if prompt is not None:
        stream_completion(model, messages + [{"role": "user", "content": prompt}], session, **options)
        return
    err.print("[dim]interactive chat: empty line or Ctrl-D to quit[/]")
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        messages.append({"role": "user", "content": line})
        generation = stream_completion(model, messages, session, **options)
        messages.append({"role": "assistant", "content": generation.text})


@app.command()
@user_errors
def serve(
    model_path: Optional[Path] = typer.Argument(None, help="A Qwen3-Next GGUF; without it, the embedded demo model."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8080, help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LOCALCODER_API_KEY",
                                          help="Require this key (Authorization: Bearer or x-api-key)."),
    ctx: Optional[int] = typer.Option(None, "--ctx", "--ctx-size", "-c", min=1,
                                      help="Longest conversation in tokens (default: the model's, at most 32768)."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", min=1, help="CPU threads (default: all)."),
    cache_ram: Optional[float] = typer.Option(None, "--cache-ram",
                                              help="GiB of RAM for prefix-reuse snapshots (default 2, or the profile's)."),
    max_body: int = typer.Option(32, "--max-body", min=1, help="Largest request body in MiB."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Most requests waiting; more get a 503."),
    profile: Optional[str] = typer.Option(None, "--profile", help="A hardware profile (`localcoder profiles list`), "
                                                                  "a .toml file, or auto (`localcoder bench`'s pick)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="localcoder (CPU runtime, the default) or llamacpp "
                                                                "(llama-cpp-python computes the logits)."),
    backend: str = typer.Option("cpu", "--backend", help="localcoder's backend: cpu; cuda (the first GPU; layers split over every GPU when one is too small); hybrid (routed experts in RAM, a VRAM cache of them)."),
    expert_cache: float = typer.Option(8.0, "--expert-cache", min=0,
                                       help="GiB of VRAM for the hybrid backend's expert cache."),
    router_trace: Optional[Path] = typer.Option(None, "--router-trace",
                                                help="Hybrid backend: pin the hottest experts of this saved router "
                                                     "trace, and add this run's routing to it on exit."),
) -> None:
    """Serve a model to coding agents: OpenAI (/v1/chat/completions, /v1/completions, /v1/models) and Anthropic
    (/v1/messages) APIs with streaming, tool calls and prefix reuse across turns. Options given explicitly win
    over the profile's."""
    from localcoder.hub import resolve_model
    from localcoder.profiles import backend_options
    from localcoder.server.launch import apply_profile, load_engine, serve_forever

    if model_path is not None:
        model_path = resolve_model(str(model_path), need_gguf=True)
    n_batch, n_gpu_layers = 512, 0
    backend_extra = {"expert_cache_gib": expert_cache} if backend == "hybrid" else {}
    if profile is not None:
        chosen, why = apply_profile(profile, model_path)
        err.print(f"[dim]profile {chosen.name}: {why}[/]", soft_wrap=True, highlight=False)
        ctx, threads = ctx or chosen.context, threads or chosen.threads
        cache_ram = chosen.prefix_cache_gib if cache_ram is None else cache_ram
        n_batch = chosen.batch
        engine = engine or chosen.engine
        n_gpu_layers = -1 if chosen.devices == ["gpu"] else 0  # llama.cpp: every layer on the accelerator
        if engine == "localcoder" and backend == "cpu":  # the profile's GPUs, through the CUDA or hybrid runtime
            backend_extra = backend_options(chosen)
            backend = backend_extra.pop("backend")
    if router_trace is not None:
        if backend != "hybrid":
            raise UserError("--router-trace needs the hybrid backend (--backend hybrid or a hybrid profile)")
        backend_extra["router_trace"] = router_trace
    server_engine, name = load_engine(model_path, ctx, threads, 2.0 if cache_ram is None else cache_ram, max_queue,
                                      n_batch=n_batch, clamp_ctx=profile is not None, engine=engine or "localcoder",
                                      n_gpu_layers=n_gpu_layers, backend=backend, backend_options=backend_extra)
    print_plan(server_engine.model)
    echo = lambda text: out.print(text, soft_wrap=True, highlight=False)  # noqa: E731
    try:
        serve_forever(server_engine, name, host, port, api_key, max_body << 20, echo)
    finally:
        if router_trace is not None:
            server_engine.model.save_trace(router_trace)
            err.print(f"[dim]router trace saved to {router_trace}[/]", highlight=False)


@app.command()
@user_errors
def bench(
    model_path: Optional[Path] = typer.Argument(None, help="A GGUF to measure under every profile that fits "
                                                           "(without it: predictions for Qwen3-Coder-Next only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout (the table goes to stderr)."),
    compare: bool = typer.Option(False, "--compare", help="Also measure llama.cpp (llama-cpp-python) on the same file."),
    prompt: int = typer.Option(512, "--prompt", "-p", min=1, help="Prompt tokens per prefill measurement."),
    gen: int = typer.Option(128, "--gen", "-n", min=1, help="Decode steps per measurement."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", min=1, help="CPU threads (default: physical cores)."),
    machine_file: Optional[Path] = typer.Option(None, "--machine", help="Predict for a machine described in a JSON "
                                                                        "file instead of this one (no measurements)."),
) -> None:
    """Measure this machine, predict every hardware profile, measure MODEL under the ones that fit, recommend one
    (`serve --profile auto` follows it)."""
    from localcoder.bench import comparison_table, report_table, run_bench, save_report

    machine = None
    if machine_file is not None:
        if model_path is not None or compare:
            raise UserError("--machine predicts for another machine; it cannot measure MODEL or --compare here")
        machine = _described_machine(machine_file)
    if model_path is not None:
        from localcoder.hub import resolve_model
        model_path = resolve_model(str(model_path), need_gguf=True)
    report = run_bench(model_path, prompt=prompt, generate=gen, threads=threads, compare_llamacpp=compare,
                       machine=machine, show_progress=True)
    console = err if as_json else out
    console.print(report_table(report))
    if compare and model_path is not None:
        console.print(comparison_table(report))
    if machine is None:
        save_report(report)
    best = report.recommended or "none fits"
    console.print(f"recommended profile: [bold]{best}[/]" + (
        f" (best for this hardware once built: {report.best_for_hardware})"
        if report.best_for_hardware not in (None, report.recommended) else "") +
        f" · bench took {report.seconds:.1f} s", soft_wrap=True, highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")


def _described_machine(path: Path):
    from localcoder.hardware import Machine

    try:
        return Machine.from_json(json.loads(path.read_text()))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}")
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e})")


profiles_app = typer.Typer(no_args_is_help=True, help="The shipped hardware profiles.")
app.add_typer(profiles_app, name="profiles")


@profiles_app.command("list")
@user_errors
def profiles_list() -> None:
    """One line per shipped profile: engine, recipe, context, what it needs."""
    from localcoder.profiles import not_built, shipped_profiles

    table = Table(title="hardware profiles", title_justify="left")
    for col in ("name", "engine", "recipe", "context", "KV", "needs", "runs in this build", "description"):
        table.add_column(col)
    for p in shipped_profiles().values():
        req = p.requires
        needs = "any machine" if req.accelerator == "none" else (
            f"{req.gpus or 1}x {req.accelerator} ≥{req.min_vram_gib or req.min_ram_gib:g} GiB" +
            (", unified memory" if req.unified_memory else ""))
        table.add_row(p.name, p.engine, p.recipe, f"{p.context:,}", p.kv_cache, needs,
                      "yes" if not not_built(p) else "not yet", p.description)
    out.print(table)


@profiles_app.command("show")
@user_errors
def profiles_show(name: str = typer.Argument(..., help="A profile name (see `profiles list`) or a .toml file.")) -> None:
    """A profile's settings and its plan for Qwen3-Coder-Next: where each kind of tensor goes, memory per device."""
    from localcoder.costmodel import Footprint, memory_needs
    from localcoder.profiles import get_profile, not_built

    p = get_profile(name)
    settings = Table(title=f"profile {p.name}: {p.description}", title_justify="left", show_header=False)
    settings.add_column("key")
    settings.add_column("value")
    for key in ("recipe", "engine", "context", "kv_cache", "threads", "batch", "ubatch", "prefix_cache_gib",
                "expert_cache_gib"):
        value = getattr(p, key)
        settings.add_row(key, "auto (physical cores)" if key == "threads" and value is None else str(value))
    settings.add_row("requires", ", ".join(f"{k}={v}" for k, v in vars(p.requires).items() if v not in (None, 0, 0.0)))
    settings.add_row("file", str(p.path))
    settings.add_row("this build", not_built(p) or "runs it")
    out.print(settings)
    fp = Footprint.for_recipe(p.recipe)
    plan = Table(title=f"placement of {fp.label} ({fp.nbytes / 2**30:.1f} GiB)", title_justify="left")
    for col, justify in (("tensors", "left"), ("device", "left"), ("count", "right"), ("GiB", "right")):
        plan.add_column(col, justify=justify)
    groups: dict[tuple[str, str], list[int]] = {}
    for t in fp.tensors:
        kind = "routed experts" if t.expert else "embedding" if t.name.startswith("token_embd") else \
            "output" if t.name.startswith("output") else "attention, DeltaNet, shared expert, norms"
        g = groups.setdefault((kind, p.device_of(t.name, t.layer)), [0, 0])
        g[0], g[1] = g[0] + 1, g[1] + t.nbytes
    for (kind, device), (count, nbytes) in groups.items():
        plan.add_row(kind, device, str(count), f"{nbytes / 2**30:.2f}")
    out.print(plan)
    needs = ", ".join(f"{d}: {n / 2**30:.1f} GiB" for d, n in memory_needs(p, fp).items())
    out.print(f"memory with the KV cache for {p.context:,} tokens, buffers and caches: {needs}", highlight=False)


@app.command("cache-sim")
@user_errors
def cache_sim(
    trace: Optional[Path] = typer.Option(None, "--trace", help="A router trace (.npy, int [tokens, layers, top_k]) "
                                         "recorded by the hybrid runtime; default: a synthetic one."),
    experts: int = typer.Option(512, "--experts", min=1, help="Routed experts per layer."),
    layers: int = typer.Option(48, "--layers", min=1, help="Layers of a synthetic trace."),
    top_k: int = typer.Option(10, "--top-k", min=1, help="Experts per token of a synthetic trace."),
    steps: int = typer.Option(300, "--steps", min=1, help="Tokens of a synthetic trace."),
    skew: float = typer.Option(1.0, "--skew", min=0, help="Zipf exponent of expert popularity (0: uniform)."),
    locality: float = typer.Option(0.3, "--locality", min=0, max=0.99,
                                   help="Chance a token repeats the previous token's expert."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Replay a router trace against expert-cache policies: hit rate against cache size (frequency-keyed, LRU, LFU,
    llama.cpp's static --n-cpu-moe split)."""
    from localcoder.hybrid.simulate import POLICIES, hit_rate_table, load_trace, synthetic_trace

    if trace is not None:
        routes = load_trace(trace, experts)
        source = f"{trace} ({routes.shape[0]} tokens)"
    else:
        if top_k > experts:
            raise UserError(f"--top-k {top_k} is more than --experts {experts}")
        with err.status("making a synthetic trace"):
            routes = synthetic_trace(steps, layers, experts, top_k, skew, locality, seed)
        source = f"synthetic: {steps} tokens, skew {skew}, locality {locality}"
    with err.status("replaying"):
        rows = hit_rate_table(routes, experts)
    table = Table(title=f"expert cache hit rate, {source}", title_justify="left")
    for column in ("cache (share of experts)", "slots", *POLICIES):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['fraction']:.0%}", str(row["slots"]), *(f"{row[p]:.1%}" for p in POLICIES))
    out.print(table)


@app.command()
def version() -> None:
    """Print the localcoder version."""
    out.print(f"localcoder {__version__}")


if __name__ == "__main__":
    app()
