"""The device side of the expert cache: a pool of equal slots, each holding one routed expert's three projections
(gate, up, down) as their GGUF block bytes, copied from the memory-mapped file (each expert is contiguous in it).

A slot is as large as the largest expert of any layer (llama.cpp's mixes give some layers' down projections more
bits), so one pool serves every layer; a layer's experts are read through a strided view of the pool. On CUDA,
copies go through a pinned staging buffer; elsewhere (tests: the CPU stands in for the device) they are plain
copies. Every copied byte is counted, and the pool never exceeds its budget.
"""

from __future__ import annotations

import numpy as np
import torch

PROJECTIONS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


class ExpertSlots:
    """`n_slots` slots on `device`; `expert_bytes[proj]` is the largest expert's bytes of each projection.
    On a CPU device (the tests' stand-in) the pool is host memory and copies are counted the same way."""

    def __init__(self, device: torch.device, n_slots: int, expert_bytes: dict[str, int],
                 staging: torch.Tensor | None = None):
        self.device, self.n_slots, self.expert_bytes = device, n_slots, dict(expert_bytes)
        self.pool = {proj: torch.zeros((n_slots, size), dtype=torch.uint8, device=device)
                     for proj, size in self.expert_bytes.items()}
        self.staging = staging  # pinned host buffer of the largest projection, shared by pools of one model
        if staging is None and device.type == "cuda":
            self.staging = torch.empty(max(self.expert_bytes.values()), dtype=torch.uint8, pin_memory=True)
        self.bytes_copied = 0

    @classmethod
    def within(cls, device: torch.device, budget_bytes: int, expert_bytes: dict[str, int],
               most: int) -> "ExpertSlots":
        """As many slots as `budget_bytes` holds, at most `most` (every expert of the model)."""
        return cls(device, min(most, max(0, int(budget_bytes) // sum(expert_bytes.values()))), expert_bytes)

    @property
    def nbytes(self) -> int:
        return sum(int(t.numel()) for t in self.pool.values())

    def fill(self, slot: int, experts: dict[str, np.ndarray]) -> None:
        """Copy one expert (its bytes per projection, from the mapped file) into `slot`."""
        for proj, raw in experts.items():
            flat, n = raw.reshape(-1), raw.nbytes
            if self.staging is None:  # host memory standing in for the device
                self.pool[proj][slot, :n].numpy()[:] = flat
            else:
                self.staging.numpy()[:n] = flat
                self.pool[proj][slot, :n].copy_(self.staging[:n], non_blocking=True)
                torch.cuda.current_stream(self.device).synchronize()  # the staging buffer is reused next
            self.bytes_copied += n

    def view(self, proj: str, rows: int, row_bytes: int) -> torch.Tensor:
        """uint8 [n_slots, rows, row_bytes]: every slot read as one expert of a layer with this row layout."""
        return self.pool[proj].as_strided((self.n_slots, rows, row_bytes), (self.expert_bytes[proj], row_bytes, 1))
