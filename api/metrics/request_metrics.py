"""Per-request families, observed on the event loop: tokens as they arrive, the rest at finish."""

from typing import Any

from api.metrics import buckets
from api.metrics.family import Families

PROTOCOLS = ("openai", "anthropic")
# Histograms of the time between two stages of a request (scheduler.request.RequestTimings).
INTERVALS = {
    "vllm:time_to_first_token_seconds": (
        "Histogram of time to first token in seconds.", buckets.TTFT_S, "arrival", "first_token"),
    "vllm:e2e_request_latency_seconds": (
        "Histogram of e2e request latency in seconds.", buckets.REQUEST_TIME_S, "arrival",
        "finish"),
    "vllm:request_queue_time_seconds": (
        "Histogram of time spent in WAITING phase for request.", buckets.REQUEST_TIME_S,
        "arrival", "first_scheduled"),
    "vllm:request_inference_time_seconds": (
        "Histogram of time spent in RUNNING phase for request.", buckets.REQUEST_TIME_S,
        "first_scheduled", "finish"),
    "vllm:request_prefill_time_seconds": (
        "Histogram of time spent in PREFILL phase for request.", buckets.REQUEST_TIME_S,
        "first_scheduled", "first_token"),
    "vllm:request_decode_time_seconds": (
        "Histogram of time spent in DECODE phase for request.", buckets.REQUEST_TIME_S,
        "first_token", "finish"),
}


class RequestMetrics:
    def __init__(self, families: Families, max_model_len: int) -> None:
        histogram = families.histogram
        self._inter_token = histogram("vllm:inter_token_latency_seconds",
                                      "Histogram of inter-token latency in seconds.",
                                      buckets.INTER_TOKEN_S)
        # vLLM's older name for the same observations, which older copies of its dashboard read.
        self._time_per_output_token = histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds (the inter-token latency).",
            buckets.INTER_TOKEN_S)
        self._request_tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.", buckets.INTER_TOKEN_S)
        self._intervals = [(histogram(name, doc, bounds), start, end)
                           for name, (doc, bounds, start, end) in INTERVALS.items()]
        tokens = buckets.one_two_five(max_model_len)
        self._prompt_tokens = histogram("vllm:request_prompt_tokens",
                                        "Number of prefill tokens processed.", tokens)
        self._generation_tokens = histogram("vllm:request_generation_tokens",
                                            "Number of generation tokens processed.", tokens)
        self._max_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.", tokens)
        self._max_tokens_param = histogram("vllm:request_params_max_tokens",
                                           "Histogram of the max_tokens request parameter.", tokens)
        self._n_param = histogram("vllm:request_params_n", "Histogram of the n request parameter.",
                                  buckets.PARAMS_N)
        self._prefill_computed = histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).", tokens)
        self._prompt_cached = families.counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).")
        self._protocol_queries = families.counters_by(
            "pagedmlx:prefix_cache_queries_by_protocol",
            "Prompt tokens of requests that reached the engine, by the API they came through.",
            "protocol", PROTOCOLS)
        self._protocol_hits = families.counters_by(
            "pagedmlx:prefix_cache_hits_by_protocol",
            "Prompt tokens read from the prefix cache, by the API the request came through.",
            "protocol", PROTOCOLS)

    def observe_submitted(self, n: int) -> None:
        self._n_param.observe(n)

    def observe_inter_token(self, seconds: float) -> None:
        self._inter_token.observe(seconds)
        self._time_per_output_token.observe(seconds)

    def observe_finished(self, event: Any, max_tokens: int, protocol: str) -> None:
        """event: the request's final scheduler TokenEvent (its timings are monotonic seconds;
        stages never reached are None)."""
        self._prompt_tokens.observe(event.prompt_tokens)
        self._generation_tokens.observe(event.output_tokens)
        self._max_generation_tokens.observe(max_tokens)
        self._max_tokens_param.observe(max_tokens)
        timings = event.timings
        if timings is None:
            return
        for histogram, start_stage, end_stage in self._intervals:
            start, end = getattr(timings, start_stage), getattr(timings, end_stage)
            if start is not None and end is not None:
                histogram.observe(max(end - start, 0.0))
        if timings.first_scheduled is not None:
            self._protocol_queries[protocol].inc(event.prompt_tokens)
            self._protocol_hits[protocol].inc(event.cached_tokens)
        if timings.first_token is not None:
            self._prompt_cached.inc(event.cached_tokens)
            self._prefill_computed.observe(event.prompt_tokens - event.cached_tokens)
            if event.output_tokens > 1 and timings.finish is not None:
                self._request_tpot.observe(
                    (timings.finish - timings.first_token) / (event.output_tokens - 1))
