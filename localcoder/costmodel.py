"""What a profile needs and how fast it should run: memory per device, decode and prefill tokens per second.

The model is a roofline with measured terms. A decode step reads every dense weight, `n_used / n_expert` of the
routed experts, the KV cache and the DeltaNet states once; each tensor costs the longer of reading its bytes at
the device's bandwidth and multiplying at the kernel's measured rate for its type; a fixed cost per layer and per
step (Python and kernel launches) comes on top. Prefill adds the attention matmuls and a per-token, per-layer cost.
The physical bound beside each prediction is the bandwidth roofline (decode) or the best measured multiply rate
(prefill) with no overhead at all.

Terms measured on this machine arrive in a `Calibration` (localcoder.bench measures them); described machines
get `Calibration.defaults`. Accelerator terms (bandwidth, FLOP/s) come from GPU descriptions; engines that are
not built yet are predicted with llama.cpp's per-layer overhead measured on an H200 (issue 6), so they read as
what the hardware allows, not as a promise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from localcoder.hardware import GIB, GPU, Machine
from localcoder.profiles import KV_TYPES, Profile

GPU_READ_EFFICIENCY = 0.8  # share of peak bandwidth a quantized GEMV reaches
GPU_MATMUL_EFFICIENCY = 0.35  # share of peak tensor FLOP/s a quantized GEMM reaches at ubatch 512
GPU_LAYER_OVERHEAD_S = 97e-6  # llama.cpp, H200, all resident: 1/194 tok/s minus 0.5 ms of reads, over 48 layers
GPU_COMPUTE_BUFFER = 1 * GIB  # activations and workspace per accelerator
CPU_SCRATCH = GIB // 2
DEFAULT_CPU_GMACS_PER_CORE = 12.0
DEFAULT_PCIE_GBS = 25.0  # PCIe 4.0 x16, pinned, when not measured
UNIFIED_GPU_SHARE = {"metal": 0.75, "cuda": 0.9}  # of RAM an integrated GPU may use (macOS wires ~75%)
KNOWN_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "RTX 5090": 210, "RTX 4090": 165, "RTX 3090": 71,
                "RTX 4080": 98, "RTX 4070": 58, "RTX 4060": 30, "RTX 5090 Laptop": 120, "RTX 4090 Laptop": 80,
                "RTX 4080 Laptop": 60, "RTX 4070 Laptop": 30, "RTX 4060 Laptop": 30, "GB10": 100,
                "Apple M4 Max": 18, "Apple M4 Pro": 9, "Apple M4": 4, "Apple M3 Ultra": 28, "Apple M2 Ultra": 27}
EXPERT = re.compile(r"ffn_(gate|up|down)_exps")


@dataclass(frozen=True)
class TensorCost:
    name: str
    qtype: str
    nbytes: int
    active_bytes: float  # read per decoded token
    macs: int  # multiply-adds per token
    layer: int | None
    expert: bool
    outputs: int = 0  # values a matmul produces per token (rows; 0: read by lookups or elementwise code)
    head: bool = False  # the output projection: a prompt needs it for its last token only


@dataclass(frozen=True)
class Footprint:
    """A model's tensors and the geometry that sets its KV cache and recurrent state."""

    label: str
    tensors: tuple[TensorCost, ...]
    n_layer: int
    attention_layers: tuple[int, ...]
    kv_elements: int  # per attention layer and token: keys + values
    state_bytes: int  # per DeltaNet layer (conv + delta-rule state, float32)
    n_expert: int
    n_used: int
    hidden: int
    n_head: int
    head_dim: int
    state_elements: int  # delta-rule state per DeltaNet layer (nv * dk * dv): each token updates all of it

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def expert_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.expert)

    @classmethod
    def from_gguf(cls, path: Path | str) -> "Footprint":
        """The footprint of a GGUF file (its tensors as stored)."""
        from gguf import GGMLQuantizationType as T

        from localcoder.gguf_model import load_fields, model_args

        fields, reader = load_fields(Path(path))
        args = model_args(fields)
        tensors = [(t.name, T(t.tensor_type).name, int(t.n_bytes), tuple(int(d) for d in t.shape))
                   for t in reader.tensors]
        return _footprint(Path(path).name, tensors, args.recurrent, args.n_layer, args.hidden, args.n_head,
                          args.n_head_kv, args.head_dim, args.n_expert, args.n_expert_used, args.nk, args.nv,
                          args.dk, args.conv_kernel)

    @classmethod
    def for_recipe(cls, recipe: str) -> "Footprint":
        """Qwen3-Coder-Next (80B) quantized with a file type or recipe."""
        return _recipe_footprint(recipe)


@lru_cache(maxsize=16)
def _recipe_footprint(recipe: str) -> Footprint:
    from quant.ggml_types import encoded_nbytes
    from quant.recipes import QWEN3_CODER_NEXT as C, tensor_types

    tensors = [(name, t.name, encoded_nbytes(tuple(reversed(ne)), t), ne)
               for name, (t, ne) in tensor_types(recipe).items()]
    return _footprint(f"Qwen3-Coder-Next {recipe}", tensors, tuple(t == "linear_attention" for t in C["layer_types"]),
                      C["num_hidden_layers"], C["hidden_size"], C["num_attention_heads"], C["num_key_value_heads"],
                      C["head_dim"], C["num_experts"], C["num_experts_per_tok"], C["linear_num_key_heads"],
                      C["linear_num_value_heads"], C["linear_key_head_dim"], C["linear_conv_kernel_dim"])


def _footprint(label, tensors, recurrent, n_layer, hidden, n_head, n_head_kv, head_dim, n_expert, n_used, nk, nv,
               dk, conv_kernel) -> Footprint:
    """tensors: (name, type name, bytes, ne shape in GGML order); layers past n_layer (MTP) are left out.
    DeltaNet key and value heads have the same size (dk == dv), as llama.cpp requires."""
    names = {t[0] for t in tensors}
    costs = []
    for name, qtype, nbytes, ne in tensors:
        m = re.match(r"blk\.(\d+)\.", name)
        layer = int(m[1]) if m else None
        if layer is not None and layer >= n_layer:
            continue
        expert = bool(EXPERT.search(name))
        if len(ne) < 2 or name.endswith("ssm_conv1d.weight"):  # vectors and the conv kernel: elementwise work
            costs.append(TensorCost(name, qtype, nbytes, nbytes, 0, layer, False))
        elif expert:
            costs.append(TensorCost(name, qtype, nbytes, nbytes * n_used / n_expert, ne[0] * ne[1] * n_used, layer,
                                    True, ne[1] * n_used))
        elif name == "token_embd.weight" and "output.weight" in names:  # only the tokens' rows are read
            costs.append(TensorCost(name, qtype, nbytes, nbytes / ne[1], 0, None, False))
        else:  # a projection; token_embd without output.weight is also the output head (tied)
            head = name in ("output.weight", "token_embd.weight")
            costs.append(TensorCost(name, qtype, nbytes, nbytes, ne[0] * ne[1], layer, False, ne[1], head))
    attention = tuple(i for i, r in enumerate(recurrent[:n_layer]) if not r)
    state_elements = nv * dk * dk
    conv_state = (conv_kernel - 1) * (2 * nk * dk + nv * dk)
    return Footprint(label, tuple(costs), n_layer, attention, 2 * n_head_kv * head_dim,
                     4 * (state_elements + conv_state), n_expert, n_used, hidden, n_head, head_dim, state_elements)


@dataclass
class Calibration:
    """Measured CPU terms (localcoder.bench.calibrate), or defaults for a described machine."""

    ram_gbs: float  # read bandwidth, all threads
    decode_kernels: dict[str, "KernelCost"]  # GGML type -> the matmul kernel's costs for one token
    prefill_kernels: dict[str, "KernelCost"]  # the same for a batch of prompt tokens
    score_s: tuple[float, float]  # attention per score (query x key x head): a + b * head_dim seconds
    delta_rule_s: float  # per token per delta-rule state element
    step_overhead_s: float  # per decode step outside the layers
    layer_overhead_s: float  # per layer per forward pass
    token_hidden_s: float  # per prompt token per layer per hidden unit, beyond the modelled work (norms, rounding)
    threads: int = 1
    measured: bool = True

    @classmethod
    def defaults(cls, machine: Machine) -> "Calibration":
        """Terms for a machine described rather than measured: kernels assumed to keep up with memory, and
        the CPU runtime's overheads as measured on a 2-core EPYC (docs/PERFORMANCE.md)."""
        return cls(ram_gbs=machine.ram_bandwidth_gbs or 6.0 * machine.cores, decode_kernels={},
                   prefill_kernels={}, score_s=(1e-9, 1e-10), delta_rule_s=1e-9, step_overhead_s=3e-4,
                   layer_overhead_s=2.5e-4, token_hidden_s=3e-8, threads=machine.cores, measured=False)

    def cpu_seconds(self, qtype: str, nbytes: float, macs: float, outputs: float, batched: bool) -> float:
        """One tensor on the CPU: the longer of reading its bytes from RAM and running the type's kernel (a type
        never measured: DEFAULT_CPU_GMACS_PER_CORE)."""
        kernel = (self.prefill_kernels if batched else self.decode_kernels).get(qtype)
        compute = kernel.seconds(macs, outputs) if kernel else macs / (DEFAULT_CPU_GMACS_PER_CORE * self.threads * 1e9)
        stream = kernel.stream_gbs if kernel and kernel.stream_gbs else self.ram_gbs
        return max(nbytes / (stream * 1e9), compute)

    def best_gmacs(self) -> float:
        """The fastest batched kernel's multiply-add rate (the prefill roofline)."""
        return max((k.gmacs for k in self.prefill_kernels.values()),
                   default=DEFAULT_CPU_GMACS_PER_CORE * self.threads)


@dataclass
class KernelCost:
    """A CPU matmul kernel's time: a fixed cost per call (activation rounding, waking threads), a cost per
    value produced (row x token: the reduction and store) and a cost per multiply-add, on weights in cache;
    for weights streamed from RAM, at least their bytes at the kernel's measured streaming rate."""

    call_s: float
    out_s: float
    mac_s: float
    stream_gbs: float | None = None

    def seconds(self, macs: float, outputs: float) -> float:
        return (self.call_s if outputs else 0.0) + outputs * self.out_s + macs * self.mac_s

    @property
    def gmacs(self) -> float:
        return 1e-9 / self.mac_s if self.mac_s else float("inf")


@dataclass
class Prediction:
    """One profile on one machine for one model."""

    profile: str
    model: str
    fits: bool
    reason: str | None  # why it does not fit or cannot run
    ram_bytes: int
    vram_bytes: dict[str, int]  # accelerator device -> bytes
    decode_tps: float
    decode_bound_tps: float
    prefill_tps: float
    prefill_bound_tps: float
    expert_hit_rate: float | None = None  # share of routed-expert reads served from VRAM (uniform routing)


def memory_needs(profile: Profile, fp: Footprint) -> dict[str, int]:
    """Bytes each device of the profile holds: weights, KV cache for the full context, states, buffers."""
    need: dict[str, int] = {}
    for t in fp.tensors:
        dev = profile.device_of(t.name, t.layer)
        need[dev] = need.get(dev, 0) + t.nbytes
    kv_bytes = fp.kv_elements * profile.context * KV_TYPES[profile.kv_cache]
    for layer in range(fp.n_layer):
        dev = _state_device(profile, fp, layer)
        need[dev] = need.get(dev, 0) + (int(kv_bytes) if layer in fp.attention_layers else fp.state_bytes)
    for dev in need:
        need[dev] += CPU_SCRATCH if dev == "cpu" else GPU_COMPUTE_BUFFER
    if profile.engine == "localcoder":
        need["cpu"] = need.get("cpu", 0) + int(profile.prefix_cache_gib * GIB)
    if profile.expert_cache_gib:
        accel = _cache_device(profile)
        need[accel] = need.get(accel, 0) + int(profile.expert_cache_gib * GIB)
    return need


def _cache_device(profile: Profile) -> str:
    """The accelerator that holds the expert cache: the first CUDA GPU, or the one accelerator."""
    return "cuda:0" if "cuda:0" in profile.devices else "gpu"


def _state_device(profile: Profile, fp: Footprint, layer: int) -> str:
    """Where a layer's KV cache or DeltaNet state lives: with the layer's own weights."""
    name = f"blk.{layer}.attn_q.weight" if layer in fp.attention_layers else f"blk.{layer}.ssm_out.weight"
    return profile.device_of(name, layer)


def unmet_requirements(profile: Profile, machine: Machine) -> str | None:
    """Why the machine does not meet the profile's [requires] table, or None."""
    req = profile.requires
    if machine.ram_gib < req.min_ram_gib:
        return f"needs {req.min_ram_gib:g} GiB of RAM, has {machine.ram_gib:.0f}"
    if req.accelerator == "none":
        return None
    gpus = [g for g in machine.gpus if g.kind == req.accelerator]
    if not gpus:
        return f"needs a {req.accelerator.upper() if req.accelerator == 'cuda' else 'Metal'} GPU"
    if len(gpus) < max(req.gpus, 1):
        return f"needs {req.gpus} GPUs, has {len(gpus)}"
    if req.unified_memory is True and not gpus[0].unified:
        return "needs unified memory (Apple silicon, DGX Spark)"
    if req.unified_memory is False and gpus[0].unified:
        return "made for a discrete GPU; this one shares RAM"
    small = [g for g in gpus[:max(req.gpus, 1)] if not g.unified and g.vram_gib < req.min_vram_gib]
    if small:
        return f"needs {req.min_vram_gib:g} GiB of VRAM per GPU, has {small[0].vram_gib:.1f}"
    if req.unified_memory and machine.ram_gib < req.min_vram_gib:
        return f"needs {req.min_vram_gib:g} GiB of unified memory, has {machine.ram_gib:.0f}"
    return None


def _gpu(machine: Machine, device: str) -> GPU:
    return machine.gpus[int(device[5:]) if device.startswith("cuda:") else 0]


def check_memory(profile: Profile, fp: Footprint, machine: Machine) -> tuple[int, dict[str, int], str | None]:
    """(RAM bytes, VRAM bytes per discrete GPU, why it does not fit or None). Limits: RAM less the OS's share;
    each discrete GPU's VRAM less the driver's; on unified memory everything counts against RAM and what the
    accelerator holds also against the share the OS lets it use (macOS wires about 75%)."""
    need = memory_needs(profile, fp)
    unified = machine.unified_memory
    ram = sum(n for dev, n in need.items() if dev == "cpu" or unified)
    vram = {} if unified else {dev: n for dev, n in need.items() if dev != "cpu"}
    limits = [("RAM", ram, int(machine.ram_bytes * 0.92) - GIB)]  # the OS and the user's other programs
    limits += [(dev, n, _gpu(machine, dev).vram_bytes - GIB // 2) for dev, n in vram.items()]  # driver, display
    if unified and any(dev != "cpu" for dev in need):
        share = int(machine.ram_bytes * UNIFIED_GPU_SHARE[machine.gpus[0].kind])
        limits.append(("memory the GPU may use", sum(n for dev, n in need.items() if dev != "cpu"), share))
    for pool, used, cap in limits:
        if used > cap:
            return ram, {}, f"needs {used / GIB:.1f} GiB of {pool}, {cap / GIB:.1f} GiB usable"
    return ram, vram, None


def predict(profile: Profile, fp: Footprint, machine: Machine, cal: Calibration | None = None,
            context: int = 0, prompt: int = 512) -> Prediction:
    """Memory, decode tok/s at `context` tokens and prefill tok/s of a `prompt`-token prompt, with bounds."""
    cal = cal or Calibration.defaults(machine)
    reason = unmet_requirements(profile, machine)
    if reason:  # no device to place on: memory as the profile plans it, no speeds
        need = memory_needs(profile, fp)
        return Prediction(profile.name, fp.label, False, reason, need.get("cpu", 0),
                          {d: n for d, n in need.items() if d != "cpu"}, 0.0, 0.0, 0.0, 0.0)
    ram, vram, reason = check_memory(profile, fp, machine)
    reads, hit = _decode_reads(profile, fp, machine)
    decode_s, bound_s = _decode_time(reads, profile, fp, machine, cal, context)
    prefill_s, prefill_bound_s = _prefill_time(profile, fp, machine, cal, prompt, hit)
    return Prediction(profile.name, fp.label, reason is None, reason, ram, vram, 1 / decode_s, 1 / bound_s,
                      prompt / prefill_s, prompt / prefill_bound_s, hit)


def _decode_reads(profile: Profile, fp: Footprint, machine: Machine):
    """[(device, type, bytes, macs, outputs)] of the weights per decoded token, and the expert cache's hit rate
    (or None)."""
    reads = []
    cached = profile.expert_cache_gib * GIB
    experts_in_ram = sum(t.nbytes for t in fp.tensors if t.expert and profile.device_of(t.name, t.layer) == "cpu")
    hit = min(1.0, cached / experts_in_ram) if cached and experts_in_ram else None
    accel = _cache_device(profile)
    for t in fp.tensors:
        dev = profile.device_of(t.name, t.layer)
        if t.expert and dev == "cpu" and hit:
            reads.append((accel, t.qtype, t.active_bytes * hit, t.macs * hit, t.outputs * hit))
            reads.append(("cpu", t.qtype, t.active_bytes * (1 - hit), t.macs * (1 - hit), t.outputs * (1 - hit)))
        else:
            reads.append((dev, t.qtype, t.active_bytes, t.macs, t.outputs))
    return reads, hit


def sequence_work(fp: Footprint, cal: Calibration, tokens: int, context: int, kv_cache: str = "f32"):
    """Per layer, (layer, bytes of sequence state read, CPU seconds) of a forward pass of `tokens` tokens after
    `context`: attention reads the KV cache and computes tokens x keys x heads scores; a DeltaNet layer reads and
    writes its state and updates all of it once per token."""
    work = []
    for i in range(fp.n_layer):
        if i in fp.attention_layers:
            nbytes = fp.kv_elements * (context + tokens) * KV_TYPES[kv_cache]
            scores = tokens * (context + tokens / 2) * fp.n_head
            work.append((i, nbytes, scores * (cal.score_s[0] + cal.score_s[1] * fp.head_dim)))
        else:
            work.append((i, 2 * fp.state_bytes, tokens * fp.state_elements * cal.delta_rule_s))
    return work


def _decode_time(reads, profile: Profile, fp: Footprint, machine: Machine, cal: Calibration, context: int):
    """(predicted seconds per token, bandwidth-roofline seconds per token)."""
    ram = cal.ram_gbs * 1e9
    work = [(dev, nbytes, cal.cpu_seconds(qtype, nbytes, macs, outputs, batched=False) if dev == "cpu" else 0.0)
            for dev, qtype, nbytes, macs, outputs in reads]  # (device, bytes read, seconds on the CPU)
    work += [(_state_device(profile, fp, layer), nbytes, max(nbytes / ram, cpu_s))
             for layer, nbytes, cpu_s in sequence_work(fp, cal, 1, context, profile.kv_cache)]
    seconds = bound = 0.0
    for dev, nbytes, cpu_s in work:
        bandwidth = ram if dev == "cpu" else _gpu(machine, dev).bandwidth() * 1e9
        seconds += cpu_s if dev == "cpu" else nbytes / (bandwidth * GPU_READ_EFFICIENCY)
        bound += nbytes / bandwidth
    if profile.uses_accelerator:
        seconds += fp.n_layer * GPU_LAYER_OVERHEAD_S
    else:
        seconds += cal.step_overhead_s + fp.n_layer * (cal.layer_overhead_s + fp.hidden * cal.token_hidden_s)
    return seconds, max(bound, 1e-12)


def cpu_kernel_seconds(fp: Footprint, cal: Calibration, tokens: int, context: int = 0) -> float:
    """The modelled work of one forward pass of `tokens` tokens with everything on the CPU: weight matmuls (all
    experts the tokens route to), attention and the delta rule; no fixed or per-token overheads (bench
    subtracts this from micro-model times to find those)."""
    batched = tokens > 1
    touched = 1 - (1 - fp.n_used / fp.n_expert) ** tokens
    seconds = 0.0
    for t in fp.tensors:
        nbytes = t.nbytes * touched if t.expert and batched else t.active_bytes
        n = 1 if t.head else tokens  # a prompt's logits: only its last token's
        seconds += cal.cpu_seconds(t.qtype, nbytes, n * t.macs, n * t.outputs, batched)
    for _, nbytes, cpu_s in sequence_work(fp, cal, tokens, context):
        seconds += max(nbytes / (cal.ram_gbs * 1e9), cpu_s)
    return seconds


def _prefill_time(profile: Profile, fp: Footprint, machine: Machine, cal: Calibration, prompt: int,
                  hit: float | None):
    """(predicted seconds, compute-roofline seconds) for a prompt fed from an empty context."""
    chunk = profile.batch if not profile.uses_accelerator else profile.ubatch
    best_cpu = cal.best_gmacs() * 1e9
    seconds = bound = 0.0
    for start in range(0, prompt, chunk):
        T = min(chunk, prompt - start)
        if not profile.uses_accelerator:
            seconds += cpu_kernel_seconds(fp, cal, T, context=start)
            seconds += cal.step_overhead_s + fp.n_layer * (cal.layer_overhead_s + T * fp.hidden * cal.token_hidden_s)
            bound += sum((1 if t.head else T) * t.macs for t in fp.tensors) / best_cpu
            continue
        seconds += _accelerated_chunk(profile, fp, machine, cal, T, start, hit)
        bound += sum(2 * (1 if t.head else T) * t.macs / _gpu_flops(machine, _device_or_accel(profile, t))
                     for t in fp.tensors)
    return seconds, max(bound, 1e-12)


def _device_or_accel(profile: Profile, t: TensorCost) -> str:
    dev = profile.device_of(t.name, t.layer)
    return dev if dev != "cpu" else _cache_device(profile)


def _accelerated_chunk(profile, fp, machine, cal, T: int, start: int, hit: float | None) -> float:
    """Seconds for one ubatch on an accelerator: weight matmuls at a share of peak FLOP/s; experts kept in RAM
    either stream over PCIe (all those some token routes to, less the cached share) or run on the CPU, whichever
    is faster; attention; the per-layer launch overhead."""
    seconds = 0.0
    touched = 1 - (1 - fp.n_used / fp.n_expert) ** T
    for t in fp.tensors:
        dev = _device_or_accel(profile, t)
        n = 1 if t.head else T
        seconds += 2 * n * t.macs / (_gpu_flops(machine, dev) * GPU_MATMUL_EFFICIENCY)
        if profile.device_of(t.name, t.layer) == "cpu" and t.outputs:
            missed = 1 - (hit or 0.0)
            moved = t.nbytes * touched * missed / (_pcie(machine) * 1e9)
            on_cpu = cal.cpu_seconds(t.qtype, t.nbytes * touched * missed, n * t.macs * missed,
                                     n * t.outputs * missed, True)
            seconds += min(moved, on_cpu)
    scores = T * (start + T / 2) * fp.n_head * len(fp.attention_layers)
    seconds += 4 * scores * fp.head_dim / (_gpu_flops(machine, "gpu") * GPU_MATMUL_EFFICIENCY)
    return seconds + fp.n_layer * GPU_LAYER_OVERHEAD_S


def _gpu_flops(machine: Machine, device: str) -> float:
    if not machine.gpus:
        return 1e12
    gpu = _gpu(machine, device)
    known = [key for key in KNOWN_TFLOPS if key.lower() in gpu.name.lower()]
    return (KNOWN_TFLOPS[max(known, key=len)] if known else 50.0) * 1e12


def _pcie(machine: Machine) -> float:
    gpu = machine.gpus[0] if machine.gpus else None
    return (gpu.h2d_pinned_gbs if gpu and gpu.h2d_pinned_gbs else DEFAULT_PCIE_GBS)


def rank_key(profile: Profile, prediction: Prediction) -> tuple:
    """Profiles made for more of the machine's hardware first (its accelerator, then the most VRAM or unified
    memory they were sized for), then the faster prediction. A profile sized for a 24 GB card beats one sized
    for 8 GB on a 24 GB card even when a smaller mix decodes a little faster: the profile's recipe encodes the
    quality that hardware class can afford."""
    req = profile.requires
    claimed = req.gpus * req.min_vram_gib + (req.min_ram_gib if profile.uses_accelerator else 0.0)
    return (prediction.fits, profile.uses_accelerator, claimed, prediction.decode_tps)


def recommend(profiles: dict[str, Profile], predictions: dict[str, Prediction],
              runnable_only: bool = False) -> str | None:
    """The name of the best profile that fits (and, with runnable_only, that this build can run), or None."""
    from localcoder.profiles import not_built

    candidates = [n for n, p in predictions.items() if p.fits and not (runnable_only and not_built(profiles[n]))]
    if not candidates:
        return None
    return max(candidates, key=lambda n: rank_key(profiles[n], predictions[n]))


@dataclass(frozen=True)
class MicroRun:
    """A micro model's measured times: seconds per decode step at `context` tokens, seconds for a `prompt`-token
    prompt from empty."""

    footprint: Footprint
    decode_s: float
    prefill_s: float
    prompt: int
    context: int


def fit_overheads(cal: Calibration, few: MicroRun, many: MicroRun) -> None:
    """Set the calibration's fixed costs from two micro models that differ only in layer count. What their
    times hold beyond the modelled work splits into a per-step part and a per-layer part (their difference);
    a layer's prompt time beyond its decode time gives the per-token, per-hidden-unit part."""
    n_few, n_many = few.footprint.n_layer, many.footprint.n_layer
    decode = {r.footprint.n_layer: r.decode_s - cpu_kernel_seconds(r.footprint, cal, 1, r.context)
              for r in (few, many)}
    prefill = {r.footprint.n_layer: r.prefill_s - cpu_kernel_seconds(r.footprint, cal, r.prompt)
               for r in (few, many)}
    decode_layer = (decode[n_many] - decode[n_few]) / (n_many - n_few)
    prefill_layer = (prefill[n_many] - prefill[n_few]) / (n_many - n_few)
    hidden = few.footprint.hidden
    cal.token_hidden_s = max((prefill_layer - decode_layer) / ((few.prompt - 1) * hidden), 0.0)
    cal.layer_overhead_s = max(decode_layer - hidden * cal.token_hidden_s, 0.0)
    cal.step_overhead_s = max(decode[n_few] - n_few * decode_layer, 0.0)
