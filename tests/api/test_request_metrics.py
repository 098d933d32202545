"""Every finished request reaches the per-request histograms, whatever ended it."""

from http_client import request
from live_server import LiveServer, wait_for

E2E = ("vllm:e2e_request_latency_seconds_count", ())
TTFT = ("vllm:time_to_first_token_seconds_count", ())
STOPPED = ("vllm:request_success_total", (("finished_reason", "stop"),))


def test_a_stop_string_finish_is_observed_in_the_histograms(server: LiveServer):
    server.wait_until_idle()
    before = server.metrics()
    body = {"messages": [{"role": "user", "content": "Write a sentence about the weather."}],
            "max_tokens": 200, "ignore_eos": True, "stop": ["e"]}
    reply = request(server.port, "POST", "/v1/chat/completions", body)
    assert reply.status == 200
    choice = reply.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and reply.json()["usage"]["completion_tokens"] < 200
    wait_for(lambda: server.metrics()[E2E] != before.get(E2E, 0.0), 30,  # it follows the stop
             "the stop-string finish in the histograms")
    after = server.metrics()
    assert after[E2E] == before.get(E2E, 0.0) + 1
    assert after[TTFT] == before.get(TTFT, 0.0) + 1
    assert after[STOPPED] == before.get(STOPPED, 0.0) + 1
