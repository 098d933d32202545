"""Prometheus metrics under vLLM's names and labels, so vLLM's Grafana dashboard reads them.

Gauges and engine counters are read from `EngineLoop.stats` at scrape time; the per-request
histograms are observed here when a request's final event (with its timings) arrives.
"""

from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.context import CONTEXT

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
INTER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                       5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_TIME_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                        60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
FINISH_REASONS = ("stop", "length", "abort")


def one_two_five_buckets(limit: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, ... up to limit (vLLM's token-count buckets)."""
    buckets, scale = [], 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > limit:
                return buckets
            buckets.append(float(mantissa * scale))
        scale *= 10


class Metrics:
    def __init__(self, model_name: str, max_model_len: int, engine_stats: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineStatsCollector(model_name, engine_stats))

        def histogram(name: str, doc: str, buckets: Any) -> Any:
            return Histogram(name, doc, ["model_name"], buckets=buckets,
                             registry=self.registry).labels(model_name)

        self._ttft = histogram("vllm:time_to_first_token_seconds",
                               "Time to first token in seconds.", TTFT_BUCKETS)
        self._inter_token = histogram("vllm:inter_token_latency_seconds",
                                      "Inter-token latency in seconds.", INTER_TOKEN_BUCKETS)
        self._e2e = histogram("vllm:e2e_request_latency_seconds",
                              "End to end request latency in seconds.", REQUEST_TIME_BUCKETS)
        self._queue = histogram("vllm:request_queue_time_seconds",
                                "Time spent waiting before the first step, in seconds.",
                                REQUEST_TIME_BUCKETS)
        self._prefill = histogram("vllm:request_prefill_time_seconds",
                                  "Time from first step to first token, in seconds.",
                                  REQUEST_TIME_BUCKETS)
        self._decode = histogram("vllm:request_decode_time_seconds",
                                 "Time from first token to finish, in seconds.",
                                 REQUEST_TIME_BUCKETS)
        token_buckets = one_two_five_buckets(max_model_len)
        self._prompt_tokens = histogram("vllm:request_prompt_tokens",
                                        "Prompt tokens per request.", token_buckets)
        self._generation_tokens = histogram("vllm:request_generation_tokens",
                                            "Generated tokens per request.", token_buckets)

        self._tool_calls = Counter("pagedmlx:tool_calls", "Tool calls parsed from answers.",
                                   ["model_name"], registry=self.registry).labels(model_name)
        self._tool_call_failures = Counter(
            "pagedmlx:tool_call_parse_failures",
            "Tool calls whose arguments did not parse as a JSON object (returned as text).",
            ["model_name"], registry=self.registry).labels(model_name)
        self._http_errors = Counter("pagedmlx:http_errors", "Error responses by HTTP status.",
                                    ["model_name", "status"], registry=self.registry)
        self._model_name = model_name

    def count_tool_calls(self, calls: int, broken: int) -> None:
        self._tool_calls.inc(calls - broken)
        self._tool_call_failures.inc(broken)

    def count_http_error(self, status: int) -> None:
        self._http_errors.labels(self._model_name, str(status)).inc()

    def observe_inter_token(self, seconds: float) -> None:
        self._inter_token.observe(seconds)

    def observe_finished(self, timings: Any, prompt_tokens: int, output_tokens: int) -> None:
        """timings: scheduler.request.RequestTimings (monotonic seconds; missing stages are None)."""
        self._prompt_tokens.observe(prompt_tokens)
        self._generation_tokens.observe(output_tokens)
        if timings is None:
            return
        for histogram, start, end in (
            (self._e2e, timings.arrival, timings.finish),
            (self._queue, timings.arrival, timings.first_scheduled),
            (self._ttft, timings.arrival, timings.first_token),
            (self._prefill, timings.first_scheduled, timings.first_token),
            (self._decode, timings.first_token, timings.finish),
        ):
            if start is not None and end is not None:
                histogram.observe(max(end - start, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineStatsCollector(Collector):
    def __init__(self, model_name: str, engine_stats: Callable[[], Any]) -> None:
        self._model_name = model_name
        self._engine_stats = engine_stats

    def collect(self) -> Iterator[Metric]:
        stats = self._engine_stats()
        label = [self._model_name]
        gauges = (
            ("vllm:num_requests_running", "Requests in model execution batches.", stats.num_running),
            ("vllm:num_requests_waiting", "Requests waiting to be processed.", stats.num_waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
             stats.kv_usage),
            ("pagedmlx:kv_cache_free_blocks", "Free KV-cache blocks (cached ones included).",
             stats.num_free_blocks),
            ("pagedmlx:kv_cache_blocks", "KV-cache blocks in the pool.", stats.num_blocks),
            ("pagedmlx:mean_runs_per_seq", "Mean contiguous block runs per sequence, last step.",
             stats.mean_runs_per_seq),
        )
        counters = (
            ("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.",
             stats.prefix_queries_tokens),
            ("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.", stats.prefix_hits_tokens),
            ("vllm:prompt_tokens", "Prefill tokens processed.", stats.prompt_tokens_total),
            ("vllm:generation_tokens", "Generation tokens processed.",
             stats.generation_tokens_total),
            ("vllm:num_preemptions", "Cumulative number of preemptions.",
             stats.num_preempted_total),
            ("pagedmlx:engine_failed_steps", "Engine steps whose forward pass raised.",
             stats.num_failed_steps),
            ("pagedmlx:kv_pool_rebuilds", "KV pool rebuilds after failed steps in a row.",
             stats.num_pool_rebuilds),
        )
        for family, rows in ((GaugeMetricFamily, gauges), (CounterMetricFamily, counters)):
            for name, doc, value in rows:
                metric = family(name, doc, labels=["model_name"])
                metric.add_metric(label, value)
                yield metric
        success = CounterMetricFamily("vllm:request_success", "Finished requests by finish reason.",
                                      labels=["model_name", "finished_reason"])
        for reason in sorted(set(FINISH_REASONS) | set(stats.finished)):
            success.add_metric([self._model_name, reason], stats.finished.get(reason, 0))
        yield success


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics: Metrics = request.app[CONTEXT].metrics
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
