"""Every response names its request, and the log finds it by that id without ever holding the
prompt's or the answer's text."""

import re
import time

from http_client import open_stream, request, sse_lines
from live_server import LiveServer

SECRET = "zebracorn"
ASK = {"messages": [{"role": "user", "content": f"Repeat after me: {SECRET} {SECRET}."}],
       "max_tokens": 6}


def logged(server: LiveServer, request_id: str, count: int, timeout_s: float = 30) -> list[str]:
    """The first `count` log lines naming request_id, once there are that many."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [line for line in server.log().splitlines() if request_id in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines[:count]
        time.sleep(0.05)


def test_json_stream_and_error_responses_carry_an_id_the_log_knows(server: LiveServer):
    whole = request(server.port, "POST", "/v1/chat/completions", ASK)
    connection, streamed = open_stream(server.port, "/v1/chat/completions", {**ASK, "stream": True})
    stream_id = streamed.getheader("x-request-id")
    assert any("[DONE]" in line for line in sse_lines(streamed))
    connection.close()
    missing = request(server.port, "GET", "/v1/nope")
    anthropic = request(server.port, "POST", "/v1/messages", {**ASK, "model": "m"})

    ids = [whole.headers["x-request-id"], stream_id, missing.headers["x-request-id"],
           anthropic.headers["x-request-id"]]
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == 4
    assert anthropic.headers["request-id"] == ids[3] and "request-id" not in whole.headers

    for request_id, status in ((ids[0], 200), (ids[1], 200), (ids[3], 200)):
        generation, access = logged(server, request_id, 2)  # the request's line, the access log's
        assert "prompt tokens" in generation and "generated" in generation
        assert f'" {status} ' in access and re.search(r" \d+\.\d+ s ", access)
    assert '"GET /v1/nope HTTP/1.1" 404' in logged(server, ids[2], 1)[0]
    assert SECRET not in server.log()  # it was in every prompt
