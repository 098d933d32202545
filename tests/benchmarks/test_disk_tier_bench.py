"""The disk-tier benchmark's pure parts: its figures from /metrics scrapes, the pool sizing, and the cycling
prompts (distinct from their first blocks, the same prefix every round, a new last block each round)."""

import pytest

from benchmarks import claude_code_traffic as cc
from benchmarks import disk_tier_bench
from benchmarks.claude_code_sessions import rendered_prompt
from benchmarks.disk_tier_bench import (
    BLOCK_SIZE, FULL_CYCLING, QUICK_CYCLING, CyclingWorkload, blocks_of, cycling_rounds, delta, disk_flags,
    fold_first_output, hit_rate, metrics_from_exposition, pagedmlx_kind, pool_figures, pool_gb,
    returning_figures, wait_for_writes, writes_settled)
from benchmarks.load_generator import RequestRecord

BLOCK_BYTES = 737_280  # SmolLM2-135M's float32 KV block of 16 tokens
EXPOSITION = """# TYPE pagedmlx:disk_cache_hits counter
pagedmlx:disk_cache_hits_total{engine="0",model_name="m"} 70.0
pagedmlx:disk_cache_hits_created{engine="0",model_name="m"} 1.7e9
# TYPE pagedmlx:disk_cache_read_bytes counter
pagedmlx:disk_cache_read_bytes_total{engine="0",model_name="m"} 5.16096e+07
# TYPE pagedmlx:disk_cache_write_queue_depth gauge
pagedmlx:disk_cache_write_queue_depth{engine="0",model_name="m"} 0.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 1120.0
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1200.0
# TYPE pagedmlx:kv_cache_budget_bytes gauge
pagedmlx:kv_cache_budget_bytes{engine="0",model_name="m"} 5.308416e+07
# TYPE pagedmlx:kv_cache_blocks gauge
pagedmlx:kv_cache_blocks{engine="0",model_name="m",state="free"} 60.0
pagedmlx:kv_cache_blocks{engine="0",model_name="m",state="cached"} 10.0
pagedmlx:kv_cache_blocks{engine="0",model_name="m",state="used"} 2.0
"""


def test_figures_from_an_exposition_counters_with_their_total_suffix():
    metrics = metrics_from_exposition(EXPOSITION)
    assert metrics["disk_hits"] == 70 and metrics["disk_read_bytes"] == 70 * BLOCK_BYTES
    assert metrics["disk_write_queue_depth"] == 0
    assert metrics["prefix_hits"] == 1120 and metrics["prefix_queries"] == 1200
    assert metrics["disk_misses"] is None  # not exported: no figure
    assert pool_figures(metrics) == {"pool_blocks": 72, "block_bytes": BLOCK_BYTES}
    assert pool_figures(metrics_from_exposition("")) == {"pool_blocks": None, "block_bytes": None}


def test_deltas_and_the_hit_rate_between_scrapes():
    before = {"prefix_hits": 100.0, "prefix_queries": 1000.0, "disk_hits": None}
    after = {"prefix_hits": 1000.0, "prefix_queries": 2000.0, "disk_hits": 5.0}
    assert delta(before, after, "prefix_hits") == 900
    assert delta(before, after, "disk_hits") is None  # missing in a scrape
    assert hit_rate(before, after) == 0.9
    assert hit_rate(before, before) is None  # no queries in between
    assert hit_rate({}, after) is None


def test_returning_figures_are_rounds_two_on():
    ttft_ms = [[900.0, 1000.0, 1100.0], [100.0, 300.0, 200.0], [150.0, 5000.0, 250.0]]
    before = {"prefix_hits": 50.0, "prefix_queries": 3000.0, "disk_hits": 0.0, "disk_read_bytes": 0.0}
    after = {"prefix_hits": 5450.0, "prefix_queries": 9000.0, "disk_hits": 300.0, "disk_read_bytes": 3e8}
    figures = returning_figures(ttft_ms, before, after)
    assert figures["returning_ttft_p50_ms"] == 225  # the median of the six of rounds 2 and 3
    assert figures["first_round_ttft_p50_ms"] == 1000
    assert figures["returning_hit_rate"] == pytest.approx(0.9)
    assert figures["returning_disk_hits"] == 300 and figures["returning_disk_misses"] is None


def test_writes_settle_once_the_queue_is_empty_and_the_bytes_stop_growing():
    assert writes_settled({"disk_written_bytes": 10.0}, {"disk_write_queue_depth": 0.0, "disk_written_bytes": 10.0})
    assert not writes_settled({"disk_written_bytes": 5.0},
                              {"disk_write_queue_depth": 0.0, "disk_written_bytes": 10.0})
    assert not writes_settled({"disk_written_bytes": 10.0},
                              {"disk_write_queue_depth": 2.0, "disk_written_bytes": 10.0})
    assert not writes_settled({}, {"disk_write_queue_depth": None, "disk_written_bytes": None})


def _scrapes(monkeypatch, *figures: tuple[float | None, float | None]) -> None:
    """scrape() answers (queue depth, written bytes) in turn, the last one from then on; no sleeping."""
    answers = [{"disk_write_queue_depth": depth, "disk_written_bytes": written} for depth, written in figures]
    monkeypatch.setattr(disk_tier_bench, "scrape", lambda _: answers.pop(0) if len(answers) > 1 else answers[0])
    monkeypatch.setattr(disk_tier_bench.time, "sleep", lambda _: None)


def test_waiting_for_the_writes_to_settle(monkeypatch):
    _scrapes(monkeypatch, (40, 1e6), (12, 3e6), (0, 5e6), (0, 5e6))
    writes = wait_for_writes("http://server")
    assert writes["settled"] and not writes["stalled"] and writes["disk_written_bytes"] == 5e6


def test_figures_that_stay_put_with_writes_queued_are_a_stall(monkeypatch):
    monkeypatch.setattr(disk_tier_bench, "WRITES_STALL_S", 0.0)
    _scrapes(monkeypatch, (17, 1e6))
    writes = wait_for_writes("http://server")
    assert writes["stalled"] and not writes["settled"] and writes["disk_write_queue_depth"] == 17
    _scrapes(monkeypatch, (None, None))  # a server without the tier's metrics: no waiting
    assert wait_for_writes("http://server")["settled"] is False


def test_the_pool_holds_the_longest_prompts_and_no_more():
    prompt_tokens = [1500, 1490, 1600, 1401, 1520]  # 94, 94, 100, 88, 95 blocks
    gb = pool_gb(2, prompt_tokens, BLOCK_BYTES)
    num_blocks = int(gb * 2**30) // BLOCK_BYTES  # as the server rounds its budget
    assert num_blocks == 100 + 95
    assert blocks_of(1600) == 100 and blocks_of(1601) == 101


def test_a_first_request_that_yields_no_text_is_timed_at_its_stop():
    record = RequestRecord(ok=False)
    fold_first_output(record, {"type": "message_start", "message": {"usage": {"input_tokens": 9}}}, 0.01)
    fold_first_output(record, {"type": "content_block_delta", "delta": {"type": "text_delta", "text": ""}}, 0.2)
    fold_first_output(record, {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                               "usage": {"output_tokens": 1}}, 0.5)
    assert record.chunk_times_s == [0.5] and record.prompt_tokens == 9
    timed = RequestRecord(ok=False)
    fold_first_output(timed, {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}}, 0.3)
    fold_first_output(timed, {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 1}}, 0.4)
    assert timed.chunk_times_s == [0.3]


def test_the_tier_flags_come_last_so_they_win():
    command = pagedmlx_kind("x", [*disk_flags("/tmp/kv"), "--kv-cache-gb", "0.3"]).command(8000)
    assert command[-6:] == ["--disk-cache-gb", "4.0", "--disk-cache-dir", "/tmp/kv", "--kv-cache-gb", "0.3"]
    assert command.index("--disk-cache-gb") < len(command) - 6  # the benchmarks' default (off) comes first
    assert disk_flags(None) == ["--disk-cache-gb", "0"]


def test_a_cycling_workload_needs_returning_rounds():
    with pytest.raises(ValueError):
        CyclingWorkload(rounds=1)


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("workload", [FULL_CYCLING, QUICK_CYCLING], ids=["full", "quick"])
def test_cycling_prompts_are_distinct_and_return_with_a_new_last_block(loaded_model, workload):
    rounds = cycling_rounds(workload)
    assert [len(bodies) for bodies in rounds] == [workload.prompts] * workload.rounds
    assert all(body["max_tokens"] == 1 and body["stream"] for bodies in rounds for body in bodies)
    assert all(len(body["tools"]) == workload.tools_per_prompt for body in rounds[0])
    assert {body["tools"][0]["name"] for body in rounds[0]} <= {tool["name"] for tool in cc.CORE_TOOLS}
    ids = [[rendered_prompt(loaded_model.tokenizer, body) for body in bodies] for bodies in rounds]
    first = ids[0]
    min_blocks = 48 if workload == FULL_CYCLING else 32
    assert all(len(prompt) > min_blocks * BLOCK_SIZE for prompt in first)
    assert len({tuple(prompt) for prompt in first}) == workload.prompts
    for i, a in enumerate(first):  # distinct prefixes: they part within their first couple of blocks
        for b in first[i + 1:]:
            assert _common_prefix(a, b) < 3 * BLOCK_SIZE
    for later in ids[1:]:  # the same prefix every round, then a last user turn of the round's own
        for prompt, (again, original) in enumerate(zip(later, first)):
            shared = _common_prefix(again, original)
            assert shared > len(original) - 3 * BLOCK_SIZE
            assert again != original and shared < len(again)
    # The pool sized for the workload holds `pool_prompts` of them, not all.
    gb = pool_gb(workload.pool_prompts, [len(prompt) for prompt in first], BLOCK_BYTES)
    pool_blocks = int(gb * 2**30) // BLOCK_BYTES
    assert pool_blocks < sum(blocks_of(len(prompt)) for prompt in first) / 2
