"""Hybrid runtime against llama.cpp's --n-cpu-moe at equal VRAM, one run, same file and machine (issue 7's target:
decode >= 1.5x llama.cpp at the same VRAM, prefill >= 1.0x).

    CMAKE_ARGS="-DGGML_CUDA=on" pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36
    python benchmarks/hybrid_bench.py [--layers 48] [--prompt 512] [--gen 64] [--markdown docs/hybrid_bench.md]

For each routing (the random-weights file routes about uniformly; a second file has a skewed router, see
synth.skewed_router) and each card size (16, 24, 32 GB: llama.cpp with the experts of its first 36, 28, 20 layers
on the CPU, the splits the issue measured), llama.cpp loads first and its device memory is measured (free memory
before and after a warm-up); localcoder's hybrid runtime then gets the same total: what its resident weights, KV
cache and activations take after a warm-up with no expert cache, the rest as expert slots. Reports pp/tg of both,
the ratios and the expert cache's decode hit rate. Needs a CUDA GPU; not run yet (no GPU was lent).
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from cuda_bench import model_file  # noqa: E402

CARDS = {16: 36, 24: 28, 32: 20}  # GB -> llama.cpp --n-cpu-moe that fits it (issue 7's measurements)
GIB = 1 << 30


def device_free() -> int:
    import torch

    torch.cuda.synchronize()
    return torch.cuda.mem_get_info(0)[0]


def llama_cpp_run(path, n_cpu_moe, prompt, gen, n_ctx):
    """(device bytes llama.cpp took, its Measured) with the experts of the first n_cpu_moe layers in RAM."""
    from localcoder.bench import time_model
    from localcoder.llamacpp_engine import LlamaCppModel

    before = device_free()
    model = LlamaCppModel.load(path, n_ctx=n_ctx, n_gpu_layers=-1, n_cpu_moe=n_cpu_moe)
    measured = time_model(model, "llama.cpp", prompt, gen)
    return before - device_free(), measured  # the model is freed when the caller collects


def hybrid_run(path, budget_bytes, prompt, gen, n_ctx):
    """(Measured with the decode hit rate, expert slots) of the hybrid runtime with `budget_bytes` of slots."""
    from localcoder.bench import time_model
    from localcoder.hybrid.model import HybridModel

    model = HybridModel.load(path, "cuda:0", budget_bytes, n_ctx)
    return time_model(model, "hybrid", prompt, gen), model.slots.n_slots


def resident_bytes(path, prompt, n_ctx) -> int:
    """Device memory of the hybrid runtime with no expert cache, after a prompt (KV cache, activations)."""
    import torch

    from localcoder.hybrid.model import HybridModel

    torch.cuda.reset_peak_memory_stats()
    model = HybridModel.load(path, "cuda:0", 0, n_ctx)
    model.new_session().feed(list(range(prompt)))
    used = torch.cuda.max_memory_reserved()
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return used


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--skew", type=float, default=4.0, help="router skew of the second file")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("hybrid_bench needs a CUDA GPU")
    prompt, gen = args.prompt, args.gen
    n_ctx = prompt + gen + 8
    lines = [f"| routing | card | llama.cpp -ncmoe | VRAM GiB | llama.cpp pp{args.prompt} / tg{args.gen} | "
             "hybrid pp / tg | ratio pp / tg | hybrid slots | decode hit rate |", "|---|---|---|---|---|---|---|---|---|"]
    for routing, skew in (("random", 0.0), (f"skewed ({args.skew:g})", args.skew)):
        path = model_file(args.layers, skew)
        resident = resident_bytes(path, prompt, n_ctx)
        for card, n_cpu_moe in CARDS.items():
            n_cpu_moe = min(n_cpu_moe, args.layers)
            vram, llama = llama_cpp_run(path, n_cpu_moe, prompt, gen, n_ctx)
            gc.collect()
            ours, slots = hybrid_run(path, max(0, vram - resident), prompt, gen, n_ctx)
            gc.collect()
            torch.cuda.empty_cache()
            lp, ld, hp, hd = llama.prefill_tps, llama.decode_tps, ours.prefill_tps, ours.decode_tps
            lines.append(f"| {routing} | {card} GB | {n_cpu_moe} | {vram / GIB:.1f} | {lp:.0f} / {ld:.1f} | "
                         f"{hp:.0f} / {hd:.1f} | {hp / lp:.2f}x / {hd / ld:.2f}x | {slots} | "
                         f"{ours.expert_hit_rate or 0:.1%} |")
            print(lines[-1], flush=True)
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
