"""Every query of vLLM's Grafana dashboard (a copy of its panel queries, older names included),
evaluated by a real Prometheus that scraped a live server through a known workload, gives the
figures that workload implies."""

import json
from pathlib import Path

import pytest
from observed import Observed, by, direct, evaluate, only, rate_of
from panel_checks import (Check, check_finish_reasons, check_token_throughput, latency,
                          one_per_request, streamed_gaps)
from prometheus_server import Sample

VLLM_BOARD = json.loads((Path(__file__).parent / "vllm_dashboard_queries.json").read_text())


def check_idle_scheduler(observed: Observed, results: list[list[Sample]]) -> None:
    assert [only(samples) for samples in results] == [0.0] * len(results)
    assert observed.value(f"max_over_time(vllm:num_requests_running[{observed.window}])") >= 2


def check_cache_usage(observed: Observed, results: list[list[Sample]]) -> None:
    assert only(results[0]) == 0.0  # idle: every block is free or cached
    peak = observed.value(f"max_over_time(vllm:kv_cache_usage_perc[{observed.window}])")
    assert peak > 0.5  # the burst filled the tiny pool until it preempted


def check_prompt_lengths(observed: Observed, results: list[list[Sample]]) -> None:
    prompts = observed.expected.prompt_tokens
    for le, count in by(results[0], "le").items():
        assert count == sum(p <= float(le) for p in prompts), le


def check_generation_lengths(observed: Observed, results: list[list[Sample]]) -> None:
    counts = by(results[0], "le")
    assert counts["+Inf"] == observed.expected.num_requests
    for le, count in counts.items():
        assert count == direct(observed, "vllm:request_generation_tokens_bucket", le=le)




def sums_of(*families: str) -> Check:
    def check(observed: Observed, results: list[list[Sample]]) -> None:
        for family, samples in zip(families, results):
            assert rate_of(observed, samples) == pytest.approx(
                direct(observed, f"{family}_sum"), rel=1e-9)
            assert direct(observed, f"{family}_count") == observed.expected.num_requests
    return check


def check_max_generation_tokens(observed: Observed, results: list[list[Sample]]) -> None:
    assert rate_of(observed, results[0]) == pytest.approx(sum(observed.expected.max_tokens))


def check_gpu_cache_usage(observed: Observed, results: list[list[Sample]]) -> None:
    assert only(results[0]) == 0.0
    peak = observed.value(f"max_over_time(vllm:gpu_cache_usage_perc[{observed.window}])")
    assert peak == observed.value(f"max_over_time(vllm:kv_cache_usage_perc[{observed.window}])")


def check_gpu_prefix_hit_rate(observed: Observed, results: list[list[Sample]]) -> None:
    hits, queries = (direct(observed, f"vllm:prefix_cache_{kind}_total")
                     for kind in ("hits", "queries"))
    assert hits >= sum(observed.expected.cached_by_protocol.values()) > 0
    assert only(results[0]) == pytest.approx(hits / queries, rel=1e-9)


LATENCY = (0.99, 0.95, 0.9, 0.5)
VLLM_CHECKS: dict[str, Check] = {
    "E2E Request Latency": latency("vllm:e2e_request_latency_seconds", LATENCY,
                                   one_per_request("vllm:e2e_request_latency_seconds")),
    "Token Throughput": check_token_throughput,
    "Inter Token Latency": latency("vllm:inter_token_latency_seconds", LATENCY,
                                   streamed_gaps("vllm:inter_token_latency_seconds")),
    "Scheduler State": check_idle_scheduler,
    "Time To First Token Latency": latency("vllm:time_to_first_token_seconds", LATENCY,
                                           one_per_request("vllm:time_to_first_token_seconds")),
    "Cache Utilization": check_cache_usage,
    "Request Prompt Length": check_prompt_lengths,
    "Request Generation Length": check_generation_lengths,
    "Finish Reason": check_finish_reasons,
    "Queue Time": sums_of("vllm:request_queue_time_seconds"),
    "Requests Prefill and Decode Time": sums_of("vllm:request_prefill_time_seconds",
                                                "vllm:request_decode_time_seconds"),
    "Max Generation Token in Sequence Group": check_max_generation_tokens,
    "Time Per Output Token Latency": latency("vllm:time_per_output_token_seconds", LATENCY,
                                             streamed_gaps("vllm:time_per_output_token_seconds")),
    "Scheduler State (with swapped)": check_idle_scheduler,
    "Cache Utilization (GPU)": check_gpu_cache_usage,
    "GPU Prefix Cache Hit Rate": check_gpu_prefix_hit_rate,
}
VLLM_PANELS = VLLM_BOARD["panels"] + VLLM_BOARD["older_panels"]


@pytest.mark.parametrize("panel", VLLM_PANELS, ids=[p["title"] for p in VLLM_PANELS])
def test_vllm_dashboard_panel(observed: Observed, panel: dict):
    VLLM_CHECKS[panel["title"]](observed, evaluate(observed, panel["exprs"]))


def test_the_old_time_per_output_token_is_the_inter_token_latency(observed: Observed):
    for suffix in ("_sum", "_count"):
        assert (direct(observed, "vllm:time_per_output_token_seconds" + suffix)
                == direct(observed, "vllm:inter_token_latency_seconds" + suffix))
