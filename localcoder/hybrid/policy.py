"""Which routed experts sit in the device's slots: admission and eviction keyed by router frequency.

Every (layer, expert) has a decayed use count: each use adds 1 and every step multiplies all counts by `decay`.
A missed expert takes a free slot, or the slot of the resident with the lowest count (least recently used among
equals) when its own count is higher; otherwise it stays out and its work is done where it lives. Residents used
in the current step are never evicted: their slots are being read in it. Pinned experts
(a saved router profile) never leave. The cache is the policy; the bytes live in hybrid/slots.py.

Because all counts decay by the same factor per step, their order only changes when one is used: a count is kept
as log(count) - t·log(decay) ("log count at step 0"), which never needs updating, and residents sit in a heap on
it (stale entries skipped), so an admission costs O(log slots) even with thousands of slots.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from dataclasses import dataclass

Key = tuple[int, int]  # (layer, expert)
DECAY = 0.9  # per step: chosen on synthetic traces (docs/PERFORMANCE.md): skew rewards slow decay, locality fast


@dataclass
class LayerStats:
    hits: int = 0
    misses: int = 0
    admissions: int = 0
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / max(1, self.hits + self.misses)


class ExpertCache:
    """`n_slots` device slots shared by all layers' experts (see the module docstring)."""

    def __init__(self, n_slots: int, decay: float = DECAY, pinned: list[Key] = ()):
        if n_slots < 0 or not 0 < decay <= 1:
            raise ValueError("n_slots must be >= 0 and decay in (0, 1]")
        self.n_slots, self.log_decay = n_slots, math.log(decay)
        self.slot_of: dict[Key, int] = {}
        self.free = list(range(n_slots - 1, -1, -1))
        self.level: dict[Key, float] = {}  # log count at step 0
        self.last_use: dict[Key, int] = {}
        self.heap: list[tuple[float, int, Key]] = []
        self.step = 0
        self.stats: dict[int, LayerStats] = defaultdict(LayerStats)
        self.pinned = set(pinned)
        if len(self.pinned) > n_slots:
            raise ValueError(f"{len(self.pinned)} pinned experts do not fit {n_slots} slots")
        for key in pinned:
            self._place(key, self.free.pop())

    def tick(self) -> None:
        """One step (a decoded token, or a prompt chunk) has passed: every count decays once."""
        self.step += 1

    def lookup(self, layer: int, uses: dict[int, int]) -> tuple[dict[int, int], list[int]]:
        """Record `uses` (expert -> tokens routed to it) in `layer`: ({expert: slot} of the residents, [missed])."""
        hits, misses = {}, []
        for expert, n in uses.items():
            key = (layer, expert)
            self._use(key, n)
            if key in self.slot_of:
                hits[expert] = self.slot_of[key]
            else:
                misses.append(expert)
        self.stats[layer].hits += len(hits)
        self.stats[layer].misses += len(misses)
        return hits, misses

    def admit(self, layer: int, expert: int) -> tuple[int, Key | None] | None:
        """A slot for a missed expert, and the key evicted to free it (None when the slot was free); None when
        the expert is colder than every evictable resident (or there are no slots)."""
        key = (layer, expert)
        if self.free:
            slot, victim = self.free.pop(), None
        else:
            victim = self._coldest()
            if victim is None or (self.level[victim], self.last_use[victim]) >= (self.level[key], self.last_use[key]):
                return None
            slot = self.slot_of.pop(victim)
            self.stats[victim[0]].evictions += 1
        self._place(key, slot)
        self.stats[layer].admissions += 1
        return slot, victim

    def _use(self, key: Key, n: int) -> None:
        now = self.step * self.log_decay  # log of decay^step: counts at step 0 are scaled by decay^-step
        old = self.level.get(key)
        count = n if old is None else math.exp(old + now) + n
        self.level[key] = math.log(count) - now
        self.last_use[key] = self.step
        if key in self.slot_of:
            heapq.heappush(self.heap, (self.level[key], self.step, key))

    def _place(self, key: Key, slot: int) -> None:
        self.slot_of[key] = slot
        self.level.setdefault(key, -math.inf)
        self.last_use.setdefault(key, -1)
        heapq.heappush(self.heap, (self.level[key], self.last_use[key], key))

    def _coldest(self) -> Key | None:
        """The evictable resident with the lowest (count, last use); None when every resident is pinned or busy."""
        busy, found = [], None
        while self.heap:
            level, used, key = self.heap[0]
            if key not in self.slot_of or (level, used) != (self.level[key], self.last_use[key]) or key in self.pinned:
                heapq.heappop(self.heap)  # stale (evicted, or used since), or pinned: never evicted
            elif used == self.step:
                busy.append(heapq.heappop(self.heap))  # used in this step: put back below
            else:
                found = key
                break
        for entry in busy:
            heapq.heappush(self.heap, entry)
        return found
