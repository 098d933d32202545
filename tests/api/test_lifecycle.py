"""A server with --api-key and the strict flags; startup errors; SIGTERM's graceful shutdown."""

import subprocess
import time

import anthropic
import openai
import pytest
from http_client import open_stream, read_contents, request, sse_lines
from live_server import PAGEDMLX, LiveServer, start_server

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory):
    live = start_server(tmp_path_factory.mktemp("keyed"), "--api-key", KEY,
                        "--strict-model-name", "--strict-max-tokens", "--claude-context-scale",
                        "--served-model-name", "smol", "--shutdown-grace-s", "60")
    yield live
    live.stop()


def keyed_client(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": KEY}, {"x-api-key": "wrong"}])
def test_missing_or_wrong_key_is_a_401(keyed_server: LiveServer, headers: dict):
    reply = request(keyed_server.port, "GET", "/v1/models", headers=headers)
    assert reply.status == 401
    assert reply.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("headers", [AUTH, {"x-api-key": KEY}])
def test_the_right_key_is_accepted_either_way(keyed_server: LiveServer, headers: dict):
    assert request(keyed_server.port, "GET", "/v1/models", headers=headers).status == 200


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_service_endpoints_stay_open(keyed_server: LiveServer, path: str):
    assert request(keyed_server.port, "GET", path).status == 200


def test_sdk_errors_with_a_key(keyed_server: LiveServer):
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
        keyed_client(keyed_server, "wrong").models.list()
    client = keyed_client(keyed_server, KEY)
    with pytest.raises(openai.NotFoundError, match="'gpt-4' does not exist"):
        client.chat.completions.create(model="gpt-4", messages=messages)
    with pytest.raises(openai.BadRequestError, match="leaves") as caught:
        client.chat.completions.create(model="smol", messages=messages, max_tokens=5000)
    assert caught.value.body["param"] == "max_tokens"
    reply = client.chat.completions.create(model="smol", messages=messages, max_tokens=2)
    assert reply.model == "smol"


def test_anthropic_sdk_errors_with_a_key(keyed_server: LiveServer):
    messages = [{"role": "user", "content": "hi"}]
    wrong = anthropic.Anthropic(base_url=keyed_server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        wrong.messages.create(model="smol", max_tokens=2, messages=messages)
    assert caught.value.body["error"]["type"] == "authentication_error"
    client = anthropic.Anthropic(base_url=keyed_server.base_url, auth_token=KEY, max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="claude-opus-4", max_tokens=2, messages=messages)
    assert caught.value.body["error"]["type"] == "not_found_error"
    by_header = anthropic.Anthropic(base_url=keyed_server.base_url, api_key=KEY, max_retries=0)
    assert by_header.messages.create(model="smol", max_tokens=2, messages=messages).model == "smol"


def test_claude_context_scale_reports_scaled_prompt_figures(keyed_server: LiveServer):
    messages = [{"role": "user", "content": "Say something."}]
    real = keyed_client(keyed_server, KEY).chat.completions.create(
        model="smol", messages=messages, max_tokens=1).usage.prompt_tokens
    client = anthropic.Anthropic(base_url=keyed_server.base_url, api_key=KEY, max_retries=0)
    scale = 200_000 / 1024
    assert client.messages.count_tokens(model="smol", messages=messages).input_tokens == round(
        real * scale)
    usage = client.messages.create(model="smol", max_tokens=1, messages=messages).usage
    reported = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    assert abs(reported - real * scale) <= 3   # each figure is rounded on its own
    with pytest.raises(anthropic.BadRequestError, match=r"prompt is too long: \d+ tokens > 200000"):
        client.messages.create(model="smol", max_tokens=1, messages=[
            {"role": "user", "content": "word " * 1500}])


def test_sigterm_finishes_streams_refuses_new_requests_and_exits_zero(keyed_server: LiveServer):
    body = {"messages": [{"role": "user", "content": "Count to fifty."}], "max_tokens": 10,
            "ignore_eos": True, "stream": True}
    connection, response = open_stream(keyed_server.port, "/v1/chat/completions", body, AUTH)
    lines = sse_lines(response)
    read_contents(lines, 1)
    keyed_server.process.terminate()
    deadline = time.monotonic() + 10
    while (reply := request(keyed_server.port, "GET", "/v1/models", headers=AUTH)).status != 503:
        assert time.monotonic() < deadline, "no 503 after SIGTERM"
    assert reply.json()["error"]["code"] == "shutting_down"
    refused = request(keyed_server.port, "POST", "/v1/messages",
                      {"model": "smol", "max_tokens": 4, "messages": body["messages"]}, AUTH)
    assert refused.status == 529 and refused.json()["error"]["type"] == "overloaded_error"
    assert request(keyed_server.port, "GET", "/health").status == 503
    rest = list(lines)
    connection.close()
    assert rest[-1] == "data: [DONE]"
    assert keyed_server.process.wait(60) == 0
    assert "Traceback" not in keyed_server.log()


@pytest.mark.parametrize("args, exit_code, message", [
    (["--model", "/nonexistent/model.gguf"], 1, "cannot load model /nonexistent/model.gguf"),
    (["--max-num-seqs", "0"], 2, "--max-num-seqs must be positive"),
    (["--max-model-len", "100000"], 1, "beyond the model's context of 8192 tokens (--allow-long-context"),
])
def test_startup_errors_print_one_line_and_exit_nonzero(args, exit_code, message):
    result = subprocess.run([str(PAGEDMLX), "serve", *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == exit_code
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_listening_beyond_loopback_without_a_key_warns(tmp_path):
    live = start_server(tmp_path, "--host", "0.0.0.0")
    try:
        assert "listening on 0.0.0.0 with no API key" in live.log()
    finally:
        live.stop()
    quiet = start_server(tmp_path, "--host", "0.0.0.0", "--api-key", KEY)
    try:
        assert "with no API key" not in quiet.log()
    finally:
        quiet.stop()


def test_allow_long_context_permits_a_longer_window_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGEDMLX_ALLOW_LONG_CONTEXT", "1")
    live = start_server(tmp_path, "--max-model-len", "16384", "--kv-cache-gb", "1")
    try:
        assert live.get_json("/v1/models")["data"][0]["max_model_len"] == 16384
        assert "beyond the model's trained context of 8192 tokens" in live.log()
    finally:
        live.stop()
