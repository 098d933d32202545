"""The scheduling policy: which tokens of which requests run in the next step (vLLM V1's, kept small).

Each step: every running decode gets one token (oldest first; a decode that finds no free block preempts
the newest running request, itself if none is newer); then prefill chunks, short or mostly cached
prompts before long ones and otherwise in arrival order, within max_num_seqs, the token budget, the
free blocks and the step-time budget. Chunks end on block boundaries and shrink as their context grows
so the estimated step stays under max_step_ms; the first prefill of a step always moves by at least a
block, so a long prompt progresses whatever its context. A waiting request whose next prefix block is
being computed by another request waits for it (others pass it) and then hits the cache.
"""

import bisect
import itertools
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from engine.sampling_params import SamplingParams
from engine.step_types import SeqStep, TokenOutput
from scheduler.block_manager import BlockManager, PrefixMatch
from scheduler.config import SchedulerConfig
from scheduler.cost_model import CostModel, StepShape
from scheduler.request import FinishReason, Request, RequestRejected, RequestStatus


@dataclass
class SchedulerOutput:
    seqs: list[SeqStep] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)  # requests[i] runs seqs[i]
    shape: StepShape = field(default_factory=StepShape)
    preempted: list[Request] = field(default_factory=list)
    num_prefill_rows: int = 0
    estimated_ms: float = 0.0


@dataclass
class SchedulerCounters:
    """Cumulative, for metrics."""

    num_preempted: int = 0
    prefix_queries_tokens: int = 0
    prefix_hits_tokens: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: Counter = field(default_factory=Counter)  # finish reason -> count


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        block_manager: BlockManager | None = None,
        cost_model: CostModel | None = None,
    ) -> None:
        self.config = config
        self.block_manager = block_manager or BlockManager(
            config.num_blocks, config.block_size, config.cache_key
        )
        self.cost_model = cost_model or CostModel()
        self.waiting: deque[Request] = deque()  # arrival order; preempted requests go back to the head
        self.running: list[Request] = []  # by seq_id: oldest first
        self.counters = SchedulerCounters()
        self._requests: dict[str, Request] = {}
        self._seq_ids = itertools.count()

    @property
    def max_model_len(self) -> int:
        """Longest prompt + output a request may reach."""
        return self.config.context_limit

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def new_request(
        self,
        prompt_token_ids: list[int],
        sampling: SamplingParams,
        request_id: str | None = None,
        cache_salt: str | None = None,
    ) -> Request:
        """A validated request with max_tokens clamped to the context left; safe from any thread."""
        prompt_len = len(prompt_token_ids)
        config = self.config
        if prompt_len == 0:
            raise RequestRejected("the prompt is empty")
        if prompt_len >= config.max_model_len:
            raise RequestRejected(
                f"the prompt has {prompt_len} tokens, which leaves no room for output in this "
                f"model's context of {config.max_model_len} tokens"
            )
        if prompt_len >= self.max_model_len:
            raise RequestRejected(
                f"the prompt has {prompt_len} tokens, more than the KV cache holds "
                f"({config.num_blocks} blocks of {config.block_size} tokens); give the server a "
                f"larger KV cache"
            )
        if sampling.max_tokens < 1:
            raise RequestRejected(f"max_tokens must be at least 1, got {sampling.max_tokens}")
        seq_id = next(self._seq_ids)
        max_tokens = min(sampling.max_tokens, self.max_model_len - prompt_len)
        return Request(
            request_id or f"req-{seq_id}", seq_id, list(prompt_token_ids), sampling, max_tokens, cache_salt
        )

    def add_request(self, request: Request) -> None:
        if request.request_id in self._requests:
            raise RequestRejected(f"request id {request.request_id!r} is already in use")
        self._requests[request.request_id] = request
        self.waiting.append(request)

    def abort(self, request_id: str, reason: FinishReason = FinishReason.ABORT) -> Request | None:
        """Finish a request in any state and free its blocks; None if it is unknown or finished."""
        request = self._requests.get(request_id)
        if request is not None:
            self._finish(request, reason, time.monotonic())
        return request

    def abort_all(self, reason: FinishReason = FinishReason.ABORT, error: str | None = None) -> list[Request]:
        requests = list(self._requests.values())
        now = time.monotonic()
        for request in requests:
            self._finish(request, reason, now, error)
        return requests

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        for request in list(self.running):
            if request.status is RequestStatus.RUNNING and request.num_uncomputed_tokens == 1:
                self._schedule_decode(request, out)
        self._schedule_prefills(out)
        out.estimated_ms = self.cost_model.estimate_ms(out.shape)
        return out

    def update(
        self, out: SchedulerOutput, outputs: list[TokenOutput], step_ms: float | None = None
    ) -> list[tuple[Request, TokenOutput]]:
        """Apply a step's results: count computed tokens, append samples, publish full blocks, finish.

        Returns the (request, token) pairs sampled in this step; finished requests' blocks are free.
        """
        if step_ms is not None:
            self.cost_model.observe(out.shape, step_ms)
        sampled = {output.seq_id: output for output in outputs}
        now = time.monotonic()
        emitted = []
        for seq, request in zip(out.seqs, out.requests):
            request.num_computed_tokens += len(seq.token_ids)
            self.block_manager.publish(
                request.seq_id, request.token_ids, request.num_computed_tokens, request.cache_salt
            )
            output = sampled.get(request.seq_id)
            if output is None:
                continue
            if request.num_output_tokens == 0:
                self.counters.prompt_tokens += request.num_prompt_tokens
            self.counters.generation_tokens += 1
            reason = request.append_token(output.token_id, now)
            if reason is not None:
                self._finish(request, reason, now)
            emitted.append((request, output))
        return emitted

    def fail(self, out: SchedulerOutput, error: str) -> list[Request]:
        """Finish the requests of a step that raised, with reason "error"."""
        now = time.monotonic()
        for request in out.requests:
            self._finish(request, FinishReason.ERROR, now, error)
        return out.requests

    def _schedule_decode(self, request: Request, out: SchedulerOutput) -> None:
        if self._reserve(request, request.num_computed_tokens + 1, out):
            self._add_row(out, request, 1)
        else:
            self._preempt(request, out)

    def _schedule_prefills(self, out: SchedulerOutput) -> None:
        threshold = self.config.long_prefill_token_threshold
        admitting = True
        for long_pass in (False, True):
            candidates = [r for r in self.running if r.num_uncomputed_tokens > 1] + list(self.waiting)
            for request in candidates:
                if out.shape.num_tokens >= self.config.max_num_batched_tokens:
                    return
                if request in out.requests or request in out.preempted:
                    continue
                if request.status is RequestStatus.RUNNING:
                    if (request.num_uncomputed_tokens > threshold) == long_pass:
                        self._schedule_chunk(request, out)
                    continue
                admitting = admitting and len(self.running) < self.config.max_num_seqs
                if not admitting:
                    continue
                match = self.block_manager.match_prefix(request.token_ids, request.cache_salt)
                if match.pending:
                    continue
                if (request.num_tokens - match.num_tokens > threshold) == long_pass:
                    admitting = self._admit(request, match, out)

    def _schedule_chunk(self, request: Request, out: SchedulerOutput) -> None:
        length = self._chunk_length(out, request.num_computed_tokens, request.num_uncomputed_tokens)
        if length and self._reserve(request, request.num_computed_tokens + length, out):
            self._add_row(out, request, length)
            out.num_prefill_rows += 1

    def _admit(self, request: Request, match: PrefixMatch, out: SchedulerOutput) -> bool:
        """Start (or resume) a waiting request with its prefix hits; False: admit no more this step."""
        length = self._chunk_length(out, match.num_tokens, request.num_tokens - match.num_tokens)
        if length == 0:
            return False
        manager, end = self.block_manager, match.num_tokens + length
        if not manager.can_allocate(manager.num_blocks_to_admit(match, end)):
            return False
        manager.acquire(request.seq_id, match)
        manager.ensure_capacity(request.seq_id, end, request.token_ids, request.cache_salt)
        self.waiting.remove(request)
        bisect.insort(self.running, request, key=lambda r: r.seq_id)
        request.status = RequestStatus.RUNNING
        request.num_computed_tokens = match.num_tokens
        if request.timings.first_scheduled is None:
            request.timings.first_scheduled = time.monotonic()
            request.num_cached_tokens = match.num_tokens
            self.counters.prefix_queries_tokens += request.num_tokens
            self.counters.prefix_hits_tokens += match.num_tokens
        self._add_row(out, request, length)
        out.num_prefill_rows += 1
        return True

    def _chunk_length(self, out: SchedulerOutput, start: int, remaining: int) -> int:
        """Tokens of a prefill to run now: within the token and time budgets, ending on a block."""
        block_size = self.config.block_size
        tokens_left = self.config.max_num_batched_tokens - out.shape.num_tokens
        ms_left = self.config.max_step_ms - self.cost_model.estimate_ms(out.shape)
        length = min(remaining, tokens_left, self.cost_model.max_chunk_tokens(start, ms_left))
        if length < remaining:
            length = (start + length) // block_size * block_size - start
        if length <= 0 and out.num_prefill_rows == 0:
            # Progress: the step's first prefill moves by a block even when that is over the target.
            length = min(remaining, tokens_left, block_size - start % block_size)
        return max(length, 0)

    def _reserve(self, request: Request, num_tokens: int, out: SchedulerOutput) -> bool:
        """Blocks for num_tokens, preempting newer running requests that are not in this step."""
        while not self.block_manager.ensure_capacity(
            request.seq_id, num_tokens, request.token_ids, request.cache_salt
        ):
            victim = next(
                (r for r in reversed(self.running)
                 if r.seq_id > request.seq_id and r not in out.requests),
                None,
            )
            if victim is None:
                return False
            self._preempt(victim, out)
        return True

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        """Recompute later: its blocks go back (cached, so resuming mostly hits); it keeps its output."""
        self.block_manager.free(request.seq_id)
        self.running.remove(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        self.waiting.appendleft(request)
        self.counters.num_preempted += 1
        out.preempted.append(request)

    def _add_row(self, out: SchedulerOutput, request: Request, length: int) -> None:
        start = request.num_computed_tokens
        out.seqs.append(SeqStep(
            seq_id=request.seq_id,
            token_ids=request.token_ids[start : start + length],
            start_pos=start,
            block_table=self.block_manager.block_table(request.seq_id),
            sampling=request.sampling,
            sample=start + length == request.num_tokens,
            prompt_len=request.num_prompt_tokens,
            history=request.token_ids,
        ))
        out.requests.append(request)
        out.shape.add(start, length)

    def _finish(self, request: Request, reason: FinishReason, now: float, error: str | None = None) -> None:
        if request.status is RequestStatus.RUNNING:
            self.block_manager.free(request.seq_id)
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        request.finish(reason, now, error)
        del self._requests[request.request_id]
        self.counters.finished[reason.value] += 1
