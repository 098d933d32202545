"""A key guards every route but /health (and /metrics, unless --metrics-require-key); prompt and
output text reach the log only with --log-prompts."""

from collections.abc import Iterator

import pytest
from http_client import request
from live_server import LiveServer, start_server, wait_for

KEY = "route-key-456"
SECRET = "the violet marmot sings at noon"
GUARDED = [("GET", "/"), ("HEAD", "/"), ("GET", "/version"), ("GET", "/v1/models"),
           ("GET", "/v1/models/any"), ("GET", "/openapi.json"), ("GET", "/metrics"),
           ("POST", "/v1/chat/completions"), ("POST", "/v1/messages"),
           ("POST", "/v1/messages/count_tokens"), ("POST", "/v1/completions"),
           ("GET", "/no/such/route")]


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("strict"), "--api-key", KEY,
                        "--metrics-require-key", "--log-prompts")
    yield live
    live.stop()


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_every_route_but_health_needs_the_key(strict_server: LiveServer, method: str, path: str):
    reply = request(strict_server.port, method, path, b"{}" if method == "POST" else None)
    assert reply.status == 401
    if method != "HEAD":
        error = reply.json()
        assert error["error"]["type" if path.startswith("/v1/messages") else "code"] in (
            "authentication_error", "invalid_api_key")
    with_key = request(strict_server.port, method, path, b"{}" if method == "POST" else None,
                       headers={"x-api-key": KEY})
    assert with_key.status != 401


def test_health_stays_open(strict_server: LiveServer):
    assert request(strict_server.port, "GET", "/health").status == 200


def test_with_log_prompts_the_prompt_and_output_are_logged(strict_server: LiveServer):
    body = {"messages": [{"role": "user", "content": SECRET}], "max_tokens": 4}
    reply = request(strict_server.port, "POST", "/v1/chat/completions", body,
                    headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status == 200
    output = reply.json()["choices"][0]["message"]["content"]
    log = strict_server.log()
    assert SECRET in log
    assert repr(output) in log


def test_without_log_prompts_no_text_is_logged(server: LiveServer):
    body = {"messages": [{"role": "user", "content": SECRET}], "max_tokens": 4}
    reply = request(server.port, "POST", "/v1/chat/completions", body)
    assert reply.status == 200
    output = reply.json()["choices"][0]["message"]["content"]
    request_id = reply.headers["x-request-id"]

    def access_lines() -> list[str]:
        return [line for line in server.log().splitlines() if "aiohttp.access" in line and request_id in line]

    wait_for(access_lines, what="the access log line")  # written after the response is sent
    log = server.log()
    assert SECRET not in log
    assert repr(output) not in log
    access = access_lines()
    assert len(access) == 1 and '"POST /v1/chat/completions HTTP/1.1" 200 ' in access[0]
