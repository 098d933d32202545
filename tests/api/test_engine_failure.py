"""The server when its engine fails (failures injected with PAGEDMLX_TEST_FAULT): open streams end
with an error in their protocol's shape, /health says 503 and why, and new requests get 503."""

import json
from collections.abc import Iterator

import pytest
from http_client import open_stream, request, sse_lines, stream_lines
from live_server import LiveServer, start_server

CHAT = "/v1/chat/completions"
ENDLESS = {"model": "m", "messages": [{"role": "user", "content": "Count to a thousand."}],
           "max_tokens": 500, "ignore_eos": True, "stream": True}
SHORT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
ANTHROPIC_SHORT = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(scope="module")
def dying_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Its engine thread fails when it takes in its second request."""
    live = start_server(tmp_path_factory.mktemp("dying"), env={"PAGEDMLX_TEST_FAULT": "thread:2"})
    yield live
    live.stop()


def test_a_dead_engine_fails_open_streams_answers_503_and_says_so_in_health(dying_server):
    port = dying_server.port
    connection, response = open_stream(port, CHAT, ENDLESS)
    lines = sse_lines(response)
    first = next(line for line in lines if line.startswith("data: {"))
    assert json.loads(first[len("data: "):])["choices"]  # it streams

    second = request(port, "POST", "/v1/messages", ANTHROPIC_SHORT)  # kills the engine thread
    assert second.status == 503
    assert second.json()["type"] == "error"
    assert second.json()["error"]["type"] == "overloaded_error"

    rest = list(lines)
    connection.close()
    errors = [json.loads(line[len("data: "):])["error"] for line in rest
              if line.startswith("data: {") and '"error"' in line]
    assert len(errors) == 1 and "injected engine thread failure" in errors[0]["message"]
    assert rest[-1] == "data: [DONE]"

    health = request(port, "GET", "/health")
    assert health.status == 503
    assert health.json()["status"] == "unhealthy"
    assert "injected engine thread failure" in health.json()["reason"]

    refused = request(port, "POST", CHAT, SHORT)
    assert refused.status == 503 and refused.json()["error"]["code"] == "engine_unavailable"
    assert request(port, "GET", "/metrics").status == 200
    assert dying_server.process.poll() is None  # the process stays up to say what happened


def test_a_failing_step_fails_only_its_request_and_the_next_one_succeeds(tmp_path):
    live = start_server(tmp_path, env={"PAGEDMLX_TEST_FAULT": "step:1,3"})
    try:
        failed = request(live.port, "POST", CHAT, SHORT)
        assert failed.status == 500
        assert "injected step failure" in failed.json()["error"]["message"]
        assert request(live.port, "POST", CHAT, SHORT).status == 200
        lines = stream_lines(live.port, "/v1/messages", {**ANTHROPIC_SHORT, "stream": True})
        assert lines[-2:-1] == ["event: error"]
        error = json.loads(lines[-1].removeprefix("data: "))
        assert error["type"] == "error" and error["error"]["type"] == "api_error"
        assert "injected step failure" in error["error"]["message"]
        assert request(live.port, "POST", "/v1/messages", ANTHROPIC_SHORT).status == 200
        assert request(live.port, "GET", "/health").status == 200
        assert live.metric("pagedmlx:engine_failed_steps_total") == 2
        assert live.metric("pagedmlx:kv_pool_rebuilds_total") == 0
        assert live.wait_until_idle()["kv_cache_free_blocks"] == live.get_json("/health")["kv_cache_blocks"]
    finally:
        live.stop()
