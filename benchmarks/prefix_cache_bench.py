"""The prefix cache's trade-off: hit rate against runs per sequence, by block size, pool size and allocator.

    .venv/bin/python -m benchmarks.prefix_cache_bench [--quick]

Pure Python, no MLX: a simulated scheduler drives the real scheduler.block_manager.BlockManager with an
agent workload. S sessions run at once; every prompt starts with the same long system prompt + tools
prefix, then the session's history and a new user message. Each step decodes one token for every
decoding sequence (ensure_capacity, then publish as blocks fill) and prefills within a token budget;
a finished turn frees its blocks, and after a short think time the session sends the next turn. Sessions
end after a few turns and new ones take their place. When the pool runs dry the newest sequence is
preempted and recomputed later, as scheduler.py does.

Two allocators: the real one (run-aware: hashless blocks handed out as contiguous runs, LRU eviction only
when those run out) and a vLLM-style baseline that takes the oldest free block first, hashless or cached.
Reported per case: hit rate in prompt tokens (hits when a turn is first admitted, as the scheduler's
counters count them), mean and p99 runs per running sequence per step, evictions and preemptions.
Writes benchmarks/results/prefix_cache_bench.json.
"""

import argparse
import json
import random
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scheduler.block_hash import BlockHashChain
from scheduler.block_manager import BlockManager

RESULT_PATH = Path(__file__).parent / "results" / "prefix_cache_bench.json"
VOCAB_SIZE = 49152
BLOCK_SIZES = (16, 32, 64)
POOL_TOKENS = (1 << 20, 128_000, 80_000, 56_000, 40_000)  # everything fits -> heavy pressure
MAX_STEPS = 1_000_000  # a stuck simulation is a bug, not a result


@dataclass(frozen=True)
class AgentWorkload:
    concurrent_sessions: int = 8
    total_sessions: int = 32
    shared_prefix_tokens: int = 10_000
    turns_per_session: tuple[int, int] = (3, 8)
    user_tokens: tuple[int, int] = (200, 2000)
    output_tokens: tuple[int, int] = (100, 400)
    think_steps: tuple[int, int] = (0, 40)  # steps between a turn's end and the next turn (tool calls)
    prefill_tokens_per_step: int = 512
    seed: int = 0


class RunAwareManager(BlockManager):
    """The real allocator, counting evictions."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks, block_size)
        self.evictions = 0

    def _evict_oldest(self) -> int:
        self.evictions += 1
        return super()._evict_oldest()


class OldestFirstManager(RunAwareManager):
    """vLLM's policy: one LRU queue of every free block, hashless or cached; allocation pops its head."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks, block_size)
        self._hashless_free[:] = bytes(num_blocks)
        self._num_hashless_free = 0
        for block_id in range(num_blocks):
            self._lru.append(block_id)

    def _allocate(self, num_blocks: int, after: int | None) -> list[int]:
        return [self._evict_oldest() for _ in range(num_blocks)]

    def _evict_oldest(self) -> int:
        block = self._blocks[self._lru.popleft()]
        if block.block_hash is not None:
            self.evictions += 1
            del self._cached[block.block_hash]
            block.block_hash = None
        return block.block_id

    def _release_hashless(self, block_id: int) -> None:
        self._lru.append(block_id)


ALLOCATORS = {"run-aware": RunAwareManager, "oldest-first": OldestFirstManager}


@dataclass(eq=False)
class Turn:
    seq_id: int
    session: "Session"
    token_ids: list[int]  # prompt, then outputs
    num_outputs: int
    chain: BlockHashChain  # over token_ids' full blocks
    num_prompt_tokens: int = field(init=False)
    num_computed: int = 0
    admitted: bool = False  # hits are counted on first admission only
    runs: int = 0

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.token_ids)
        self.chain.extend(self.token_ids)

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.chain.extend(self.token_ids)

    @property
    def prefilling(self) -> bool:
        return self.num_computed < len(self.token_ids) - 1  # decoding computes the last sampled token


@dataclass(eq=False)
class Session:
    history: list[int]
    turns_left: int
    ready_at_step: int = 0


class Simulation:
    def __init__(self, workload: AgentWorkload, manager: RunAwareManager) -> None:
        self.workload, self.manager = workload, manager
        self.rng = random.Random(workload.seed)
        self.shared_prefix = self._tokens(workload.shared_prefix_tokens)
        self.sessions_started = 0
        self.idle: list[Session] = []
        self.waiting: deque[Turn] = deque()
        self.running: list[Turn] = []  # by seq_id: the newest is preempted first
        self.next_seq_id = 0
        self.prompt_tokens = self.hit_tokens = self.preemptions = 0
        self.runs_samples: list[int] = []

    def _tokens(self, count: int) -> list[int]:
        return [self.rng.randrange(VOCAB_SIZE) for _ in range(count)]

    def _start_session(self, step: int) -> None:
        self.sessions_started += 1
        num_turns = self.rng.randint(*self.workload.turns_per_session)
        self.idle.append(Session(list(self.shared_prefix), num_turns, step))

    def run(self) -> None:
        for _ in range(self.workload.concurrent_sessions):
            self._start_session(0)
        for step in range(MAX_STEPS):
            for session in [s for s in self.idle if s.ready_at_step <= step]:
                self.idle.remove(session)
                self._send_turn(session)
            if not (self.idle or self.waiting or self.running):
                return
            self._decode(step)
            self._prefill()
            self.runs_samples += [turn.runs for turn in self.running]
        raise RuntimeError("simulation did not finish")

    def _send_turn(self, session: Session) -> None:
        prompt = session.history + self._tokens(self.rng.randint(*self.workload.user_tokens))
        num_outputs = self.rng.randint(*self.workload.output_tokens)
        chain = BlockHashChain(self.manager.block_size, b"")
        self.waiting.append(Turn(self.next_seq_id, session, prompt, num_outputs, chain))
        self.next_seq_id += 1

    def _decode(self, step: int) -> None:
        for turn in [t for t in self.running if not t.prefilling]:
            if turn not in self.running:
                continue  # preempted by an older turn in this step
            if not self._reserve(turn, turn.num_computed + 1):
                self._preempt(turn)
                continue
            turn.num_computed += 1
            self.manager.publish(turn.seq_id, turn.chain.hashes, turn.num_computed)
            if len(turn.token_ids) - turn.num_prompt_tokens == turn.num_outputs:
                self._finish(turn, step)
            else:
                turn.append(self.rng.randrange(VOCAB_SIZE))

    def _prefill(self) -> None:
        budget = self.workload.prefill_tokens_per_step
        for turn in [t for t in self.running if t.prefilling] + list(self.waiting):
            if budget <= 0:
                return
            if turn in self.running:
                length = self._chunk(turn.num_computed, budget, turn)
                if not self._reserve(turn, turn.num_computed + length):
                    continue
            else:
                match = self.manager.match_prefix(turn.chain.hashes, len(turn.token_ids))
                if match.pending:
                    continue  # another turn is computing its next block: wait, then hit
                length = self._chunk(match.num_tokens, budget, turn)
                end = match.num_tokens + length
                if not self.manager.can_allocate(self.manager.num_blocks_to_admit(match, end)):
                    return
                self.manager.acquire(turn.seq_id, match)
                self.manager.ensure_capacity(turn.seq_id, end, turn.chain.hashes)
                self.waiting.remove(turn)
                self.running.append(turn)
                self.running.sort(key=lambda t: t.seq_id)
                turn.num_computed, turn.runs = match.num_tokens, self.manager.num_runs(turn.seq_id)
                if not turn.admitted:
                    turn.admitted = True
                    self.prompt_tokens += turn.num_prompt_tokens
                    self.hit_tokens += match.num_tokens
            budget -= length
            turn.num_computed += length
            self.manager.publish(turn.seq_id, turn.chain.hashes, turn.num_computed)
            if not turn.prefilling:  # the prompt's last token gave the first output token
                turn.append(self.rng.randrange(VOCAB_SIZE))

    def _chunk(self, start: int, budget: int, turn: Turn) -> int:
        """As scheduler._chunk_length: a cut prompt chunk ends on a block boundary."""
        remaining = len(turn.token_ids) - start
        if remaining <= budget:
            return remaining
        size = self.manager.block_size
        return min(remaining, max((start + budget) // size * size - start, size - start % size))

    def _reserve(self, turn: Turn, num_tokens: int) -> bool:
        """Blocks for num_tokens, preempting newer running turns, as scheduler._reserve does."""
        grows = self.manager.num_blocks_needed(turn.seq_id, num_tokens) > 0
        while not self.manager.ensure_capacity(turn.seq_id, num_tokens, turn.chain.hashes):
            newer = [t for t in self.running if t.seq_id > turn.seq_id]
            if not newer:
                return False
            self._preempt(newer[-1])
        if grows:
            turn.runs = self.manager.num_runs(turn.seq_id)
        return True

    def _preempt(self, turn: Turn) -> None:
        self.manager.free(turn.seq_id)
        self.running.remove(turn)
        turn.num_computed = 0
        self.waiting.appendleft(turn)
        self.preemptions += 1

    def _finish(self, turn: Turn, step: int) -> None:
        self.manager.free(turn.seq_id)
        self.running.remove(turn)
        session = turn.session
        session.history = turn.token_ids
        session.turns_left -= 1
        if session.turns_left:
            session.ready_at_step = step + self.rng.randint(*self.workload.think_steps)
            self.idle.append(session)
        elif self.sessions_started < self.workload.total_sessions:
            self._start_session(step)


def run_case(workload: AgentWorkload, allocator: str, block_size: int, pool_tokens: int) -> dict:
    """One simulation; its hit rate, runs per running sequence, evictions and preemptions."""
    manager = ALLOCATORS[allocator](pool_tokens // block_size, block_size)
    simulation = Simulation(workload, manager)
    simulation.run()
    runs = sorted(simulation.runs_samples)
    return {
        "allocator": allocator,
        "block_size": block_size,
        "pool_tokens": pool_tokens,
        "hit_rate": simulation.hit_tokens / simulation.prompt_tokens,
        "mean_runs": sum(runs) / len(runs),
        "p99_runs": runs[int(0.99 * (len(runs) - 1))],
        "evictions": manager.evictions,
        "preemptions": simulation.preemptions,
        "prompt_tokens": simulation.prompt_tokens,
    }


def format_table(cases: list[dict]) -> list[str]:
    lines = [
        "| pool (tokens) | block size | allocator | hit rate | runs mean / p99 | evictions "
        "| preemptions |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        lines.append(
            f"| {case['pool_tokens']:,} | {case['block_size']} | {case['allocator']} "
            f"| {case['hit_rate']:.1%} | {case['mean_runs']:.2f} / {case['p99_runs']} "
            f"| {case['evictions']:,} | {case['preemptions']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sessions")
    args = parser.parse_args(argv)
    workload = AgentWorkload(total_sessions=12 if args.quick else 32)
    cases = []
    for pool_tokens in POOL_TOKENS:
        for block_size in BLOCK_SIZES:
            for allocator in ALLOCATORS:
                cases.append(run_case(workload, allocator, block_size, pool_tokens))
                print(format_table(cases[-1:])[-1], flush=True)
    RESULT_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULT_PATH.write_text(json.dumps({"workload": asdict(workload), "cases": cases}, indent=2))
    print("\n".join(format_table(cases)))


if __name__ == "__main__":
    main()
