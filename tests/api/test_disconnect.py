"""A client that goes away aborts its request at once, and the KV pool is whole again."""

from http_client import hang_up, open_stream, read_contents, send, sse_lines
from live_server import LiveServer, wait_for

CHAT = "/v1/chat/completions"
MAX_TOKENS = 400
ABORTED = ("vllm:request_success_total", (("finished_reason", "abort"),))
GENERATED = ("vllm:generation_tokens_total", ())


def long_request(stream: bool, words: int = 20) -> dict:
    text = " ".join(f"item{i}" for i in range(words))
    return {"messages": [{"role": "user", "content": f"Repeat forever: {text}"}],
            "max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": stream}


def assert_aborted_and_pool_whole(server: LiveServer, before: dict) -> None:
    wait_for(lambda: server.metrics()[ABORTED] == before[ABORTED] + 1)
    health = server.wait_until_idle()
    after = server.metrics()
    assert after[GENERATED] - before[GENERATED] < MAX_TOKENS
    assert health["kv_cache_free_blocks"] == health["kv_cache_blocks"]
    assert after[("vllm:kv_cache_usage_perc", ())] == 0.0
    assert "Traceback" not in server.log()


def test_disconnect_mid_stream_aborts(server: LiveServer):
    server.wait_until_idle()
    before = server.metrics()
    connection, response = open_stream(server.port, CHAT, long_request(stream=True))
    read_contents(sse_lines(response), 3)
    hang_up(connection)
    assert_aborted_and_pool_whole(server, before)
    assert "client disconnected" in server.log() or "cancelled" in server.log()


def test_disconnect_while_waiting_for_a_whole_response_aborts(server: LiveServer):
    server.wait_until_idle()
    before = server.metrics()
    connection = send(server.port, CHAT, long_request(stream=False))
    wait_for(lambda: server.metrics()[GENERATED] > before[GENERATED])
    hang_up(connection)
    assert_aborted_and_pool_whole(server, before)


def test_disconnect_during_prefill_aborts_before_any_token(server: LiveServer):
    server.wait_until_idle()
    before = server.metrics()
    connection, response = open_stream(server.port, CHAT, long_request(stream=True, words=250))
    first = next(sse_lines(response))
    assert '"role":"assistant"' in first
    hang_up(connection)
    assert_aborted_and_pool_whole(server, before)
    # The abort lands at the top of the next step: at most the step that ends the prefill samples.
    assert server.metrics()[GENERATED] - before[GENERATED] <= 1

