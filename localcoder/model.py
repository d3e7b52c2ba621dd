"""The CPU runtime's public face: load a Qwen3-Next GGUF, run it over tokens, keep sessions.

    model = Model.load("model.gguf")
    logits = model.logits(ids)                  # float32 [len(ids), vocab], one prefill from position 0
    session = model.new_session()
    last = session.feed(ids)                    # logits of the last fed token; the session continues
    for step in model.generate(messages, max_tokens=200):
        print(step.text, end="")

Long feeds run in chunks of `n_batch` tokens, so memory stays bounded whatever the prompt length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from localcoder.errors import UserError
from localcoder.gguf_model import ModelArgs, load_fields, model_args
from localcoder.layers import KVCache, attention, gated_delta_net, moe, rms_norm
from localcoder.prefix_cache import PrefixCache, Snapshot
from localcoder.sampling import SamplingParams, Sampler
from localcoder.tokenizer import GGUFTokenizer
from localcoder.weights import Weight, load_weights

END_OF_GENERATION = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>")


def special_ids(fields: dict, tokenizer: GGUFTokenizer) -> tuple[set[int], int | None]:
    """(tokens that end a generation, the chat template's message-start token or None) of a GGUF's vocabulary."""
    vocab = fields["tokenizer.ggml.tokens"]
    end_ids = {i for i, t in enumerate(vocab) if t in END_OF_GENERATION}
    if tokenizer.eos_id is not None:
        end_ids.add(int(tokenizer.eos_id))
    return end_ids, (vocab.index("<|im_start|>") if "<|im_start|>" in vocab else None)


def context_size(fields: dict, n_ctx: int | None) -> int:
    """The session length to use: n_ctx, or the model's trained context capped at 32768; UserError if too long."""
    trained = int(fields.get("qwen3next.context_length", 32768))
    n_ctx = min(trained, 32768) if n_ctx is None else int(n_ctx)
    if not 0 < n_ctx <= trained:
        raise UserError(f"context size {n_ctx} is outside 1..{trained} (the model's trained context)")
    return n_ctx


def checked_ids(token_ids, fed: int, vocab: int, n_ctx: int) -> np.ndarray:
    """token_ids as int64, or a UserError when empty, out of the vocabulary, or past the context after `fed`."""
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    if len(ids) == 0:
        raise UserError("nothing to feed: the token list is empty")
    if ids.min() < 0 or ids.max() >= vocab:
        raise UserError(f"token ids must be in 0..{vocab - 1}")
    if fed + len(ids) > n_ctx:
        raise UserError(f"{fed + len(ids)} tokens exceed the context size {n_ctx}; "
                        "load the model with a larger n_ctx or shorten the prompt")
    return ids


class LanguageModel:
    """What every engine shares: the GGUF's hyper-parameters, tokenizer and chat template, the context length, and
    prompt encoding and generation on top of the engine's sessions (`new_session`). The CPU runtime (Model), the
    llama.cpp engine and the CUDA backend are subclasses."""

    def __init__(self, path: Path, fields: dict, n_ctx: int):
        self.path, self.fields, self.args, self.n_ctx = Path(path), fields, model_args(fields), n_ctx
        self.tokenizer = GGUFTokenizer(fields)
        self.end_ids, self.message_start_id = special_ids(fields, self.tokenizer)
        self.computed_tokens = 0  # tokens run through the layers since load (prefix reuse shows here)

    def encode_prompt(self, prompt, tools: list[dict] | None = None) -> list[int]:
        """Token ids of a raw prompt string, or of chat `messages` rendered by the GGUF's template."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
            return self.tokenizer.encode(self.tokenizer.render_chat(prompt, tools))
        raise UserError("the prompt must be a string or a list of chat messages (dicts with role and content)")

    def generate(self, prompt, max_tokens: int = 256, stop: list[str] | tuple = (), tools: list[dict] | None = None,
                 session: "Session | None" = None, sampling: SamplingParams | None = None,
                 prompt_tokens: list[int] | None = None, **sampling_options) -> "Generation":
        """Stream a completion of `prompt` (a string, or chat messages rendered with `tools`).

        Iterating yields `Step`s (token id and the text it completes); the Generation records timings and why it
        finished ("stop": an end-of-generation token or a stop string; "length": max_tokens or the context).
        Passing the same `session` across calls reuses the longest prefix it (or its prefix cache) holds;
        `prompt_tokens` gives the prompt already tokenized (then `prompt` is ignored)."""
        sampling = sampling or SamplingParams(**sampling_options)
        ids = list(prompt_tokens) if prompt_tokens is not None else self.encode_prompt(prompt, tools)
        return Generation(self, ids, max_tokens, list(stop), session or self.new_session(), Sampler(sampling))


class Model(LanguageModel):
    """The CPU runtime: a loaded model with memory-mapped weights."""

    def __init__(self, path: Path, weights: dict[str, Weight], fields: dict, n_ctx: int, n_batch: int):
        super().__init__(path, fields, n_ctx)
        self.weights, self.n_batch = weights, n_batch
        self.layers = [{name[len(f"blk.{i}."):]: w for name, w in weights.items() if name.startswith(f"blk.{i}.")}
                       for i in range(self.args.n_layer)]
        self.output = weights.get("output.weight", weights["token_embd.weight"])  # tied: llama.cpp reuses it

    @classmethod
    def load(cls, path, n_ctx: int | None = None, n_batch: int = 512, threads: int | None = None,
             check_memory: bool = True, activations: str = "q8", backend: str = "cpu",
             gpus: list[str] | None = None, expert_cache_gib: float = 0.0,
             embedding_in_ram: bool = False, router_trace: Path | None = None,
             kv_type: str | None = None) -> "Model":
        """Open a Qwen3-Next GGUF (memory-mapped). n_ctx: the longest session (default: the model's trained
        context, capped at 32768); threads: CPU threads for the kernels (default: all cores); activations: "q8"
        rounds the inputs of quantized weights to 8 bits as llama.cpp does (Q8_K / Q8_0) and multiplies in
        integers, "f32" keeps them float32 (exact, 2-4x slower). Refuses with a UserError when the machine cannot
        hold the weights plus the sessions' state for n_ctx tokens. backend="cuda": every weight on the first
        GPU, or split by layers over every GPU when one is too small, or over `gpus` (localcoder.cuda);
        backend="hybrid": routed experts in RAM with an `expert_cache_gib` cache of them on the first of `gpus`,
        pinning the hottest experts of a saved `router_trace` (localcoder.hybrid). Both have the same interface
        and cache keys and values as `kv_type` ("f16", the default, or "f32")."""
        from localcoder.memory import check_fits, predict_memory

        if backend in ("cuda", "hybrid"):
            try:
                from localcoder.cuda.model import TorchModel
                from localcoder.hybrid.model import HybridModel
            except ImportError as e:
                raise UserError(f"the {backend} backend needs torch with CUDA ({e}): pip install 'localcoder[cuda]'")
            if backend == "hybrid":
                return HybridModel.load(path, (gpus or [None])[0], int(expert_cache_gib * (1 << 30)), n_ctx,
                                        embedding_in_ram, router_trace, kv_type)
            return TorchModel.load(path, gpus, n_ctx, kv_type=kv_type)
        if backend != "cpu":
            raise UserError(f"backend {backend!r}: choose cpu, cuda or hybrid")

        path = Path(path)
        fields, reader = load_fields(path)
        args = model_args(fields)
        n_ctx = context_size(fields, n_ctx)
        if n_batch < 1:
            raise UserError("n_batch must be at least 1")
        if activations not in ("q8", "f32"):
            raise UserError(f"activations must be 'q8' or 'f32', not {activations!r}")
        weights = load_weights(reader, args, int8_activations=activations == "q8")
        if check_memory:
            check_fits(predict_memory(args, weights, n_ctx, n_batch))
        from localcoder.kernels.cpu_matmul import single_threaded_blas

        single_threaded_blas()
        if threads:
            import numba
            numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
        return cls(path, weights, fields, n_ctx, n_batch)

    def new_session(self, prefix_cache: PrefixCache | None = None) -> "Session":
        """A fresh session; sessions given the same prefix_cache reuse each other's prompt prefixes."""
        return Session(self, prefix_cache)

    def logits(self, token_ids) -> np.ndarray:
        """float32 [n_tokens, vocab]: the logits after each token, from one prefill at position 0."""
        return self.new_session().feed(token_ids, all_logits=True)

    def forward(self, state: "Session", token_ids: np.ndarray, which: str) -> np.ndarray | None:
        """Run tokens through every layer, continuing `state`; logits of "all" tokens, the "last" one, or "none"."""
        a = self.args
        self.computed_tokens += len(token_ids)
        h = self.weights["token_embd.weight"].rows(token_ids)
        for i, w in enumerate(self.layers):
            x = rms_norm(h, w["attn_norm.weight"].vector(), a.eps)
            if a.recurrent[i]:
                h = h + gated_delta_net(x, w, a, state.layers[i])
            else:
                h = h + attention(x, w, a, state.layers[i])
            h = h + moe(rms_norm(h, w["post_attention_norm.weight"].vector(), a.eps), w, a)
        if which == "none":
            return None
        h = h if which == "all" else h[-1:]
        return self.output.matmul(rms_norm(h, self.weights["output_norm.weight"].vector(), a.eps))


class PrefixReuse:
    """Prompt feeding with prefix reuse, for any session that has `tokens`, `prefix_cache`, `feed`, `snapshot`,
    `restore` and `reset` (the CPU runtime's Session, and the llama.cpp engine's)."""

    def reuse_prefix(self, prompt: list[int]) -> int:
        """Bring the session to the longest state that is a prefix of `prompt` (its current position or a
        snapshot in its prefix cache), or to empty; returns how many prompt tokens need no feeding."""
        n = len(self.tokens)
        own = n if n < len(prompt) and prompt[:n] == self.tokens else 0
        cached = self.prefix_cache.longest_prefix(prompt)
        if cached is not None and len(cached.tokens) > own:
            self.restore(cached)
            return len(cached.tokens)
        if own == 0:
            self.reset()
        return own

    def feed_prompt(self, prompt: list[int], cancelled=lambda: False) -> tuple[np.ndarray | None, int]:
        """Feed `prompt` from the longest reusable prefix, snapshotting at checkpoints into the prefix cache.
        Returns the logits of its last token (None when `cancelled()` turned true between checkpoints) and how
        many prompt tokens were reused."""
        start = reused = self.reuse_prefix(prompt)
        logits = None
        for end in self.prefix_cache.checkpoints(prompt, start, self.model.message_start_id):
            if cancelled():
                return None, reused
            logits = self.feed(prompt[start:end])
            self.prefix_cache.add(self.snapshot())
            start = end
        return logits, reused


class Session(PrefixReuse):
    """A sequence being run: KV caches of the attention layers, conv and recurrent state of the DeltaNet
    layers, and the tokens fed so far; snapshots of it along each prompt go to its prefix cache."""

    def __init__(self, model: Model, prefix_cache: PrefixCache | None = None):
        self.model = model
        self.layers = _empty_layers(model.args)
        self.tokens: list[int] = []
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache()

    def feed(self, token_ids, all_logits: bool = False) -> np.ndarray:
        """Continue the session with token_ids; logits of the last one (float32 [vocab]), or of all of them
        ([n, vocab]) with all_logits."""
        ids = checked_ids(token_ids, len(self.tokens), self.model.args.vocab, self.model.n_ctx)
        pieces = []
        for c0 in range(0, len(ids), self.model.n_batch):
            chunk = ids[c0:c0 + self.model.n_batch]
            last_chunk = c0 + self.model.n_batch >= len(ids)
            which = "all" if all_logits else "last" if last_chunk else "none"
            pieces.append(self.model.forward(self, chunk, which))
            self.tokens.extend(int(t) for t in chunk)
        return np.concatenate(pieces) if all_logits else pieces[-1][-1]

    def snapshot(self) -> Snapshot:
        """The state at the current position, unchanged by later feeding (KV rows shared, DeltaNet states copied)."""
        return Snapshot(tuple(self.tokens), [layer.share() if isinstance(layer, KVCache) else
                                             {k: v.copy() for k, v in layer.items()} for layer in self.layers])

    def restore(self, snapshot: Snapshot) -> None:
        """Return to a snapshot (the snapshot stays usable)."""
        self.layers = None  # drop this state's claim on its KV rows first, so the restored state may extend them
        self.tokens = list(snapshot.tokens)
        self.layers = _copy_layers(snapshot.layers)

    def reset(self) -> None:
        self.tokens, self.layers = [], _empty_layers(self.model.args)


def _empty_layers(a: ModelArgs) -> list:
    """Per layer: a KV cache (attention) or zero conv and delta-rule state (DeltaNet)."""
    channels = 2 * a.nk * a.dk + a.nv * a.dv
    return [{"conv": np.zeros((a.conv_kernel - 1, channels), np.float32),
             "S": np.zeros((a.nv, a.dk, a.dv), np.float32)} if recurrent
            else KVCache(a.n_head_kv, a.head_dim) for recurrent in a.recurrent]


def _copy_layers(layers: list) -> list:
    return [layer.copy() if isinstance(layer, KVCache) else {k: v.copy() for k, v in layer.items()}
            for layer in layers]


@dataclass
class Step:
    """One generated token and the text it completes (may be empty while a character or a possible stop
    string is incomplete)."""

    token: int | None  # None for the last piece of text held back while incomplete
    text: str
    logprob: float | None = None  # log-probability of `token` under the model (when asked for)
    top_logprobs: list[tuple[int, float]] | None = None  # the most likely tokens and theirs


@dataclass
class Generation:
    """An iterable completion; timings and counts fill in as it runs."""

    model: Model
    prompt_tokens: list[int]
    max_tokens: int
    stop: list[str]
    session: Session
    sampler: Sampler
    generated: list[int] = field(default_factory=list)
    cancelled: Callable[[], bool] = lambda: False  # polled between checkpoints and tokens
    logprobs: int | None = None  # report each token's log-probability and this many alternatives
    stop_sequence: str | None = None  # the stop string that ended the text, if one did
    reused_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    finish_reason: str | None = None
    text: str = ""

    def __iter__(self) -> Iterator[Step]:
        start = time.perf_counter()
        logits, self.reused_tokens = self.session.feed_prompt(self.prompt_tokens, self.cancelled)
        self.prefill_seconds = time.perf_counter() - start
        if logits is None:
            self.finish_reason = "cancelled"
            return
        start = time.perf_counter()
        emitted = 0  # characters of self.text already yielded
        try:
            while True:
                if self.cancelled():
                    self.finish_reason = "cancelled"
                    break
                token = self.sampler.sample(logits, self.prompt_tokens + self.generated)
                scores = _logprobs(logits, token, self.logprobs) if self.logprobs is not None else (None, None)
                if token in self.model.end_ids:
                    self.finish_reason = "stop"
                    break
                self.generated.append(token)
                self.text = self.model.tokenizer.decode(self.generated)
                hit = _first_stop(self.text, self.stop)
                if hit is not None:
                    cut, self.stop_sequence = hit
                    self.text, self.finish_reason = self.text[:cut], "stop"
                    yield Step(token, self.text[emitted:], *scores)
                    emitted = len(self.text)
                    break
                safe = _safe_length(self.text, self.stop)
                yield Step(token, self.text[emitted:safe], *scores)
                emitted = max(emitted, safe)
                if len(self.generated) >= self.max_tokens or len(self.session.tokens) >= self.model.n_ctx:
                    self.finish_reason = "length"
                    break
                logits = self.session.feed([token])
            if emitted < len(self.text):
                yield Step(None, self.text[emitted:])
        finally:
            self.decode_seconds = time.perf_counter() - start

    @property
    def prompt_tokens_per_second(self) -> float:
        fed = len(self.prompt_tokens) - self.reused_tokens
        return fed / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return len(self.generated) / self.decode_seconds if self.decode_seconds else 0.0


def _logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """log softmax of the model's logits (before sampling's penalties and temperature): the token's, and the top ones."""
    x = np.asarray(logits, np.float64)
    shifted = x - x.max()
    logp = shifted - np.log(np.exp(shifted).sum())
    best = np.argsort(-logp, kind="stable")[:top] if top else []
    return float(logp[token]), [(int(i), float(logp[i])) for i in best]


def _first_stop(text: str, stop: list[str]) -> tuple[int, str] | None:
    """(position, stop string) of the earliest stop string in text, or None."""
    hits = [(text.find(s), s) for s in stop if s and s in text]
    return min(hits) if hits else None


def _safe_length(text: str, stop: list[str]) -> int:
    """How much of `text` can be shown: not a trailing partial character, nor a tail that may begin a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    for s in stop:
        for n in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:n]):
                end -= n
                break
    return end
