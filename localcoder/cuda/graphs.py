"""Decode through a CUDA graph: the whole one-token forward (several hundred kernel launches for 48 layers) is
recorded once per session and replayed per token, so Python and launch overhead do not set the decode speed.

The recorded step reads the token from `token` and the position from the session's `position` tensor, and
writes into the session's own state tensors, so those must stay the same objects for the graph's life: sessions
copy into them (restore) and drop the graph only when the KV cache grows (new tensors).
"""

from __future__ import annotations

import torch

from localcoder.cuda.layers import Positions

WARMUP_STEPS = 2  # compile every Triton kernel and settle torch's allocator before recording


class DecodeGraph:
    """One session's decode step, recorded (needs a CUDA device; the session's layers on one device)."""

    def __init__(self, model, session):
        self.token = torch.zeros(1, dtype=torch.int64, device=session.position.device)
        step = Positions(session.position, 1, None)
        saved = [{k: v.clone() for k, v in layer.items()} for layer in session.layers]  # warm-up writes state
        stream = torch.cuda.Stream(device=self.token.device)
        stream.wait_stream(torch.cuda.current_stream(self.token.device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                model.forward(session.layers, self.token, step, False)
        torch.cuda.current_stream(self.token.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = model.forward(session.layers, self.token, step, False)
        for layer, kept in zip(session.layers, saved):
            for name, value in kept.items():
                layer[name].copy_(value)

    def run(self, token: int) -> torch.Tensor:
        """The last token's logits [1, vocab] (a view into the graph's output: read before the next run)."""
        self.token.fill_(token)
        self.graph.replay()
        return self.logits
