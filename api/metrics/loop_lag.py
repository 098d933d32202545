"""How late the event loop wakes: a coroutine that sleeps a fixed interval and records the overshoot.
Every handler and stream shares the one loop, so a lag here is a pause in every response."""

import asyncio
from typing import Any

from api.metrics.family import Families

INTERVAL_S = 0.1
LAG_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LoopLag:
    def __init__(self, families: Families) -> None:
        self._histogram: Any = families.histogram(
            "pagedmlx:event_loop_lag_seconds", f"How much later than asked the event loop woke a "
            f"task sleeping {INTERVAL_S:g} s: the longest a request waited for the loop.", LAG_S)

    async def watch(self) -> None:
        """Until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(INTERVAL_S)
            self._histogram.observe(max(0.0, loop.time() - started - INTERVAL_S))
