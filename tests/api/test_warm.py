"""Warm files: parsing and endpoint detection, the requests sent, and a live server's cache after
--warm and `pagedmlx warm`."""

import asyncio
import json
import re
import subprocess
from pathlib import Path

import anthropic
import openai
import pytest
from aiohttp import web
from live_server import PAGEDMLX, TEST_PROFILE, LiveServer, free_port, start_server, wait_for

from api.warm import (
    CHAT,
    COMPLETIONS,
    MESSAGES,
    WarmFileError,
    WarmReport,
    WarmRequest,
    load_warm_requests,
    local_url,
    send_warm_requests,
)

KEY = "warm-key"
BLOCK_SIZE = 16
# ~300 tokens in all, well inside the test profile's 1024-token context.
SYSTEM = " ".join(f"Rule {n}: answer briefly, cite the file you read, and never guess a path."
                  for n in range(1, 21))
ANTHROPIC_BODY = {"model": "claude-sonnet-4-5", "max_tokens": 64, "system": SYSTEM,
                  "messages": [{"role": "user", "content": "What does this repository do?"}]}
OPENAI_BODY = {"model": "m", "max_completion_tokens": 64, "stream": True,
               "stream_options": {"include_usage": True},
               "messages": [{"role": "user", "content": "Summarize these notes. " + " ".join(
                   f"Note {n}: the build passed on the {n}th try." for n in range(1, 21))}]}
SUMMARY = re.compile(r"^warm: \d+ requests", re.MULTILINE)
BAD_BODY = {"model": "m", "messages": []}  # a 400: counted as failed, the rest still sent


def write(tmp_path: Path, text: str, name: str = "warm.json") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_one_json_object_is_one_request(tmp_path: Path):
    path = write(tmp_path, json.dumps(ANTHROPIC_BODY))
    assert load_warm_requests(path) == [WarmRequest(MESSAGES, ANTHROPIC_BODY)]


def test_a_json_list_keeps_the_file_order(tmp_path: Path):
    path = write(tmp_path, json.dumps([OPENAI_BODY, ANTHROPIC_BODY], indent=2))
    assert load_warm_requests(str(path)) == [WarmRequest(CHAT, OPENAI_BODY),
                                             WarmRequest(MESSAGES, ANTHROPIC_BODY)]


def test_jsonl_is_one_body_per_line_blank_lines_skipped(tmp_path: Path):
    lines = [json.dumps(OPENAI_BODY), "", json.dumps({"prompt": "Once upon"}), ""]
    path = write(tmp_path, "\n".join(lines), "warm.jsonl")
    assert load_warm_requests(path) == [WarmRequest(CHAT, OPENAI_BODY),
                                        WarmRequest(COMPLETIONS, {"prompt": "Once upon"})]


def test_an_explicit_endpoint_wins_and_may_have_a_query(tmp_path: Path):
    entries = [{"endpoint": "/v1/messages?beta=true", "body": {"messages": []}},
               {"endpoint": COMPLETIONS, "body": {"messages": []}}]
    path = write(tmp_path, json.dumps(entries))
    assert load_warm_requests(path) == [WarmRequest("/v1/messages?beta=true", {"messages": []}),
                                        WarmRequest(COMPLETIONS, {"messages": []})]


@pytest.mark.parametrize(("body", "endpoint"), [
    ({"prompt": "hi", "system": "x"}, COMPLETIONS),
    ({"system": "x", "messages": []}, MESSAGES),
    ({"messages": [], "tools": [{"name": "t", "input_schema": {"type": "object"}}]}, MESSAGES),
    ({"messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "t", "input": {}}]}]}, MESSAGES),
    ({"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]}, MESSAGES),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
      "tools": [{"type": "function", "function": {"name": "t", "parameters": {}}}]}, CHAT),
    ({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]}, CHAT),
])
def test_a_bare_body_s_endpoint_is_detected(tmp_path: Path, body: dict, endpoint: str):
    assert load_warm_requests(write(tmp_path, json.dumps(body))) == [WarmRequest(endpoint, body)]


@pytest.mark.parametrize(("text", "error"), [
    ("", "empty"),
    ("  \n", "empty"),
    ("{\"messages\": [", "not JSON"),
    ("[]", "no requests"),
    ("{\"prompt\": \"a\"}\n{\"prompt\": ", "line 2 is not JSON"),
    ("[{\"prompt\": \"a\"}, 3]", "entry 2 is not an object"),
    ("{\"endpoint\": \"/v1/embeddings\", \"body\": {}}", "entry 1 has an unknown endpoint"),
    ("{\"endpoint\": \"/v1/messages\", \"body\": []}", "entry 1's body is not an object"),
])
def test_a_bad_file_is_an_error_naming_it(tmp_path: Path, text: str, error: str):
    path = write(tmp_path, text)
    with pytest.raises(WarmFileError, match=error) as raised:
        load_warm_requests(path)
    assert str(path) in str(raised.value)


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path):
    with pytest.raises(WarmFileError, match=r"missing\.json: cannot read it: No such file"):
        load_warm_requests(tmp_path / "missing.json")


def test_the_summary_line():
    report = WarmReport(3, 0, 12211, 0, 34.84)
    assert report.summary() == ("warm: 3 requests (0 failed), 12211 prompt tokens "
                                "(0 already cached) in 34.8 s")


@pytest.mark.parametrize(("host", "url"), [("127.0.0.1", "http://127.0.0.1:80"),
                                           ("0.0.0.0", "http://127.0.0.1:80"),
                                           ("::", "http://[::1]:80"),
                                           ("localhost", "http://localhost:80")])
def test_local_url_reaches_the_bound_host(host: str, url: str):
    assert local_url(host, 80) == url


def test_requests_are_sent_in_order_for_one_token_with_the_key():
    seen: list[tuple[str, dict, dict]] = []

    async def answer(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.path_qs, body, dict(request.headers)))
        if not body.get("messages"):
            return web.json_response({"error": {"message": "no messages"}}, status=400)
        if request.path == MESSAGES:
            return web.json_response({"usage": {"input_tokens": 5, "cache_read_input_tokens": 32,
                                                "cache_creation_input_tokens": 48}})
        return web.json_response({"usage": {"prompt_tokens": 40,
                                            "prompt_tokens_details": {"cached_tokens": 16}}})

    async def run() -> WarmReport:
        app = web.Application()
        app.router.add_post("/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            return await send_warm_requests(f"http://127.0.0.1:{port}", [
                WarmRequest("/v1/messages?beta=true", ANTHROPIC_BODY),
                WarmRequest(CHAT, BAD_BODY),
                WarmRequest(CHAT, OPENAI_BODY),
            ], KEY)
        finally:
            await runner.cleanup()

    report = asyncio.run(run())
    assert (report.num_requests, report.num_failed) == (3, 1)
    assert (report.prompt_tokens, report.cached_tokens) == (85 + 40, 32 + 16)
    assert [path for path, _, _ in seen] == ["/v1/messages?beta=true", CHAT, CHAT]
    (_, anthropic_sent, anthropic_headers), _, (_, openai_sent, openai_headers) = seen
    assert anthropic_sent == {**ANTHROPIC_BODY, "stream": False, "max_tokens": 1}
    assert anthropic_headers["anthropic-version"] == "2023-06-01"
    assert openai_sent == {"model": "m", "messages": OPENAI_BODY["messages"], "stream": False,
                           "max_tokens": 1}
    assert "anthropic-version" not in openai_headers
    for headers in (anthropic_headers, openai_headers):
        assert headers["x-api-key"] == KEY and headers["Authorization"] == f"Bearer {KEY}"


def test_an_unreachable_server_fails_every_request_without_raising():
    report = asyncio.run(send_warm_requests(f"http://127.0.0.1:{free_port()}",
                                            [WarmRequest(CHAT, OPENAI_BODY)], None))
    assert (report.num_requests, report.num_failed, report.prompt_tokens) == (1, 1, 0)


@pytest.fixture(scope="module")
def warmed_server(tmp_path_factory: pytest.TempPathFactory):
    """A server with a key, warmed with a failing body, then Anthropic and OpenAI ones."""
    log_dir = tmp_path_factory.mktemp("warm")
    entries = [BAD_BODY, {"endpoint": "/v1/messages?beta=true", "body": ANTHROPIC_BODY},
               OPENAI_BODY]
    path = write(log_dir, "\n".join(json.dumps(entry) for entry in entries), "warm.jsonl")
    live = start_server(log_dir, "--api-key", KEY, "--warm", str(path))
    try:
        wait_for(lambda: SUMMARY.search(live.log()), timeout_s=300, what="the warm summary")
        yield live
    finally:
        live.stop()


def test_serve_warm_prints_the_summary_and_logs_the_failure(warmed_server: LiveServer):
    log = warmed_server.log()
    assert "warm: 3 requests (1 failed)" in log
    assert ("pagedmlx.warm: /v1/chat/completions answered 400: 'messages' must be a non-empty "
            "array") in log


def test_serve_with_a_bad_warm_file_logs_it_and_keeps_serving(tmp_path: Path):
    live = start_server(tmp_path, "--warm", str(tmp_path / "missing.json"))
    try:
        wait_for(lambda: "ERROR pagedmlx.warm: warm file" in live.log(), what="the error")
        assert "missing.json: cannot read it" in live.log()
        assert live.get_json("/v1/models")["data"]
    finally:
        assert live.stop() == 0


def assert_most_of_the_prompt_hit(prompt_tokens: int, cached_tokens: int):
    # Every full block but the one holding the last prompt token, which is always computed.
    assert prompt_tokens > 200
    assert cached_tokens >= prompt_tokens - 2 * BLOCK_SIZE


def test_the_first_real_anthropic_turn_hits_the_warmed_prefix(warmed_server: LiveServer):
    client = anthropic.Anthropic(base_url=warmed_server.base_url, api_key=KEY, max_retries=0,
                                 timeout=120)
    usage = client.messages.create(**ANTHROPIC_BODY).usage
    prompt = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    assert usage.cache_read_input_tokens > 0
    assert_most_of_the_prompt_hit(prompt, usage.cache_read_input_tokens)


def test_the_first_real_openai_turn_hits_the_warmed_prefix(warmed_server: LiveServer):
    client = openai.OpenAI(base_url=warmed_server.base_url + "/v1", api_key=KEY, max_retries=0,
                           timeout=120)
    body = {k: v for k, v in OPENAI_BODY.items() if k not in ("stream", "stream_options")}
    usage = client.chat.completions.create(**body).usage
    assert usage.prompt_tokens_details.cached_tokens > 0
    assert_most_of_the_prompt_hit(usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens)


def run_warm(path: str, *flags: str) -> subprocess.CompletedProcess:
    """flags: beside (and after, so beating) the test profile's."""
    return subprocess.run(
        [str(PAGEDMLX), "warm", path, *TEST_PROFILE, *flags, "--port", str(free_port())],
        capture_output=True, text=True, timeout=400)


def test_pagedmlx_warm_exits_once_warmed(tmp_path: Path):
    done = run_warm(str(write(tmp_path, json.dumps(ANTHROPIC_BODY))))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warm: 1 requests (0 failed)" in done.stdout
    # TEST_PROFILE has --disk-cache-gb 0.
    assert "without the disk tier the warmed prefix cache is lost" in done.stderr


def test_pagedmlx_warm_exits_1_when_a_request_fails(tmp_path: Path):
    done = run_warm(str(write(tmp_path, json.dumps(BAD_BODY))))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "warm: 1 requests (1 failed)" in done.stdout


def test_pagedmlx_warm_with_a_bad_file_is_a_one_line_error(tmp_path: Path):
    done = run_warm(str(write(tmp_path, "[]")))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("pagedmlx: error: warm file ") and "no requests" in done.stderr


def test_pagedmlx_warm_fills_the_disk_tier_for_the_next_serve(tmp_path: Path):
    disk = ["--disk-cache-gb", "1", "--disk-cache-dir", str(tmp_path / "kv")]
    done = run_warm(str(write(tmp_path, json.dumps(ANTHROPIC_BODY))), *disk)
    assert done.returncode == 0, done.stdout + done.stderr
    live = start_server(tmp_path, *disk)
    try:
        client = anthropic.Anthropic(base_url=live.base_url, api_key="unused", max_retries=0,
                                     timeout=120)
        usage = client.messages.create(**ANTHROPIC_BODY).usage
    finally:
        live.stop()
    prompt = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    assert_most_of_the_prompt_hit(prompt, usage.cache_read_input_tokens)
