"""Twenty clients on both APIs hang up at once, each at its own point: before any token, during
prefill, mid-stream, during a tool call, waiting for a whole response. Every one is aborted
(none finishes by itself), the aborts are counted, the pool is whole, and the server answers."""

import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from http_client import hang_up, open_stream, send, sse_lines
from live_server import LiveServer

MAX_TOKENS = 400
POINTS = ("before_first_token", "during_prefill", "mid_stream", "during_tool_call", "whole_response")
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
# A string argument of 2,000 characters at least: the grammar lets no call end before max_tokens.
LONG_TOOL = {"name": "write", "description": "Writes a note.",
             "schema": {"type": "object", "properties": {"text": {"type": "string", "minLength": 2000}},
                        "required": ["text"]}}
DELTA_MARKERS = ('"text_delta"', '"input_json_delta"', '"arguments":"')


def body(api: str, point: str, stream: bool) -> dict:
    words = 250 if point == "during_prefill" else 20
    text = " ".join(f"item{i}" for i in range(words))
    messages = [{"role": "user", "content": f"Repeat forever: {text}"}]
    if api == "openai":
        request = {"messages": messages, "max_tokens": MAX_TOKENS, "ignore_eos": True}
        if point == "during_tool_call":
            request["tools"] = [{"type": "function", "function": {
                "name": LONG_TOOL["name"], "parameters": LONG_TOOL["schema"]}}]
            request["tool_choice"] = "required"
    else:  # greedy, this prompt runs to max_tokens
        request = {"model": "any", "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
        if point == "during_tool_call":
            request["tools"] = [{"name": LONG_TOOL["name"], "description": LONG_TOOL["description"],
                                 "input_schema": LONG_TOOL["schema"]}]
            request["tool_choice"] = {"type": "tool", "name": LONG_TOOL["name"]}
    return {**request, "stream": stream}


def has_delta(line: str, api: str) -> bool:
    if api == "openai" and '"content":"' in line:
        return '"content":""' not in line
    return any(marker in line for marker in DELTA_MARKERS)


def disconnect(port: int, api: str, point: str, seed: int) -> bool:
    """Sends one request and hangs up at `point`; whether the response had begun (so the request
    had reached the engine)."""
    rng = random.Random(seed)
    if point == "whole_response":
        connection = send(port, PATHS[api], body(api, point, stream=False))
        time.sleep(rng.uniform(0.5, 2.0))
        hang_up(connection)
        return False  # it may still be reading or rendering the body
    if point == "before_first_token":
        connection = send(port, PATHS[api], body(api, point, stream=True))
        hang_up(connection)
        return False
    connection, response = open_stream(port, PATHS[api], body(api, point, stream=True))
    assert response.status == 200, response.read()
    lines = sse_lines(response)
    wanted = 0 if point == "during_prefill" else rng.randint(1, 4)
    seen = 0
    for line in lines:
        if seen >= wanted:
            break
        seen += has_delta(line, api)
    hang_up(connection)
    return True


def test_a_storm_of_disconnects_aborts_every_request_and_leaves_the_pool_whole(server: LiveServer):
    server.wait_until_idle()
    before = server.metrics()
    cases = [(api, point) for api in PATHS for point in POINTS] * 2
    with ThreadPoolExecutor(len(cases)) as pool:
        begun = list(pool.map(lambda case: disconnect(server.port, *case[1], case[0]),
                              enumerate(cases)))
    health = server.wait_until_idle(timeout_s=180)
    after = server.metrics()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("vllm:request_success_total", finished_reason="length") == 0
    assert delta("vllm:request_success_total", finished_reason="stop") == 0
    aborted = delta("vllm:request_success_total", finished_reason="abort")
    assert aborted == delta("pagedmlx:request_aborts_total", cause="client_disconnect")
    assert sum(begun) <= aborted <= len(cases)
    assert health["kv_cache_free_blocks"] == health["kv_cache_blocks"]
    assert after[("vllm:kv_cache_usage_perc", ())] == 0.0
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("api", PATHS)
def test_the_server_answers_after_the_storm(server: LiveServer, api: str):
    from http_client import request
    short = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
    if api == "anthropic":
        short["model"] = "any"
    reply = request(server.port, "POST", PATHS[api], short)
    assert reply.status == 200, reply.body
