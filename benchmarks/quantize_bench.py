"""Quantization benchmark: localcoder against llama.cpp (llama_model_quantize / ggml_quantize_chunk).

Two measurements, both on this machine in one run:
  1. kernels: one thread each, one 1024x4096 float32 matrix, localcoder's quantize() vs ggml_quantize_chunk;
  2. whole files: the same F32 GGUF (a real-head-size Qwen3-Next with random weights, ~1.1 GB) quantized to each
     file type by localcoder and by llama_model_quantize, each in its own process with all cores, alternating;
     best wall time, that process's peak RSS, parameters per second per core, and the extrapolated time for the
     80B Qwen3-Coder-Next (79.67 B parameters) on 2 and 16 cores, assuming linear scaling over rows.

    .venv/bin/python benchmarks/quantize_bench.py [--types Q2_K Q4_K_M] [--repeats 2] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]
from convert_bench import GEOMETRY, run_measured  # noqa: E402
from localcoder.progress import item_progress  # noqa: E402

PARAMS_80B = 79.674e9
CORES = os.cpu_count() or 1


def kernel_rows() -> list[tuple]:
    import numba

    from oracles.ggml import ggml_quantize
    from quant.quantize import T, quantize

    x = np.random.default_rng(0).standard_normal((1024, 4096)).astype(np.float32)
    numba.set_num_threads(1)
    rows = []
    for qt in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]:
        quantize(x[:4], qt)  # compile / load from cache outside the timing
        ours = min(_timed(lambda: quantize(x, qt)) for _ in range(3))
        ref = min(_timed(lambda: ggml_quantize(x, int(T[qt]))) for _ in range(3))
        rows.append((qt, f"{x.size / ours / 1e6:.1f}", f"{x.size / ref / 1e6:.1f}", f"{ref / ours:.2f}x"))
    return rows


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def file_commands(src: Path, out: Path, file_type: str) -> dict[str, list[str]]:
    ours = [sys.executable, "-c", "import sys; from quant.quantize_file import quantize_model; "
            "quantize_model(sys.argv[1], sys.argv[2], sys.argv[3], show_progress=False)", str(src), str(out), file_type]
    llama = [sys.executable, "-c", "import sys; sys.path.insert(0, 'tests'); "
             "from oracles.llama_quantize import llama_quantize; import llama_cpp; "
             f"llama_quantize(sys.argv[1], sys.argv[2], sys.argv[3], nthread={CORES})", str(src), str(out), file_type]
    return {"localcoder": ours, "llama.cpp": llama}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", nargs="+", default=["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    console = Console()
    kernels = Table(title="quantizer kernels, 1 thread, 1024x4096 float32 (million parameters per second)")
    for col in ("type", "localcoder", "llama.cpp ggml_quantize_chunk", "speed vs llama.cpp"):
        kernels.add_column(col)
    kernel_results = kernel_rows()
    for row in kernel_results:
        kernels.add_row(*row)
    console.print(kernels)
    with tempfile.TemporaryDirectory(dir=REPO / ".cache") as tmp:
        f32 = Path(tmp) / "model-f32.gguf"
        subprocess.run([sys.executable, "-c", "import sys, json; from pathlib import Path; "
                        "from localcoder.demo import build_demo_checkpoint; from quant.convert import convert_hf; "
                        "d = build_demo_checkpoint(Path(sys.argv[1]) / 'hf', json.loads(sys.argv[2])); "
                        "convert_hf(d, Path(sys.argv[1]) / 'model-f32.gguf', 'F32', show_progress=False)",
                        tmp, json.dumps(GEOMETRY)], check=True, cwd=REPO)
        from gguf import GGUFReader
        n_params = sum(int(np.prod(t.shape)) for t in GGUFReader(f32).tensors)
        subprocess.run(file_commands(f32, Path(tmp) / "warm.gguf", "Q4_K_M")["localcoder"], check=True, cwd=REPO)
        runs = [(t, e) for t in args.types for _ in range(args.repeats) for e in ("localcoder", "llama.cpp")]
        best = {}
        with item_progress("benchmark", len(runs), len(runs), count_bytes=False) as progress:
            for file_type, engine in runs:
                progress.start(f"{engine} {file_type}")
                out = Path(tmp) / "out.gguf"
                seconds, rss = run_measured(file_commands(f32, out, file_type)[engine], cwd=REPO)
                if (file_type, engine) not in best or seconds < best[(file_type, engine)][0]:
                    best[(file_type, engine)] = (seconds, rss)
                out.unlink()
                progress.advance(1)
    files = Table(title=f"whole-file quantization of a {n_params / 1e9:.2f} B-parameter F32 GGUF, {CORES} cores")
    for col in ("type", "engine", "seconds", "Mparam/s/core", "peak RSS MiB", "time vs llama.cpp",
                "80B on 2 cores", "80B on 16 cores"):
        files.add_column(col)
    rows = []
    for file_type in args.types:
        ref = best[(file_type, "llama.cpp")][0]
        for engine in ("localcoder", "llama.cpp"):
            seconds, rss = best[(file_type, engine)]
            per_core = n_params / seconds / CORES
            row = (file_type, engine, f"{seconds:.1f}", f"{per_core / 1e6:.1f}", f"{rss:.0f}", f"{seconds / ref:.2f}x",
                   f"{PARAMS_80B / per_core / 2 / 60:.0f} min", f"{PARAMS_80B / per_core / 16 / 60:.1f} min")
            rows.append(row)
            files.add_row(*row)
    console.print(files)
    if args.markdown:
        args.markdown.write_text(_markdown(kernels, kernel_results) + "\n\n" + _markdown(files, rows) + "\n")


def _markdown(table: Table, rows: list[tuple]) -> str:
    lines = [str(table.title), "", "| " + " | ".join(c.header for c in table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


if __name__ == "__main__":
    main()
