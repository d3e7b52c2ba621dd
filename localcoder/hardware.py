"""What this machine is: CPU, RAM and its measured bandwidth, GPUs (CUDA or Apple), free disk.

`probe()` describes the machine it runs on; `Machine.from_json` describes any other one (the recommender's tests
and `bench --machine FILE` use that). Measurements that need a library (torch for CUDA) are skipped, not guessed,
when the library is absent.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

from localcoder.errors import UserError

GIB = 1 << 30
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
             "neon", "asimd", "asimddp", "i8mm", "sve")
# Peak memory bandwidth (GB/s) of known accelerators, for when it cannot be measured here. Apple: unified memory.
KNOWN_BANDWIDTH = {"H200": 4800, "H100": 3350, "A100": 2039, "RTX 5090": 1792, "RTX 4090": 1008, "RTX 3090": 936,
                   "RTX 4080": 717, "RTX 4070": 504, "RTX 4060": 272, "RTX 5090 Laptop": 896, "RTX 4090 Laptop": 576,
                   "RTX 4080 Laptop": 432, "RTX 4070 Laptop": 256, "RTX 4060 Laptop": 256, "GB10": 273, "Apple M4 Max": 546,
                   "Apple M4 Pro": 273, "Apple M4": 120, "Apple M3 Ultra": 819, "Apple M3 Max": 400,
                   "Apple M2 Ultra": 800, "Apple M2 Max": 400, "Apple M1 Max": 400}


@dataclass
class GPU:
    """One accelerator. kind: "cuda" or "metal"; bandwidths in GB/s (None when not measured)."""

    name: str
    kind: str
    vram_bytes: int
    memory_bandwidth_gbs: float | None = None
    pcie: str | None = None  # e.g. "gen4 x16"
    h2d_pinned_gbs: float | None = None
    h2d_pageable_gbs: float | None = None
    unified: bool = False  # shares the host's RAM (Apple silicon, DGX Spark)

    @property
    def vram_gib(self) -> float:
        return self.vram_bytes / GIB

    def bandwidth(self) -> float:
        """Measured memory bandwidth, else the known peak of its model (the longest matching name), else a
        cautious 200 GB/s."""
        if self.memory_bandwidth_gbs:
            return self.memory_bandwidth_gbs
        known = [key for key in KNOWN_BANDWIDTH if key.lower() in self.name.lower()]
        return KNOWN_BANDWIDTH[max(known, key=len)] if known else 200.0


@dataclass
class Machine:
    """A machine as the cost model and recommender see it."""

    cpu: str
    cores: int  # physical
    threads: int  # logical
    isa: list[str]
    ram_bytes: int
    ram_available_bytes: int
    ram_bandwidth_gbs: float | None  # measured read bandwidth with all cores
    gpus: list[GPU] = field(default_factory=list)
    disk_free_bytes: int | None = None
    os: str = ""

    @property
    def ram_gib(self) -> float:
        return self.ram_bytes / GIB

    @property
    def unified_memory(self) -> bool:
        return any(g.unified for g in self.gpus)

    def accelerators(self) -> set[str]:
        return {g.kind for g in self.gpus}

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Machine":
        """A described machine: sizes in bytes, or in GiB under keys ending in _gib (ram_gib, vram_gib)."""
        try:
            data = dict(data)
            gpus = [GPU(**_bytes_from_gib(g, "vram")) for g in data.pop("gpus", [])]
            data = _bytes_from_gib(data, "ram")
            data.setdefault("ram_available_bytes", int(data["ram_bytes"] * 0.9))
            data.setdefault("threads", data.get("cores", 1))
            data.setdefault("isa", [])
            data.setdefault("ram_bandwidth_gbs", None)
            return cls(gpus=gpus, **data)
        except (TypeError, KeyError, ValueError) as e:
            raise UserError(f"machine description: {e}; give cpu, cores, ram_gib (and gpus: name, kind, vram_gib)")


def _bytes_from_gib(d: dict, key: str) -> dict:
    d = dict(d)
    if f"{key}_gib" in d:
        d[f"{key}_bytes"] = int(float(d.pop(f"{key}_gib")) * GIB)
    if key == "ram" and "ram_available_gib" in d:
        d["ram_available_bytes"] = int(float(d.pop("ram_available_gib")) * GIB)
    return d


def probe(measure: bool = True, disk_path: Path | str = ".") -> Machine:
    """This machine; `measure` also times RAM read bandwidth and GPU transfers (about a second each)."""
    vm = psutil.virtual_memory()
    gpus = cuda_gpus(measure) or apple_gpus(vm.total)
    try:
        disk = shutil.disk_usage(disk_path).free
    except OSError:
        disk = None
    return Machine(cpu=cpu_name(), cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
                   threads=psutil.cpu_count() or 1, isa=isa_flags(), ram_bytes=vm.total,
                   ram_available_bytes=vm.available, ram_bandwidth_gbs=ram_bandwidth() if measure else None,
                   gpus=gpus, disk_free_bytes=disk, os=f"{platform.system()} {platform.release()}")


def cpu_name() -> str:
    if platform.system() == "Darwin":
        name = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
        if name:
            return name
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    """The SIMD features the kernels care about, as the OS reports them."""
    text = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        if platform.system() == "Darwin":
            text = (_run(["sysctl", "-a"]) or "").lower().replace("hw.optional.arm.feat_", "").replace("hw.optional.", "")
    flags = set(re.findall(r"[a-z0-9_]+", text.lower()))
    if platform.machine() in ("arm64", "aarch64"):
        flags.add("neon")
    return [f for f in ISA_FLAGS if f in flags]


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _sum_reference(a: np.ndarray) -> float:
    return float(a.sum(dtype=np.float64))


def _parallel_sum():
    import numba

    from quant import jit  # noqa: F401  (numba cache location)

    @numba.njit(parallel=True, cache=True, fastmath=True)
    def parallel_sum(a):
        total = 0.0
        for i in numba.prange(a.shape[0]):
            total += a[i]
        return total

    return parallel_sum


def ram_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Read bandwidth in GB/s with all threads: best of `repeats` parallel sums over a buffer far larger than
    any cache (the reduction keeps the reads from being optimized away; _sum_reference checks it)."""
    a = np.ones(nbytes // 4, np.float32)
    kernel = _parallel_sum()
    kernel(a[:1024])  # compile (or load from the cache) outside the timing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        kernel(a)
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


def cuda_gpus(measure: bool) -> list[GPU]:
    """CUDA devices through torch when it is installed with CUDA; [] otherwise."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    links = nvidia_smi_links()
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        unified = bool(getattr(props, "is_integrated", False)) or "GB10" in props.name
        gpu = GPU(props.name, "cuda", int(props.total_memory), pcie=links.get(i), unified=unified)
        if measure:
            gpu.memory_bandwidth_gbs, gpu.h2d_pinned_gbs, gpu.h2d_pageable_gbs = cuda_bandwidths(i)
        gpus.append(gpu)
    return gpus


def cuda_bandwidths(device: int, nbytes: int = 256 << 20) -> tuple[float, float, float]:
    """(device copy GB/s counting read + write, host-to-device pinned GB/s, pageable GB/s) on one GPU."""
    import torch

    dev = torch.device("cuda", device)
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    host_pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    host_pageable = torch.empty(nbytes, dtype=torch.uint8)

    def best(fn, moved: int) -> float:
        fn()
        torch.cuda.synchronize(dev)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - start)
        return moved / min(times) / 1e9

    return (best(lambda: dst.copy_(src), 2 * nbytes), best(lambda: dst.copy_(host_pinned, non_blocking=True), nbytes),
            best(lambda: dst.copy_(host_pageable), nbytes))


def nvidia_smi_links() -> dict[int, str]:
    """GPU index -> "genN xW" from nvidia-smi, when it is there."""
    out = _run(["nvidia-smi", "--query-gpu=index,pcie.link.gen.current,pcie.link.width.current",
                "--format=csv,noheader,nounits"])
    return parse_pcie_links(out or "")


def parse_pcie_links(text: str) -> dict[int, str]:
    links = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            links[int(parts[0])] = f"gen{parts[1]} x{parts[2]}"
    return links


def apple_gpus(ram_bytes: int) -> list[GPU]:
    """Apple silicon's GPU (unified memory: its VRAM is the RAM) on macOS arm64; [] elsewhere."""
    if platform.system() != "Darwin" or platform.machine() != "arm64":
        return []
    return [GPU(cpu_name(), "metal", ram_bytes, unified=True)]
