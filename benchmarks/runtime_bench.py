"""CPU runtime speed against llama.cpp (llama-cpp-python) on the same GGUF, same thread count, alternating runs.

    python benchmarks/runtime_bench.py [--threads 2] [--prompt 256] [--gen 32] [--repeats 3]

Two random-weights models in llama.cpp's Q4_K_M mix, built by the benchmark (localcoder/synth.py) and kept
under .cache/bench: ~470M parameters, and the real Qwen3-Coder-Next layer geometry with 4 layers. Prefill is one
feed of --prompt tokens into an empty context; decode is --gen single-token feeds after it. Best of --repeats,
engines alternating within each repeat. Then a profile of where localcoder's time goes (cProfile, cumulative).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from localcoder.synth import REAL_4_LAYERS, SMALL_450M, write_synthetic  # noqa: E402

MODELS = {"~470M (hidden 1024, 8 layers, 12 experts)": ("small-q4km.gguf", SMALL_450M),
          "real geometry, 4 layers (512 experts top-10)": ("real4-q4km.gguf", REAL_4_LAYERS)}
console = Console()


def model_file(name: str, cfg: dict) -> Path:
    path = REPO / ".cache" / "bench" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        write_synthetic(partial, cfg)
        partial.rename(path)
    return path


class Ours:
    def __init__(self, path: Path, threads: int):
        from localcoder.model import Model
        self.model = Model.load(path, n_ctx=2048, threads=threads)

    def prefill(self, tokens) -> None:
        self.session = self.model.new_session()
        self.session.feed(tokens)

    def decode(self, token: int) -> None:
        self.session.feed([token])


class Llama:
    def __init__(self, path: Path, threads: int):
        import llama_cpp
        self.llm = llama_cpp.Llama(str(path), n_ctx=2048, n_batch=512, n_ubatch=512, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)

    def prefill(self, tokens) -> None:
        self.llm.reset()
        self.llm.eval(list(tokens))

    def decode(self, token: int) -> None:
        self.llm.eval([token])


def measure(engine, prompt, gen) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s)."""
    start = time.perf_counter()
    engine.prefill(prompt)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for t in gen:
        engine.decode(int(t))
    return len(prompt) / prefill, len(gen) / (time.perf_counter() - start)


def profile(ours: Ours, prompt, gen) -> list[tuple[str, float, float]]:
    """(part, share of prefill time, share of decode time), from cProfile's cumulative time per layer kind."""
    parts = {"MoE (router, experts, shared expert)": "moe", "DeltaNet layers (projections, conv, delta rule)":
             "gated_delta_net", "attention layers": "attention"}
    shares = {}
    for phase, fn in (("prefill", lambda: ours.prefill(prompt)),
                      ("decode", lambda: [ours.decode(int(t)) for t in gen])):
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        cumulative = {}
        for (_, _, name), (_, _, _, ct, _) in pstats.Stats(prof).stats.items():
            cumulative[name] = max(cumulative.get(name, 0.0), ct)
        total = cumulative["forward"]
        part = {label: cumulative.get(f, 0.0) / total for label, f in parts.items()}
        part["embedding, norms, output"] = 1.0 - sum(part.values())
        shares[phase] = part
    return [(k, shares["prefill"][k], shares["decode"][k]) for k in shares["prefill"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    table = Table(title=f"CPU runtime vs llama.cpp, {args.threads} threads, Q4_K_M mix, prompt {args.prompt}, "
                        f"decode {args.gen} (best of {args.repeats})", title_justify="left")
    for col in ("model", "prefill tok/s ours", "llama.cpp", "ratio", "decode tok/s ours", "llama.cpp", "ratio"):
        table.add_column(col, justify="left" if col == "model" else "right")
    profiles = {}
    for label, (name, cfg) in MODELS.items():
        path = model_file(name, cfg)
        prompt = rng.integers(0, 700, args.prompt)  # ids of real tokens of the demo vocabulary
        gen = rng.integers(0, 700, args.gen)
        engines = {"localcoder": Ours(path, args.threads), "llama.cpp": Llama(path, args.threads)}
        best = {e: (0.0, 0.0) for e in engines}
        measure(engines["localcoder"], prompt[:16], gen[:2])  # warm the numba caches and the page cache
        measure(engines["llama.cpp"], prompt[:16], gen[:2])
        for r in range(args.repeats):
            for e in (list(engines) if r % 2 == 0 else list(reversed(engines))):
                p, d = measure(engines[e], prompt, gen)
                best[e] = (max(best[e][0], p), max(best[e][1], d))
                console.print(f"  {label} · {e}: prefill {p:.1f} tok/s, decode {d:.2f} tok/s", highlight=False)
        (op, od), (lp, ld) = best["localcoder"], best["llama.cpp"]
        table.add_row(label, f"{op:.1f}", f"{lp:.1f}", f"{op / lp:.2f}x", f"{od:.2f}", f"{ld:.2f}", f"{od / ld:.2f}x")
        profiles[label] = profile(engines["localcoder"], prompt, gen)
        del engines
    console.print(table)
    for label, rows in profiles.items():
        t = Table(title=f"where localcoder's time goes: {label}", title_justify="left")
        for col in ("part", "prefill", "decode"):
            t.add_column(col, justify="left" if col == "part" else "right")
        for part, p, d in rows:
            t.add_row(part, f"{100 * p:.0f}%", f"{100 * d:.0f}%")
        console.print(t)


if __name__ == "__main__":
    main()
