"""Growing the KV pool on demand, up to its budget.

A pool allocated whole at start-up holds its budget (half of the free memory on the CPU) before
the first request, on a machine it shares with an editor and the agents. Grown on demand, it
holds what the work needs: at least the blocks asked for, and at least double its size (a first
slab of SLAB_MIN_BYTES), so that the copies growing costs stay rare; never past the budget.
A growth runs on the engine thread between steps: the streams pause while the pool is copied
and its new memory first touched (on this project's 2-core CPU box about 1.5 s per GB of the
new size; --kv-preallocate pays it all at start-up instead).

Up to `guaranteed_blocks` (one full-context sequence, which the server promised at start-up) it
grows whatever memory is free. Beyond them it grows only into memory that is free now with
RESERVE_BYTES to spare; where it cannot, it grows nothing and the scheduler evicts cached blocks,
preempts or waits, as when the budget is reached.
"""

import logging
import time
from collections.abc import Callable

import mlx.core as mx

from engine.kv_pool import KVPool, free_memory_bytes

log = logging.getLogger(__name__)

SLAB_MIN_BYTES = 64 * 2**20
RESERVE_BYTES = 2**30


class PoolGrowth:
    def __init__(self, pool: KVPool, budget_blocks: int, guaranteed_blocks: int = 0,
                 free_memory: Callable[[], int] = free_memory_bytes) -> None:
        self.pool = pool
        self.budget_blocks = budget_blocks
        self.guaranteed_blocks = min(guaranteed_blocks, budget_blocks)
        self._free_memory = free_memory
        self._slab_blocks = max(1, SLAB_MIN_BYTES // pool.block_bytes)
        self.num_growths = 0

    def __call__(self, min_blocks: int) -> int:
        """Grow the pool to hold at least min_blocks blocks, if memory allows; its size after."""
        current = self.pool.num_blocks
        if min_blocks <= current:
            return current
        if min_blocks > self.budget_blocks:
            return current
        target = min(self.budget_blocks, max(min_blocks, 2 * current, self._slab_blocks))
        if target > self.guaranteed_blocks:
            spare = max(0, self._free_memory() - RESERVE_BYTES) // self.pool.block_bytes
            target = max(min(target, current + spare), self.guaranteed_blocks)
            if target < min_blocks:
                return current
        return self._grow(current, target)

    def _grow(self, current: int, target: int) -> int:
        started = time.perf_counter()
        try:
            self.pool.grow(target)
        except (RuntimeError, MemoryError) as error:  # the device's allocator refused
            mx.clear_cache()
            self.budget_blocks = max(current, self.guaranteed_blocks)
            log.warning("the KV pool cannot grow past %d blocks (%s); it stays within them",
                        current, error)
            return current
        self.num_growths += 1
        log.info("KV pool grown to %d blocks (%.2f GB) in %.0f ms", target,
                 self.pool.nbytes / 2**30, (time.perf_counter() - started) * 1000)
        return target
