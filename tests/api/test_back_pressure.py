"""Past --max-queue waiting requests, new ones are refused at once: 429 with Retry-After in
OpenAI's shape, 529 overloaded_error in Anthropic's (which Claude Code retries), counted in
/metrics; once the queue drains, requests are served again."""

import anthropic
import openai
import pytest
from http_client import hang_up, open_stream, request, send, sse_lines
from live_server import LiveServer, start_server, wait_for

CHAT = "/v1/chat/completions"
ASK = [{"role": "user", "content": "Count to one hundred."}]


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory: pytest.TempPathFactory):
    live = start_server(tmp_path_factory.mktemp("queue"), "--max-num-seqs", "1", "--max-queue", "1")
    yield live
    live.stop()


def busy(server: LiveServer) -> tuple[int, int]:
    health = server.get_json("/health")
    return health["num_requests_running"], health["num_requests_waiting"]


def test_a_full_queue_refuses_in_each_protocols_shape_then_serves_again(small_queue: LiveServer):
    port = small_queue.port
    running, stream = open_stream(port, CHAT, {"messages": ASK, "max_tokens": 400,
                                               "ignore_eos": True, "stream": True})
    next(sse_lines(stream))
    wait_for(lambda: busy(small_queue) == (1, 0))  # it holds the one running slot
    waiting = send(port, CHAT, {"messages": ASK, "max_tokens": 4})
    wait_for(lambda: busy(small_queue) == (1, 1))

    refused = request(port, "POST", CHAT, {"messages": ASK, "max_tokens": 4})
    assert refused.status == 429 and refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "queue_full" and error["type"] == "rate_limit_exceeded"
    assert "--max-queue 1" in error["message"]
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=small_queue.base_url + "/v1", api_key="x", max_retries=0
                      ).chat.completions.create(model="m", messages=ASK, max_tokens=4)
    refused = request(port, "POST", "/v1/messages",
                      {"model": "m", "max_tokens": 4, "messages": ASK})
    assert refused.status == 529 and refused.headers["retry-after"] == "1"
    assert refused.json() == {"type": "error", "error": {
        "type": "overloaded_error", "message": refused.json()["error"]["message"]}}
    with pytest.raises(anthropic.APIStatusError) as raised:
        anthropic.Anthropic(base_url=small_queue.base_url, api_key="x", max_retries=0
                            ).messages.create(model="m", max_tokens=4, messages=ASK)
    assert raised.value.status_code == 529
    assert small_queue.metric("pagedmlx:queue_full_rejections_total") == 4
    assert small_queue.metric("pagedmlx:http_requests_total", method="POST",
                              route="/v1/messages", status="529") == 2

    hang_up(running)
    assert waiting.getresponse().status == 200
    waiting.close()
    small_queue.wait_until_idle()
    assert request(port, "POST", CHAT, {"messages": ASK, "max_tokens": 4}).status == 200


def test_more_choices_than_may_ever_wait_is_a_400_not_a_retry(small_queue: LiveServer):
    reply = request(small_queue.port, "POST", CHAT, {"messages": ASK, "max_tokens": 4, "n": 2})
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["param"] == "n" and "--max-queue" in error["message"]
