"""An agent-like multi-turn session through `localcoder serve`: time to first token and decode speed per turn,
with prefix reuse and without, and llama.cpp (llama-cpp-python) on the same file and prompts, in one run.

    python benchmarks/serve_bench.py [--turns 6] [--gen 24] [--threads 2] [--markdown docs/serve_bench.md]

The conversation grows like a coding agent's: a system prompt with tool definitions, then per turn a tool result
holding a file (~250 tokens of code) and a fixed assistant reply, so every engine sees the same prompts. Requests
go through the OpenAI SDK over HTTP, streaming, greedy, after one unmeasured warm-up request per engine. llama.cpp runs each turn from an empty context: its Python
binding cannot roll a hybrid model's recurrent state back to a shared prefix (llama.cpp's own server keeps state
checkpoints for that), so a cold prefill is what it can do correctly here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from runtime_bench import MODELS, model_file  # noqa: E402

from localcoder.demo_corpus import code_corpus  # noqa: E402

TOOLS = [{"type": "function", "function": {"name": name, "description": text, "parameters": {
    "type": "object", "required": ["path"], "properties": {"path": {"type": "string", "description": "A path."},
                                                           "content": {"type": "string"}}}}}
    for name, text in [("read_file", "Read a file of the workspace and return its text."),
                       ("write_file", "Write text to a file, creating folders as needed."),
                       ("run_tests", "Run the test suite and report failures."),
                       ("search", "Search the workspace for a regular expression.")]]
WARM_UP = [{"role": "user", "content": "warm up"}]
console = Console()


def conversation(turns: int) -> list[list[dict]]:
    """The messages of each turn; each extends the one before."""
    files = code_corpus(turns * 6, seed=7)
    messages = [{"role": "system", "content": "You are a coding agent. Use the tools to inspect and change code."},
                {"role": "user", "content": "Fix the failing test in the parser module."}]
    out = []
    for i in range(turns):
        out.append(list(messages))
        call = {"id": f"call_{i}", "type": "function",
                "function": {"name": "read_file", "arguments": f'{{"path": "src/module_{i}.py"}}'}}
        messages += [{"role": "assistant", "content": "Let me look.", "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": f"call_{i}", "content": "\n".join(files[6 * i:6 * i + 6])}]
    return out


def run_localcoder(path: Path, turns: list, gen: int, threads: int, reuse: bool) -> list[tuple[int, float, float]]:
    """Per turn: (prompt tokens, seconds to first token, decode tokens/s) through the HTTP API."""
    import openai

    from localcoder.model import Model
    from localcoder.server.app import BackgroundServer, create_app
    from localcoder.server.engine import Engine

    engine = Engine(Model.load(path, n_ctx=8192, threads=threads), reuse_prefix=reuse)
    rows = []
    with BackgroundServer(create_app(engine, "bench")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        client.chat.completions.create(model="bench", messages=WARM_UP, max_tokens=4)  # page in, compile: unmeasured
        for messages in turns:
            start = time.perf_counter()
            first = None
            for chunk in client.chat.completions.create(model="bench", messages=messages, tools=TOOLS, stream=True,
                                                        max_tokens=gen, temperature=0,
                                                        stream_options={"include_usage": True}):
                if first is None and chunk.choices and (chunk.choices[0].delta.content or
                                                        chunk.choices[0].delta.tool_calls or
                                                        chunk.choices[0].finish_reason):
                    first = time.perf_counter()
                if chunk.usage:
                    usage = chunk.usage
            end = time.perf_counter()
            tps = (usage.completion_tokens - 1) / (end - first) if usage.completion_tokens > 1 else 0.0
            rows.append((usage.prompt_tokens, first - start, tps))
    engine.close()
    return rows


def run_llama(path: Path, prompts: list[list[int]], gen: int, threads: int) -> list[tuple[int, float, float]]:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=8192, n_batch=512, n_ubatch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    llm.create_completion(prompts[0][:16], max_tokens=4)  # warm up, unmeasured
    rows = []
    for prompt in prompts:
        llm.reset()
        start = time.perf_counter()
        first, count = None, 0
        for _ in llm.create_completion(prompt, max_tokens=gen, temperature=0, stream=True):
            count += 1
            first = first or time.perf_counter()
        end = time.perf_counter()
        rows.append((len(prompt), first - start, (count - 1) / (end - first) if count > 1 else 0.0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--gen", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=["small", "real4"], default="real4")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    label, (name, cfg) = [(k, v) for k, v in MODELS.items() if v[0].startswith(args.model)][0]
    path = model_file(name, cfg)
    turns = conversation(args.turns)

    from localcoder.model import Model
    tokenizer = Model.load(path, n_ctx=8192, check_memory=False).tokenizer
    from localcoder.server.openai_api import ChatMessage, template_messages
    prompts = [tokenizer.encode(tokenizer.render_chat(template_messages([ChatMessage(**x) for x in m]), TOOLS))
               for m in turns]
    results = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("engines", total=3)
        for engine, run in (("localcoder, prefix reuse", lambda: run_localcoder(path, turns, args.gen, args.threads, True)),
                            ("localcoder, no reuse", lambda: run_localcoder(path, turns, args.gen, args.threads, False)),
                            ("llama.cpp (cold each turn)", lambda: run_llama(path, prompts, args.gen, args.threads))):
            progress.update(task, description=engine)
            results[engine] = run()
            progress.advance(task)
    table = Table(title=f"{label}: {args.turns}-turn agent session, {args.threads} threads, {args.gen} tokens a turn")
    table.add_column("turn", justify="right")
    table.add_column("prompt tokens", justify="right")
    for engine in results:
        table.add_column(f"{engine}\nTTFT s / tok/s", justify="right")
    table.add_column("TTFT llama.cpp / reuse", justify="right")
    reuse, llama = results["localcoder, prefix reuse"], results["llama.cpp (cold each turn)"]
    for i in range(args.turns):
        cells = [f"{rows[i][1]:.2f} / {rows[i][2]:.1f}" for rows in results.values()]
        table.add_row(str(i + 1), str(reuse[i][0]), *cells, f"{llama[i][1] / reuse[i][1]:.1f}x")
    totals = [f"{sum(r[1] for r in rows):.2f} s total" for rows in results.values()]
    table.add_row("all", "", *totals, f"{sum(r[1] for r in llama) / sum(r[1] for r in reuse):.1f}x")
    console.print(table)
    if args.markdown:
        head = ["turn", "prompt tokens"] + [f"{e} TTFT s / tok/s" for e in results] + ["TTFT llama.cpp / reuse"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for i in range(args.turns):
            cells = [f"{rows[i][1]:.2f} / {rows[i][2]:.1f}" for rows in results.values()]
            lines.append(f"| {i + 1} | {reuse[i][0]} | " + " | ".join(cells) + f" | {llama[i][1] / reuse[i][1]:.1f}x |")
        args.markdown.write_text(f"{table.title}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
