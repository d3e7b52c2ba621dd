"""The hybrid runtime: attention, DeltaNet, shared experts, router and embedding on the GPU (the CUDA backend);
routed experts in RAM, memory-mapped from the GGUF, with a VRAM cache of slots for the ones the router uses most.

Per layer and call, the router's choices come to the host; the cache (policy.ExpertCache) records the uses and
says which experts are resident. Each missed expert is admitted into a slot when it is hotter than the coldest
resident (copied once, then computed on the device), else handled where the cost model says: computed on the CPU
from RAM (the CPU runtime's kernels, float32 activations) while the device computes the hits, or streamed over
PCIe into a scratch area and computed on the device (what pays for a prompt's many tokens). Logits are the same
at every budget up to float rounding: every path multiplies the same decoded weights.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from localcoder.cuda.model import TorchModel, out_of_memory_as_user_error
from localcoder.cuda.gemm import grouped_gemm
from localcoder.cuda.layers import routing_pairs
from localcoder.cuda.quant import grouped_gemv
from localcoder.errors import UserError
from localcoder.hybrid.policy import DECAY, ExpertCache
from localcoder.kernels.elementwise import swiglu
from localcoder.hybrid.simulate import hottest, load_trace, save_trace
from localcoder.hybrid.slots import PROJECTIONS, ExpertSlots

MAX_TRACE_TOKENS = 1 << 16  # router choices kept in memory for `trace` (a simulator input), per model
PIN_SHARE = 0.5  # of the slots, pinned from a saved router trace: the rest adapt to the session


@dataclass
class MissCosts:
    """Seconds to handle a missed expert used by n tokens: on the CPU (read its bytes from RAM once, multiply)
    or streamed to the device (copy its bytes over PCIe; the device's multiply is taken as free)."""

    ram_gbs: float = 40.0
    cpu_gmacs: float = 40.0  # float32 multiply-adds per second, all cores
    pcie_gbs: float = 20.0  # pinned host-to-device

    @classmethod
    def measured(cls, device: int = 0) -> "MissCosts":
        """Host RAM and this GPU's pinned PCIe bandwidth, each measured once; CPU multiply rate assumed."""
        from localcoder.hardware import cuda_bandwidths, ram_bandwidth

        return cls(ram_gbs=ram_bandwidth(), pcie_gbs=cuda_bandwidths(device)[1])

    def on_cpu(self, n_tokens: int, nbytes: int, macs_per_token: int) -> bool:
        """Whether a missed expert of `nbytes` used by n_tokens is cheaper on the CPU than streamed."""
        cpu = nbytes / (self.ram_gbs * 1e9) + n_tokens * macs_per_token / (self.cpu_gmacs * 1e9)
        return cpu <= nbytes / (self.pcie_gbs * 1e9)


@dataclass
class MissStats:
    cpu_experts: int = 0
    streamed_experts: int = 0
    streamed_bytes: int = 0
    cpu_seconds: float = 0.0  # computing missed experts on the CPU
    copy_seconds: float = 0.0  # copying experts to the device (slots and streamed), synchronous for now


class HybridModel(TorchModel):
    """A GGUF with its routed experts in RAM and `budget_bytes` of expert slots on `device` (see the module
    docstring). pinned: (layer, expert) pairs kept resident (a saved router profile); embedding_in_ram: look up
    token embeddings on the CPU too (as the small-GPU profiles place them)."""

    def __init__(self, path: Path, device: str, budget_bytes: int, n_ctx: int | None = None,
                 costs: MissCosts | None = None, pinned=(), decay: float = DECAY, exact: bool = False,
                 embedding_in_ram: bool = False, pin_from: np.ndarray | None = None, kv_type: str | None = None):
        self.embedding_in_ram = embedding_in_ram
        super().__init__(path, [device], n_ctx, graphs=False, exact=exact, kv_type=kv_type)
        self._check_expert_types()
        self.costs = costs or MissCosts()
        largest = {proj: max(self.in_ram[f"blk.{i}.{proj}.weight"].raw[0].nbytes for i in range(self.args.n_layer))
                   for proj in PROJECTIONS}
        self.slots = ExpertSlots.within(self.devices[0], budget_bytes, largest, self.args.n_layer * self.args.n_expert)
        if pin_from is not None:  # a saved router trace: its hottest experts fill up to PIN_SHARE of the slots
            if pin_from.shape[1] != self.args.n_layer or pin_from.max() >= self.args.n_expert:
                raise UserError(f"the router trace has {pin_from.shape[1]} layers and experts up to "
                                f"{pin_from.max()}: it was recorded on another model (delete it or pass another)")
            room = int(self.slots.n_slots * PIN_SHARE)
            pinned = list(dict.fromkeys([*pinned, *hottest(pin_from, room)]))[:max(room, len(pinned))]
        self.cache = ExpertCache(self.slots.n_slots, decay, list(pinned))
        for layer in range(self.args.n_layer):
            self.cache.stats[layer]  # every layer listed from the start (/metrics reads them from another thread)
        for layer, expert in pinned:
            self.slots.fill(self.cache.slot_of[(layer, expert)], self._expert_bytes(layer, expert))
        self.misses = MissStats()
        self.trace: list[np.ndarray] = []  # per call: int [tokens, layers, top_k]
        self._routes: list[np.ndarray] = []

    @classmethod
    def load(cls, path, device: str | None = None, budget_bytes: int = 0, n_ctx: int | None = None,
             embedding_in_ram: bool = False, router_trace: Path | None = None,
             kv_type: str | None = None) -> "HybridModel":
        """Open a GGUF for the hybrid runtime on `device` (default the first GPU), with miss costs measured on
        this machine (RAM and PCIe bandwidth). router_trace: a saved trace (save_trace) whose hottest experts are
        pinned, when the file exists."""
        if not torch.cuda.is_available():
            raise UserError("the hybrid runtime needs a CUDA GPU and torch sees none (install torch with CUDA, "
                            "or use the CPU runtime)")
        pin_from = load_trace(router_trace) if router_trace and Path(router_trace).exists() else None
        device = device or "cuda:0"
        costs = MissCosts.measured(torch.device(device).index or 0)
        with out_of_memory_as_user_error("the resident weights and the expert cache"):
            return cls(path, device, budget_bytes, n_ctx, costs, embedding_in_ram=embedding_in_ram,
                       pin_from=pin_from, kv_type=kv_type)

    def keeps_in_ram(self, name: str) -> bool:
        return any(name.endswith(f".{proj}.weight") for proj in PROJECTIONS) or (
            self.embedding_in_ram and name == "token_embd.weight")

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.embedding_in_ram:
            return super().embed(tokens)
        return torch.from_numpy(self.in_ram["token_embd.weight"].rows(tokens.cpu().numpy())).to(self.devices[0])

    def _check_expert_types(self) -> None:
        from localcoder.cuda.blocks import GROUP, TYPE_IDS

        for name, w in self.in_ram.items():
            if name.endswith("_exps.weight") and (w.qtype.name not in TYPE_IDS or w.cols % GROUP):
                raise UserError(f"{name} is {w.qtype.name} with {w.cols} columns: the hybrid runtime's expert slots "
                                f"run {', '.join(TYPE_IDS)} rows of whole {GROUP}-value groups")

    def plan(self) -> list[tuple[str, str]]:
        """Where everything is, as (what, where and how much) rows for a printed table."""
        gib = 1 << 30
        on_device = sum(w.nbytes for w in self.w.values())
        in_ram = sum(w.nbytes for name, w in self.in_ram.items() if name.endswith("_exps.weight"))
        per_expert = sum(self.slots.expert_bytes.values())
        total = self.args.n_layer * self.args.n_expert
        resident = "attention, DeltaNet, shared experts, router, " + ("output" if self.embedding_in_ram else
                                                                        "embedding, output")
        return [(resident, f"{self.devices[0]}: {on_device / gib:.2f} GiB"),
                ("routed experts", f"RAM (memory-mapped): {in_ram / gib:.2f} GiB, {total} experts of "
                 f"{per_expert / (1 << 20):.2f} MiB"),
                ("expert cache", f"{self.devices[0]}: {self.slots.n_slots} slots ({self.slots.n_slots / total:.0%} "
                 f"of the experts), {self.slots.nbytes / gib:.2f} GiB"),
                ("misses", f"CPU at {self.costs.ram_gbs:.0f} GB/s or PCIe at {self.costs.pcie_gbs:.0f} GB/s, "
                 "whichever is faster per expert")] + ([("token embedding", "RAM (memory-mapped): "
                 f"{self.in_ram['token_embd.weight'].nbytes / gib:.2f} GiB")] if self.embedding_in_ram else [])

    def forward(self, state, tokens, pos, all_logits):
        """TorchModel.forward, recording the router's choices and ending one step of the cache's decay."""
        self._routes = []
        logits = super().forward(state, tokens, pos, all_logits)
        if sum(len(t) for t in self.trace) < MAX_TRACE_TOKENS:
            self.trace.append(np.stack(self._routes, axis=1))
        self.cache.tick()
        return logits

    def routed(self, x, w, p, top, weights) -> torch.Tensor:
        """The routed experts' weighted sum for layer `p` (layers.moe's hook): cache lookups, admissions, and each
        expert computed from a slot, a streamed scratch copy or the CPU."""
        layer = int(p.split(".")[1])
        chosen = top.cpu().numpy()
        self._routes.append(chosen)
        uses = Counter(chosen.reshape(-1).tolist())
        hits, misses = self.cache.lookup(layer, uses)
        resident, streamed, on_cpu = dict(hits), [], []
        copy_start = time.perf_counter()
        for e in misses:
            admitted = self.cache.admit(layer, e)
            if admitted is not None:
                self.slots.fill(admitted[0], self._expert_bytes(layer, e))
                resident[e] = admitted[0]
            elif self.costs.on_cpu(uses[e], self._bytes_per_expert(layer), self._macs_per_expert(layer)):
                on_cpu.append(e)
            else:
                streamed.append(e)
        scratch = None
        if streamed:
            scratch = ExpertSlots(self.devices[0], len(streamed), self.slots.expert_bytes, self.slots.staging)
            for slot, e in enumerate(streamed):
                scratch.fill(slot, self._expert_bytes(layer, e))
            self.misses.streamed_experts += len(streamed)
            self.misses.streamed_bytes += scratch.bytes_copied
        self.misses.copy_seconds += time.perf_counter() - copy_start
        # launched first, so the device computes the hits while the CPU computes its misses
        out = self._on_device(x, p, chosen, weights, resident, self.slots)
        if scratch is not None:
            out = out + self._on_device(x, p, chosen, weights, dict(zip(streamed, range(len(streamed)))), scratch)
        if on_cpu:
            cpu_start = time.perf_counter()
            out = out + torch.from_numpy(self._on_cpu(x, p, chosen, weights, on_cpu)).to(x.device)
            self.misses.cpu_experts += len(on_cpu)
            self.misses.cpu_seconds += time.perf_counter() - cpu_start
        return out

    def _on_device(self, x, p, chosen, weights, slot_of: dict[int, int], slots: ExpertSlots) -> torch.Tensor:
        """The weighted sum over the (token, rank) pairs whose expert is in `slot_of`, from slots' views."""
        out = torch.zeros_like(x)
        if not slot_of:
            return out
        views = {proj: self._view(slots, p, proj) for proj in PROJECTIONS}
        gate, up, down = (self.in_ram[f"{p}{proj}.weight"].qtype.name for proj in PROJECTIONS)
        if x.shape[0] == 1:  # decode: the resident experts in one launch per projection
            ranks = [r for r, e in enumerate(chosen[0]) if e in slot_of]
            ids = torch.tensor([slot_of[chosen[0][r]] for r in ranks], device=x.device)
            hidden = torch.nn.functional.silu(grouped_gemv(views["ffn_gate_exps"], gate, ids, x[0])) * \
                grouped_gemv(views["ffn_up_exps"], up, ids, x[0])
            y = grouped_gemv(views["ffn_down_exps"], down, ids, hidden)
            return (weights[0, ranks][:, None] * y).sum(dim=0, keepdim=True)
        tokens, ranks, experts, starts = routing_pairs(chosen, list(slot_of))
        ids = [slot_of[e] for e in experts]
        hidden = torch.nn.functional.silu(grouped_gemm(views["ffn_gate_exps"], gate, x, ids, starts, tokens)) * \
            grouped_gemm(views["ffn_up_exps"], up, x, ids, starts, tokens)
        y = grouped_gemm(views["ffn_down_exps"], down, hidden, ids, starts, np.arange(len(tokens)))
        t, r = torch.from_numpy(tokens).to(x.device), torch.from_numpy(ranks).to(x.device)
        return out.index_add_(0, t, weights[t, r][:, None] * y)

    def _on_cpu(self, x, p, chosen, weights, experts: list[int]) -> np.ndarray:
        """The same sum for experts computed on the CPU from the mapped file (float32 activations)."""
        tokens, ranks, ids, starts = routing_pairs(chosen, experts)
        xh = x.cpu().numpy()
        gate = self.in_ram[p + "ffn_gate_exps.weight"].grouped_matmul(xh, ids, starts, tokens)
        up = self.in_ram[p + "ffn_up_exps.weight"].grouped_matmul(xh, ids, starts, tokens)
        hidden = swiglu(gate, up)
        down = self.in_ram[p + "ffn_down_exps.weight"].grouped_matmul(hidden, ids, starts, np.arange(len(tokens)))
        out = np.zeros(xh.shape, np.float32)
        np.add.at(out, tokens, down * weights.cpu().numpy()[tokens, ranks][:, None])
        return out

    def _view(self, slots: ExpertSlots, p: str, proj: str) -> torch.Tensor:
        raw = self.in_ram[f"{p}{proj}.weight"].raw
        return slots.view(proj, raw.shape[1], raw[0, 0].nbytes)

    def _expert_bytes(self, layer: int, expert: int) -> dict[str, np.ndarray]:
        return {proj: self.in_ram[f"blk.{layer}.{proj}.weight"].raw[expert] for proj in PROJECTIONS}

    def _bytes_per_expert(self, layer: int) -> int:
        return sum(self.in_ram[f"blk.{layer}.{proj}.weight"].raw[0].nbytes for proj in PROJECTIONS)

    def _macs_per_expert(self, layer: int) -> int:
        return sum(int(np.prod(self.in_ram[f"blk.{layer}.{proj}.weight"].shape[1:])) for proj in PROJECTIONS)

    def router_trace(self) -> np.ndarray:
        """int [tokens, layers, top_k]: the experts each layer chose for every token run so far (simulate.py)."""
        return np.concatenate(self.trace) if self.trace else np.zeros((0, self.args.n_layer, self.args.n_expert_used),
                                                                        np.int64)

    def save_trace(self, path: Path) -> None:
        """Add this model's router trace to the one saved in `path` (simulate.save_trace)."""
        save_trace(path, self.router_trace())

