"""Who a request comes from: the client's session, so the scheduler can share prefill fairly
between clients, and the protocol it speaks, for errors and metrics.

Claude Code names its session in X-Claude-Code-Session-Id on every request (its sub-agents share
it); other clients may send x-session-id. Without either, the API key stands for the client (hashed:
the scheduler never holds a key), and requests with no key share one anonymous session.
"""

import hashlib
from dataclasses import dataclass

from aiohttp import web

SESSION_HEADERS = ("X-Claude-Code-Session-Id", "x-session-id")
MAX_SESSION_ID = 200
ANTHROPIC_PREFIX = "/v1/messages"


@dataclass(frozen=True)
class Origin:
    session: str   # client_session's key; "" for anonymous clients
    protocol: str  # "anthropic" or "openai"


def request_origin(request: web.Request) -> Origin:
    return Origin(client_session(request), protocol_of(request.path))


def protocol_of(path: str) -> str:
    """/v1/messages* speaks Anthropic's protocol, the rest OpenAI's."""
    return "anthropic" if path.startswith(ANTHROPIC_PREFIX) else "openai"


def client_session(request: web.Request) -> str:
    for header in SESSION_HEADERS:
        value = request.headers.get(header, "").strip()
        if value:
            return f"{header.lower()}:{value[:MAX_SESSION_ID]}"
    key = supplied_api_key(request)
    if key:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return ""


def supplied_api_key(request: web.Request) -> str | None:
    """The key sent as 'Authorization: Bearer <key>' or in x-api-key."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key")
