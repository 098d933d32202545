"""Gauges and engine counters, read from the engine's stats snapshot at scrape time."""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.metrics.family import LABELS
from scheduler.disk_tier import DiskStats
from scheduler.request import AbortCause, FinishReason

FINISH_REASONS = tuple(reason.value for reason in FinishReason)
DISK_OFF = DiskStats(0, 0, 0, 0, 0, 0, 0, 0, 0)
ABORT_CAUSES = tuple(cause.value for cause in AbortCause)


@dataclass(frozen=True)
class EngineSource:
    """One loaded model's engine, as the collector reads it."""

    label_values: tuple[str, ...]
    stats: Any  # its latest scheduler.engine_loop.EngineStats
    kv_block_bytes: int


class EngineStatsCollector(Collector):
    def __init__(self, sources: Callable[[], Iterable[EngineSource]]) -> None:
        """sources: the engines to read at each scrape (the loaded models')."""
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        rows: dict[str, tuple[type, str, tuple[str, ...]]] = {}
        samples: dict[str, list[tuple[list[str], float]]] = {}
        for source in self._sources():
            for kind, name, doc, label, values in _engine_samples(source.stats,
                                                                  source.kv_block_bytes):
                rows.setdefault(name, (kind, doc, (*LABELS, *label)))
                samples.setdefault(name, []).extend(
                    ([*source.label_values, *key], value) for key, value in values)
        for name, (kind, doc, labels) in rows.items():
            metric = kind(name, doc, labels=labels)
            for label_values, value in samples[name]:
                metric.add_metric(label_values, value)
            yield metric


def _engine_samples(stats: Any, kv_block_bytes: int) -> Iterator[tuple]:
    """(family class, name, doc, extra label names, [(extra label values, value)]) of one engine."""
    used_blocks = stats.num_blocks - stats.num_free_blocks
    disk = stats.disk or DISK_OFF
    gauges = (
        ("vllm:num_requests_running", "Number of requests in model execution batches.",
         stats.num_running),
        ("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
         stats.num_waiting),
        ("vllm:num_requests_swapped", "Requests swapped to CPU memory: always 0 (a preempted "
         "request is recomputed, and counted as waiting).", 0),
        ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
         stats.kv_usage),
        ("vllm:gpu_cache_usage_perc", "KV-cache usage (vLLM's older name). 1 means 100 percent "
         "usage.", stats.kv_usage),
        ("pagedmlx:kv_cache_budget_bytes", "Most memory the KV cache may take (--kv-cache-gb).",
         stats.num_blocks * kv_block_bytes),
        ("pagedmlx:kv_cache_allocated_bytes", "Memory the KV cache holds now: it grows on "
         "demand up to the budget.", stats.num_allocated_blocks * kv_block_bytes),
        ("pagedmlx:disk_cache_size_bytes", "Bytes of KV blocks in the prefix cache's disk tier.",
         disk.size_bytes),
        ("pagedmlx:disk_cache_capacity_bytes", "Most bytes the disk tier may hold "
         "(--disk-cache-gb; 0: off).", disk.capacity_bytes),
        ("pagedmlx:disk_cache_blocks", "KV blocks in the disk tier.", disk.num_blocks),
        ("pagedmlx:disk_cache_write_queue_depth", "Blocks waiting to be written to the disk "
         "tier.", disk.queue_depth),
    )
    counters = (
        ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried "
         "tokens.", stats.prefix_queries_tokens),
        ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
         stats.prefix_hits_tokens),
        ("vllm:gpu_prefix_cache_queries", "Prefix cache queries in tokens (vLLM's older "
         "name).", stats.prefix_queries_tokens),
        ("vllm:gpu_prefix_cache_hits", "Prefix cache hits in tokens (vLLM's older name).",
         stats.prefix_hits_tokens),
        ("vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens_total),
        ("vllm:generation_tokens", "Number of generation tokens processed.",
         stats.generation_tokens_total),
        ("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
         stats.num_preempted_total),
        ("pagedmlx:engine_failed_steps", "Engine steps whose forward pass raised.",
         stats.num_failed_steps),
        ("pagedmlx:kv_pool_rebuilds", "KV pool rebuilds after failed steps in a row.",
         stats.num_pool_rebuilds),
        ("pagedmlx:disk_cache_hits", "KV blocks read from the disk tier into the pool (counted "
         "in vllm:prefix_cache_hits too).", disk.hits),
        ("pagedmlx:disk_cache_misses", "Prompt blocks found neither in the pool nor on disk "
         "when their request started.", disk.misses),
        ("pagedmlx:disk_cache_read_bytes", "Bytes read from the disk tier.", disk.bytes_read),
        ("pagedmlx:disk_cache_written_bytes", "Bytes written to the disk tier.",
         disk.bytes_written),
        ("pagedmlx:disk_cache_dropped_writes", "Blocks not written to the disk tier: its "
         "queue was full, or the write failed.", disk.dropped_writes),
    )
    for kind, rows in ((GaugeMetricFamily, gauges), (CounterMetricFamily, counters)):
        for name, doc, value in rows:
            yield kind, name, doc, (), [((), value)]
    yield (GaugeMetricFamily, "pagedmlx:kv_cache_blocks", "KV-cache blocks by state: free (no KV "
           "worth keeping), cached (free, holding a reusable prefix), used.", ("state",),
           [(("free",), stats.num_free_blocks - stats.num_reusable_blocks),
            (("cached",), stats.num_reusable_blocks), (("used",), used_blocks)])
    yield (CounterMetricFamily, "vllm:request_success", "Count of successfully processed "
           "requests.", ("finished_reason",),
           [((reason,), stats.finished.get(reason, 0)) for reason in FINISH_REASONS])
    yield (CounterMetricFamily, "pagedmlx:request_aborts", "Requests ended before they finished "
           "by themselves, by cause.", ("cause",),
           [((cause,), stats.aborts.get(cause, 0)) for cause in ABORT_CAUSES])
