"""The soak (benchmarks/soak.py): its checks catch what they are for (no server), and 60 s of it at
concurrency 16 against a live server with the test profile pass every check of `make soak`, each sort of
request having really been sent."""

import asyncio
from pathlib import Path

import orjson
import pytest
from live_server import start_server

from benchmarks.soak import run_soak
from benchmarks.soak_client import ABORTED, EXPECTED_4XX, OK, Invalid, StreamFold, check_answer
from benchmarks.soak_metrics import server_figures
from benchmarks.soak_report import MAX_RSS_GROWTH, format_report
from benchmarks.soak_rss import MemorySample, growth
from benchmarks.soak_workload import KINDS, Fate, Plan, Protocol

DURATION_S = 60
CONCURRENCY = 16


def spec_of(kind_name: str):
    plan = Plan(max_model_len=1024)
    return next(spec for number in range(100) if (spec := plan.request(number)).kind.name == kind_name
                and spec.fate is Fate.COMPLETE)


def folded(protocol: Protocol, events: list) -> StreamFold:
    fold = StreamFold(protocol)
    for event in events:
        fold.add(event if isinstance(event, bytes) else orjson.dumps(event))
    return fold


CHAT_EVENTS = [{"choices": [{"delta": {"content": "Hi"}, "finish_reason": None}]},
               {"choices": [{"delta": {}, "finish_reason": "stop"}]},
               {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}]


def test_a_chat_stream_is_valid_only_with_its_done():
    spec = spec_of("chat_stream")
    check_answer(folded(Protocol.CHAT, [*CHAT_EVENTS, b"[DONE]"]).answer(), spec)
    with pytest.raises(Invalid, match="before its end"):
        check_answer(folded(Protocol.CHAT, CHAT_EVENTS).answer(), spec)


def test_a_streamed_tool_call_must_parse_to_an_object():
    def events(partial_json: str) -> list[dict]:
        return [{"type": "message_start", "message": {"usage": {"input_tokens": 30, "output_tokens": 1}}},
                {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "input": {}}},
                {"type": "content_block_delta", "index": 0,
                 "delta": {"type": "input_json_delta", "partial_json": partial_json}},
                {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
                {"type": "message_stop"}]

    spec = spec_of("messages_tools_stream")
    check_answer(folded(Protocol.MESSAGES, events('{"city": "Oslo"}')).answer(), spec)
    with pytest.raises(Invalid, match="not objects"):
        check_answer(folded(Protocol.MESSAGES, events('["Oslo"]')).answer(), spec)
    with pytest.raises(ValueError):
        folded(Protocol.MESSAGES, events('{"city": "Os')).answer()


def test_growth_compares_the_last_quarter_with_the_window_after_warm_up():
    samples = [MemorySample(at_s, 100 + (10 if at_s >= 45 else 0), 0) for at_s in range(60)]
    figures = growth(samples, 60, lambda sample: sample.rss)
    assert (figures.start, figures.after_warm_up, figures.end) == (100, 100, 110)
    assert figures.ratio == pytest.approx(0.10)


def test_server_figures_count_5xx_and_read_the_loop_lag():
    def exposition(errors: int, lag_count: int) -> str:
        return ("# TYPE pagedmlx:http_requests counter\n"
                f'pagedmlx:http_requests_total{{route="/v1/messages",method="POST",status="500"}} {errors}\n'
                'pagedmlx:http_requests_total{route="/v1/messages",method="POST",status="200"} 7\n'
                "# TYPE pagedmlx:event_loop_lag_seconds histogram\n"
                f'pagedmlx:event_loop_lag_seconds_bucket{{le="0.01"}} {lag_count - 1}\n'
                f'pagedmlx:event_loop_lag_seconds_bucket{{le="0.5"}} {lag_count}\n'
                f'pagedmlx:event_loop_lag_seconds_bucket{{le="+Inf"}} {lag_count}\n'
                f"pagedmlx:event_loop_lag_seconds_count {lag_count}\n"
                f"pagedmlx:event_loop_lag_seconds_sum {lag_count * 0.002}\n")

    figures = server_figures(exposition(1, 10), exposition(3, 110))
    assert figures.http_5xx == 2 and figures.http_by_status["200"] == 0
    assert figures.event_loop_lag_s == pytest.approx(0.002)
    assert figures.event_loop_lag_p99_s == 0.01


def test_soak_for_a_minute(tmp_path: Path):
    server = start_server(tmp_path)
    try:
        result = asyncio.run(run_soak(server.base_url, server.process.pid, DURATION_S, CONCURRENCY))
    finally:
        server.stop()
    print(format_report(result))
    assert result.failures() == []
    for kind in KINDS:
        assert result.count(OK, kind.name) > 0, kind.name
    assert result.count(ABORTED) > 0 and result.count(EXPECTED_4XX) > 0
    assert result.server.aborts_by_cause.get("client_disconnect", 0) > 0
    assert result.server.http_5xx == 0 and result.used_blocks_at_end == 0
    assert result.rss_outside_pool.ratio is not None and result.rss_outside_pool.ratio < MAX_RSS_GROWTH
    assert "Traceback" not in server.log()
