"""Token sampling: penalties, top-k, top-p, min-p, temperature, a seeded draw (llama.cpp's sampler chain order).

Defaults are the Qwen3-Coder-Next model card's: temperature 1.0, top_p 0.95, top_k 40, min_p 0.01. Temperature 0
means greedy (the highest logit after penalties).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from localcoder.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.01
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    penalty_last_n: int = 64  # how many recent tokens the penalties look at (llama.cpp's repeat_last_n)
    seed: int | None = None

    def __post_init__(self):
        checks = [(self.temperature >= 0, "temperature must be >= 0"), (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
                  (self.top_k >= 0, "top_k must be >= 0 (0 = off)"), (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
                  (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
                  (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
                  (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
                  (self.penalty_last_n >= 0, "penalty_last_n must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


class Sampler:
    """Draws tokens for one generation (its random stream is seeded once)."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray, history: list[int]) -> int:
        p = self.params
        logits = apply_penalties(np.asarray(logits, np.float64), history[-p.penalty_last_n:] if p.penalty_last_n else [],
                                 p.repetition_penalty, p.presence_penalty, p.frequency_penalty)
        if p.temperature == 0:
            return int(np.argmax(logits))
        ids, probs = candidates(logits, p.top_k, p.top_p, p.min_p, p.temperature)
        return int(ids[self.rng.choice(len(ids), p=probs)])


def apply_penalties(logits: np.ndarray, recent: list[int], repetition: float, presence: float,
                    frequency: float) -> np.ndarray:
    """llama.cpp's penalties: repetition divides positive / multiplies negative logits of seen tokens; presence
    and frequency subtract per seen token and per occurrence."""
    if not recent or (repetition == 1.0 and presence == 0.0 and frequency == 0.0):
        return logits
    ids, counts = np.unique(np.asarray(recent), return_counts=True)
    out = logits.copy()
    seen = out[ids]
    seen = np.where(seen > 0, seen / repetition, seen * repetition)
    out[ids] = seen - counts * frequency - presence
    return out


def candidates(logits: np.ndarray, top_k: int, top_p: float, min_p: float,
               temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, probabilities) left after top-k, top-p and min-p, with the temperature applied last."""
    order = np.argsort(-logits, kind="stable")
    if top_k > 0:
        order = order[:top_k]
    kept = logits[order]
    probs = np.exp(kept - kept[0])
    probs /= probs.sum()
    keep = int(np.searchsorted(np.cumsum(probs), top_p) + 1) if top_p < 1 else len(order)
    order, kept, probs = order[:keep], kept[:keep], probs[:keep]
    if min_p > 0:
        mask = probs >= min_p * probs[0]
        order, kept = order[mask], kept[mask]
    scaled = np.exp((kept - kept[0]) / temperature)
    return order, scaled / scaled.sum()
