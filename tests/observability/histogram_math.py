"""Prometheus's histogram_quantile, computed here from the buckets a server exported, so that the
dashboards' quantiles can be compared with what they must be."""

import math


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """buckets: (upper bound, cumulative count), ascending, ending with +Inf (Prometheus 2.x)."""
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    index = next(i for i, (_, count) in enumerate(buckets) if count >= rank)
    if index == len(buckets) - 1:
        return buckets[-2][0]
    if index == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    start, below = (0.0, 0.0) if index == 0 else buckets[index - 1]
    end, count = buckets[index]
    return start + (end - start) * (rank - below) / (count - below)
