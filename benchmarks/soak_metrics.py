"""What a soak reads from the server's /metrics: the KV pool's size now, and over the run (between two
scrapes) the HTTP statuses, request ends by reason, aborts by cause, the prefix-cache hit rate and the
event-loop lag, where the server exports it."""

from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.server_metrics import counters_from_exposition, prefix_cache_hit_rate

KV_POOL_BYTES = "pagedmlx:kv_cache_allocated_bytes"
EVENT_LOOP_LAG = "pagedmlx:event_loop_lag_seconds"

Samples = dict[tuple[str, frozenset], float]  # (sample name, its labels): value


def parse_samples(exposition: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(exposition) for sample in family.samples}


def counter_deltas(before: Samples, after: Samples) -> Samples:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The samples named `name` summed by the value of `label`."""
    sums: dict[str, float] = defaultdict(float)
    for (sample_name, labels), value in samples.items():
        if sample_name == name:
            sums[dict(labels).get(label, "")] += value
    return dict(sums)


def total(samples: Samples, name: str) -> float:
    return sum(value for (sample_name, _), value in samples.items() if sample_name == name)


def kv_pool_bytes(exposition: str) -> int:
    return round(total(parse_samples(exposition), KV_POOL_BYTES))


def event_loop_lag(deltas: Samples) -> tuple[float | None, float | None]:
    """The mean and the p99 bucket's upper bound of the histogram pagedmlx:event_loop_lag_seconds over
    the run; None where the server has none."""
    count = total(deltas, EVENT_LOOP_LAG + "_count")
    if not count:
        return None, None
    cumulative = sorted((float(bound), seen) for bound, seen in
                        by_label(deltas, EVENT_LOOP_LAG + "_bucket", "le").items())
    p99 = next((bound for bound, seen in cumulative if seen >= 0.99 * count), None)
    return total(deltas, EVENT_LOOP_LAG + "_sum") / count, p99


@dataclass(frozen=True)
class ServerFigures:
    """Counts over the run."""

    http_5xx: int
    http_by_status: dict[str, float] = field(default_factory=dict)
    success_by_reason: dict[str, float] = field(default_factory=dict)
    aborts_by_cause: dict[str, float] = field(default_factory=dict)
    prefix_cache_hit_rate: float | None = None
    event_loop_lag_s: float | None = None  # the mean
    event_loop_lag_p99_s: float | None = None  # the upper bound of its p99 bucket


def server_figures(before: str, after: str) -> ServerFigures:
    """From the expositions scraped before and after the run."""
    deltas = counter_deltas(parse_samples(before), parse_samples(after))
    by_status = by_label(deltas, "pagedmlx:http_requests_total", "status")
    return ServerFigures(
        round(sum(count for status, count in by_status.items() if status.startswith("5"))), by_status,
        by_label(deltas, "vllm:request_success_total", "finished_reason"),
        by_label(deltas, "pagedmlx:request_aborts_total", "cause"),
        prefix_cache_hit_rate(counters_from_exposition(before), counters_from_exposition(after)),
        *event_loop_lag(deltas))
