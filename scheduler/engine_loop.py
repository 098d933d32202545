"""The engine thread and its asyncio bridge.

One thread owns every MLX call (MLX streams are per thread): it applies new requests and aborts, then
runs schedule -> runner.step -> update, and sleeps on an Event when there is nothing to do. Each request's
TokenEvents reach its asyncio.Queue with loop.call_soon_threadsafe; nothing else crosses threads but the
inbox of submits and aborts, and the stats snapshot.
"""

import asyncio
import dataclasses
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.sampling_params import SamplingParams
from engine.step_types import TokenOutput
from scheduler.config import SchedulerConfig
from scheduler.request import FinishReason, Request, RequestRejected, RequestTimings
from scheduler.scheduler import Scheduler

if TYPE_CHECKING:  # the runner brings MLX; this module must import without it
    from engine.runner import ModelRunner

__all__ = ["EngineLoop", "EngineStats", "RequestRejected", "RequestStream", "TokenEvent"]

log = logging.getLogger(__name__)


@dataclass
class TokenEvent:
    """One new token, or (token_id None) the request's acceptance or its end without a token.

    The acceptance event comes once, when the engine thread takes the request in (within a step
    of submit): its cached_tokens are the prefix tokens then cached or being computed by another
    request, what it will most likely read from the cache. Later events carry the real hit.
    """

    token_id: int | None  # None on the acceptance event and on a final event without a token
    logprob: float | None
    top_logprobs: list[tuple[int, float]] | None
    finish_reason: str | None  # None, "stop", "length", "abort", "error"
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    error: str | None = None
    timings: RequestTimings | None = None  # on the final event


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_preempted_total: int
    kv_usage: float
    num_free_blocks: int
    num_blocks: int
    prefix_queries_tokens: int
    prefix_hits_tokens: int
    prompt_tokens_total: int
    generation_tokens_total: int
    finished: dict[str, int]
    mean_runs_per_seq: float
    num_steps: int = 0


class RequestStream:
    """Async iterator of one request's TokenEvents, ending after the one with a finish_reason.

    Leaving it early (aclose(), `async with` exit, a cancelled task, or dropping it) aborts the request.
    """

    def __init__(self, request: Request, events: asyncio.Queue, engine: "EngineLoop") -> None:
        self.request_id = request.request_id
        self.max_tokens = request.max_tokens  # after clamping to the context
        self._events = events
        self._done = False
        self._abort_on_drop = weakref.finalize(self, engine.abort, request.request_id)
        self._abort_on_drop.atexit = False

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            event = await self._events.get()
        except asyncio.CancelledError:
            self._close()
            raise
        if event.finish_reason is not None:
            self._done = True
            self._abort_on_drop.detach()
        return event

    async def aclose(self) -> None:
        self._close()

    async def __aenter__(self) -> "RequestStream":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close()

    def _close(self) -> None:
        if not self._done:
            self._done = True
            self._abort_on_drop()


@dataclass
class _Sink:
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue


class EngineLoop:
    def __init__(self, runner: "ModelRunner", config: SchedulerConfig, model_name: str) -> None:
        if (runner.num_blocks, runner.block_size) != (config.num_blocks, config.block_size):
            raise ValueError(
                f"the runner's pool ({runner.num_blocks} blocks of {runner.block_size}) differs from the "
                f"scheduler's ({config.num_blocks} blocks of {config.block_size})"
            )
        self.runner = runner
        self.config = config
        self.model_name = model_name
        self.scheduler = Scheduler(config)
        self.num_steps = 0
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._sinks: dict[int, _Sink] = {}  # seq_id -> where its events go; engine thread only
        self._live: set[str] = set()  # request ids submitted and not yet finished
        self._live_lock = threading.Lock()
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._stats = self._snapshot()

    @property
    def max_model_len(self) -> int:
        """Longest prompt + output a request may reach (the context, or the KV pool if smaller)."""
        return self.scheduler.max_model_len

    @property
    def stats(self) -> EngineStats:
        return self._stats

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pagedmlx-engine", daemon=True)
        self._thread.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new requests, let running ones finish for up to grace_s, abort the rest, join."""
        self._accepting = False
        deadline = time.monotonic() + grace_s
        while self._has_live() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def submit(
        self,
        prompt_token_ids: list[int],
        sampling: SamplingParams,
        request_id: str | None = None,
        cache_salt: str | None = None,
    ) -> RequestStream:
        """Queue a request; call from a coroutine. Raises RequestRejected if it can never run."""
        if not self._accepting:
            raise RequestRejected("the server is shutting down")
        request = self.scheduler.new_request(prompt_token_ids, sampling, request_id, cache_salt)
        with self._live_lock:
            if request.request_id in self._live:
                raise RequestRejected(f"request id {request.request_id!r} is already in use")
            self._live.add(request.request_id)
        events: asyncio.Queue = asyncio.Queue()
        self._post(("add", request, _Sink(asyncio.get_running_loop(), events)))
        return RequestStream(request, events, self)

    def abort(self, request_id: str, reason: str = "abort") -> None:
        """Finish a request in any state; its blocks are freed at the top of the next step. Any thread."""
        self._post(("abort", request_id, FinishReason(reason)))

    def _post(self, message: tuple) -> None:
        self._inbox.put(message)
        self._wake.set()

    def _has_live(self) -> bool:
        with self._live_lock:
            return bool(self._live)

    # -- the engine thread -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            self._apply_inbox()
            if self.scheduler.has_work:
                self._step_guarded()
            else:
                self._wake.wait()
        self._apply_inbox()
        for request in self.scheduler.abort_all():
            self._emit(request, None)
        self._stats = self._snapshot()

    def _apply_inbox(self) -> None:
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            if message[0] == "add":
                _, request, sink = message
                self._sinks[request.seq_id] = sink
                self.scheduler.add_request(request)
                expected = self.scheduler.block_manager.num_expected_hit_tokens(
                    request.token_ids, request.cache_salt)
                self._emit(request, None, cached_tokens=expected)
            else:
                _, request_id, reason = message
                request = self.scheduler.abort(request_id, reason)
                if request is not None:
                    self._emit(request, None)
        self._stats = self._snapshot()

    def _step_guarded(self) -> None:
        """A step; should the scheduler itself fail, fail every request rather than hang them all."""
        try:
            self._step()
        except Exception:
            log.exception("the scheduler failed; aborting every request")
            for request in self.scheduler.abort_all(FinishReason.ERROR, "internal scheduler error"):
                self._emit(request, None)

    def _step(self) -> None:
        out = self.scheduler.schedule()
        if not out.seqs:
            self._wake.wait(0.05)  # nothing can run until another request moves; do not spin
            return
        started = time.monotonic()
        try:
            outputs = self.runner.step(out.seqs)
        except Exception as error:
            log.exception("engine step failed; failing its %d requests", len(out.requests))
            for request in self.scheduler.fail(out, f"{type(error).__name__}: {error}"):
                self._emit(request, None)
            return
        step_ms = (time.monotonic() - started) * 1000
        self.num_steps += 1
        for request, output in self.scheduler.update(out, outputs, step_ms):
            self._emit(request, output)
        self._stats = self._snapshot()

    def _emit(self, request: Request, output: TokenOutput | None,
              cached_tokens: int | None = None) -> None:
        finished = request.is_finished
        event = TokenEvent(
            token_id=output.token_id if output else None,
            logprob=output.logprob if output else None,
            top_logprobs=output.top_logprobs if output else None,
            finish_reason=request.finish_reason.value if finished else None,
            prompt_tokens=request.num_prompt_tokens,
            cached_tokens=request.num_cached_tokens if cached_tokens is None else cached_tokens,
            output_tokens=request.num_output_tokens,
            error=request.error,
            timings=dataclasses.replace(request.timings) if finished else None,
        )
        sink = self._sinks[request.seq_id]
        if finished:
            del self._sinks[request.seq_id]
            self.runner.release(request.seq_id)
            with self._live_lock:
                self._live.discard(request.request_id)
        try:
            sink.loop.call_soon_threadsafe(sink.events.put_nowait, event)
        except RuntimeError:  # the client's event loop is closed: nobody is listening
            if not finished:
                self.abort(request.request_id)

    def _snapshot(self) -> EngineStats:
        scheduler, manager, counters = self.scheduler, self.scheduler.block_manager, self.scheduler.counters
        return EngineStats(
            num_running=len(scheduler.running),
            num_waiting=len(scheduler.waiting),
            num_preempted_total=counters.num_preempted,
            kv_usage=manager.usage,
            num_free_blocks=manager.num_free_blocks,
            num_blocks=manager.num_blocks,
            prefix_queries_tokens=counters.prefix_queries_tokens,
            prefix_hits_tokens=counters.prefix_hits_tokens,
            prompt_tokens_total=counters.prompt_tokens,
            generation_tokens_total=counters.generation_tokens,
            finished=dict(counters.finished),
            mean_runs_per_seq=self.runner.last_step_runs,
            num_steps=self.num_steps,
        )
