"""Prefix-cache counters from a Prometheus exposition, summed over label sets, and the hit rate between
two scrapes."""

from benchmarks.server_metrics import counters_from_exposition, prefix_cache_hit_rate, sample_sum

EXPOSITION = """# HELP vllm:prefix_cache_hits_total Prefix cache hits, in tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 300.0
vllm:prefix_cache_hits_total{engine="1",model_name="a model"} 100.0
vllm:prefix_cache_hits_created{engine="0",model_name="m"} 1.7e9
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_queries_total_other 5
"""


def test_samples_are_summed_over_label_sets_and_other_names_ignored():
    assert sample_sum(EXPOSITION, "vllm:prefix_cache_hits_total") == 400.0
    assert sample_sum(EXPOSITION, "vllm:prefix_cache_queries_total") == 1000.0
    assert sample_sum("plain_total 3\n", "plain_total") == 3.0
    assert sample_sum(EXPOSITION, "vllm:num_requests_running") is None


def test_a_server_without_the_counters_has_none():
    assert counters_from_exposition(EXPOSITION) == {"hits": 400.0, "queries": 1000.0}
    assert counters_from_exposition("# nothing here\n") is None
    assert prefix_cache_hit_rate(None, {"hits": 1.0, "queries": 2.0}) is None


def test_hit_rate_is_the_difference_between_scrapes():
    before, after = {"hits": 400.0, "queries": 1000.0}, {"hits": 700.0, "queries": 1400.0}
    assert prefix_cache_hit_rate(before, after) == 0.75
    assert prefix_cache_hit_rate(before, before) is None  # no queries in between
