"""Prefix reuse for a hybrid model: snapshots of sessions at checkpoints along prompts.

A DeltaNet layer's state exists only at the position it reached, so a plain KV prefix cannot be cut at any length
the way a pure-attention model's can. Sessions therefore snapshot their whole state (recurrent states copied, KV
rows shared, see layers.KVCache) at a few checkpoints while feeding a prompt: message starts, the last message
start, and the prompt's end. A later prompt resumes from the longest snapshot that is a prefix of it.

The cache is bounded in bytes (least recently used snapshots go first); KV rows shared by several snapshots are
counted once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from localcoder.layers import KVCache

DEFAULT_BUDGET = 2 << 30


@dataclass
class Snapshot:
    """A session's state after `tokens`: per layer, a shared KV cache or copied DeltaNet states."""

    tokens: tuple[int, ...]
    layers: list

    @property
    def recurrent_bytes(self) -> int:
        return sum(a.nbytes for layer in self.layers if isinstance(layer, dict) for a in layer.values())


@dataclass
class CacheStats:
    lookups: int = 0
    hits: int = 0
    reused_tokens: int = 0
    snapshots_taken: int = 0
    evictions: int = 0


class PrefixCache:
    """Snapshots keyed by their token prefix, looked up by the longest prefix of a new prompt, LRU within
    `budget_bytes`. `min_gap`: fewest tokens between two message-start checkpoints of one prompt."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET, min_gap: int = 256):
        self.budget_bytes, self.min_gap = int(budget_bytes), int(min_gap)
        self.entries: OrderedDict[tuple[int, ...], Snapshot] = OrderedDict()
        self.stats = CacheStats()

    def longest_prefix(self, prompt: list[int]) -> Snapshot | None:
        """The longest snapshot whose tokens begin `prompt` and leave at least one token to feed."""
        self.stats.lookups += 1
        best = None
        for tokens, snap in self.entries.items():
            n = len(tokens)
            if n < len(prompt) and (best is None or n > len(best.tokens)) and tuple(prompt[:n]) == tokens:
                best = snap
        if best is not None:
            self.entries.move_to_end(best.tokens)
            self.stats.hits += 1
            self.stats.reused_tokens += len(best.tokens)
        return best

    def add(self, snapshot: Snapshot) -> None:
        self.entries[snapshot.tokens] = snapshot
        self.entries.move_to_end(snapshot.tokens)
        self.stats.snapshots_taken += 1
        while len(self.entries) > 1 and self.nbytes > self.budget_bytes:
            self.entries.popitem(last=False)
            self.stats.evictions += 1

    def clear(self) -> None:
        self.entries.clear()

    @property
    def nbytes(self) -> int:
        """Recurrent states of every snapshot plus each distinct KV row buffer once."""
        rows = {}
        for snap in self.entries.values():
            for layer in snap.layers:
                if isinstance(layer, KVCache):
                    rows[id(layer.rows)] = layer.rows.nbytes
        return sum(s.recurrent_bytes for s in self.entries.values()) + sum(rows.values())

    def checkpoints(self, prompt: list[int], start: int, message_start_id: int | None) -> list[int]:
        """Positions after which to snapshot while feeding prompt[start:]: message starts at least min_gap tokens
        apart, the last message start, and the end."""
        marks = [start + int(i) for i in np.flatnonzero(np.asarray(prompt[start:]) == message_start_id)]
        chosen, last = [], start
        for i, pos in enumerate(marks):
            if pos > start and (pos - last >= self.min_gap or i == len(marks) - 1):
                chosen.append(pos)
                last = pos
        return chosen + [len(prompt)]  # message starts lie before the end
