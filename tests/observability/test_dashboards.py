"""Every query of vLLM's Grafana dashboard (a copy of its panel queries, older names included) and
of ours, evaluated by a real Prometheus that scraped a live server through a known workload, must
give the figures that workload implies."""

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Observed
from dashboard_queries import board_queries, fill_variables
from histogram_math import histogram_quantile
from known_workload import POOL_BLOCKS
from prometheus_server import Sample

HERE = Path(__file__).parent
VLLM_BOARD = json.loads((HERE / "vllm_dashboard_queries.json").read_text())
OUR_BOARD = HERE.parent.parent / "docs" / "grafana" / "pagedmlx.json"
MODEL = "SmolLM2-135M-Instruct"
Check = Callable[[Observed, list[list[Sample]]], None]


def direct(observed: Observed, name: str, **labels: str) -> float:
    return observed.direct.get((name, tuple(sorted(labels.items()))), 0.0)


def buckets(observed: Observed, family: str, **labels: str) -> list[tuple[float, float]]:
    rows = [(float(dict(key)["le"]), value) for (name, key), value in observed.direct.items()
            if name == f"{family}_bucket"
            and {k: v for k, v in key if k != "le"} == labels]
    return sorted(rows)


def only(samples: list[Sample]) -> float:
    assert len(samples) == 1, samples
    return samples[0].value


def by(samples: list[Sample], label: str) -> dict[str, float]:
    return {sample.labels[label]: sample.value for sample in samples}


def evaluate(observed: Observed, exprs: list[str]) -> list[list[Sample]]:
    return [observed.query(fill_variables(expr, MODEL, observed.window)) for expr in exprs]


def latency(family: str, quantiles: tuple[float, ...], count: Callable[[Observed], None]) -> Check:
    """Quantile panels then a mean: each as Prometheus must compute it from the exported buckets."""
    def check(observed: Observed, results: list[list[Sample]]) -> None:
        count(observed)
        exported = buckets(observed, family)
        values = [only(samples) for samples in results[:len(quantiles)]]
        for q, value in zip(quantiles, values):
            assert value == pytest.approx(histogram_quantile(q, exported), rel=1e-9), (family, q)
        assert sorted(values) == [values[quantiles.index(q)] for q in sorted(quantiles)]
        mean = direct(observed, f"{family}_sum") / direct(observed, f"{family}_count")
        assert only(results[-1]) == pytest.approx(mean, rel=1e-9)
    return check


def one_per_request(family: str) -> Callable[[Observed], None]:
    def count(observed: Observed) -> None:
        assert direct(observed, f"{family}_count") == observed.expected.num_requests
    return count


def streamed_gaps(family: str) -> Callable[[Observed], None]:
    """A gap per token after each request's first: all of those that ran to max_tokens, at least."""
    def count(observed: Observed) -> None:
        expected = observed.expected
        gaps = direct(observed, f"{family}_count")
        assert gaps >= expected.length_output_tokens - expected.finished["length"]
        assert gaps <= direct(observed, "vllm:generation_tokens_total") - expected.num_requests
    return count


def rate_of(observed: Observed, samples: list[Sample]) -> float:
    """What a rate over the whole window counted."""
    return only(samples) * observed.window_s


def check_token_throughput(observed: Observed, results: list[list[Sample]]) -> None:
    prompt, generation = (rate_of(observed, samples) for samples in results)
    expected = observed.expected
    assert prompt == pytest.approx(sum(expected.prompt_tokens), rel=1e-9)
    assert generation == pytest.approx(direct(observed, "vllm:generation_tokens_total"), rel=1e-9)
    assert generation == pytest.approx(direct(observed, "vllm:request_generation_tokens_sum"))
    # The stop string's, the tool call's and the hung-up request's (3 streamed) come on top.
    assert generation >= expected.length_output_tokens + 5


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


def check_finish_reasons(observed: Observed, results: list[list[Sample]]) -> None:
    assert by(results[0], "finished_reason") == {
        reason: float(observed.expected.finished[reason])
        for reason in ("stop", "length", "abort", "error")}


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
