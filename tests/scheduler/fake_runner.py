"""A pure-Python stand-in for engine.runner.ModelRunner, for the scheduler's tests.

Its "model" writes each token to a fake paged KV pool and reads the whole context back through the
block table, so a wrong table, a stale prefix hit or a block reused too early raises KVCorruption (or
changes its tokens). Its next token depends only on the context, as a greedy model's does, so outputs
can be compared with `reference_tokens`. It reports a simulated step time from its own cost formula,
deliberately not the scheduler's priors, for the cost model to calibrate against.
"""

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from engine.step_types import SeqStep, TokenOutput

VOCAB_SIZE = 1000
# The fake device: ms per forward, per token, per decode query-key pair, per prefill query-key pair.
TRUE_COST_MS = (30.0, 2.0, 0.012, 0.005)


class KVCorruption(AssertionError):
    pass


def next_token(context: Sequence[int]) -> int:
    """The fake model's greedy choice after `context`."""
    return hash((len(context), *context[-8:])) % VOCAB_SIZE


def random_prompt(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(VOCAB_SIZE) for _ in range(length)]


def reference_tokens(prompt: Sequence[int], max_tokens: int) -> list[int]:
    """What one request alone generates: the stream every schedule must reproduce."""
    context = list(prompt)
    for _ in range(max_tokens):
        context.append(next_token(context))
    return context[len(prompt) :]


def step_cost_ms(seqs: Sequence[SeqStep], cost_ms: Sequence[float] = TRUE_COST_MS) -> float:
    per_forward, per_token, per_decode_pair, per_prefill_pair = cost_ms[:4]  # no restores here
    decodes = [seq for seq in seqs if len(seq.token_ids) == 1]
    chunks = [seq for seq in seqs if len(seq.token_ids) > 1]
    ms = per_forward * ((len(decodes) > 0) + len(chunks))
    ms += per_token * sum(len(seq.token_ids) for seq in seqs)
    ms += per_decode_pair * sum(seq.start_pos + 1 for seq in decodes)
    for seq in chunks:
        length = len(seq.token_ids)
        ms += per_prefill_pair * (length * seq.start_pos + length * (length + 1) / 2)
    return ms


class FakeRunner:
    def __init__(
        self,
        num_blocks: int,
        block_size: int = 16,
        cost_ms: Sequence[float] = TRUE_COST_MS,
        delay_s: float = 0.0,
        fail_if: Callable[[list[SeqStep]], bool] | None = None,
        grow_limit: int | None = None,
    ) -> None:
        """grow_limit: allocate the pool on demand, one block at a time as the real one grows in
        slabs, never past grow_limit blocks (memory pressure); None: all of it up front."""
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.cost_ms = cost_ms
        self.delay_s = delay_s  # real sleep per step, for tests that race the engine thread
        self.fail_if = fail_if
        self.kv: list[int | None] = [None] * (num_blocks * block_size)
        self.tokens_run: Counter[int] = Counter()  # seq_id -> tokens it computed (not hit)
        self.released: list[int] = []
        self.num_resets = 0
        self.num_steps = 0
        self.last_step_ms = 0.0
        self.last_step_runs: list[int] = []
        self.num_allocated = num_blocks if grow_limit is None else 0
        self.grow_limit = grow_limit
        self.pool_growth = None if grow_limit is None else self._grow

    def _grow(self, min_blocks: int) -> int:
        if min_blocks <= self.grow_limit:
            self.num_allocated = max(self.num_allocated, min_blocks)
        return self.num_allocated

    def step(self, seqs: list[SeqStep]) -> list[TokenOutput]:
        if self.fail_if is not None and self.fail_if(seqs):
            raise RuntimeError("injected step failure")
        if self.delay_s:
            time.sleep(self.delay_s)
        self.num_steps += 1
        outputs = []
        for seq in seqs:
            end = seq.start_pos + len(seq.token_ids)
            if len(seq.block_table) * self.block_size < end:
                raise KVCorruption(f"seq {seq.seq_id}: {len(seq.block_table)} blocks for {end} tokens")
            if max(seq.block_table) >= self.num_allocated:
                raise KVCorruption(f"seq {seq.seq_id}: block {max(seq.block_table)} of a pool "
                                   f"allocated up to {self.num_allocated}")
            for offset, token in enumerate(seq.token_ids):
                self.kv[self._slot(seq.block_table, seq.start_pos + offset)] = token
            self.tokens_run[seq.seq_id] += len(seq.token_ids)
            context = self._read_context(seq, end)
            if seq.sample:
                outputs.append(TokenOutput(seq.seq_id, next_token(context), logprob=-0.5))
        self.last_step_ms = step_cost_ms(seqs, self.cost_ms)
        self.last_step_runs = [_count_runs(seq.block_table) for seq in seqs]
        return outputs

    def copy_blocks_out(self, block_ids: list[int]) -> np.ndarray:
        """The token each slot holds stands for its K/V: `[n, block_size]`."""
        return np.array([[self.kv[block_id * self.block_size + i] for i in range(self.block_size)]
                         for block_id in block_ids], dtype=np.int64)

    def restore_blocks(self, blocks: list[tuple[int, np.ndarray]]) -> None:
        for block_id, kv in blocks:
            for i, token in enumerate(kv.tolist()):
                self.kv[block_id * self.block_size + i] = int(token)

    def release(self, seq_id: int) -> None:
        self.released.append(seq_id)

    def reset_pool(self) -> None:
        self.kv = [None] * len(self.kv)
        self.num_resets += 1

    def _slot(self, block_table: list[int], position: int) -> int:
        return block_table[position // self.block_size] * self.block_size + position % self.block_size

    def _read_context(self, seq: SeqStep, end: int) -> list[int]:
        """The tokens [0, end) as the KV pool holds them; they must be the sequence's history."""
        size = self.block_size
        context: list[int | None] = []
        for index in range(-(-end // size)):
            start = seq.block_table[index] * size
            context += self.kv[start : start + min(size, end - index * size)]
        if context != list(seq.history[:end]):
            first_bad = next(i for i, (a, b) in enumerate(zip(context, seq.history)) if a != b)
            raise KVCorruption(f"seq {seq.seq_id}: KV at position {first_bad} is not its token")
        return context


def _count_runs(table: list[int]) -> int:
    return sum(1 for i, block in enumerate(table) if i == 0 or block != table[i - 1] + 1)
