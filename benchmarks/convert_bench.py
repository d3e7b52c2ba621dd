"""Conversion benchmark: localcoder's HF -> GGUF converter against llama.cpp's convert_hf_to_gguf.py.

Same checkpoint, same machine, one run: each converter runs in its own process, alternating, `--repeats` times;
the best wall time and that process's own peak RSS (os.wait4) are reported with the ratio. The checkpoint is a
Qwen3-Next of real head sizes with random weights, built here (about 0.9 GB of f32 safetensors by default).

    .venv/bin/python benchmarks/convert_bench.py [--types F16 Q8_0] [--repeats 2] [--markdown docs/convert.md]
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

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from localcoder.progress import item_progress  # noqa: E402

GEOMETRY = dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=128, linear_value_head_dim=128,
                linear_conv_kernel_dim=4, num_experts=48, num_experts_per_tok=8, moe_intermediate_size=192,
                shared_expert_intermediate_size=512, intermediate_size=2048)
CONVERTER = REPO / ".cache" / "llama.cpp-0.3.36"


def run_measured(cmd: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB of that process alone)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def commands(src: Path, out: Path, out_type: str) -> dict[str, list[str]]:
    ours = [sys.executable, "-c", "import sys; from quant.convert import convert_hf; "
            "convert_hf(sys.argv[1], sys.argv[2], sys.argv[3], show_progress=False)", str(src), str(out), out_type]
    llama = [sys.executable, str(REPO / "tests" / "oracles" / "run_llama_convert.py"), str(CONVERTER), str(src),
             "--outtype", out_type.lower(), "--outfile", str(out), "--no-mtp"]
    return {"localcoder": ours, "llama.cpp": llama}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", nargs="+", default=["F16", "Q8_0"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--markdown", type=Path, help="also write the results table here")
    args = ap.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(dir=REPO / ".cache") as tmp:
        # built in a child process: a child's ru_maxrss starts from its parent's high-water mark at fork, so the
        # parent must stay small for the converters' peak RSS to be their own
        src = Path(tmp) / "hf"
        subprocess.run([sys.executable, "-c", "import sys, json; from pathlib import Path; "
                        "from localcoder.demo import build_demo_checkpoint; "
                        "build_demo_checkpoint(Path(sys.argv[1]), json.loads(sys.argv[2]))", str(src),
                        json.dumps(GEOMETRY)], check=True, cwd=REPO)
        src_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        g = GEOMETRY  # the largest GGUF tensor is a stacked expert tensor [E, I, H]
        largest = 4 * g["num_experts"] * g["moe_intermediate_size"] * g["hidden_size"]
        results = {}
        runs = [(t, engine) for t in args.types for _ in range(args.repeats) for engine in ("localcoder", "llama.cpp")]
        with item_progress("benchmark", len(runs), len(runs), count_bytes=False) as progress:
            for out_type, engine in runs:
                progress.start(f"{engine} {out_type}")
                out = Path(tmp) / f"{engine}-{out_type}.gguf"
                seconds, rss = run_measured(commands(src, out, out_type)[engine])
                best = results.get((out_type, engine))
                if best is None or seconds < best[0]:
                    results[(out_type, engine)] = (seconds, rss)
                out.unlink()
                progress.advance(1)
    table = Table(title=f"HF -> GGUF conversion, {src_bytes / 1e9:.2f} GB f32 checkpoint, largest tensor "
                        f"{largest / 2**20:.0f} MiB, {os.cpu_count()} cores")
    for col in ("type", "engine", "seconds", "GB/s (source read)", "peak RSS MiB", "time vs llama.cpp"):
        table.add_column(col)
    rows = []
    for out_type in args.types:
        ref = results[(out_type, "llama.cpp")][0]
        for engine in ("localcoder", "llama.cpp"):
            seconds, rss = results[(out_type, engine)]
            row = (out_type, engine, f"{seconds:.1f}", f"{src_bytes / 1e9 / seconds:.2f}", f"{rss:.0f}",
                   f"{seconds / ref:.2f}x")
            rows.append(row)
            table.add_row(*row)
    console.print(table)
    if args.markdown:
        lines = [f"| {' | '.join(c.header for c in table.columns)} |", "|" + "---|" * len(table.columns)]
        lines += [f"| {' | '.join(r)} |" for r in rows]
        args.markdown.write_text(f"{table.title}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
