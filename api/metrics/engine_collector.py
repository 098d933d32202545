"""Gauges and engine counters, read from the engine's stats snapshot at scrape time."""

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.metrics.family import LABELS
from scheduler.disk_tier import DiskStats
from scheduler.request import AbortCause, FinishReason

FINISH_REASONS = tuple(reason.value for reason in FinishReason)
DISK_OFF = DiskStats(0, 0, 0, 0, 0, 0, 0, 0, 0)
ABORT_CAUSES = tuple(cause.value for cause in AbortCause)


class EngineStatsCollector(Collector):
    def __init__(self, label_values: tuple[str, ...], engine_stats: Callable[[], Any],
                 kv_block_bytes: int) -> None:
        """engine_stats: returns the latest scheduler.engine_loop.EngineStats."""
        self._values = list(label_values)
        self._engine_stats = engine_stats
        self._kv_block_bytes = kv_block_bytes

    def collect(self) -> Iterator[Metric]:
        stats = self._engine_stats()
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
             stats.num_blocks * self._kv_block_bytes),
            ("pagedmlx:kv_cache_allocated_bytes", "Memory the KV cache holds now: it grows on "
             "demand up to the budget.", stats.num_allocated_blocks * self._kv_block_bytes),
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
        for family, rows in ((GaugeMetricFamily, gauges), (CounterMetricFamily, counters)):
            for name, doc, value in rows:
                metric = family(name, doc, labels=LABELS)
                metric.add_metric(self._values, value)
                yield metric
        yield self._labelled(
            GaugeMetricFamily("pagedmlx:kv_cache_blocks", "KV-cache blocks by state: free (no "
                              "KV worth keeping), cached (free, holding a reusable prefix), used.",
                              labels=(*LABELS, "state")),
            {"free": stats.num_free_blocks - stats.num_reusable_blocks,
             "cached": stats.num_reusable_blocks, "used": used_blocks})
        yield self._labelled(
            CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                labels=(*LABELS, "finished_reason")),
            {reason: stats.finished.get(reason, 0) for reason in FINISH_REASONS})
        yield self._labelled(
            CounterMetricFamily("pagedmlx:request_aborts", "Requests ended before they finished "
                                "by themselves, by cause.", labels=(*LABELS, "cause")),
            {cause: stats.aborts.get(cause, 0) for cause in ABORT_CAUSES})

    def _labelled(self, metric: Any, values: dict[str, float]) -> Metric:
        for label, value in values.items():
            metric.add_metric([*self._values, label], value)
        return metric
