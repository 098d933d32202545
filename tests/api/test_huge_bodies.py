"""Hostile sizes under a generous body limit: JSON nested 10,000 deep, a 5 MB string, 100k
messages, 10k tools. Each gets a clear 400 in its protocol's shape (the prompt is tokenized off the
event loop, then refused with both numbers), and the server is whole afterwards."""

import json

import pytest
from http_client import request
from live_server import LiveServer, start_server

CHAT, MESSAGES = "/v1/chat/completions", "/v1/messages"
HI = {"role": "user", "content": "hi"}


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory):
    live = start_server(tmp_path_factory.mktemp("roomy"), "--max-body-mb", "32")
    yield live
    live.stop()


def post(server: LiveServer, path: str, body: str | dict) -> dict:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    reply = request(server.port, "POST", path, raw, {"Content-Type": "application/json"})
    assert reply.status == 400, reply.body[:300]
    return reply.json()


def test_json_nested_ten_thousand_deep_is_refused_as_invalid(roomy: LiveServer):
    nested = "[" * 10_000 + "]" * 10_000
    error = post(roomy, CHAT, f'{{"messages": {nested}, "max_tokens": 4}}')["error"]
    assert error["type"] == "invalid_request_error" and "not valid JSON" in error["message"]
    error = post(roomy, MESSAGES, f'{{"model": "m", "max_tokens": 4, "messages": {nested}}}')
    assert error["type"] == "error" and "not valid JSON" in error["error"]["message"]


@pytest.mark.parametrize("path, body", [
    (CHAT, {"messages": [{"role": "user", "content": "x" * 5_000_000}], "max_tokens": 4}),
    (CHAT, {"messages": [HI] * 100_000, "max_tokens": 4}),
    (MESSAGES, {"model": "m", "max_tokens": 4,
                "messages": [HI, {"role": "assistant", "content": "ok"}] * 50_000 + [HI]}),
    (CHAT, {"messages": [HI], "max_tokens": 4, "tools": [
        {"type": "function", "function": {"name": f"tool_{i}", "parameters": {
            "type": "object", "properties": {"a": {"type": "string"}}}}} for i in range(10_000)]}),
], ids=["5 MB string", "100k messages", "100k Anthropic messages", "10k tools"])
def test_huge_prompts_are_refused_with_both_numbers(roomy: LiveServer, path: str, body: dict):
    reply = post(roomy, path, body)
    message = reply["error"]["message"]
    if path == CHAT:
        assert reply["error"]["code"] == "context_length_exceeded"
        assert "maximum context length is 1024 tokens" in message
    else:
        assert reply["error"]["type"] == "invalid_request_error"
        assert message.startswith("prompt is too long: ") and message.endswith("> 1024 maximum")
    health = roomy.wait_until_idle()
    assert health["kv_cache_free_blocks"] == health["kv_cache_blocks"]
