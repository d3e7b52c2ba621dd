"""The CUDA backend: a GGUF on one or several GPUs, quantized weights kept in their block formats.

Quantized projections go through the Triton kernels of blocks.py (decode: the fused GEMV, and one grouped GEMV
per projection for the chosen experts; prefill: dequantize, then torch.matmul on tensor cores, TF32 unless
exact=True), float weights through torch.matmul; the layers' math is layers.py. Keys and values are cached in
float16 (float32 with exact=True or kv_type="f32"). Decode steps replay a CUDA graph
(graphs.py) when the model sits on one GPU. A model larger than one GPU is split by layers (placement.py).

`TorchModel` has Model's interface (tokenizer, generate, new_session, n_ctx, args), so `run` and the server work on
it unchanged. On a machine without CUDA it runs on the CPU through Triton's interpreter (tests only: slow).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from localcoder.cuda.layers import Positions, attention, gated_delta_net, moe
from localcoder.cuda.norms import rms_norm
from localcoder.cuda.rope import rope_tables
from localcoder.cuda.placement import default_devices, free_bytes, split_layers
from localcoder.errors import UserError
from localcoder.gguf_model import load_fields
from localcoder.model import LanguageModel, PrefixReuse, checked_ids, context_size
from localcoder.prefix_cache import PrefixCache, Snapshot
from localcoder.weights import load_weights

FLOAT_TYPES = ("F32", "F16", "BF16")


class DeviceWeight:
    """One tensor on the device: float32 values, or uint8 rows in a block format (`qtype`) of `cols` values.
    Block formats without a kernel here (llama.cpp's Q4_0/Q5_0/Q5_1 fallbacks, Q8_0 rows not a multiple of 256
    wide) are decoded once on load and kept as float32: in the K-quant mixes they are the few narrow tensors."""

    def __init__(self, raw: np.ndarray, qtype: str, shape: tuple[int, ...], device: torch.device):
        from localcoder.cuda.blocks import GROUP, TYPE_IDS
        from localcoder.kernels import cpu_matmul as K

        self.qtype, self.shape, self.device = qtype, shape, device
        if qtype not in FLOAT_TYPES and (qtype not in TYPE_IDS or shape[-1] % GROUP):
            from quant.quantize import dequantize
            rows = raw.reshape(-1, raw.shape[-1])
            decoded = dequantize(rows, _ggml(qtype), (rows.shape[0], shape[-1]))
            self.qtype, self.values = "F32", torch.from_numpy(np.array(decoded, np.float32).reshape(shape)).to(device)
        elif qtype in FLOAT_TYPES:
            values = K.float_weights(raw.reshape(-1, raw.shape[-1]), _ggml(qtype), shape[-1])
            self.values = torch.from_numpy(np.array(values, np.float32).reshape(shape)).to(device)
        else:
            self.raw = torch.from_numpy(np.array(raw)).to(device)  # a copy: the mapping is read-only

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, cols] @ W.T: one token through the fused GEMV, a prompt through dequantize and cuBLAS."""
        from localcoder.cuda.quant import dequantize, gemv

        if self.qtype in FLOAT_TYPES:
            return x @ self.values.T
        raw = self.raw.reshape(self.raw.shape[0], -1)
        if x.shape[0] == 1:
            return gemv(raw, self.qtype, x[0])[None]
        return x @ dequantize(raw, self.qtype, self.shape[-1]).T

    def grouped(self, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """[slots, rows]: expert experts[s] of this stacked tensor times x (one input [cols], or one per slot)."""
        from localcoder.cuda.quant import grouped_gemv

        if self.qtype in FLOAT_TYPES:
            inputs = x.expand(len(experts), -1) if x.dim() == 1 else x
            return torch.einsum("sc,src->sr", inputs, self.values[experts])
        return grouped_gemv(self.raw, self.qtype, experts, x)

    def grouped_gemm(self, x: torch.Tensor, experts, starts, src) -> torch.Tensor:
        """[slots, rows]: per group g, expert experts[g] of this stacked tensor times x[src[s]] for its slots
        (gemm.grouped_gemm's contract; float weights take one torch.matmul per group)."""
        from localcoder.cuda.gemm import grouped_gemm

        if self.qtype not in FLOAT_TYPES:
            return grouped_gemm(self.raw, self.qtype, x, experts, starts, src)
        y = torch.empty((int(starts[-1]), self.shape[1]), dtype=torch.float32, device=x.device)
        index = torch.from_numpy(np.asarray(src)).to(x.device)
        for g, e in enumerate(experts):
            a, b = int(starts[g]), int(starts[g + 1])
            y[a:b] = x[index[a:b]] @ self.values[int(e)].T
        return y

    def vector(self) -> torch.Tensor:
        return self.values.reshape(-1)

    @property
    def nbytes(self) -> int:
        data = self.values if self.qtype in FLOAT_TYPES else self.raw
        return data.numel() * data.element_size()


@contextmanager
def out_of_memory_as_user_error(what: str):
    """A GPU allocation that fails while loading becomes a one-line error saying what did not fit."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        free = torch.cuda.mem_get_info()[0] / 2**30 if torch.cuda.is_available() else 0.0
        raise UserError(f"{what} do not fit in GPU memory ({free:.1f} GiB free now): use a smaller quant, a shorter "
                        "context, a smaller --expert-cache or the hybrid runtime") from None


def kv_dtype(kv_type: str) -> torch.dtype:
    """The torch dtype of a profile's kv_cache type; the CUDA backends cache float16 or float32."""
    types = {"f16": torch.float16, "f32": torch.float32}
    if kv_type not in types:
        raise UserError(f"KV cache type {kv_type!r}: the CUDA backends cache keys and values as f16 or f32")
    return types[kv_type]


def _ggml(name: str):
    from gguf import GGMLQuantizationType as T
    return T[name]


class TorchModel(LanguageModel):
    """A GGUF on torch devices (see the module docstring). devices: one per layer run, in order; `layer_devices`
    says which layer sits where. graphs: record decode steps as CUDA graphs (one CUDA device only)."""

    routed = None  # moe's routed-experts function (layers.device_experts); the hybrid runtime replaces it

    def __init__(self, path: Path, devices: list[str], n_ctx: int | None = None, graphs: bool = True,
                 exact: bool = False, kv_type: str | None = None):
        fields, files = load_fields(Path(path))
        super().__init__(path, fields, context_size(fields, n_ctx))
        weights = load_weights(files, self.args, populate=False, int8_activations=False)  # checked, as on the CPU
        self.in_ram = {name: w for name, w in weights.items() if self.keeps_in_ram(name)}
        self.devices = [torch.device(d) for d in devices]
        self.layer_devices = self._place(weights)
        self.w = {name: DeviceWeight(np.asarray(w.raw), w.qtype.name, w.shape, self._device_of(name))
                  for name, w in weights.items() if name not in self.in_ram}
        self.output = self.w.get("output.weight", self.w.get("token_embd.weight"))
        if self.output is None or self.output.device != self.devices[-1]:  # tied, the embedding elsewhere
            embedding = weights["token_embd.weight"]
            self.output = DeviceWeight(np.asarray(embedding.raw), embedding.qtype.name, embedding.shape,
                                       self.devices[-1])
        self.rope_tables = {d: rope_tables(self.n_ctx, self.args.rope_dim, self.args.rope_base, d)
                            for d in set(self.layer_devices)}
        self.graphs = graphs and len(self.devices) == 1 and self.devices[0].type == "cuda"
        self.exact = exact
        self.kv_dtype = kv_dtype(kv_type or ("f32" if exact else "f16"))

    def keeps_in_ram(self, name: str) -> bool:
        """Whether tensor `name` stays in host memory (`in_ram`, memory-mapped Weights) instead of going to its
        device (the hybrid runtime's routed experts)."""
        return False

    def _place(self, weights: dict) -> list[torch.device]:
        layer_bytes = [0] * self.args.n_layer
        for name, w in weights.items():
            if name.startswith("blk.") and name not in self.in_ram:
                layer_bytes[int(name.split(".")[1])] += w.nbytes
        first = weights["token_embd.weight"].nbytes
        last = weights.get("output.weight", weights["token_embd.weight"]).nbytes
        plan = split_layers(layer_bytes, [free_bytes(str(d)) for d in self.devices], first, last)
        return [self.devices[i] for i in plan]

    def _device_of(self, name: str) -> torch.device:
        if name.startswith("blk."):
            return self.layer_devices[int(name.split(".")[1])]
        return self.devices[0] if name == "token_embd.weight" else self.devices[-1]

    @classmethod
    def load(cls, path, device: str | list[str] | None = None, n_ctx: int | None = None, graphs: bool = True,
             exact: bool = False, kv_type: str | None = None) -> "TorchModel":
        """Put a GGUF's weights on `device` (block formats stay as bytes): "cuda:N", a list of devices to split
        the layers over, or None for the first GPU, or every GPU when the model does not fit one. exact: float32
        prefill products instead of TF32 and a float32 KV cache (tests); kv_type: "f16" or "f32"."""
        names = [device] if isinstance(device, str) else list(device or [])
        if any(torch.device(d).type == "cuda" for d in names) or not names:
            if not torch.cuda.is_available():
                raise UserError("no CUDA device: torch sees none (install torch with CUDA, or use the CPU runtime)")
        if not names:
            if not Path(path).is_file():
                raise UserError(f"{path} does not exist")
            names = default_devices(Path(path).stat().st_size)
        with out_of_memory_as_user_error("the weights"):
            return cls(path, names, n_ctx, graphs, exact, kv_type)

    def new_session(self, prefix_cache: PrefixCache | None = None) -> "TorchSession":
        return TorchSession(self, prefix_cache)

    def logits(self, token_ids) -> np.ndarray:
        """float32 [n_tokens, vocab] from one prefill at position 0."""
        return self.new_session().feed(token_ids, all_logits=True)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """float32 [T, H]: the embedding rows of tokens (on the first device)."""
        return _rows(self.w["token_embd.weight"], tokens)

    @contextmanager
    def precision(self):
        """TF32 tensor cores for prefill products unless exact (cuBLAS's setting is process-wide: restored)."""
        kept = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = not self.exact
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = kept

    def forward(self, state: list[dict], tokens: torch.Tensor, pos: Positions, all_logits: bool) -> torch.Tensor:
        """Logits [T or 1, vocab] of tokens (on the first device) at `pos`; updates `state` in place."""
        a, w = self.args, self.w
        h = self.embed(tokens)
        for i in range(a.n_layer):
            p, device = f"blk.{i}.", self.layer_devices[i]
            h = h.to(device)
            x = rms_norm(h, w[p + "attn_norm.weight"].vector(), a.eps)
            if a.recurrent[i]:
                h = h + gated_delta_net(x, w, p, a, state[i])
            else:
                h = h + attention(x, w, p, a, state[i], pos.on(device), self.rope_tables[device])
            h = h + moe(rms_norm(h, w[p + "post_attention_norm.weight"].vector(), a.eps), w, p, a, self.routed)
        h = (h if all_logits else h[-1:]).to(self.devices[-1])
        return self.output.matmul(rms_norm(h, w["output_norm.weight"].vector(), a.eps))


class TorchSession(PrefixReuse):
    """A sequence on the device(s): per layer keys/values (grown by doubling) or conv and delta-rule state, and
    its length as a device tensor (`position`) that a recorded decode step reads."""

    MIN_CAPACITY = 256

    def __init__(self, model: TorchModel, prefix_cache: PrefixCache | None = None):
        self.model = model
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache()
        self.position = torch.zeros(1, dtype=torch.int64, device=model.devices[0])
        self.graph = None
        a = model.args
        channels = 2 * a.nk * a.dk + a.nv * a.dv
        self.layers = [{"conv": torch.zeros((a.conv_kernel - 1, channels), device=dev),
                        "S": torch.zeros((a.nv, a.dk, a.dv), device=dev)} if recurrent else
                       {"k": torch.zeros((0, a.n_head_kv, a.head_dim), dtype=model.kv_dtype, device=dev),
                        "v": torch.zeros((0, a.n_head_kv, a.head_dim), dtype=model.kv_dtype, device=dev)}
                       for recurrent, dev in zip(a.recurrent, model.layer_devices)]
        self.reset()

    def feed(self, token_ids, all_logits: bool = False) -> np.ndarray:
        """Continue with token_ids: logits of the last token (float32 [vocab]), or of all with all_logits."""
        ids = checked_ids(token_ids, len(self.tokens), self.model.args.vocab, self.model.n_ctx)
        self._reserve(len(self.tokens) + len(ids))
        with torch.no_grad(), self.model.precision():
            if len(ids) == 1 and not all_logits:
                logits = self._decode(int(ids[0]))
            else:
                tokens = torch.from_numpy(ids).to(self.model.devices[0])
                logits = self.model.forward(self.layers, tokens, Positions(self.position, len(ids), len(self.tokens)),
                                            all_logits)
            out = logits.float().cpu().numpy()
            self.position += len(ids)
        self.model.computed_tokens += len(ids)
        self.tokens.extend(int(t) for t in ids)
        return out if all_logits else out[-1]

    def _decode(self, token: int) -> torch.Tensor:
        if not self.model.graphs:
            tokens = torch.tensor([token], device=self.model.devices[0])
            return self.model.forward(self.layers, tokens, Positions(self.position, 1, None), False)
        if self.graph is None:
            from localcoder.cuda.graphs import DecodeGraph
            self.graph = DecodeGraph(self.model, self)
        return self.graph.run(token)

    def _reserve(self, length: int) -> None:
        """KV rows for `length` tokens: capacity doubles when short (a recorded graph is then dropped)."""
        for layer in self.layers:
            if "k" in layer and layer["k"].shape[0] < length:
                capacity = max(self.MIN_CAPACITY, 2 * layer["k"].shape[0], length)
                for name in ("k", "v"):
                    grown = layer[name].new_zeros((capacity, *layer[name].shape[1:]))
                    grown[:layer[name].shape[0]] = layer[name]
                    layer[name] = grown
                self.graph = None

    def snapshot(self) -> Snapshot:
        """The session's state in host memory (the prefix cache's budget is RAM; VRAM is for weights and experts)."""
        n = len(self.tokens)
        return Snapshot(tuple(self.tokens), [{k: (v[:n] if k in ("k", "v") else v).to("cpu", copy=True)
                                              for k, v in layer.items()} for layer in self.layers])

    def restore(self, snapshot: Snapshot) -> None:
        """Copy a snapshot into this session's own tensors (a recorded graph stays valid)."""
        n = len(snapshot.tokens)
        self._reserve(n)
        for layer, saved in zip(self.layers, snapshot.layers):
            for name, value in saved.items():
                layer[name][:value.shape[0]].copy_(value)
        self.tokens = list(snapshot.tokens)
        self.position.fill_(n)

    def reset(self) -> None:
        for layer in self.layers:  # cached keys/values past the length are never read
            for name in ("conv", "S"):
                if name in layer:
                    layer[name].zero_()
        self.tokens = []
        self.position.zero_()


def _rows(weight: DeviceWeight, tokens: torch.Tensor) -> torch.Tensor:
    """Embedding rows of `tokens` (float32 [T, H])."""
    from localcoder.cuda.quant import dequantize

    if weight.qtype in FLOAT_TYPES:
        return weight.values[tokens]
    return dequantize(weight.raw[tokens], weight.qtype, weight.shape[-1])
