"""Prometheus metrics under vLLM's names, labels and buckets, so that vLLM's Grafana dashboards read
them unchanged, and pagedmlx's own under `pagedmlx:` (docs/grafana/pagedmlx.json reads both).

Gauges and engine counters are read from `EngineLoop.stats` at scrape time; per-step histograms are
observed on the engine thread; per-request ones on the event loop as tokens and finishes arrive.
"""

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, disable_created_metrics,
                               generate_latest)

from api.context import CONTEXT
from api.metrics.engine_collector import EngineStatsCollector
from api.metrics.family import Families
from api.metrics.http_metrics import HttpMetrics, http_metrics_middleware
from api.metrics.loop_lag import LoopLag
from api.metrics.request_metrics import RequestMetrics
from api.metrics.sessions_active import ActiveSessions
from api.metrics.step_metrics import StepMetrics
from scheduler.step_report import StepReport

__all__ = ["Metrics", "http_metrics_middleware", "metrics_endpoint"]


class Metrics:
    def __init__(self, model_name: str, max_model_len: int, engine_stats: Callable[[], Any],
                 *, kv_block_bytes: int, memory_limit_bytes: int) -> None:
        """engine_stats: returns the latest scheduler.engine_loop.EngineStats."""
        disable_created_metrics()  # a `_created` gauge beside every counter and histogram: noise
        self.registry = CollectorRegistry()
        families = Families(self.registry, model_name)
        self.registry.register(EngineStatsCollector(families.values, engine_stats, kv_block_bytes))
        families.gauge_function("pagedmlx:memory_limit_bytes", "MLX's memory limit: the weights, "
                                "the KV cache budget and room for activations.",
                                lambda: memory_limit_bytes)
        self.requests = RequestMetrics(families, max_model_len)
        self.steps = StepMetrics(families)
        self.http = HttpMetrics(families)
        self.sessions = ActiveSessions()
        self.loop_lag = LoopLag(families)
        families.gauge_function(
            "pagedmlx:sessions_active", "Clients (by X-Claude-Code-Session-Id, x-session-id or API "
            f"key) with a request accepted for generation in the last {self.sessions.window_s:g} s.",
            self.sessions.count)
        self._queue_full = families.counter(
            "pagedmlx:queue_full_rejections", "Requests refused because --max-queue requests "
            "were waiting (429 / 529 with Retry-After).")
        self._tool_calls = {outcome: families.counter(f"pagedmlx:tool_calls_{outcome}", doc)
                            for outcome, doc in TOOL_CALL_OUTCOMES.items()}

    def observe_step(self, report: StepReport) -> None:
        """The engine's step observer: runs on the engine thread."""
        self.steps.observe(report)

    def count_queue_full(self) -> None:
        self._queue_full.inc()

    def count_tool_calls(self, calls: int, broken: int) -> None:
        self._tool_calls["emitted"].inc(calls)
        self._tool_calls["parsed"].inc(calls - broken)
        self._tool_calls["failed"].inc(broken)

    def render(self) -> bytes:
        return generate_latest(self.registry)


TOOL_CALL_OUTCOMES = {
    "emitted": "Tool calls the model wrote in its answers.",
    "parsed": "Tool calls whose arguments parsed, sent as tool calls.",
    "failed": "Tool calls whose arguments did not parse as a JSON object, sent as text.",
}


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics: Metrics = request.app[CONTEXT].metrics
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
