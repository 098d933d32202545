"""Every response names its request: `x-request-id` (OpenAI's header; Anthropic routes also get
`request-id`, theirs), the same id the access log and the request's log line carry, so that a
client's report can be found in the log. Prompt and output text are never logged."""

import uuid

from aiohttp import web

from api.sessions import protocol_of

HEADER = "x-request-id"
ANTHROPIC_HEADER = "request-id"
# aiohttp's access log: client, request line, status, bytes, seconds, request id.
ACCESS_LOG_FORMAT = f'%a "%r" %s %b %Tf s %{{{HEADER}}}o'


def request_id_of(request: web.Request) -> str:
    """This request's id, made on first use."""
    if HEADER not in request:
        request[HEADER] = f"req_{uuid.uuid4().hex}"
    return request[HEADER]


async def add_request_id_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: before the status line goes out, streamed responses included."""
    request_id = request_id_of(request)
    response.headers[HEADER] = request_id
    if protocol_of(request.path) == "anthropic":
        response.headers[ANTHROPIC_HEADER] = request_id
