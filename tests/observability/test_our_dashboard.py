"""Every query of docs/grafana/pagedmlx.json, evaluated by a real Prometheus that scraped a live
server through a known workload: each gives data, and the panels give what the workload implies."""

import math
from collections import defaultdict

from pathlib import Path

import pytest
from dashboard_queries import board_queries
from known_workload import DISK_CACHE_GB, POOL_BLOCKS
from observed import Observed, by, direct, evaluate, only, rate_of
from panel_checks import (Check, check_finish_reasons, check_token_throughput, latency,
                          one_per_request, streamed_gaps)

OUR_BOARD = Path(__file__).parents[2] / "docs" / "grafana" / "pagedmlx.json"


def panels() -> dict[str, list[str]]:
    exprs: dict[str, list[str]] = defaultdict(list)
    for title, expr in board_queries(OUR_BOARD):
        exprs[title].append(expr)
    return dict(exprs)


def check_running_waiting(observed: Observed, results) -> None:
    assert [only(samples) for samples in results] == [0.0, 0.0]


def check_sessions(observed: Observed, results) -> None:
    assert only(results[0]) == observed.expected.sessions


def check_requests_finished(observed: Observed, results) -> None:
    assert rate_of(observed, results[0]) == pytest.approx(observed.expected.num_requests)


def check_preemptions(observed: Observed, results) -> None:
    preempted = rate_of(observed, results[0])
    assert preempted == pytest.approx(direct(observed, "vllm:num_preemptions_total"))
    assert preempted >= 1  # the burst does not fit the pool


def check_kv_usage(observed: Observed, results) -> None:
    assert only(results[0]) == 0.0


def check_blocks(observed: Observed, results) -> None:
    blocks = by(results[0], "state")
    assert blocks["used"] == 0 and blocks["cached"] >= 1
    assert sum(blocks.values()) == POOL_BLOCKS


def check_runs(observed: Observed, results) -> None:
    assert only(results[0]) >= 1.0


def check_hit_rate(observed: Observed, results) -> None:
    hits, queries = (direct(observed, f"vllm:prefix_cache_{kind}_total")
                     for kind in ("hits", "queries"))
    assert only(results[0]) == pytest.approx(hits / queries, rel=1e-9)


def check_hit_rate_by_protocol(observed: Observed, results) -> None:
    rates, expected = by(results[0], "protocol"), observed.expected
    anthropic = expected.cached_by_protocol["anthropic"] / expected.queries_by_protocol["anthropic"]
    assert rates["anthropic"] == pytest.approx(anthropic, rel=1e-9)
    # The hung-up request's hit was never reported to its client: at least the reported ones.
    openai = expected.cached_by_protocol["openai"] / expected.queries_by_protocol["openai"]
    assert openai > 0 and rates["openai"] >= openai - 1e-12


def check_step_time(observed: Observed, results) -> None:
    for samples in results:
        kinds = by(samples, "kind")
        assert not math.isnan(kinds["decode"]) and not math.isnan(kinds["prefill"])


def check_per_step(family: str) -> Check:
    def check(observed: Observed, results) -> None:
        means = by(results[0], "phase")
        steps = direct(observed, "vllm:iteration_tokens_total_count")
        for phase, mean in means.items():
            assert mean == pytest.approx(direct(observed, f"{family}_sum", phase=phase) / steps)
        assert means["decode"] > 0 and means["prefill"] > 0
    return check


def check_tokens_per_iteration(observed: Observed, results) -> None:
    steps = direct(observed, "vllm:iteration_tokens_total_count")
    tokens = sum(direct(observed, "pagedmlx:step_tokens_sum", phase=phase)
                 for phase in ("decode", "prefill"))
    assert only(results[0]) == pytest.approx(tokens / steps)
    computed = direct(observed, "pagedmlx:step_tokens_sum", phase="prefill")
    uncached = sum(observed.expected.prompt_tokens) - direct(observed, "vllm:prefix_cache_hits_total")
    assert computed >= uncached  # every prompt token not read from the cache was computed


def check_no_failures(observed: Observed, results) -> None:
    assert [only(samples) for samples in results] == [0.0, 0.0]


def check_aborts(observed: Observed, results) -> None:
    aborts = by(results[0], "cause")
    assert aborts == {cause: float(observed.expected.aborts[cause]) for cause in aborts}
    assert set(aborts) == {"client_disconnect", "stop_string", "rejected", "shutdown",
                           "engine_error"}


def check_tool_calls(observed: Observed, results) -> None:
    assert [only(samples) for samples in results] == [observed.expected.tool_calls,
                                                      observed.expected.tool_calls, 0.0]


def check_tool_failure_ratio(observed: Observed, results) -> None:
    assert only(results[0]) == 0.0


def routes(samples) -> set[tuple[str, str]]:
    return {(sample.labels["route"], sample.labels["status"]) for sample in samples}


def check_http(observed: Observed, results) -> None:
    assert {("/v1/chat/completions", "200"), ("/v1/chat/completions", "400"),
            ("/v1/messages", "200"), ("unmatched", "404"), ("/metrics", "200"),
            ("/health", "200")} <= routes(results[0])


def check_http_errors(observed: Observed, results) -> None:
    assert {("/v1/chat/completions", "400"), ("unmatched", "404")} <= routes(results[0])
    assert all(status[0] in "45" for _, status in routes(results[0]))


def check_kv_memory(observed: Observed, results) -> None:
    budget, allocated, limit = (only(samples) for samples in results)
    block_bytes = budget / POOL_BLOCKS
    assert block_bytes == int(block_bytes)
    assert 0 < allocated <= budget < limit  # grown on demand, in whole blocks
    assert allocated % block_bytes == 0


def check_loop_lag(observed: Observed, results) -> None:
    p99, p50 = (only(samples) for samples in results)
    assert 0.0 <= p50 <= p99 < math.inf


def check_disk_traffic(observed: Observed, results) -> None:
    written, read = (rate_of(observed, samples) for samples in results)
    assert written == pytest.approx(direct(observed, "pagedmlx:disk_cache_written_bytes_total"))
    assert written > 0
    assert read == pytest.approx(direct(observed, "pagedmlx:disk_cache_read_bytes_total"))


def check_disk_blocks(observed: Observed, results) -> None:
    hits, misses, dropped = (rate_of(observed, samples) for samples in results)
    assert hits == pytest.approx(direct(observed, "pagedmlx:disk_cache_hits_total"))
    assert misses == pytest.approx(direct(observed, "pagedmlx:disk_cache_misses_total"))
    assert misses > 0
    assert dropped == 0


def check_disk_size(observed: Observed, results) -> None:
    size, capacity = (only(samples) for samples in results)
    assert 0 < size <= capacity == DISK_CACHE_GB * 2**30


QUANTILES = (0.5, 0.9, 0.99)
def check_model_memory(observed: Observed, results) -> None:
    assert only(results[0]) == direct(observed, "pagedmlx:model_loaded_bytes") > 0


def check_model_loads(observed: Observed, results) -> None:
    loads, unloads = results
    assert only(loads) == 1  # the one model, loaded at start-up and never unloaded
    assert by(unloads, "reason") == {"memory": 0, "ttl": 0}


def check_model_load_time(observed: Observed, results) -> None:
    median, mean = (only(samples) for samples in results)
    assert 0 < median and mean == pytest.approx(direct(observed, "pagedmlx:model_load_seconds_sum"))


CHECKS: dict[str, Check] = {
    "Token throughput": check_token_throughput,
    "Requests finished/s": check_requests_finished,
    "Time to first token": latency("vllm:time_to_first_token_seconds", QUANTILES,
                                   one_per_request("vllm:time_to_first_token_seconds")),
    "Inter-token latency": latency("vllm:inter_token_latency_seconds", QUANTILES,
                                   streamed_gaps("vllm:inter_token_latency_seconds")),
    "End-to-end request latency": latency("vllm:e2e_request_latency_seconds", QUANTILES,
                                          one_per_request("vllm:e2e_request_latency_seconds")),
    "Queue time": latency("vllm:request_queue_time_seconds", QUANTILES,
                          one_per_request("vllm:request_queue_time_seconds")),
    "Requests running / waiting": check_running_waiting,
    "Active sessions": check_sessions,
    "Preemptions/s": check_preemptions,
    "KV cache usage": check_kv_usage,
    "KV cache blocks by state": check_blocks,
    "Contiguous runs per sequence": check_runs,
    "Prefix cache hit rate": check_hit_rate,
    "Prefix cache hit rate by protocol": check_hit_rate_by_protocol,
    "Step time by kind": check_step_time,
    "Rows per step by phase": check_per_step("pagedmlx:step_rows"),
    "Tokens per step by phase": check_per_step("pagedmlx:step_tokens"),
    "Tokens per iteration": check_tokens_per_iteration,
    "Failed steps and pool rebuilds": check_no_failures,
    "Finish reasons": check_finish_reasons,
    "Aborts by cause": check_aborts,
    "Tool calls": check_tool_calls,
    "Tool call parse failure ratio": check_tool_failure_ratio,
    "HTTP requests by route and status": check_http,
    "HTTP errors by route": check_http_errors,
    "KV cache memory": check_kv_memory,
    "Event loop lag": check_loop_lag,
    "Disk tier traffic": check_disk_traffic,
    "Disk tier blocks/s": check_disk_blocks,
    "Disk tier size": check_disk_size,
    "Model memory": check_model_memory,
    "Model loads and unloads": check_model_loads,
    "Model load time": check_model_load_time,
}
PANELS = panels()


def test_every_panel_has_a_check():
    assert set(PANELS) == set(CHECKS)


@pytest.mark.parametrize("title", sorted(PANELS))
def test_our_dashboard_panel(observed: Observed, title: str):
    results = evaluate(observed, PANELS[title])
    assert all(results), f"{title}: a query gave no series"
    CHECKS[title](observed, results)
