"""CUDA backend against llama.cpp on one GPU, same file, one run: pp512, tg128 and peak VRAM (issue 6's target:
decode >= 1.5x llama.cpp, prefill >= 1.0x).

    CMAKE_ARGS="-DGGML_CUDA=on" pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36
    python benchmarks/cuda_bench.py [--layers 48] [--prompt 512] [--gen 128] [--markdown docs/cuda_bench.md]

Writes the real Qwen3-Coder-Next geometry (random weights, llama.cpp's Q4_K_M mix; 48 layers is ~45 GiB, built
once under .cache/bench), then measures localcoder's TorchModel and llama-cpp-python with every layer offloaded,
alternating, best of --repeats (localcoder's decode through CUDA graphs; --eager adds a row without them).
Also prints the bandwidth roofline (bytes read per decoded token / the GPU's measured bandwidth) and times the
delta rule's two forms at the real geometry, which sets deltanet.CHUNKED_FROM, and a prompt-sized product both
ways (dequantize + cuBLAS, or the grouped GEMM decoding in registers), which decides DeviceWeight.matmul's. Needs a CUDA GPU; it has not been
run yet (no GPU was lent while it was written).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localcoder.costmodel import Footprint  # noqa: E402
from localcoder.synth import write_synthetic  # noqa: E402
from quant.recipes import QWEN3_CODER_NEXT  # noqa: E402


def model_file(layers: int, router_skew: float = 0.0) -> Path:
    """The real geometry with `layers` layers, random weights, Q4_K_M mix (built once under .cache/bench)."""
    skewed = f"-skew{router_skew:g}" if router_skew else ""
    path = REPO / ".cache" / "bench" / f"real{layers}{skewed}-q4km.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg = {**QWEN3_CODER_NEXT, "num_hidden_layers": layers,
               "layer_types": ["linear_attention" if (i + 1) % 4 else "full_attention" for i in range(layers)]}
        partial = path.with_suffix(".partial")
        write_synthetic(partial, cfg, "Q4_K_M", router_skew=router_skew)
        partial.rename(path)
    return path


def delta_rule_table(lengths=(1, 16, 64, 256, 512), heads: int = 32, d: int = 128) -> list[str]:
    """Milliseconds per call of the token-walking kernel and the chunked form, at the model's 32 heads of 128."""
    import torch

    from localcoder.cuda.deltanet import delta_rule, delta_rule_chunked

    lines = ["| prompt tokens | kernel ms | chunked ms |", "|---|---|---|"]
    for T in lengths:
        q, k, v = (torch.randn((T, heads, d), device="cuda") / d ** 0.5 for _ in range(3))
        g, beta = -torch.rand((T, heads), device="cuda"), torch.rand((T, heads), device="cuda")
        times = []
        for rule in (delta_rule, delta_rule_chunked):
            S = torch.zeros((heads, d, d), device="cuda")
            rule(q, k, v, g, beta, S)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                rule(q, k, v, g, beta, S)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / 10 * 1e3)
        lines.append(f"| {T} | {times[0]:.3f} | {times[1]:.3f} |")
    return lines


def prefill_product_table(tokens: int = 512, shapes=((8192, 2048), (2048, 4096), (512, 2048))) -> list[str]:
    """Milliseconds of one prompt-sized product with a Q4_K matrix: dequantize then cuBLAS (TF32), against the
    grouped GEMM decoding in registers (one group). Decides which one DeviceWeight.matmul should use."""
    import torch
    from gguf import GGMLQuantizationType as T

    from localcoder.cuda.gemm import grouped_gemm
    from localcoder.cuda.quant import dequantize
    from quant.quantize import quantize

    lines = [f"| Q4_K matrix | dequantize + cuBLAS ms | grouped GEMM ms ({tokens} tokens) |", "|---|---|---|"]
    x = torch.randn((tokens, max(c for _, c in shapes)), device="cuda")
    for rows, cols in shapes:
        raw = torch.from_numpy(quantize(np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32),
                                        T.Q4_K)).cuda()
        xs, src = x[:, :cols].contiguous(), np.arange(tokens)
        runs = {"cublas": lambda: xs @ dequantize(raw, "Q4_K", cols).T,
                "grouped": lambda: grouped_gemm(raw[None], "Q4_K", xs, [0], [0, tokens], src, exact=False)}
        times = []
        for run in runs.values():
            run()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                run()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / 10 * 1e3)
        lines.append(f"| {rows} x {cols} | {times[0]:.3f} | {times[1]:.3f} |")
    return lines


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--eager", action="store_true", help="also measure decode without CUDA graphs")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("cuda_bench needs a CUDA GPU")
    from localcoder.bench import time_model
    from localcoder.cuda.model import TorchModel
    from localcoder.hardware import cuda_bandwidths
    from localcoder.llamacpp_engine import LlamaCppModel

    path = model_file(args.layers)
    n_ctx = args.prompt + args.gen + 8
    torch.cuda.reset_peak_memory_stats()
    models = {"localcoder": TorchModel.load(path, "cuda:0", n_ctx=n_ctx)}
    if args.eager:
        models["localcoder eager"] = TorchModel.load(path, "cuda:0", n_ctx=n_ctx, graphs=False)
    models["llama.cpp"] = LlamaCppModel.load(path, n_ctx=n_ctx, n_batch=512, n_gpu_layers=-1)
    best = {name: (0.0, 0.0) for name in models}
    for r in range(args.repeats):  # engines alternate; each run is best of two (the first may record a graph)
        for name in (list(models) if r % 2 == 0 else list(reversed(models))):
            m = time_model(models[name], name, args.prompt, args.gen)
            best[name] = (max(best[name][0], m.prefill_tps), max(best[name][1], m.decode_tps))
            print(f"{name}: pp{args.prompt} {m.prefill_tps:.1f} tok/s, tg{args.gen} {m.decode_tps:.2f} tok/s", flush=True)
    vram = torch.cuda.max_memory_allocated() / 2**30  # localcoder's models and sessions (llama.cpp's is not torch's)
    bandwidth = cuda_bandwidths(0)[0]
    read = sum(t.active_bytes for t in Footprint.from_gguf(path).tensors)
    lp, ld = best["llama.cpp"]
    lines = [f"| engine | pp{args.prompt} tok/s | tg{args.gen} tok/s | vs llama.cpp (pp / tg) |", "|---|---|---|---|"]
    for name, (p, d) in best.items():
        lines.append(f"| {name} | {p:.1f} | {d:.2f} | {p / lp:.2f}x / {d / ld:.2f}x |")
    lines += [f"\nlocalcoder's peak VRAM (torch): {vram:.1f} GiB",
              f"roofline: {read / 2**30:.2f} GiB read per token at {bandwidth:.0f} GB/s = "
              f"{bandwidth * 1e9 / read:.0f} tok/s ({torch.cuda.get_device_name(0)}, {args.layers} layers)", ""]
    lines += delta_rule_table() + [""] + prefill_product_table()
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
