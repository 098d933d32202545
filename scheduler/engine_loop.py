"""The engine thread and its asyncio bridge.

One thread owns every MLX call (MLX streams are per thread). It blocks on its inbox when there is
nothing to do, applies submits, aborts and the stop message from it, then runs schedule ->
runner.step -> update. Each step's TokenEvents reach the request queues with one
loop.call_soon_threadsafe per event loop; nothing else crosses threads but the inbox and the stats
snapshot. Every message to the thread goes through the inbox (a SimpleQueue, whose put is safe from
a finalizer on any thread), so no wake-up can be lost.

Failures: a step that raises fails its requests (failure_streak.py says when the pool is rebuilt);
anything else that raises on the thread marks the engine dead: every open request gets an error
event, new ones are refused, and health() says why.
"""

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.mlx_threads import release_thread_state
from engine.sampling_params import SamplingParams
from engine.step_types import TokenOutput
from scheduler.block_manager import BlockManager
from scheduler.config import SchedulerConfig
from scheduler.disk_tier import DiskStats, DiskTier
from scheduler.failure_streak import FailureStreak
from scheduler.faults import FaultPlan
from scheduler.request import AbortCause, FinishReason, Request, RequestRejected
from scheduler.scheduler import Scheduler, SchedulerOutput
from scheduler.step_report import StepObserver, StepReport
from scheduler.token_events import FinishCallback, Outbox, RequestStream, Subscriber, TokenEvent

if TYPE_CHECKING:  # the runner brings MLX; this module must import without it
    from engine.runner import ModelRunner

__all__ = ["AbortCause", "EngineLoop", "EngineStats", "EngineUnavailable", "RequestRejected",
           "RequestStream", "TokenEvent"]

log = logging.getLogger(__name__)

STALL_WAIT_S = 0.05  # when nothing can run until another request moves: do not spin
JOIN_TIMEOUT_S = 10.0


class EngineUnavailable(RuntimeError):
    """The engine cannot take requests: it is shutting down, or its thread died."""


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_preempted_total: int
    kv_usage: float
    num_free_blocks: int  # reusable ones included
    num_reusable_blocks: int  # free, still holding a cached prefix
    num_blocks: int  # the budget
    num_allocated_blocks: int  # of them, those with memory (the pool grows on demand)
    prefix_queries_tokens: int
    prefix_hits_tokens: int
    prompt_tokens_total: int
    generation_tokens_total: int
    finished: dict[str, int]
    aborts: dict[str, int] = field(default_factory=dict)  # AbortCause value -> requests
    num_steps: int = 0
    num_failed_steps: int = 0
    num_pool_rebuilds: int = 0
    disk: DiskStats | None = None  # None: the disk tier is off


class EngineLoop:
    def __init__(self, runner: "ModelRunner", config: SchedulerConfig, model_name: str,
                 fault: FaultPlan | None = None, step_observer: StepObserver | None = None,
                 disk: DiskTier | None = None) -> None:
        """fault: a failure to inject, for tests (scheduler/faults.py); step_observer: called on
        the engine thread after each step that ran; disk: the prefix cache's disk tier (closed by
        stop())."""
        if (runner.num_blocks, runner.block_size) != (config.num_blocks, config.block_size):
            raise ValueError(
                f"the runner's pool ({runner.num_blocks} blocks of {runner.block_size}) differs from the "
                f"scheduler's ({config.num_blocks} blocks of {config.block_size})"
            )
        self.runner = runner
        self.config = config
        self.model_name = model_name
        self.scheduler = Scheduler(config, BlockManager(config.num_blocks, config.block_size,
                                                        grow=runner.pool_growth), disk=disk)
        self._fault = fault
        self._step_observer = step_observer
        self._aborts: Counter[str] = Counter()
        self.num_steps = 0
        self.num_failed_steps = 0
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        if disk is not None:
            disk.set_wake(lambda: self._inbox.put(("wake",)))
        self._subscribers: dict[int, Subscriber] = {}  # seq_id -> where its events go; engine thread only
        self._outbox = Outbox()
        self._failures = FailureStreak()
        self._live: set[str] = set()  # request ids submitted and not yet finished
        self._lock = threading.Lock()  # guards _live, _accepting and _dead_reason
        self._accepting = True
        self._dead_reason: str | None = None
        self._thread: threading.Thread | None = None
        self._stats = self._snapshot()

    @property
    def max_model_len(self) -> int:
        """Longest prompt + output a request may reach (the context, or the KV pool if smaller)."""
        return self.scheduler.max_model_len

    @property
    def stats(self) -> EngineStats:
        """The snapshot of the last step; the disk tier's figures as of now (its threads write while
        the engine idles)."""
        disk = self.scheduler.disk
        return self._stats if disk is None else dataclasses.replace(self._stats, disk=disk.stats())

    @property
    def num_queued(self) -> int:
        """Requests submitted and not running: waiting, or not yet taken from the inbox."""
        with self._lock:
            return max(len(self._live) - self._stats.num_running, 0)

    def health(self) -> str | None:
        """None while the engine thread runs; otherwise why it does not."""
        if self._dead_reason is not None:
            return f"the engine thread failed: {self._dead_reason}"
        if self._thread is None or not self._thread.is_alive():
            return "the engine thread is not running"
        return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pagedmlx-engine", daemon=True)
        self._thread.start()

    async def stop(self, grace_s: float = 5.0, join_timeout_s: float = JOIN_TIMEOUT_S) -> None:
        """Refuse new requests, let running ones finish for up to grace_s, abort the rest, join."""
        with self._lock:
            self._accepting = False
        deadline = time.monotonic() + grace_s
        while self._has_live() and time.monotonic() < deadline and self.health() is None:
            await asyncio.sleep(0.02)
        self._inbox.put(("stop",))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, join_timeout_s)
            if self._thread.is_alive():
                log.warning("the engine thread did not stop within %g s", join_timeout_s)
        if self.scheduler.disk is not None:
            await asyncio.to_thread(self.scheduler.disk.close)  # after the queued writes

    def submit(
        self,
        prompt_token_ids: list[int],
        sampling: SamplingParams,
        request_id: str | None = None,
        cache_salt: str | None = None,
        session: str = "",
        on_finish: FinishCallback | None = None,
    ) -> RequestStream:
        """Queue a request; call from a coroutine. Raises RequestRejected if it can never run,
        EngineUnavailable if the engine takes no requests. session: the client, for fair sharing;
        on_finish: called on this loop with the final event, even once the stream is left."""
        request = self.scheduler.new_request(prompt_token_ids, sampling, request_id, cache_salt, session)
        events: asyncio.Queue = asyncio.Queue()
        subscriber = Subscriber(asyncio.get_running_loop(), events, request, on_finish)
        with self._lock:  # posting under the lock: a thread that dies after it still sees the add
            if self._dead_reason is not None:
                raise EngineUnavailable(self.health())
            if not self._accepting:
                raise EngineUnavailable("the server is shutting down")
            if request.request_id in self._live:
                raise RequestRejected(f"request id {request.request_id!r} is already in use")
            self._live.add(request.request_id)
            self._inbox.put(("add", subscriber))
        return RequestStream(request, events, self.abort)

    def abort(self, request_id: str, reason: str = "abort",
              cause: AbortCause = AbortCause.CLIENT_DISCONNECT) -> None:
        """Finish a request in any state; its blocks are freed at the top of the next step. Any thread."""
        self._inbox.put(("abort", request_id, FinishReason(reason), cause))

    def _has_live(self) -> bool:
        with self._lock:
            return bool(self._live)

    # -- the engine thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
            for request in self.scheduler.abort_all():
                self._aborts[AbortCause.SHUTDOWN.value] += 1
                self._emit(request, None)
            self._publish()
        except Exception as error:
            log.exception("the engine thread failed; failing every open request")
            self._die(f"{type(error).__name__}: {error}")
            self._stats = self._snapshot()
        finally:
            release_thread_state()

    def _serve(self) -> None:
        """Until the stop message: block for messages when idle, step when there is work; after
        each, the events go out and the stats are taken."""
        timeout: float | None = None
        while True:
            running = self._apply_inbox(timeout)
            self._publish()
            if not running:
                return
            if not self.scheduler.has_work:
                timeout = None
                continue
            timeout = 0 if self._step_guarded() else STALL_WAIT_S
            self._publish()

    def _apply_inbox(self, timeout: float | None) -> bool:
        """Apply every message, waiting up to timeout (None: forever) for the first; False on stop."""
        try:
            first = self._inbox.get(timeout=timeout) if timeout != 0 else self._inbox.get_nowait()
        except queue.Empty:
            return True
        running = True
        for message in (first, *self._drain_inbox()):
            if message[0] == "add":
                self._add(message[1])
            elif message[0] == "abort":
                request = self.scheduler.abort(message[1], message[2])
                if request is not None:
                    self._aborts[message[3].value] += 1
                    self._emit(request, None)
            elif message[0] == "stop":
                running = False
        return running

    def _drain_inbox(self) -> list[tuple]:
        """The messages waiting now, without blocking."""
        messages = []
        while True:
            try:
                messages.append(self._inbox.get_nowait())
            except queue.Empty:
                return messages

    def _add(self, subscriber: Subscriber) -> None:
        request = subscriber.request
        self._subscribers[request.seq_id] = subscriber
        if self._fault is not None:
            self._fault.on_add(request)
        self.scheduler.add_request(request)
        self._emit(request, None, cached_tokens=self.scheduler.expected_hit_tokens(request))

    def _step_guarded(self) -> bool:
        """A step; should the scheduler itself fail, fail every request rather than hang them all.
        False when nothing could run."""
        try:
            return self._step()
        except Exception:
            log.exception("the scheduler failed; aborting every request")
            for request in self.scheduler.abort_all(FinishReason.ERROR, "internal scheduler error"):
                self._aborts[AbortCause.ENGINE_ERROR.value] += 1
                self._emit(request, None)
            return True

    def _step(self) -> bool:
        out = self.scheduler.schedule()
        if not out.seqs:
            return False
        started = time.monotonic()
        try:
            if self._fault is not None:
                self._fault.on_step(out.requests)
            if out.restores:
                self.runner.restore_blocks([(block_id, block.kv) for block_id, block in out.restores])
                log.debug("disk cache: %d blocks into the pool in %.0f ms", len(out.restores),
                          (time.monotonic() - started) * 1000)
            outputs = self.runner.step(out.seqs)
        except Exception as error:
            self._step_failed(out, error)
            return True
        self._failures.succeeded()
        duration_s = time.monotonic() - started
        self.num_steps += 1
        for request, output in self.scheduler.update(out, outputs, duration_s * 1000):
            self._emit(request, output)
        if out.published:
            self.scheduler.disk.write_behind(out.published, self.runner.copy_blocks_out)
        if self._step_observer is not None:
            self._step_observer(StepReport(duration_s, out.shape, self.runner.last_step_runs))
        return True

    def _step_failed(self, out: SchedulerOutput, error: Exception) -> None:
        self.num_failed_steps += 1
        for request in self.scheduler.fail(out, f"{type(error).__name__}: {error}"):
            self._aborts[AbortCause.ENGINE_ERROR.value] += 1
            self._emit(request, None)
        if self._failures.failed(error, len(out.requests)):
            self.scheduler.recompute_all()
            self.runner.reset_pool()

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
        self._outbox.put(self._subscribers[request.seq_id], event)
        if finished:
            del self._subscribers[request.seq_id]
            with self._lock:
                self._live.discard(request.request_id)
            self.runner.release(request.seq_id)

    def _publish(self) -> None:
        """Send the events emitted since the last call; take the stats."""
        for request in self._outbox.flush():
            self.abort(request.request_id)
        self._stats = self._snapshot()

    def _die(self, reason: str) -> None:
        """Fail every request the thread knows of, or that is still in the inbox, and refuse more."""
        with self._lock:
            self._dead_reason = reason
        error = f"the engine stopped: {reason}"
        now = time.monotonic()
        subscribers = list(self._subscribers.values())
        subscribers += [message[1] for message in self._drain_inbox() if message[0] == "add"]
        self._subscribers = {s.request.seq_id: s for s in subscribers}
        for subscriber in subscribers:
            subscriber.request.finish(FinishReason.ERROR, now, error)
            self._aborts[AbortCause.ENGINE_ERROR.value] += 1
            try:
                self._emit(subscriber.request, None)
            except Exception:  # the runner's release may be what is broken
                log.exception("while failing request %s", subscriber.request.request_id)
        self._outbox.flush()

    def _snapshot(self) -> EngineStats:
        scheduler, manager, counters = self.scheduler, self.scheduler.block_manager, self.scheduler.counters
        return EngineStats(
            num_running=len(scheduler.running),
            num_waiting=len(scheduler.waiting),
            num_preempted_total=counters.num_preempted,
            kv_usage=manager.usage,
            num_free_blocks=manager.num_free_blocks,
            num_reusable_blocks=manager.num_reusable_blocks,
            num_blocks=manager.num_blocks,
            num_allocated_blocks=manager.num_allocated_blocks,
            prefix_queries_tokens=counters.prefix_queries_tokens,
            prefix_hits_tokens=counters.prefix_hits_tokens,
            prompt_tokens_total=counters.prompt_tokens,
            generation_tokens_total=counters.generation_tokens,
            finished=dict(counters.finished),
            aborts=dict(self._aborts),
            num_steps=self.num_steps,
            num_failed_steps=self.num_failed_steps,
            num_pool_rebuilds=self._failures.num_rebuilds,
        )
