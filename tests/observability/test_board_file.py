"""The Grafana board: well-formed, wired to the datasource variable, and querying only the
metric families /metrics exports."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from dashboard_queries import board_queries, fill_variables, iter_panels

BOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "pagedmlx.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
UNITS = {"s", "percentunit", "reqps", "short", "bytes", "Bps"}

KNOWN_METRICS = {
    # vLLM's names
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:num_requests_swapped",
    "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
    "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
    "vllm:gpu_prefix_cache_queries_total", "vllm:gpu_prefix_cache_hits_total",
    "vllm:prompt_tokens_total", "vllm:prompt_tokens_cached_total",
    "vllm:generation_tokens_total", "vllm:num_preemptions_total", "vllm:request_success_total",
    "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
    "vllm:time_per_output_token_seconds", "vllm:request_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
    "vllm:request_inference_time_seconds", "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds", "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens", "vllm:request_max_num_generation_tokens",
    "vllm:request_params_max_tokens", "vllm:request_params_n", "vllm:iteration_tokens_total",
    "vllm:request_prefill_kv_computed_tokens",
    # pagedmlx's own
    "pagedmlx:step_duration_seconds", "pagedmlx:step_rows", "pagedmlx:step_tokens",
    "pagedmlx:kv_cache_runs_per_seq", "pagedmlx:kv_cache_blocks", "pagedmlx:sessions_active",
    "pagedmlx:request_aborts_total", "pagedmlx:prefix_cache_queries_by_protocol_total",
    "pagedmlx:prefix_cache_hits_by_protocol_total", "pagedmlx:tool_calls_emitted_total",
    "pagedmlx:tool_calls_parsed_total", "pagedmlx:tool_calls_failed_total",
    "pagedmlx:http_requests_total", "pagedmlx:engine_failed_steps_total",
    "pagedmlx:kv_pool_rebuilds_total", "pagedmlx:kv_cache_budget_bytes",
    "pagedmlx:kv_cache_allocated_bytes", "pagedmlx:memory_limit_bytes",
    "pagedmlx:event_loop_lag_seconds", "pagedmlx:disk_cache_written_bytes_total",
    "pagedmlx:disk_cache_read_bytes_total", "pagedmlx:disk_cache_hits_total",
    "pagedmlx:disk_cache_misses_total", "pagedmlx:disk_cache_dropped_writes_total",
    "pagedmlx:disk_cache_size_bytes", "pagedmlx:disk_cache_capacity_bytes",
    "pagedmlx:model_loaded_bytes", "pagedmlx:model_loads_total", "pagedmlx:model_unloads_total",
    "pagedmlx:model_load_seconds",
}

# Digits too: vllm:e2e_request_latency_seconds.
METRIC_NAME = re.compile(r"(?:vllm|pagedmlx):[a-z0-9_]+")
SELECTOR = re.compile(r"((?:vllm|pagedmlx):[a-z0-9_]+)(\{[^}]*\})?")
SERIES_SUFFIX = re.compile(r"_(?:bucket|sum|count)$")


def metric_names(expr: str) -> set[str]:
    return {SERIES_SUFFIX.sub("", name) for name in METRIC_NAME.findall(expr)}


@pytest.fixture(scope="module")
def board() -> dict:
    return json.loads(BOARD.read_text())


def test_the_board_is_a_grafana_39_model_with_its_variables(board: dict):
    assert board["schemaVersion"] == 39
    assert board["time"] == {"from": "now-15m", "to": "now"} and board["refresh"] == "5s"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["model_name"]["type"] == "query"
    assert variables["model_name"]["definition"] == \
        "label_values(vllm:num_requests_running, model_name)"


def test_panel_ids_are_unique_and_panels_fit_24_columns(board: dict):
    panels = list(iter_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_panel_queries_the_datasource_variable_with_a_title_description_and_unit(board: dict):
    for panel in iter_panels(board["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_every_query_filters_on_the_model_and_uses_the_rate_interval():
    queries = board_queries(BOARD)
    assert queries
    for title, expr in queries:
        for name, matchers in SELECTOR.findall(expr):
            assert 'model_name="$model_name"' in matchers, (title, name)
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window == "$__rate_interval", (title, expr)


def test_the_board_names_only_exported_metric_families():
    used = set().union(*(metric_names(expr) for _, expr in board_queries(BOARD)))
    assert used - KNOWN_METRICS == set()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_every_query_is_valid_promql(tmp_path: Path):
    # promtool has no expression checker of its own; it parses recording rules' exprs.
    rules = [{"record": f"board:query_{i}", "expr": fill_variables(expr, "test-model", "1m")}
             for i, (_, expr) in enumerate(board_queries(BOARD))]
    rule_file = tmp_path / "board_rules.json"  # JSON is YAML, so promtool reads it
    rule_file.write_text(json.dumps({"groups": [{"name": "board", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(rule_file)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fill_variables_replaces_both_forms():
    expr = 'rate(x{model_name="${model_name}", m="$model_name"}[$__rate_interval]) [${__rate_interval}]'
    assert fill_variables(expr, "m1", "2m") == 'rate(x{model_name="m1", m="m1"}[2m]) [2m]'
