"""Every family has vLLM's type, labels and buckets (vllm/v1/metrics/loggers.py), so that vLLM's
dashboards and alerts read ours unchanged; and ours have the types and labels the board reads."""

import math
import urllib.request

import pytest
from observed import Observed
from prometheus_client.parser import text_string_to_metric_families

TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
        10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
INTER_TOKEN = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
REQUEST_TIME = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# vLLM's build_1_2_5_buckets(max_model_len); this server's limit is its 640-token pool.
TOKENS = (1, 2, 5, 10, 20, 50, 100, 200, 500)
ITERATION = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

VLLM = {
    "vllm:num_requests_running": ("gauge", (), None),
    "vllm:num_requests_waiting": ("gauge", (), None),
    "vllm:num_requests_swapped": ("gauge", (), None),
    "vllm:kv_cache_usage_perc": ("gauge", (), None),
    "vllm:gpu_cache_usage_perc": ("gauge", (), None),
    "vllm:prefix_cache_queries": ("counter", (), None),
    "vllm:prefix_cache_hits": ("counter", (), None),
    "vllm:gpu_prefix_cache_queries": ("counter", (), None),
    "vllm:gpu_prefix_cache_hits": ("counter", (), None),
    "vllm:prompt_tokens": ("counter", (), None),
    "vllm:prompt_tokens_cached": ("counter", (), None),
    "vllm:generation_tokens": ("counter", (), None),
    "vllm:num_preemptions": ("counter", (), None),
    "vllm:request_success": ("counter", ("finished_reason",), None),
    "vllm:time_to_first_token_seconds": ("histogram", (), TTFT),
    "vllm:inter_token_latency_seconds": ("histogram", (), INTER_TOKEN),
    "vllm:time_per_output_token_seconds": ("histogram", (), INTER_TOKEN),
    "vllm:request_time_per_output_token_seconds": ("histogram", (), INTER_TOKEN),
    "vllm:e2e_request_latency_seconds": ("histogram", (), REQUEST_TIME),
    "vllm:request_queue_time_seconds": ("histogram", (), REQUEST_TIME),
    "vllm:request_inference_time_seconds": ("histogram", (), REQUEST_TIME),
    "vllm:request_prefill_time_seconds": ("histogram", (), REQUEST_TIME),
    "vllm:request_decode_time_seconds": ("histogram", (), REQUEST_TIME),
    "vllm:request_prompt_tokens": ("histogram", (), TOKENS),
    "vllm:request_generation_tokens": ("histogram", (), TOKENS),
    "vllm:request_max_num_generation_tokens": ("histogram", (), TOKENS),
    "vllm:request_params_max_tokens": ("histogram", (), TOKENS),
    "vllm:request_params_n": ("histogram", (), (1, 2, 5, 10, 20)),
    "vllm:request_prefill_kv_computed_tokens": ("histogram", (), TOKENS),
    "vllm:iteration_tokens_total": ("histogram", (), ITERATION),
}
OURS = {
    "pagedmlx:step_duration_seconds": ("histogram", ("kind",)),
    "pagedmlx:step_rows": ("histogram", ("phase",)),
    "pagedmlx:step_tokens": ("histogram", ("phase",)),
    "pagedmlx:kv_cache_runs_per_seq": ("histogram", ()),
    "pagedmlx:kv_cache_blocks": ("gauge", ("state",)),
    "pagedmlx:sessions_active": ("gauge", ()),
    "pagedmlx:request_aborts": ("counter", ("cause",)),
    "pagedmlx:prefix_cache_queries_by_protocol": ("counter", ("protocol",)),
    "pagedmlx:prefix_cache_hits_by_protocol": ("counter", ("protocol",)),
    "pagedmlx:tool_calls_emitted": ("counter", ()),
    "pagedmlx:tool_calls_parsed": ("counter", ()),
    "pagedmlx:tool_calls_failed": ("counter", ()),
    "pagedmlx:http_requests": ("counter", ("method", "route", "status")),
    "pagedmlx:queue_full_rejections": ("counter", ()),
    "pagedmlx:engine_failed_steps": ("counter", ()),
    "pagedmlx:kv_pool_rebuilds": ("counter", ()),
    "pagedmlx:kv_cache_budget_bytes": ("gauge", ()),
    "pagedmlx:kv_cache_allocated_bytes": ("gauge", ()),
    "pagedmlx:memory_limit_bytes": ("gauge", ()),
    "pagedmlx:model_loads": ("counter", ()),
    "pagedmlx:model_unloads": ("counter", ("reason",)),
    "pagedmlx:model_load_seconds": ("histogram", ()),
    "pagedmlx:model_loaded_bytes": ("gauge", ()),
    "pagedmlx:disk_cache_hits": ("counter", ()),
    "pagedmlx:disk_cache_misses": ("counter", ()),
    "pagedmlx:disk_cache_read_bytes": ("counter", ()),
    "pagedmlx:disk_cache_written_bytes": ("counter", ()),
    "pagedmlx:disk_cache_dropped_writes": ("counter", ()),
    "pagedmlx:disk_cache_write_queue_depth": ("gauge", ()),
    "pagedmlx:disk_cache_size_bytes": ("gauge", ()),
    "pagedmlx:disk_cache_capacity_bytes": ("gauge", ()),
    "pagedmlx:disk_cache_blocks": ("gauge", ()),
    "pagedmlx:event_loop_lag_seconds": ("histogram", ()),
}
SERVER_LABELS = {"model_name", "engine"}


@pytest.fixture(scope="module")
def families(observed: Observed) -> dict:
    with urllib.request.urlopen(observed.server.base_url + "/metrics", timeout=30) as response:
        return {family.name: family
                for family in text_string_to_metric_families(response.read().decode())}


def labels_of(family) -> set[str]:
    return {name for sample in family.samples for name in sample.labels} - {"le"}


def buckets_of(family) -> tuple[float, ...]:
    bounds = {float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")}
    return tuple(sorted(bounds - {math.inf}))


@pytest.mark.parametrize("name", sorted(VLLM))
def test_vllm_family(families: dict, name: str):
    kind, extra_labels, buckets = VLLM[name]
    family = families[name]
    assert family.type == kind
    assert labels_of(family) == SERVER_LABELS | set(extra_labels)
    if buckets is not None:
        assert buckets_of(family) == tuple(float(b) for b in buckets)


@pytest.mark.parametrize("name", sorted(OURS))
def test_our_family(families: dict, name: str):
    kind, extra_labels = OURS[name]
    assert families[name].type == kind
    assert labels_of(families[name]) == SERVER_LABELS | set(extra_labels)


def test_nothing_unlisted_is_exported(families: dict):
    assert set(families) == set(VLLM) | set(OURS)
