"""One worker thread runs the model; requests queue for it and receive their tokens on their own asyncio queues.

The model uses every core for one sequence at a time, so requests run one after another (in arrival order) on a
single session whose prefix cache they all share. A request cancelled while it waits is skipped; one cancelled
while it runs stops at its next checkpoint or token. An exception inside a request ends that request only.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field

from localcoder.errors import UserError
from localcoder.model import Model
from localcoder.prefix_cache import PrefixCache
from localcoder.sampling import SamplingParams


@dataclass
class Job:
    """A generation request: the prompt's tokens and how to sample; events arrive on `events`."""

    prompt: list[int]
    max_tokens: int
    stop: list[str]
    sampling: SamplingParams
    logprobs: int | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel_flag: threading.Event = field(default_factory=threading.Event)
    loop: asyncio.AbstractEventLoop | None = None  # the event loop `events` belongs to (set by submit)

    def cancel(self) -> None:
        self.cancel_flag.set()


@dataclass
class Outcome:
    """How a finished job went (the last event of every job that ran)."""

    finish_reason: str  # "stop", "length", "cancelled" or "error"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    stop_sequence: str | None = None
    error: str | None = None
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


@dataclass
class Counters:
    """What /metrics reports."""

    requests: int = 0
    failed: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    last_decode_tps: float = 0.0
    last_prefill_tps: float = 0.0


class Engine:
    """Owns the model, its one session and the prefix cache; `submit` queues a Job (at most `max_queue` waiting).
    reuse_prefix=False runs every prompt from scratch (the benchmark's baseline)."""

    def __init__(self, model: Model, prefix_cache: PrefixCache | None = None, max_queue: int = 64,
                 reuse_prefix: bool = True):
        self.model, self.reuse_prefix = model, reuse_prefix
        self.session = model.new_session(prefix_cache or PrefixCache())
        self.max_queue = max_queue
        self.jobs: queue.Queue = queue.Queue()
        self.counters = Counters()
        self.running: Job | None = None
        self.worker = threading.Thread(target=self._work, name="localcoder-engine", daemon=True)
        self.worker.start()

    @property
    def waiting(self) -> int:
        return self.jobs.qsize()

    def submit(self, job: Job) -> Job:
        if self.waiting >= self.max_queue:
            raise UserError(f"the server is busy: {self.waiting} requests are waiting; retry later")
        job.loop = asyncio.get_running_loop()
        self.jobs.put(job)
        return job

    def close(self) -> None:
        self.jobs.put(None)

    def _send(self, job: Job, event) -> None:
        job.loop.call_soon_threadsafe(job.events.put_nowait, event)

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            self.running = job
            try:
                self._run(job)
            finally:
                self.running = None

    def _run(self, job: Job) -> None:
        c = self.counters
        c.requests += 1
        if job.cancel_flag.is_set():
            c.cancelled += 1
            self._send(job, Outcome("cancelled", len(job.prompt), 0, 0))
            return
        if not self.reuse_prefix:
            self.session.reset()
            self.session.prefix_cache.clear()
        generation = self.model.generate(None, prompt_tokens=job.prompt, max_tokens=job.max_tokens, stop=job.stop,
                                         session=self.session, sampling=job.sampling)
        generation.cancelled, generation.logprobs = job.cancel_flag.is_set, job.logprobs
        try:
            for step in generation:
                self._send(job, step)
        except Exception as e:  # noqa: BLE001 - one request's failure must not end the server
            self.session.reset()  # a forward pass stopped midway leaves layers out of step
            c.failed += 1
            message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            self._send(job, Outcome("error", len(job.prompt), len(generation.generated), 0, error=message))
            return
        c.cancelled += generation.finish_reason == "cancelled"
        c.prompt_tokens += len(job.prompt)
        c.cached_tokens += generation.reused_tokens
        c.generated_tokens += len(generation.generated)
        c.prefill_seconds += generation.prefill_seconds
        c.decode_seconds += generation.decode_seconds
        c.last_prefill_tps, c.last_decode_tps = generation.prompt_tokens_per_second, generation.tokens_per_second
        self._send(job, Outcome(generation.finish_reason or "stop", len(job.prompt), len(generation.generated),
                                generation.reused_tokens, generation.stop_sequence,
                                prefill_seconds=generation.prefill_seconds, decode_seconds=generation.decode_seconds))


async def events(job: Job, is_disconnected=None, poll_seconds: float = 0.5):
    """Yield a job's Steps then its Outcome; cancels the job when `is_disconnected()` (async) turns true or the
    consumer stops early."""
    try:
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), poll_seconds)
            except asyncio.TimeoutError:
                if is_disconnected is not None and await is_disconnected():
                    job.cancel()
                continue
            yield event
            if isinstance(event, Outcome):
                return
    finally:
        job.cancel()  # no-op once finished; stops the generation if the consumer went away
