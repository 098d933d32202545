"""A process's resident memory (psutil when installed, else /proc/<pid>/status) and its growth over a
soak: the median of the last quarter of the load beside the median of the window right after warm-up.

Warm-up is the first 20% of the run (10 s at least): compiled graphs, the allocator's pools and the prefix
cache fill there. pagedmlx's KV pool, though, grows on demand up to its budget (engine/pool_growth.py) for
as long as the prefix cache keeps finding new prompts to hold, which on a slow machine outlasts any fixed
warm-up; that growth is bounded by design, so the leak check is on the RSS outside the pool (the server's
pagedmlx:kv_cache_allocated_bytes, sampled with it). Both are reported.
"""

import statistics
from collections.abc import Callable
from dataclasses import dataclass

try:
    import psutil
except ImportError:
    psutil = None

WARM_UP_SHARE, MIN_WARM_UP_S = 0.2, 10.0
BASELINE_SHARE, MIN_BASELINE_S = 0.1, 5.0  # the window after warm-up whose median is the baseline


def rss_bytes(pid: int) -> int | None:
    """None once the process is gone."""
    if psutil is not None:
        try:
            return psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return None
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


@dataclass(frozen=True)
class MemorySample:
    at_s: float  # since the start of the load
    rss: int
    kv_pool: int  # bytes the KV pool holds

    @property
    def outside_pool(self) -> int:
        return self.rss - self.kv_pool


@dataclass(frozen=True)
class Growth:
    start: float | None
    after_warm_up: float | None
    end: float | None

    @property
    def ratio(self) -> float | None:
        """(end - after warm-up) / after warm-up; None when either window had no sample."""
        if not self.after_warm_up or self.end is None:
            return None
        return self.end / self.after_warm_up - 1


def warm_up_s(duration_s: float) -> float:
    return max(MIN_WARM_UP_S, WARM_UP_SHARE * duration_s)


def growth(samples: list[MemorySample], duration_s: float, value: Callable[[MemorySample], float]) -> Growth:
    """The first value, and the medians after warm-up and over the last quarter, of a load that lasted
    `duration_s`."""
    warm = warm_up_s(duration_s)

    def median_between(start_s: float, end_s: float) -> float | None:
        values = [value(sample) for sample in samples if start_s <= sample.at_s <= end_s]
        return statistics.median(values) if values else None

    return Growth(value(samples[0]) if samples else None,
                  median_between(warm, warm + max(MIN_BASELINE_S, BASELINE_SHARE * duration_s)),
                  median_between(0.75 * duration_s, duration_s))
