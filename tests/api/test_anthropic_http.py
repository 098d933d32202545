"""The Messages API over raw HTTP: the exact framing, pings during a prefill, what Claude Code
sends that the SDK would not, and errors in Anthropic's shape on every path."""

import json

from http_client import request, stream_lines
from live_server import LiveServer

MESSAGES = "/v1/messages?beta=true"
HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 4,
         "messages": [{"role": "user", "content": "Hello!"}]}


def events_of(lines: list[str]) -> list[tuple[str, dict]]:
    """(event name, data) pairs; comments dropped."""
    pairs, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            pairs.append((name, json.loads(line.removeprefix("data: "))))
    return pairs


def stream_events(server: LiveServer, body: dict) -> tuple[list[str], list[tuple[str, dict]]]:
    lines = stream_lines(server.port, MESSAGES, {**body, "stream": True})
    return lines, events_of(lines)


def assert_anthropic_error(reply, status: int, error_type: str) -> dict:
    assert reply.status == status, reply.body
    body = reply.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert body["error"]["message"]
    return body


def test_head_and_get_root_answer_200(server: LiveServer):
    assert request(server.port, "HEAD", "/").status == 200
    assert request(server.port, "GET", "/").json()["name"] == "pagedmlx"


def test_message_start_first_then_pings_while_a_long_prompt_prefills(server: LiveServer):
    words = " ".join(f"v{i}" for i in range(250))
    lines, events = stream_events(server, {**HELLO, "messages": [
        {"role": "user", "content": f"Count: {words}"}]})
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    first_block = names.index("content_block_start")
    assert "ping" in names[1:first_block]
    for name, data in events:
        assert data["type"] == name
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["role"] == "assistant"
    final_usage = events[-2][1]["usage"]
    assert final_usage["output_tokens"] >= 1
    for figure in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        assert final_usage[figure] == start["usage"][figure]


def test_with_thinking_asked_the_keepalives_are_events_the_sdk_yields(server: LiveServer):
    """The SDKs drop pings; Claude Code gives up on a stream that yields nothing for 300 s. With
    thinking requested, a prefill's keep-alives also send empty thinking deltas."""
    words = " ".join(f"t{i}" for i in range(250))
    _, events = stream_events(server, {**HELLO, "thinking": {"type": "enabled", "budget_tokens": 1024},
                                       "messages": [{"role": "user", "content": f"Count: {words}"}]})
    names = [name for name, _ in events]
    first_start = names.index("content_block_start")
    assert events[first_start][1]["content_block"]["type"] == "thinking"
    thinking = [data["delta"] for name, data in events
                if name == "content_block_delta" and data["index"] == 0]
    assert thinking and all(delta == {"type": "thinking_delta", "thinking": ""} for delta in thinking)
    assert names.index("content_block_stop") < len(names) - 2
    text_blocks = [data for name, data in events if name == "content_block_start"
                   and data["content_block"]["type"] == "text"]
    assert [block["index"] for block in text_blocks] == [1]


def test_block_indexes_open_and_close_in_order(server: LiveServer):
    _, events = stream_events(server, HELLO)
    open_index = None
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None
            open_index = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None


def test_what_claude_code_sends_is_accepted(server: LiveServer):
    body = {
        **HELLO,
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "metadata": {"user_id": "user_abc_account__session_123"},
        "some_future_field": {"x": 1},
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.1c9; "
                                     "cc_entrypoint=sdk-cli;"},
            {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "List the files.",
                                          "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": "Working directory: /tmp/project"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should search.", "signature": "c2ln"},
                {"type": "redacted_thinking", "data": "b3BhcXVl"},
                {"type": "tool_use", "id": "toolu_01", "name": "ToolSearch",
                 "input": {"query": "select:CronList"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                                          "content": [{"type": "tool_reference",
                                                       "tool_name": "CronList"}]}]},
        ],
        "tools": [
            {"name": "ToolSearch", "description": "Find tools.", "input_schema": {
                "type": "object", "properties": {"query": {"type": "string"}}}},
            {"name": "CronList", "description": "List cron jobs.", "defer_loading": True,
             "input_schema": {"type": "object", "properties": {}}},
        ],
    }
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219",
               "X-Claude-Code-Session-Id": "5d0c0c4e-1111-2222-3333-444455556666"}
    reply = request(server.port, "POST", MESSAGES, body, headers=headers)
    assert reply.status == 200, reply.body
    assert reply.json()["type"] == "message"


def test_bad_requests_are_anthropic_errors(server: LiveServer):
    body = assert_anthropic_error(
        request(server.port, "POST", MESSAGES, {**HELLO, "max_tokens": "many"}), 400,
        "invalid_request_error")
    assert "max_tokens" in body["error"]["message"]
    assert_anthropic_error(request(server.port, "POST", MESSAGES, b"{not json",
                                   headers={"Content-Type": "application/json"}),
                           400, "invalid_request_error")
    assert_anthropic_error(request(server.port, "POST", "/v1/messages/nothing", HELLO), 404,
                           "not_found_error")
    assert_anthropic_error(request(server.port, "GET", "/v1/messages"), 405,
                           "invalid_request_error")
    no_max = {k: v for k, v in HELLO.items() if k != "max_tokens"}
    assert_anthropic_error(request(server.port, "POST", MESSAGES, no_max), 400,
                           "invalid_request_error")


def test_max_tokens_beyond_the_context_is_clamped(server: LiveServer):
    # Stop strings keep the answer short: what is checked is the grant, not the output.
    reply = request(server.port, "POST", MESSAGES, {**HELLO, "max_tokens": 32000,
                                                    "stop_sequences": [" ", "\n", ","]})
    assert reply.status == 200
    assert reply.headers["x-pagedmlx-max-tokens-clamped"].startswith("32000->")


def test_count_tokens_needs_no_max_tokens(server: LiveServer):
    body = {k: v for k, v in HELLO.items() if k != "max_tokens"}
    reply = request(server.port, "POST", "/v1/messages/count_tokens", body)
    assert reply.status == 200 and reply.json()["input_tokens"] > 3
