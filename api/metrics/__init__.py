"""Prometheus metrics under vLLM's names, labels and buckets, so that vLLM's Grafana dashboards read
them unchanged, and pagedmlx's own under `pagedmlx:` (docs/grafana/pagedmlx.json reads both).

Gauges and engine counters are read from `EngineLoop.stats` at scrape time; per-step histograms are
observed on the engine thread; per-request ones on the event loop as tokens and finishes arrive.
"""

from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, disable_created_metrics,
                               generate_latest)

from api.context import CONTEXT
from api.metrics.engine_collector import EngineSource, EngineStatsCollector
from api.metrics.family import Families
from api.metrics.http_metrics import HttpMetrics, http_metrics_middleware
from api.metrics.loop_lag import LoopLag
from api.metrics.request_metrics import RequestMetrics
from api.metrics.sessions_active import ActiveSessions
from api.metrics.step_metrics import StepMetrics
from scheduler.step_report import StepReport

__all__ = ["ModelMetrics", "ServerMetrics", "http_metrics_middleware", "metrics_endpoint"]

LOAD_S = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0)
UNLOAD_REASONS = ("memory", "ttl")


class ServerMetrics:
    """The server's registry: HTTP, the event loop, sessions and memory, the loaded engines' stats,
    and each model's loads and unloads. Server-wide series carry the default model's labels."""

    def __init__(self, default_model: str, engines: Callable[[], Iterable[EngineSource]],
                 memory_limit_bytes: Callable[[], float]) -> None:
        disable_created_metrics()  # a `_created` gauge beside every counter and histogram: noise
        self.registry = CollectorRegistry()
        self.families = Families(self.registry, default_model)
        self.registry.register(EngineStatsCollector(engines))
        self.families.gauge_function("pagedmlx:memory_limit_bytes", "MLX's memory limit: the "
                                     "loaded models' weights and KV cache budgets, and room for "
                                     "activations.", memory_limit_bytes)
        self.http = HttpMetrics(self.families)
        self.sessions = ActiveSessions()
        self.loop_lag = LoopLag(self.families)
        self.families.gauge_function(
            "pagedmlx:sessions_active", "Clients (by X-Claude-Code-Session-Id, x-session-id or API "
            f"key) with a request accepted for generation in the last {self.sessions.window_s:g} s.",
            self.sessions.count)

    def lifecycle(self, model_name: str, loaded_bytes: Callable[[], float]) -> "ModelLifecycle":
        return ModelLifecycle(self.families.for_model(model_name), loaded_bytes)

    def for_model(self, model_name: str, max_model_len: int) -> "ModelMetrics":
        return ModelMetrics(self.families.for_model(model_name), max_model_len, self.sessions)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelLifecycle:
    """A configured model's loads and unloads, from start-up on, loaded or not."""

    def __init__(self, families: Families, loaded_bytes: Callable[[], float]) -> None:
        self.loads = families.counter("pagedmlx:model_loads", "Loads of the model (at start-up, "
                                      "or on demand by a request).")
        self.unloads = families.counters_by(
            "pagedmlx:model_unloads", "Unloads of the model: to make room for another (memory) or "
            "after --model-ttl idle (ttl).", "reason", UNLOAD_REASONS)
        self.load_seconds = families.histogram("pagedmlx:model_load_seconds", "Time to load the "
                                               "model: weights, KV pool and engine.", LOAD_S)
        families.gauge_function("pagedmlx:model_loaded_bytes", "Memory the model is counted for "
                                "in --memory-gb while loaded (weights and KV cache budget); 0: "
                                "not loaded.", loaded_bytes)


class ModelMetrics:
    """One model's requests, steps and tool calls; made at its first load, kept across reloads."""

    def __init__(self, families: Families, max_model_len: int, sessions: ActiveSessions) -> None:
        self.requests = RequestMetrics(families, max_model_len)
        self.steps = StepMetrics(families)
        self.sessions = sessions
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


TOOL_CALL_OUTCOMES = {
    "emitted": "Tool calls the model wrote in its answers.",
    "parsed": "Tool calls whose arguments parsed, sent as tool calls.",
    "failed": "Tool calls whose arguments did not parse as a JSON object, sent as text.",
}


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics: ServerMetrics = request.app[CONTEXT].metrics
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
