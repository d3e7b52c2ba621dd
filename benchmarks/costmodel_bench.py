"""How well `localcoder bench`'s cost model predicts the CPU runtime, and the runtime against llama.cpp, on four
models from tiny to real geometry, in one run on one machine.

    python benchmarks/costmodel_bench.py [--threads 2] [--prompt 256] [--gen 32] [--markdown docs/costmodel_bench.md]

Calibration runs once (the micro models and synthetic matrices of localcoder.bench, never the models below); then
each model is measured under the cpu-only profile's settings (best of 2) and with llama-cpp-python on the same file
and threads, and predicted. Models: the demo (Q8_0), a K-quant test model (hidden 512, Q4_K_M), and the two
runtime-benchmark models under .cache/bench (~470M, and the real layer geometry with 4 layers), built if missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from runtime_bench import model_file  # noqa: E402

from localcoder.bench import calibrate, measure  # noqa: E402
from localcoder.costmodel import Footprint, predict  # noqa: E402
from localcoder.hardware import probe  # noqa: E402
from localcoder.profiles import get_profile  # noqa: E402
from localcoder.synth import REAL_4_LAYERS, SMALL_450M  # noqa: E402
from quant.recipes import QWEN3_CODER_NEXT  # noqa: E402

console = Console()


def models() -> dict[str, Path]:
    from test_bench import KQUANT_TEST_MODEL

    from localcoder.demo import ensure_demo_gguf

    return {"demo (Q8_0, hidden 256)": ensure_demo_gguf(),
            "K-quant test model (Q4_K_M, hidden 512)": model_file("kquant-q4km.gguf",
                                                                  {**QWEN3_CODER_NEXT, **KQUANT_TEST_MODEL}),
            "~470M (Q4_K_M, hidden 1024)": model_file("small-q4km.gguf", SMALL_450M),
            "real geometry, 4 layers (Q4_K_M)": model_file("real4-q4km.gguf", REAL_4_LAYERS)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    machine = probe()
    paths = models()
    types = {t.qtype for p in paths.values() for t in Footprint.from_gguf(p).tensors if t.outputs}
    cal = calibrate(machine, args.threads, sorted(types))
    profile = get_profile("cpu-only")
    rows = []
    for label, path in paths.items():
        ours = measure(path, profile, args.prompt, args.gen, args.threads)
        llama = measure(path, profile, args.prompt, args.gen, args.threads, engine="llamacpp")
        pred = predict(profile, Footprint.from_gguf(path), machine, cal, context=args.prompt + args.gen // 2,
                       prompt=args.prompt)
        rows.append((label, pred, ours, llama))
        console.print(f"  {label}: decode predicted {pred.decode_tps:.1f}, measured {ours.decode_tps:.1f}, "
                      f"llama.cpp {llama.decode_tps:.1f}", highlight=False)
    header = ["model", "decode predicted", "measured", "error", "bound", "llama.cpp", "ours/llama",
              "prefill predicted", "measured", "error", "llama.cpp", "ours/llama"]
    table = Table(title=f"cost model vs measured, {args.threads} threads, prompt {args.prompt}, decode {args.gen}",
                  title_justify="left")
    for col in header:
        table.add_column(col, justify="left" if col == "model" else "right")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, pred, ours, llama in rows:
        cells = [label, f"{pred.decode_tps:.1f}", f"{ours.decode_tps:.1f}",
                 f"{100 * (pred.decode_tps / ours.decode_tps - 1):+.0f}%", f"{pred.decode_bound_tps:.0f}",
                 f"{llama.decode_tps:.1f}", f"{ours.decode_tps / llama.decode_tps:.2f}x",
                 f"{pred.prefill_tps:.0f}", f"{ours.prefill_tps:.0f}",
                 f"{100 * (pred.prefill_tps / ours.prefill_tps - 1):+.0f}%", f"{llama.prefill_tps:.0f}",
                 f"{ours.prefill_tps / llama.prefill_tps:.2f}x"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
