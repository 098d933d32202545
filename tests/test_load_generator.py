"""The load generator's arithmetic: percentiles, ITL from chunk times, TPOT, vLLM's summary keys, the
Poisson schedule, and how streamed chunks of each protocol become a record. No server."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.load_generator import (
    RequestRecord,
    itl_from_timestamps,
    percentile,
    poisson_arrival_times,
    summarize,
)
from benchmarks.sse_clients import fold_chat_chunk, fold_completion_chunk, fold_messages_event


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_matches_numpy_linear_interpolation(values, q):
    assert percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-9, abs=1e-6)


def test_percentile_of_known_values():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(values, 99) == pytest.approx(3.97)
    assert math.isnan(percentile([], 50))


def test_itl_is_the_gaps_between_chunk_arrivals():
    assert itl_from_timestamps([0.5, 0.6, 0.8, 1.1]) == pytest.approx([0.1, 0.2, 0.3])
    assert itl_from_timestamps([0.5]) == []
    assert itl_from_timestamps([]) == []


def test_tpot_excludes_the_first_token():
    record = RequestRecord(ok=True, chunk_times_s=[1.0, 1.5, 2.0], e2e_s=3.0, output_tokens=5)
    assert record.ttft_s == 1.0
    assert record.tpot_s == pytest.approx((3.0 - 1.0) / 4)
    assert RequestRecord(ok=True, chunk_times_s=[1.0], e2e_s=1.0, output_tokens=1).tpot_s is None


def test_summary_has_vllm_keys_and_counts_only_successes():
    records = [
        RequestRecord(ok=True, chunk_times_s=[0.2, 0.3, 0.5], e2e_s=0.5, prompt_tokens=10, output_tokens=3,
                      cached_tokens=4),
        RequestRecord(ok=True, chunk_times_s=[0.4, 0.6], e2e_s=0.7, prompt_tokens=20, output_tokens=4),
        RequestRecord(ok=False, error="HTTP 500"),
    ]
    summary = summarize(records, duration_s=2.0)
    assert summary["completed"] == 2 and summary["failed"] == 1
    assert summary["total_input_tokens"] == 30 and summary["total_output_tokens"] == 7
    assert summary["total_cached_tokens"] == 4
    assert summary["errors"] == ["HTTP 500"]
    assert summary["request_throughput"] == pytest.approx(1.0)
    assert summary["output_throughput"] == pytest.approx(3.5)
    assert summary["total_token_throughput"] == pytest.approx(18.5)
    assert summary["mean_ttft_ms"] == pytest.approx(300)
    assert summary["median_ttft_ms"] == pytest.approx(300)
    assert summary["p99_ttft_ms"] == pytest.approx(398)
    # TPOT per request: (0.5 - 0.2) / 2 = 150 ms and (0.7 - 0.4) / 3 = 100 ms.
    assert summary["mean_tpot_ms"] == pytest.approx(125)
    # ITL pools every gap of every request: 100, 200 and 200 ms.
    assert summary["mean_itl_ms"] == pytest.approx(500 / 3)
    assert summary["median_itl_ms"] == pytest.approx(200)
    assert summary["mean_e2el_ms"] == pytest.approx(600)
    assert summary["std_e2el_ms"] == pytest.approx(100)


def test_summary_of_no_successes_is_nan_not_an_error():
    summary = summarize([RequestRecord(ok=False, error="refused")], duration_s=1.0)
    assert summary["completed"] == 0 and summary["output_throughput"] == 0
    assert math.isnan(summary["mean_ttft_ms"]) and math.isnan(summary["p99_itl_ms"])


def _content_chunk(text: str, finish_reason: str | None = None) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish_reason}]}


def test_chunks_with_content_are_timed_and_usage_sets_the_token_counts():
    record = RequestRecord(ok=False)
    fold_chat_chunk(record, {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}, 0.1)
    fold_chat_chunk(record, _content_chunk("Hello"), 0.2)
    fold_chat_chunk(record, _content_chunk(""), 0.25)
    fold_chat_chunk(record, _content_chunk(" world", "length"), 0.3)
    fold_chat_chunk(record, {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3,
                                                  "prompt_tokens_details": {"cached_tokens": 8}}}, 0.31)
    assert record.chunk_times_s == [0.2, 0.3]
    assert record.text == "Hello world"
    assert record.finish_reason == "length"
    assert (record.prompt_tokens, record.output_tokens, record.cached_tokens) == (12, 3, 8)


def test_tool_call_deltas_count_as_output_and_missing_cache_details_read_as_zero():
    record = RequestRecord(ok=False)
    fold_chat_chunk(record, {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]}, 0.4)
    fold_chat_chunk(record, {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1,
                                                  "prompt_tokens_details": None}}, 0.5)
    assert record.chunk_times_s == [0.4]
    assert record.cached_tokens == 0


def test_poisson_schedule_is_seeded_starts_at_zero_and_averages_the_rate():
    times = poisson_arrival_times(rate=4.0, count=4000, seed=7)
    assert times == poisson_arrival_times(rate=4.0, count=4000, seed=7)
    assert times != poisson_arrival_times(rate=4.0, count=4000, seed=8)
    assert times[0] == 0.0 and times == sorted(times) and len(times) == 4000
    assert times[-1] / (len(times) - 1) == pytest.approx(1 / 4.0, rel=0.1)
    gaps = np.diff(times)
    assert np.std(gaps) == pytest.approx(np.mean(gaps), rel=0.1)  # exponential: std equals the mean


def test_text_completion_chunks_are_timed_by_their_text():
    record = RequestRecord(ok=False)
    fold_completion_chunk(record, {"choices": [{"index": 0, "text": "Hi", "finish_reason": None}]}, 0.2)
    fold_completion_chunk(record, {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}, 0.3)
    fold_completion_chunk(record, {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}, 0.3)
    assert record.chunk_times_s == [0.2] and record.text == "Hi" and record.finish_reason == "length"
    assert (record.prompt_tokens, record.output_tokens, record.cached_tokens) == (9, 2, 0)


def test_anthropic_events_time_non_empty_deltas_and_count_the_whole_prompt():
    record = RequestRecord(ok=False)
    usage = {"input_tokens": 6, "cache_creation_input_tokens": 32, "cache_read_input_tokens": 64}
    fold_messages_event(record, {"type": "message_start", "message": {"usage": {**usage, "output_tokens": 0}}}, 0.1)
    fold_messages_event(record, {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": ""}}, 0.2)
    fold_messages_event(record, {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": ""}}, 0.3)  # a keep-alive
    fold_messages_event(record, {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "Sure"}}, 0.5)
    fold_messages_event(record, {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": "{\"a\""}}, 0.6)
    fold_messages_event(record, {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                 "usage": {**usage, "output_tokens": 5}}, 0.7)
    assert record.chunk_times_s == [0.5, 0.6] and record.text == "Sure"
    assert (record.prompt_tokens, record.cached_tokens, record.output_tokens) == (102, 64, 5)
    assert record.finish_reason == "tool_use" and not record.error
    fold_messages_event(record, {"type": "error", "error": {"type": "overloaded_error"}}, 0.8)
    assert "overloaded_error" in record.error
