"""Raw HTTP: error shapes and status codes, headers, SSE framing."""

import json

from http_client import request, stream_lines
from live_server import LiveServer

CHAT = "/v1/chat/completions"
HELLO = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 2}


def assert_openai_error(reply, status: int, param: str | None = None) -> dict:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    return error


def test_malformed_json_is_a_400(server: LiveServer):
    reply = request(server.port, "POST", CHAT, b'{"messages": [',
                    {"Content-Type": "application/json"})
    assert assert_openai_error(reply, 400)["code"] == "invalid_json"


def test_a_json_array_body_is_a_400(server: LiveServer):
    reply = request(server.port, "POST", CHAT, b"[1]", {"Content-Type": "application/json"})
    assert "JSON object" in assert_openai_error(reply, 400)["message"]


def test_wrong_content_type_is_a_400(server: LiveServer):
    reply = request(server.port, "POST", CHAT, json.dumps(HELLO).encode(),
                    {"Content-Type": "text/plain"})
    assert "text/plain" in assert_openai_error(reply, 400)["message"]


def test_wrong_type_names_the_parameter(server: LiveServer):
    reply = request(server.port, "POST", CHAT, {**HELLO, "max_tokens": "ten"})
    assert "max_tokens" in assert_openai_error(reply, 400, "max_tokens")["message"]


def test_body_over_the_limit_is_a_413(server: LiveServer):
    huge = {**HELLO, "padding": "x" * (1024 * 1024 + 1)}
    reply = request(server.port, "POST", CHAT, huge)
    assert "1 MB" in assert_openai_error(reply, 413)["message"]


def test_unknown_fields_are_ignored(server: LiveServer):
    reply = request(server.port, "POST", CHAT, {**HELLO, "frobnicate": {"a": 1}, "store": True})
    assert reply.status == 200
    assert reply.json()["object"] == "chat.completion"


def test_unknown_route_is_a_404_and_wrong_method_a_405(server: LiveServer):
    assert "/v1/nothing" in assert_openai_error(
        request(server.port, "GET", "/v1/nothing"), 404)["message"]
    reply = request(server.port, "GET", CHAT)
    assert_openai_error(reply, 405)
    assert "POST" in reply.headers["allow"]


def test_max_tokens_beyond_the_context_is_clamped_and_says_so(server: LiveServer):
    end_at_once = {"2": 100}  # <|im_end|>, SmolLM2's EOS: the reply is over after one token
    reply = request(server.port, "POST", CHAT,
                    {**HELLO, "max_tokens": 5000, "logit_bias": end_at_once})
    assert reply.status == 200
    prompt_tokens = reply.json()["usage"]["prompt_tokens"]
    assert reply.headers["x-pagedmlx-max-tokens-clamped"] == f"5000->{1024 - prompt_tokens}"
    assert "x-pagedmlx-max-tokens-clamped" not in request(server.port, "POST", CHAT, HELLO).headers


def test_stream_framing_keepalive_comments_and_done(server: LiveServer):
    # A cold prompt of ~900 tokens takes seconds to prefill on a small CPU: the role chunk goes
    # out at once, then keep-alive comments (every 0.5 s in the test profile) until tokens come.
    words = " ".join(f"w{i}" for i in range(250))
    body = {"messages": [{"role": "user", "content": f"Count: {words}"}], "max_tokens": 3,
            "stream": True}
    lines = stream_lines(server.port, CHAT, body)
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0].removeprefix("data: "))
    assert first["choices"][0]["delta"]["role"] == "assistant"
    first_content = next(i for i, line in enumerate(lines)
                         if line.startswith("data: {") and "content" in line and i > 0)
    assert ": keep-alive" in lines[1:first_content]
    assert all(line == ": keep-alive" or line.startswith("data: ") for line in lines)
