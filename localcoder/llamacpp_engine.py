"""The llama.cpp engine: llama-cpp-python computes the logits, localcoder does everything else.

`LlamaCppModel` stands where `Model` stands — the server, `run` and `bench` use it unchanged — so tokenization,
the chat template, sampling, stop strings, tool calls and prefix reuse stay localcoder's, while the forward pass
is llama.cpp's (Metal on Apple silicon, CUDA where llama-cpp-python was built with it). Prefix snapshots are
llama.cpp's per-sequence state (KV cells and the DeltaNet states), so agent turns reuse their prefix here too.
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from localcoder.errors import UserError
from localcoder.gguf_model import load_fields
from localcoder.model import LanguageModel, PrefixReuse, checked_ids, context_size
from localcoder.prefix_cache import PrefixCache, Snapshot

SEQ = 0  # the one sequence a session runs


class LlamaCppModel(LanguageModel):
    """A GGUF run by llama.cpp, with the runtime's interface (tokenizer, generate, new_session, n_ctx, args)."""

    def __init__(self, path: Path, n_ctx: int | None = None, n_batch: int = 512, threads: int | None = None,
                 n_gpu_layers: int = 0, n_cpu_moe: int = 0):
        try:
            import llama_cpp
        except ImportError:
            raise UserError("the llama.cpp engine needs llama-cpp-python: pip install 'localcoder[llamacpp]'") from None
        fields, _ = load_fields(Path(path))
        super().__init__(path, fields, context_size(fields, n_ctx))
        self.n_batch = n_batch
        self.owner: LlamaCppSession | None = None  # the session whose state the llama.cpp context holds
        threads = threads or os.cpu_count() or 1
        try:
            with experts_on_cpu(min(n_cpu_moe, self.args.n_layer)):
                self.llm = llama_cpp.Llama(str(self.path), n_ctx=self.n_ctx, n_batch=n_batch,
                                           n_ubatch=min(n_batch, 512), n_threads=threads, n_threads_batch=threads,
                                           n_gpu_layers=n_gpu_layers, logits_all=False, verbose=False)
        except ValueError as e:
            raise UserError(f"llama.cpp could not load {self.path}: {e}") from None
        if self.llm.n_vocab() != self.args.vocab:
            raise UserError(f"llama.cpp sees {self.llm.n_vocab()} tokens in {self.path}, the metadata {self.args.vocab}")

    @classmethod
    def load(cls, path, n_ctx: int | None = None, n_batch: int = 512, threads: int | None = None,
             n_gpu_layers: int = 0, n_cpu_moe: int = 0) -> "LlamaCppModel":
        """Open a GGUF (any shard of a split one) in llama.cpp; n_gpu_layers as llama.cpp's -ngl, n_cpu_moe as its
        --n-cpu-moe (the routed experts of the first n_cpu_moe layers stay in RAM and run on the CPU)."""
        return cls(path, n_ctx, n_batch, threads, n_gpu_layers, n_cpu_moe)

    def new_session(self, prefix_cache: PrefixCache | None = None) -> "LlamaCppSession":
        """A session on the model's one llama.cpp context. Sessions take turns: one that finds the context used by
        another since its last feed rebuilds its state first. Not for concurrent use from several threads."""
        return LlamaCppSession(self, prefix_cache)

    def logits(self, token_ids) -> np.ndarray:
        """float32 [vocab]: the logits after the last token, from an empty context."""
        return self.new_session().feed(token_ids)


def cpu_moe_pattern(n_layers: int) -> str:
    """llama.cpp's --n-cpu-moe as one tensor-name pattern: the routed experts of layers 0..n_layers-1."""
    return r"blk\.(" + "|".join(str(i) for i in range(n_layers)) + r")\.ffn_(up|down|gate)_exps"


@contextmanager
def experts_on_cpu(n_layers: int):
    """While llama-cpp-python loads a model inside this block, the routed experts of its first n_layers layers are
    placed in CPU memory (llama.cpp's --n-cpu-moe). llama-cpp-python has no option for llama.cpp's tensor buffer
    overrides, so the default model parameters it starts from get them (a NULL-terminated array of
    {pattern, buffer type} with the CPU backend's buffer type)."""
    if n_layers <= 0:
        yield
        return
    import llama_cpp.llama as wrapper

    class Override(ctypes.Structure):  # llama.h: struct llama_model_tensor_buft_override
        _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]

    library = os.path.join(os.path.dirname(wrapper.llama_cpp.__file__), "lib", "libggml-cpu.so")
    cpu = ctypes.CDLL(library)
    cpu.ggml_backend_cpu_buffer_type.restype = ctypes.c_void_p
    overrides = (Override * 2)(Override(cpu_moe_pattern(n_layers).encode(), cpu.ggml_backend_cpu_buffer_type()),
                               Override(None, None))
    default = wrapper.llama_cpp.llama_model_default_params

    def with_overrides():
        params = default()
        params.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
        return params

    wrapper.llama_cpp.llama_model_default_params = with_overrides
    try:
        yield
    finally:
        wrapper.llama_cpp.llama_model_default_params = default


class LlamaCppSession(PrefixReuse):
    """A sequence in llama.cpp's context: feed tokens, get the last logits, snapshot and restore its state."""

    def __init__(self, model: LlamaCppModel, prefix_cache: PrefixCache | None = None):
        self.model, self.llm = model, model.llm
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache()
        self.tokens: list[int] = []
        self.reset()

    def feed(self, token_ids, all_logits: bool = False) -> np.ndarray:
        """Continue the sequence with token_ids; the logits after the last one (float32 [vocab])."""
        if all_logits:
            raise UserError("the llama.cpp engine returns the last token's logits only")
        ids = checked_ids(token_ids, len(self.tokens), self.model.args.vocab, self.model.n_ctx)
        if self.model.owner is not self:  # another session used the context since: rebuild this one's state
            past, self.tokens = self.tokens, []
            self.reset()
            ids = np.concatenate([np.asarray(past, np.int64), ids])
        self.llm.n_tokens = len(self.tokens)  # llama-cpp-python's own position: ours is the truth
        self.llm.eval([int(t) for t in ids])
        self.tokens.extend(int(t) for t in ids)
        self.model.computed_tokens += len(ids)
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),)).copy()

    def snapshot(self) -> Snapshot:
        """The sequence's state (KV cells and recurrent states) as llama.cpp serializes it."""
        import llama_cpp

        ctx = self.llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, SEQ)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, SEQ)
        return Snapshot(tuple(self.tokens), [{"llama.cpp state": np.frombuffer(buffer, np.uint8, written).copy()}])

    def restore(self, snapshot: Snapshot) -> None:
        import llama_cpp

        state = snapshot.layers[0]["llama.cpp state"]
        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        pointer = state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        if llama_cpp.llama_state_seq_set_data(self.llm._ctx.ctx, pointer, state.nbytes, SEQ) != state.nbytes:
            self.reset()
            raise RuntimeError("llama.cpp refused a saved sequence state")
        self.tokens = list(snapshot.tokens)
        self.llm.n_tokens = len(self.tokens)
        self.llm.input_ids[:len(self.tokens)] = self.tokens
        self.model.owner = self

    def reset(self) -> None:
        self.llm.reset()
        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        self.tokens = []
        self.model.owner = self
