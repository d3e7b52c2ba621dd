"""Replay router traces against expert-cache policies and print hit rate against cache size.

A trace is int [steps, layers, top_k]: the experts each layer chose at each step (one decoded token). Traces are
recorded from real runs (HybridModel.trace, saved with numpy.save) or synthetic, with controllable skew (Zipf
popularity over each layer's experts, in a random order per layer) and locality (the chance that a slot repeats
the previous step's choice). Policies, all at the same number of slots:
- frequency: hybrid/policy.ExpertCache (decayed counts, recency tie-breaker, admission only when hotter);
- lru: every miss admitted, least recently used evicted;
- lfu: every miss admitted, fewest uses (never decayed) evicted;
- static: llama.cpp's --n-cpu-moe, the experts of the last layers that fit resident, the rest never.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np

from localcoder.errors import UserError
from localcoder.hybrid.policy import ExpertCache

POLICIES = ("frequency", "lru", "lfu", "static")
SAVED_TOKENS = 1 << 16  # a saved trace keeps the most recent tokens


def load_trace(path: Path, n_expert: int | None = None) -> np.ndarray:
    """A saved router trace, int [tokens, layers, top_k]; a UserError when the file is not one (of experts below
    n_expert, when given)."""
    try:
        trace = np.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the router trace {path}: {e}") from None
    if trace.ndim != 3 or trace.dtype.kind not in "iu" or trace.size == 0 or (n_expert and trace.max() >= n_expert):
        limit = f", experts below {n_expert}" if n_expert else ""
        raise UserError(f"{path} is not a router trace (integers: tokens x layers x top-k{limit})")
    return trace


def save_trace(path: Path, trace: np.ndarray) -> None:
    """Append `trace` to the one saved in `path` (same geometry), keep the last SAVED_TOKENS tokens; the file is
    written whole or not at all."""
    path = Path(path)
    if path.exists():
        old = load_trace(path)
        if old.shape[1:] == trace.shape[1:]:
            trace = np.concatenate([old, trace])
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        np.save(f, trace[-SAVED_TOKENS:].astype(np.int16))
    partial.replace(path)


def synthetic_trace(steps: int, layers: int, n_expert: int, top_k: int, skew: float = 0.0, locality: float = 0.0,
                    seed: int = 0) -> np.ndarray:
    """int32 [steps, layers, top_k]: skew 0 is uniform routing, 1 is Zipf(1) popularity; locality in [0, 1)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_expert + 1) ** skew
    probs = [popularity[rng.permutation(n_expert)] / popularity.sum() for _ in range(layers)]
    trace = np.empty((steps, layers, top_k), np.int32)
    for s in range(steps):
        for layer in range(layers):
            chosen = rng.choice(n_expert, top_k, replace=False, p=probs[layer])
            if s and locality:
                keep = [e for e in trace[s - 1, layer] if rng.random() < locality]
                chosen = np.array((keep + [e for e in chosen if e not in keep])[:top_k])
            trace[s, layer] = chosen
    return trace


def replay(trace: np.ndarray, policy: str, n_slots: int, n_expert: int) -> float:
    """The hit rate of `policy` with `n_slots` expert slots over `trace`."""
    steps, layers, _ = trace.shape
    if policy == "static":
        resident = min(layers, n_slots // n_expert)  # whole layers, the last ones (llama.cpp's -ncmoe N: first N)
        return resident / layers
    hits = total = 0
    cache = _make(policy, n_slots)
    for s in range(steps):
        for layer in range(layers):
            hits += cache.access(layer, trace[s, layer].tolist())
            total += trace.shape[2]
        cache.tick()
    return hits / max(1, total)


def hottest(trace: np.ndarray, n: int) -> list[tuple[int, int]]:
    """The n (layer, expert) pairs a trace used most: what to pin in the cache from a saved router profile."""
    tokens, layers, _ = trace.shape
    counts = Counter((layer, int(e)) for layer in range(layers) for e in trace[:, layer].reshape(-1))
    return [key for key, _ in counts.most_common(max(0, n))]


def hit_rate_table(trace: np.ndarray, n_expert: int, fractions=(0.05, 0.1, 0.25, 0.5)) -> list[dict]:
    """One row per cache size (a fraction of all experts): the hit rate of every policy."""
    layers = trace.shape[1]
    rows = []
    for f in fractions:
        slots = int(f * layers * n_expert)
        rows.append({"fraction": f, "slots": slots} | {p: replay(trace, p, slots, n_expert) for p in POLICIES})
    return rows


class _Frequency:
    def __init__(self, n_slots: int):
        self.cache = ExpertCache(n_slots)

    def access(self, layer: int, experts: list[int]) -> int:
        hits, misses = self.cache.lookup(layer, Counter(experts))
        for e in misses:
            self.cache.admit(layer, e)
        return len(hits)

    def tick(self) -> None:
        self.cache.tick()


class _LRU:
    def __init__(self, n_slots: int):
        self.n_slots, self.entries = n_slots, OrderedDict()

    def access(self, layer: int, experts: list[int]) -> int:
        hits = 0
        for e in experts:
            key = (layer, e)
            if key in self.entries:
                hits += 1
                self.entries.move_to_end(key)
            elif self.n_slots:
                if len(self.entries) >= self.n_slots:
                    self.entries.popitem(last=False)
                self.entries[key] = True
        return hits

    def tick(self) -> None:
        pass


class _LFU:
    def __init__(self, n_slots: int):
        self.n_slots, self.counts, self.resident, self.heap = n_slots, Counter(), set(), []

    def access(self, layer: int, experts: list[int]) -> int:
        hits = 0
        for e in experts:
            key = (layer, e)
            self.counts[key] += 1
            if key in self.resident:
                hits += 1
            elif self.n_slots:
                while len(self.resident) >= self.n_slots:
                    count, victim = heapq.heappop(self.heap)
                    if victim in self.resident and count == self.counts[victim]:
                        self.resident.discard(victim)
                self.resident.add(key)
            if key in self.resident:
                heapq.heappush(self.heap, (self.counts[key], key))
        return hits

    def tick(self) -> None:
        pass


def _make(policy: str, n_slots: int):
    makers = {"frequency": _Frequency, "lru": _LRU, "lfu": _LFU}
    if policy not in makers:
        raise ValueError(f"policy {policy!r}: choose one of {', '.join(POLICIES)}")
    return makers[policy](n_slots)
