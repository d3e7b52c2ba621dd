"""`localcoder bench`: measure this machine, predict every profile, measure a model, recommend a profile.

    report = run_bench(model_path)          # probe + calibration + predictions (+ measurements with a model)
    report.recommended                      # the profile `serve --profile auto` will use

Calibration times the pieces the cost model is made of, never the model being predicted: RAM bandwidth, the
CPU kernels of each GGML type on synthetic matrices, float32 matmul, and the runtime's fixed costs per decode step
and per layer from two micro models (4 and 12 layers, hidden 64) whose difference isolates the per-layer cost.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from localcoder.costmodel import Calibration, Footprint, KernelCost, Prediction, predict, recommend
from localcoder.errors import UserError
from localcoder.hardware import Machine, probe
from localcoder.profiles import Profile, backend_options, not_built, shipped_profiles

KERNEL_SHAPE = (2048, 2048)  # rows, cols of the synthetic matrices (a Qwen3-Coder-Next projection's size)
STREAM_BYTES = 256 << 20  # larger than any CPU cache
PROMPT_BATCH = 128  # tokens per batched-kernel measurement
MICRO_GEOMETRY = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                      linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=32,
                      linear_value_head_dim=32, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32, intermediate_size=64)
MICRO_LAYERS = (4, 12)
MICRO_TYPES = {"Q8_0", "F32"}  # a Q8_0 file: F32 router, norms and conv
LAST_BENCH = "bench-last.json"


@dataclass
class Measured:
    """Speeds measured on one engine: prompt of `prompt` tokens, then `generated` decode steps."""

    engine: str
    prefill_tps: float
    decode_tps: float
    prompt: int
    generated: int
    expert_hit_rate: float | None = None  # the hybrid runtime's expert cache over the decode steps


@dataclass
class ProfileResult:
    """One profile: predictions for Qwen3-Coder-Next under its recipe, and for the benchmarked model file."""

    name: str
    runnable: str | None  # why this build cannot run it yet, or None
    flagship: Prediction
    model: Prediction | None = None
    measured: Measured | None = None
    llamacpp: Measured | None = None


@dataclass
class BenchReport:
    machine: Machine
    calibration: Calibration
    model: str | None
    profiles: list[ProfileResult]
    recommended: str | None  # the best profile that fits and this build runs (serve --profile auto)
    best_for_hardware: str | None  # the best that fits, whether or not this build runs it yet
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"recommended": self.recommended, "best_for_hardware": self.best_for_hardware,
                "model": self.model, "seconds": round(self.seconds, 2), "machine": self.machine.to_json(),
                "calibration": asdict(self.calibration), "profiles": [_result_json(r) for r in self.profiles]}


def _result_json(r: ProfileResult) -> dict:
    return {"name": r.name, "runnable": r.runnable is None, "not_runnable_because": r.runnable,
            "qwen3_coder_next": asdict(r.flagship), "model": asdict(r.model) if r.model else None,
            "measured": asdict(r.measured) if r.measured else None,
            "llamacpp": asdict(r.llamacpp) if r.llamacpp else None}


def run_bench(model_path: Path | None = None, profiles: dict[str, Profile] | None = None, prompt: int = 512,
              generate: int = 128, threads: int | None = None, compare_llamacpp: bool = False,
              machine: Machine | None = None, show_progress: bool = True) -> BenchReport:
    """Probe and calibrate this machine, predict each profile for Qwen3-Coder-Next and for the model, measure the
    model under each runnable profile that fits (and llama.cpp on it with compare_llamacpp). A described
    `machine` is predicted with Calibration.defaults and nothing is measured."""
    start = time.perf_counter()
    profiles = profiles or shipped_profiles()
    if model_path is not None and not Path(model_path).is_file():
        raise UserError(f"{model_path} does not exist (give a .gguf file)")
    with _steps(show_progress) as step:
        described = machine is not None
        if described and model_path is not None:
            raise UserError("a described machine cannot run a model here: give either the machine or the model")
        step("probing the machine")
        machine = machine or probe(measure=True)
        threads = threads or machine.cores
        fp_model = Footprint.from_gguf(model_path) if model_path else None
        step("sizing the profiles' recipes")
        flagship = {n: Footprint.for_recipe(p.recipe) for n, p in profiles.items()}
        types = {t.qtype for fp in [*flagship.values(), fp_model] if fp for t in fp.tensors if t.outputs}
        cal = Calibration.defaults(machine) if described else calibrate(machine, threads, sorted(types), step)
        results = []
        context = prompt + generate // 2
        for name, profile in profiles.items():
            result = ProfileResult(name, not_built(profile),
                                   predict(profile, flagship[name], machine, cal, context=context, prompt=prompt))
            if fp_model is not None:
                result.model = predict(profile, fp_model, machine, cal, context=context, prompt=prompt)
            results.append(result)
        if fp_model is not None:
            _measure_runnable(model_path, profiles, results, prompt, generate, threads, compare_llamacpp, step)
    target = {r.name: (r.model or r.flagship) for r in results}
    report = BenchReport(machine, cal, str(model_path) if model_path else None, results,
                         recommend(profiles, target, runnable_only=True), recommend(profiles, target))
    report.seconds = time.perf_counter() - start
    return report


def _measure_runnable(path, profiles, results, prompt, generate, threads, compare_llamacpp, step) -> None:
    """Measure the model under every profile that fits and this build runs (and llama.cpp once, same settings)."""
    llama = None
    for r in results:
        if r.runnable or not r.model.fits:
            continue
        profile = profiles[r.name]
        step(f"measuring {Path(path).name} with profile {r.name}")
        r.measured = measure(path, profile, prompt, generate, threads)
        if compare_llamacpp:
            if llama is None:
                step(f"measuring {Path(path).name} with llama.cpp")
                llama = measure(path, profile, prompt, generate, threads, engine="llamacpp")
            r.llamacpp = llama


@contextmanager
def _steps(show: bool):
    """step(description): a rich progress line per stage (on stderr), advancing an overall bar."""
    if not show:
        yield lambda description: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from localcoder.progress import console

    with Progress(TextColumn("[bold]bench"), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("", total=None)
        yield lambda description: progress.update(task, description=description, advance=1)


def calibrate(machine: Machine, threads: int, types: list[str], step=lambda d: None) -> Calibration:
    """Measure the cost model's CPU terms with `threads` threads."""
    import numba

    from localcoder.costmodel import fit_overheads
    from localcoder.hardware import ram_bandwidth
    from localcoder.kernels.cpu_matmul import single_threaded_blas

    single_threaded_blas()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    if machine.ram_bandwidth_gbs is None:
        step("measuring RAM bandwidth")
        machine.ram_bandwidth_gbs = ram_bandwidth()
    cal = Calibration(machine.ram_bandwidth_gbs, {}, {}, (0.0, 0.0), 0.0, 0.0, 0.0, 0.0, threads)
    for qtype in sorted(set(types) | MICRO_TYPES):  # the micro models' types: their kernels are subtracted
        step(f"timing {qtype} kernels")
        cal.decode_kernels[qtype], cal.prefill_kernels[qtype] = kernel_costs(qtype)
    step("timing attention and the delta rule")
    cal.score_s, cal.delta_rule_s = attention_costs(), delta_rule_seconds()
    step("timing the runtime's fixed costs on micro models")
    fit_overheads(cal, *(micro_run(n, threads) for n in MICRO_LAYERS))
    return cal


def synthetic_weight(qtype_name: str, rows: int, cols: int, seed: int = 0):
    """A runtime Weight of type `qtype_name`: 256 distinct random rows, quantized, repeated to `rows`."""
    from gguf import GGMLQuantizationType as T

    from localcoder.weights import Weight
    from quant.quantize import quantize

    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((min(rows, 256), cols), np.float32) / np.float32(np.sqrt(cols))
    qtype = T[qtype_name]
    data = quantize(pool, qtype)
    raw = np.ascontiguousarray(np.concatenate([data] * (-(-rows // len(data))))[:rows])
    return Weight(qtype_name, raw, qtype, (rows, cols))


def _best_seconds(fn, min_total: float = 0.15, max_runs: int = 50) -> float:
    """Fastest of repeated calls (at least 3, until min_total seconds have passed)."""
    fn()
    best, total, runs = float("inf"), 0.0, 0
    while runs < 3 or (total < min_total and runs < max_runs):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, total, runs = min(best, elapsed), total + elapsed, runs + 1
    return best


def kernel_costs(qtype_name: str) -> tuple[KernelCost, KernelCost]:
    """The runtime's matmul kernel for one type, as a projection runs it (activations' rounding included):
    (one token, a PROMPT_BATCH-token batch). Times of three matrices (2048x2048, 2048x256, 64x256) fix the
    fixed, per-output and per-multiply-add costs; a batch's fixed cost is the single token's."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((PROMPT_BATCH, KERNEL_SHAPE[1]), np.float32)
    shapes = [KERNEL_SHAPE, (KERNEL_SHAPE[0], 256), (64, 256)]
    weights = [synthetic_weight(qtype_name, rows, cols) for rows, cols in shapes]

    def seconds(w, tokens: int) -> float:
        return _best_seconds(lambda: w.matmul(x[:tokens, :w.cols]))

    one = [seconds(w, 1) for w in weights]
    terms = np.array([[1.0, rows, rows * cols] for rows, cols in shapes])
    call, out, mac = np.maximum(np.linalg.solve(terms, one), 0.0)
    batch = [seconds(w, PROMPT_BATCH) - call for w in weights[:2]]
    out_b, mac_b = np.maximum(np.linalg.solve(PROMPT_BATCH * terms[:2, 1:], batch), 0.0)
    if mac == 0.0 or mac_b == 0.0:  # timing noise swamped a term: rate of the large matrix alone
        mac = mac or one[0] / (shapes[0][0] * shapes[0][1])
        mac_b = mac_b or batch[0] / (PROMPT_BATCH * shapes[0][0] * shapes[0][1])
    stream = streaming_gbs(qtype_name)
    return (KernelCost(float(call), float(out), float(mac), stream),
            KernelCost(float(call), float(out_b), float(mac_b), stream))


def streaming_gbs(qtype_name: str) -> float:
    """GB/s of weight bytes the one-token kernel reaches on a matrix far larger than any cache (STREAM_BYTES)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

    block, size = GGML_QUANT_SIZES[T[qtype_name]]
    cols = KERNEL_SHAPE[1]
    rows = STREAM_BYTES // (cols // block * size)
    w = synthetic_weight(qtype_name, rows, cols)
    x = np.random.default_rng(5).standard_normal((1, cols), np.float32)
    return w.nbytes / _best_seconds(lambda: w.matmul(x), min_total=0.05) / 1e9


def attention_costs() -> tuple[float, float]:
    """Seconds per attention score as a + b * head_dim: the runtime's attention (both matmuls, mask, softmax)
    timed with 16 query heads over 1024 keys at head sizes 64 and 256."""
    from localcoder.layers import _causal_attention

    rng = np.random.default_rng(2)
    per_score = []
    for d in (64, 256):
        q = rng.standard_normal((64, 16, d), np.float32)
        keys, values = (rng.standard_normal((2, 1024, d), np.float32) for _ in range(2))
        scores = 64 * (1024 - 32) * 16  # queries 960..1023 see that many keys on average
        per_score.append(_best_seconds(lambda: _causal_attention(q, keys, values, 1024 - 64)) / scores)
    b = max((per_score[1] - per_score[0]) / (256 - 64), 0.0)
    return max(per_score[0] - 64 * b, 0.0), b


def delta_rule_seconds() -> float:
    """Seconds per token per state element of the delta-rule kernel at Qwen3-Coder-Next's head sizes."""
    from localcoder.kernels.deltanet import delta_rule_recurrent

    rng = np.random.default_rng(4)
    T, nv, d = 64, 32, 128
    q, k, v = (rng.standard_normal((T, nv, d), np.float32) * 0.1 for _ in range(3))
    g = -rng.random((T, nv), np.float32)
    beta = rng.random((T, nv), np.float32)
    state = np.zeros((nv, d, d), np.float32)
    return _best_seconds(lambda: delta_rule_recurrent(q, k, v, g, beta, state)) / (T * nv * d * d)


def micro_model(n_layers: int) -> Path:
    """A random-weights Q8_0 Qwen3-Next at hidden 64 with `n_layers` layers (3 DeltaNet : 1 attention), cached."""
    from localcoder.demo import cache_root, ensure_demo_gguf
    from localcoder.gguf_model import load_fields
    from localcoder.synth import write_synthetic
    from quant.recipes import QWEN3_CODER_NEXT

    path = cache_root() / "bench" / f"micro-{n_layers}.gguf"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    vocab = len(load_fields(ensure_demo_gguf("F32", show_progress=False))[0]["tokenizer.ggml.tokens"])
    cfg = {**QWEN3_CODER_NEXT, **MICRO_GEOMETRY, "num_hidden_layers": n_layers, "vocab_size": vocab,
           "layer_types": ["linear_attention" if (i + 1) % 4 else "full_attention" for i in range(n_layers)]}
    partial = path.with_suffix(".partial")
    write_synthetic(partial, cfg, "Q8_0", show_progress=False)
    partial.replace(path)
    return path


def micro_run(n_layers: int, threads: int, prompt: int = 64, steps: int = 32):
    """The decode and prefill times of a micro model (see costmodel.fit_overheads)."""
    from localcoder.costmodel import MicroRun
    from localcoder.model import Model

    path = micro_model(n_layers)
    model = Model.load(path, n_ctx=prompt + steps + 8, threads=threads, check_memory=False)
    ids = random_prompt(model.args.vocab, prompt + steps, seed=3)
    session = [model.new_session()]

    def run_prompt():
        session[0] = model.new_session()
        session[0].feed(ids[:prompt])

    def run_decode():
        run_prompt()
        t0 = time.perf_counter()
        for t in ids[prompt:]:
            session[0].feed([int(t)])
        return time.perf_counter() - t0

    prefill = _best_seconds(run_prompt, min_total=0.3)
    run_decode()
    decode = min(run_decode() for _ in range(3)) / steps
    return MicroRun(Footprint.from_gguf(path), decode, prefill, prompt, prompt + steps // 2)


def random_prompt(vocab: int, n: int, seed: int = 0) -> np.ndarray:
    """Token ids of real (non-padding) tokens, the same for every engine."""
    return np.random.default_rng(seed).integers(0, min(vocab, 700), n)


def measure(path, profile: Profile, prompt: int, generate: int, threads: int, engine: str | None = None,
            repeats: int = 2) -> Measured:
    """Prefill of `prompt` tokens and `generate` decode steps with the profile's batch size, on `engine` (default:
    the profile's; "localcoder" or "llamacpp") and the profile's backend (time_model)."""
    from localcoder.server.launch import load_model

    engine = engine or profile.engine
    options = backend_options(profile) if engine == "localcoder" else {"backend": "cpu"}
    model = load_model(path, engine, options.pop("backend"), n_ctx=prompt + generate + 8, n_batch=profile.batch,
                       threads=threads, **options)
    return time_model(model, "llama.cpp" if engine == "llamacpp" else "localcoder", prompt, generate, repeats)


def time_model(model, name: str, prompt: int, generate: int, repeats: int = 2) -> Measured:
    """Prefill of `prompt` random tokens and `generate` decode steps on a loaded model (any engine), best of
    `repeats` after a warm-up that runs both code paths. One session, reset between repeats, so a CUDA session
    keeps its recorded decode graph; the expert cache's decode hit rate where there is one."""
    ids = random_prompt(model.args.vocab, prompt + generate)
    session = model.new_session()
    session.feed(ids[:16])  # the page cache and both kernel paths (prompt chunks, single tokens)
    for t in ids[16:20]:
        session.feed([int(t)])
    best_prefill = best_decode = float("inf")
    hits = lookups = 0
    for _ in range(repeats):
        session.reset()
        t0 = time.perf_counter()
        session.feed(ids[:prompt])
        t1 = time.perf_counter()
        before = expert_lookups(model)
        for t in ids[prompt:]:
            session.feed([int(t)])
        t2 = time.perf_counter()
        after = expert_lookups(model)
        hits, lookups = hits + after[0] - before[0], lookups + after[1] - before[1]
        best_prefill, best_decode = min(best_prefill, t1 - t0), min(best_decode, t2 - t1)
    hit_rate = hits / lookups if lookups else None
    return Measured(name, prompt / best_prefill, generate / best_decode, prompt, generate, hit_rate)


def expert_lookups(model) -> tuple[int, int]:
    """(hits, lookups) of the hybrid runtime's expert cache so far; (0, 0) for other engines."""
    cache = getattr(model, "cache", None)
    if cache is None:
        return 0, 0
    stats = list(cache.stats.values())
    return sum(s.hits for s in stats), sum(s.hits + s.misses for s in stats)


def machine_key(machine: Machine) -> dict:
    """What must match for a saved recommendation to apply to this machine."""
    return {"cpu": machine.cpu, "ram_gib": round(machine.ram_gib), "gpus": [g.name for g in machine.gpus]}


def save_report(report: BenchReport, root: Path | None = None) -> Path:
    """Keep the report (under cache_root()) for `serve --profile auto`."""
    from localcoder.demo import cache_root

    path = (root or cache_root()) / LAST_BENCH
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**report.to_json(), "machine_key": machine_key(report.machine)}
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
    return path


def load_saved(machine: Machine, model: str | None, root: Path | None = None) -> dict | None:
    """The last saved bench report when it was made on this machine for this model (None for the flagship)."""
    from localcoder.demo import cache_root

    path = (root or cache_root()) / LAST_BENCH
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("machine_key") != machine_key(machine) or data.get("model") != model:
        return None
    return data


def auto_profile(model_path: Path | None, machine: Machine | None = None) -> tuple[Profile, str]:
    """(profile, how it was chosen) for `serve --profile auto`: the saved `localcoder bench` recommendation for
    this machine and model, else a quick prediction from the probe (no measurements)."""
    profiles = shipped_profiles()
    machine = machine or probe(measure=False)
    model = str(model_path) if model_path else None
    saved = load_saved(machine, model)
    if saved and saved.get("recommended") in profiles:
        return profiles[saved["recommended"]], "recommended by the last `localcoder bench` on this machine"
    fp = Footprint.from_gguf(model_path) if model_path else None
    predictions = {n: predict(p, fp or Footprint.for_recipe(p.recipe), machine) for n, p in profiles.items()}
    name = recommend(profiles, predictions, runnable_only=True)
    if name is None:
        reasons = "; ".join(f"{n}: {p.reason or not_built(profiles[n])}" for n, p in predictions.items())
        raise UserError(f"no profile fits this model on this machine ({reasons})")
    return profiles[name], "predicted from this machine's probe (run `localcoder bench MODEL` to measure)"


def report_table(report: BenchReport):
    """The ranking as a rich table: one row per profile, best first."""
    from rich.table import Table

    def rank(r: ProfileResult):
        target = r.model or r.flagship
        return (target.fits, r.runnable is None, r.measured.decode_tps if r.measured else target.decode_tps)

    with_model = report.model is not None
    title = "profiles on this machine" + (f" · measured on {Path(report.model).name}" if with_model else "")
    table = Table(title=title, title_justify="left")
    columns = ["profile", "fits" + (" (model)" if with_model else ""), "RAM GiB", "VRAM GiB", "80B decode tok/s (bound)", "80B prefill tok/s (bound)"]
    if with_model:
        columns += ["model decode: predicted", "measured", "llama.cpp", "ratio"]
    columns.append("note")
    for col in columns:
        table.add_column(col, justify="left" if col.startswith(("profile", "note", "fits")) else "right")
    for r in sorted(report.profiles, key=rank, reverse=True):
        p = r.flagship
        fits = "yes" if (r.model or p).fits else "no"
        row = [r.name + (" ★" if r.name == report.recommended else ""), fits, f"{p.ram_bytes / 2**30:.1f}",
               " + ".join(f"{v / 2**30:.1f}" for v in p.vram_bytes.values()) or "—",
               _speed(p.decode_tps, p.decode_bound_tps), _speed(p.prefill_tps, p.prefill_bound_tps)]
        if with_model:
            measured = r.measured.decode_tps if r.measured else None
            llama = r.llamacpp.decode_tps if r.llamacpp else None
            row += [f"{r.model.decode_tps:,.1f}" if r.model.decode_tps else "—",
                    f"{measured:,.1f}" if measured else "—", f"{llama:,.1f}" if llama else "—",
                    f"{measured / llama:.2f}x" if measured and llama else "—"]
        hit_rate = r.measured.expert_hit_rate if r.measured else None
        note = (r.model or p).reason or r.runnable or ""
        row.append(note or (f"expert cache hit rate {hit_rate:.0%}" if hit_rate is not None else ""))
        table.add_row(*row)
    return table


def _speed(value: float, bound: float) -> str:
    return f"{value:,.1f} ({bound:,.0f})" if value else "—"


def comparison_table(report: BenchReport):
    """localcoder against llama.cpp on the same file, threads and batch sizes (profiles measured with both)."""
    from rich.table import Table

    table = Table(title=f"localcoder vs llama.cpp on {Path(report.model).name}, {report.calibration.threads} threads",
                  title_justify="left")
    for col in ("profile", "prefill tok/s", "llama.cpp", "ratio", "decode tok/s", "llama.cpp", "ratio"):
        table.add_column(col, justify="left" if col == "profile" else "right")
    for r in report.profiles:
        if r.measured and r.llamacpp:
            m, ll = r.measured, r.llamacpp
            table.add_row(r.name, f"{m.prefill_tps:,.1f}", f"{ll.prefill_tps:,.1f}", f"{m.prefill_tps / ll.prefill_tps:.2f}x",
                          f"{m.decode_tps:,.1f}", f"{ll.decode_tps:,.1f}", f"{m.decode_tps / ll.decode_tps:.2f}x")
    return table
