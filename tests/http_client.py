"""Raw HTTP against the live server: whole responses, SSE lines, and sockets closed on purpose."""

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: bytes | dict | None = None,
            headers: dict[str, str] | None = None) -> Reply:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read())
    finally:
        connection.close()


def send(port: int, path: str, body: dict,
         headers: dict[str, str] | None = None) -> http.client.HTTPConnection:
    """POSTs body as JSON without reading the response."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", path, body=json.dumps(body).encode(),
                       headers={"Content-Type": "application/json", **(headers or {})})
    return connection


def open_stream(port: int, path: str, body: dict, headers: dict[str, str] | None = None
                ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = send(port, path, body, headers)
    return connection, connection.getresponse()


def hang_up(connection: http.client.HTTPConnection) -> None:
    """Closes the socket at once, as a client that goes away does."""
    connection.sock.close()
    connection.close()


def stream_lines(port: int, path: str, body: dict,
                 headers: dict[str, str] | None = None) -> list[str]:
    """The whole SSE stream of a 200 text/event-stream response, as its non-empty lines."""
    connection, response = open_stream(port, path, body, headers)
    try:
        assert response.status == 200, response.read()
        assert response.getheader("Content-Type") == "text/event-stream"
        return list(sse_lines(response))
    finally:
        connection.close()


def sse_lines(response: http.client.HTTPResponse):
    """Non-empty SSE lines as they arrive (data lines and comments)."""
    while line := response.readline():
        line = line.rstrip(b"\r\n")
        if line:
            yield line.decode()


def read_contents(lines: Iterator[str], count: int) -> None:
    """Reads SSE lines until `count` chat chunks carrying text have come."""
    seen = 0
    for line in lines:
        seen += '"content":"' in line and '"content":""' not in line
        if seen == count:
            return
    raise AssertionError(f"the stream ended before {count} chunks of text")
