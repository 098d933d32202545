"""Consecutive failed engine steps: what to log, and when to rebuild the KV pool.

A failed step's requests are dropped. One failure may be that step's own bad luck; a second in a
row (an MLX out-of-memory that keeps coming back, a pool left in a bad state) means the KV pool is
rebuilt and the prefix cache cleared before the next step. The first failure of a streak is logged
with its traceback, the rest are counted, and the end of the streak is logged once.
"""

import logging

REBUILD_AFTER = 2  # consecutive failed steps

log = logging.getLogger(__name__)


class FailureStreak:
    def __init__(self) -> None:
        self.length = 0
        self.num_rebuilds = 0

    def failed(self, error: BaseException, num_requests: int) -> bool:
        """Record a failed step; True when the pool should be rebuilt now."""
        self.length += 1
        if self.length == 1:
            log.error("engine step failed; failing its %d requests", num_requests, exc_info=error)
        else:
            log.debug("engine step failed again (%d in a row): %r", self.length, error)
        if self.length % REBUILD_AFTER:
            return False
        self.num_rebuilds += 1
        log.warning("%d engine steps failed in a row: rebuilding the KV pool and clearing the "
                    "prefix cache; running requests recompute", self.length)
        return True

    def succeeded(self) -> None:
        if self.length > 1:
            log.warning("engine steps succeed again after %d failures in a row", self.length)
        self.length = 0
