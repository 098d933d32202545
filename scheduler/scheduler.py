"""The scheduling policy: which tokens of which requests run in the next step (vLLM V1's, kept small,
with the prefill budget shared fairly between clients).

Each step, every running decode gets one token (oldest first; a decode that finds no free block
preempts the newest running request, itself if none is newer). Prefill chunks then share what the
step's token and time budgets leave:
- the oldest prefill (waiting or running) is guaranteed oldest_prefill_share of it and always
  moves by at least a block: aging, so that a cold 20k-token prompt's time to first token is
  bounded whatever short traffic keeps arriving;
- the rest goes by fair queuing between sessions (clients): the session that has had the least
  prefill time (estimated ms) since it last had nothing to prefill goes next, one chunk at a time,
  so one client's cold prompt or stream of small requests cannot hold up another's nearly free
  cached turn. Between sessions served alike, and within a session, the cheapest remaining
  prefill goes first (short or mostly cached prompts), then arrival order.
Chunks end on block boundaries and shrink as their context grows so the estimated step stays under
max_step_ms. A waiting request whose next prefix block is being computed by another request waits
for it (others pass it) and then hits the cache. With the disk tier, a waiting request whose hit
ends where the disk's copy of its chain goes on waits likewise while those blocks are read ahead
(scheduler/disk_tier.py); then they count as cached, and copying them into the pool is part of the
step's estimated time.
"""

import bisect
import heapq
import itertools
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

from engine.kv_block_file import StoredBlock
from engine.sampling_params import SamplingParams
from engine.step_types import SeqStep, TokenOutput
from scheduler.block_hash import BlockHashChain, extra_keys
from scheduler.block_manager import BlockManager, PrefixMatch
from scheduler.config import SchedulerConfig
from scheduler.cost_model import CostModel, StepShape
from scheduler.disk_tier import DiskTier, PublishedBlock
from scheduler.request import FinishReason, Request, RequestRejected, RequestStatus


@dataclass
class SchedulerOutput:
    seqs: list[SeqStep] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)  # requests[i] runs seqs[i]
    shape: StepShape = field(default_factory=StepShape)
    num_prefill_rows: int = 0
    estimated_ms: float = 0.0
    touched: set[int] = field(default_factory=set)  # seq ids scheduled or preempted in this step
    admission_closed: bool = False  # a waiting request found no room: none after it may start
    restores: list[tuple[int, StoredBlock]] = field(default_factory=list)  # copy into the pool first
    published: list[PublishedBlock] = field(default_factory=list)  # made cached by the step (disk tier)


@dataclass
class SchedulerCounters:
    """Cumulative, for metrics."""

    num_preempted: int = 0
    prefix_queries_tokens: int = 0
    prefix_hits_tokens: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: Counter = field(default_factory=Counter)  # finish reason -> count


@dataclass(frozen=True)
class _Limits:
    """How far the step's rows may go: its token count and its estimated time."""

    tokens: int
    ms: float


@dataclass
class _Candidate:
    """A request with prefill to run: mid-prefill (running) or waiting to start."""

    request: Request
    start: int  # tokens it has computed (for a waiting one, its prefix hits)
    cost_ms: float  # estimated time of its whole remaining prefill, alone
    pending: bool  # waiting on a prefix block another request is computing

    @property
    def uncached(self) -> int:
        return self.request.num_tokens - self.start

    @property
    def rank(self) -> tuple[float, int]:
        return self.cost_ms, self.request.seq_id


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        block_manager: BlockManager | None = None,
        cost_model: CostModel | None = None,
        disk: DiskTier | None = None,
    ) -> None:
        self.config = config
        self.block_manager = block_manager or BlockManager(config.num_blocks, config.block_size)
        self.cost_model = cost_model or CostModel()
        self.disk = disk
        self.waiting: list[Request] = []  # by seq_id, i.e. arrival: a preempted request is older
        self.running: list[Request] = []  # by seq_id: oldest first
        self.counters = SchedulerCounters()
        self._requests: dict[str, Request] = {}
        self._seq_ids = itertools.count()
        # Estimated prefill ms each session with prefill work has had since it last had none.
        self._served: dict[str, float] = {}

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
        session: str = "",
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
        chain = BlockHashChain(config.block_size, extra_keys(config.cache_key, cache_salt))
        return Request(request_id or f"req-{seq_id}", seq_id, list(prompt_token_ids), sampling,
                       max_tokens, chain, cache_salt, session)

    def add_request(self, request: Request) -> None:
        if request.request_id in self._requests:
            raise RequestRejected(f"request id {request.request_id!r} is already in use")
        self._requests[request.request_id] = request
        bisect.insort(self.waiting, request, key=_seq_id)

    def expected_hit_tokens(self, request: Request) -> int:
        """Prefix tokens the request will most likely read from the cache (see BlockManager), the
        disk tier's included."""
        hashes, manager = request.block_hashes.hashes, self.block_manager
        tokens = manager.num_expected_hit_tokens(hashes, request.num_tokens)
        if self.disk is not None:
            start = tokens // self.config.block_size
            tokens += self.config.block_size * self.disk.count_stored(
                hashes, start, manager.num_hittable_blocks(request.num_tokens))
        return tokens

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
            cached = self.block_manager.publish(
                request.seq_id, request.block_hashes.hashes, request.num_computed_tokens)
            if self.disk is not None and cached:
                out.published += self._published_blocks(request, cached)
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

    def recompute_all(self) -> None:
        """Forget all KV (the pool was rebuilt): running requests wait to recompute, and the
        prefix cache starts empty."""
        for request in list(self.running):
            self._preempt(request, SchedulerOutput())
        self.block_manager.clear()

    # -- decodes -----------------------------------------------------------------------

    def _schedule_decode(self, request: Request, out: SchedulerOutput) -> None:
        if self._reserve(request, request.num_computed_tokens + 1, out):
            self._add_row(out, request, 1)
        else:
            self._preempt(request, out)

    # -- prefills ----------------------------------------------------------------------

    def _schedule_prefills(self, out: SchedulerOutput) -> None:
        candidates = self._prefill_candidates(out)
        self._track_sessions(candidates)
        ready = [c for c in candidates if not c.pending]
        if not ready:
            return
        full = _Limits(self.config.max_num_batched_tokens, self.config.max_step_ms)
        oldest, others = ready[0], ready[1:]  # ready is by seq_id
        # The oldest goes first (so it also takes its seat and announces its blocks first), leaving
        # what the others would use, up to 1 - oldest_prefill_share of the step's spare budget.
        others_share = 1.0 - self.config.oldest_prefill_share
        spare_tokens = full.tokens - out.shape.num_tokens
        spare_ms = max(full.ms - self.cost_model.estimate_ms(out.shape), 0.0)
        demand_tokens = sum(c.uncached for c in others)
        demand_ms = sum(c.cost_ms for c in others)
        left = _Limits(full.tokens - min(demand_tokens, int(others_share * spare_tokens)),
                       full.ms - min(demand_ms, others_share * spare_ms))
        self._schedule_prefill(oldest, out, left, guaranteed=True)
        self._share_fairly(others, out, full)

    def _prefill_candidates(self, out: SchedulerOutput) -> list[_Candidate]:
        candidates = []
        for request in self.running:
            if request.num_uncomputed_tokens > 1 and request.seq_id not in out.touched:
                candidates.append(self._candidate(request, request.num_computed_tokens, False))
        for request in self.waiting:
            if request.seq_id not in out.touched:
                match = self._match(request)
                from_disk, loading = self._disk_lookup(request, match)
                start = match.num_tokens + from_disk * self.config.block_size
                candidates.append(self._candidate(request, start, match.pending or loading))
        candidates.sort(key=lambda c: c.request.seq_id)
        return candidates

    def _candidate(self, request: Request, start: int, pending: bool) -> _Candidate:
        shape = StepShape()
        shape.add(start, request.num_tokens - start)
        return _Candidate(request, start, self.cost_model.estimate_ms(shape), pending)

    def _track_sessions(self, candidates: list[_Candidate]) -> None:
        """A session with nothing to prefill is forgotten; one that comes back starts level with
        the least served of the others, so idle time earns no credit."""
        active = {c.request.session for c in candidates}
        for session in self._served.keys() - active:
            del self._served[session]
        floor = min(self._served.values(), default=0.0)
        for session in active:
            self._served.setdefault(session, floor)

    def _share_fairly(self, candidates: list[_Candidate], out: SchedulerOutput, limits: _Limits) -> None:
        """One chunk at a time to the least served session, until the limits are reached."""
        queues: dict[str, deque[_Candidate]] = defaultdict(deque)
        for candidate in sorted(candidates, key=lambda c: c.rank):
            queues[candidate.request.session].append(candidate)
        heap = [(self._served[session], *queue[0].rank, session) for session, queue in queues.items()]
        heapq.heapify(heap)
        while heap and self._has_room(out, limits):
            *_, session = heapq.heappop(heap)
            queue = queues[session]
            self._schedule_prefill(queue.popleft(), out, limits)
            if queue:
                heapq.heappush(heap, (self._served[session], *queue[0].rank, session))

    def _has_room(self, out: SchedulerOutput, limits: _Limits) -> bool:
        return (out.shape.num_tokens < limits.tokens
                and self.cost_model.estimate_ms(out.shape) < limits.ms)

    def _schedule_prefill(self, candidate: _Candidate, out: SchedulerOutput, limits: _Limits,
                          guaranteed: bool = False) -> None:
        """A chunk of the candidate's prefill, charged to its session."""
        request = candidate.request
        if request.seq_id in out.touched:  # preempted by another row of this step
            return
        before_ms = self.cost_model.estimate_ms(out.shape)
        if request.status is RequestStatus.RUNNING:
            start = request.num_computed_tokens
            length = self._chunk_length(out, limits, start, request.num_uncomputed_tokens, guaranteed)
            if not (length and self._reserve(request, start + length, out)):
                return
        else:
            length = self._admit(request, out, limits, guaranteed)
            if not length:
                return
        self._add_row(out, request, length)
        out.num_prefill_rows += 1
        self._served[request.session] += self.cost_model.estimate_ms(out.shape) - before_ms

    def _admit(self, request: Request, out: SchedulerOutput, limits: _Limits, guaranteed: bool) -> int:
        """Start (or resume) a waiting request with its prefix hits; the length of its first chunk,
        0 if it cannot start now."""
        if out.admission_closed:
            return 0
        if len(self.running) >= self.config.max_num_seqs:
            out.admission_closed = True
            return 0
        match = self._match(request)  # anew: an allocation since the candidates' may have evicted
        if match.pending:
            return 0
        from_disk, loading = self._disk_lookup(request, match)
        if loading:
            return 0
        start = match.num_tokens + from_disk * self.config.block_size
        restore_ms = self.cost_model.restore_ms(from_disk)
        length = self._chunk_length(out, limits, start, request.num_tokens - start, guaranteed,
                                    restore_ms)
        if length == 0:
            return 0
        manager, end = self.block_manager, start + length
        if not manager.can_allocate(manager.num_blocks_to_admit(match, end)):
            out.admission_closed = True  # first come, first served for the free blocks
            return 0
        manager.acquire(request.seq_id, match)
        if not manager.ensure_capacity(request.seq_id, end, request.block_hashes.hashes):
            manager.free(request.seq_id)  # the pool could not grow into the blocks counted free
            out.admission_closed = True
            return 0
        if self.disk is not None:
            self._restore_from_disk(request, match, from_disk, out)
        _remove(self.waiting, request)
        bisect.insort(self.running, request, key=_seq_id)
        request.status = RequestStatus.RUNNING
        request.num_computed_tokens = start
        if request.timings.first_scheduled is None:
            request.timings.first_scheduled = time.monotonic()
            request.num_cached_tokens = start
            self.counters.prefix_queries_tokens += request.num_tokens
            self.counters.prefix_hits_tokens += start
        return length

    def _disk_lookup(self, request: Request, match: PrefixMatch) -> tuple[int, bool]:
        """(blocks after the pool hit that are read from disk and ready, whether more are being read)."""
        if self.disk is None or match.pending:
            return 0, False
        block_size, manager = self.config.block_size, self.block_manager
        ready, loading = self.disk.lookup(
            request.seq_id, request.block_hashes.hashes, len(match.block_ids),
            manager.num_hittable_blocks(request.num_tokens),
            lambda i: tuple(request.token_ids[i * block_size:(i + 1) * block_size]))
        if loading:  # grow the pool for them while they are read, not after
            manager.grow_for(-(-request.num_tokens // block_size) - len(match.block_ids))
        return ready, loading

    def _restore_from_disk(self, request: Request, match: PrefixMatch, from_disk: int,
                           out: SchedulerOutput) -> None:
        """Hand the blocks read from disk to the step, into the table's blocks after the pool hit;
        they are published with the step's computed blocks once it ran."""
        num_hits = len(match.block_ids)
        blocks = self.disk.take(request.seq_id, num_hits)[:from_disk]
        table = self.block_manager.block_table(request.seq_id)
        out.restores += zip(table[num_hits:num_hits + from_disk], blocks)
        out.shape.restored_blocks += from_disk
        self.disk.touch(match.block_hashes)
        hittable = self.block_manager.num_hittable_blocks(request.num_tokens)
        self.disk.record_admission(from_disk, max(0, hittable - num_hits - from_disk))

    def _published_blocks(self, request: Request, indexes: list[int]) -> list[PublishedBlock]:
        block_size, hashes = self.config.block_size, request.block_hashes.hashes
        table = self.block_manager.block_table(request.seq_id)
        return [PublishedBlock(table[i], hashes[i], tuple(request.token_ids[i * block_size:(i + 1) * block_size]))
                for i in indexes]

    def _match(self, request: Request) -> PrefixMatch:
        return self.block_manager.match_prefix(request.block_hashes.hashes, request.num_tokens)

    def _chunk_length(self, out: SchedulerOutput, limits: _Limits, start: int, remaining: int,
                      guaranteed: bool, reserved_ms: float = 0.0) -> int:
        """Tokens of a prefill to run now, within the limits (less reserved_ms). Chunks end on a
        block, except the guaranteed one, whose share may be smaller than a block's worth of time at a
        long context; it moves at least to the next block boundary, even over the time limit."""
        block_size = self.config.block_size
        tokens_left = limits.tokens - out.shape.num_tokens
        ms_left = limits.ms - self.cost_model.estimate_ms(out.shape) - reserved_ms
        length = min(remaining, tokens_left, self.cost_model.max_chunk_tokens(start, ms_left))
        if length < remaining and not guaranteed:
            length = (start + length) // block_size * block_size - start
        if length <= 0 and guaranteed:
            length = min(remaining, tokens_left, block_size - start % block_size)
        return max(length, 0)

    # -- blocks and bookkeeping --------------------------------------------------------

    def _reserve(self, request: Request, num_tokens: int, out: SchedulerOutput) -> bool:
        """Blocks for num_tokens, preempting newer running requests that are not in this step."""
        while not self.block_manager.ensure_capacity(request.seq_id, num_tokens,
                                                     request.block_hashes.hashes):
            victim = next(
                (r for r in reversed(self.running)
                 if r.seq_id > request.seq_id and r.seq_id not in out.touched),
                None,
            )
            if victim is None:
                return False
            self._preempt(victim, out)
        return True

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        """Recompute later: its blocks go back (cached, so resuming mostly hits); it keeps its output."""
        self.block_manager.free(request.seq_id)
        _remove(self.running, request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        bisect.insort(self.waiting, request, key=_seq_id)
        self.counters.num_preempted += 1
        out.touched.add(request.seq_id)

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
        out.touched.add(request.seq_id)
        out.shape.add(start, length)

    def _finish(self, request: Request, reason: FinishReason, now: float, error: str | None = None) -> None:
        """Whatever its state: its blocks are freed (a no-op if it holds none) and it leaves its queue."""
        if request.is_finished:
            return
        self.block_manager.free(request.seq_id)
        if self.disk is not None:
            self.disk.cancel(request.seq_id)
        for queue in (self.running, self.waiting):
            _remove(queue, request, missing_ok=True)
        request.finish(reason, now, error)
        self._requests.pop(request.request_id, None)
        self.counters.finished[reason.value] += 1


def _seq_id(request: Request) -> int:
    return request.seq_id


def _remove(queue: list[Request], request: Request, missing_ok: bool = False) -> None:
    """Take a request out of a list kept sorted by seq_id."""
    i = bisect.bisect_left(queue, request.seq_id, key=_seq_id)
    if i < len(queue) and queue[i] is request:
        del queue[i]
    elif not missing_ok:
        raise ValueError(f"request {request.request_id} is not in the queue")
