"""Who a request comes from: the client's session, so the scheduler can share prefill fairly
between clients, and the protocol it speaks, for errors and metrics.

Claude Code names its session in X-Claude-Code-Session-Id on every request (its sub-agents share
it); other clients may send x-session-id. Without either, the API key stands for the client (hashed:
the scheduler never holds a key), and requests with no key share one anonymous session.
"""

from dataclasses import dataclass, replace

from aiohttp import web

from api.api_keys import key_digest, supplied_api_key
from api.context import CONTEXT

SESSION_HEADERS = ("X-Claude-Code-Session-Id", "x-session-id")
MAX_SESSION_ID = 200
ANTHROPIC_PREFIX = "/v1/messages"


@dataclass(frozen=True)
class Origin:
    session: str   # client_session's key; "" for anonymous clients
    protocol: str  # "anthropic" or "openai"
    cache_salt: str | None = None  # the tenant's, under API keys: its prefix cache is its own


def request_origin(request: web.Request) -> Origin:
    """Under API keys each key is a tenant (api.api_keys), with a cache salt of its own."""
    key = supplied_api_key(request) if request.app[CONTEXT].api_keys else None
    salt = "tenant:" + key_digest(key) if key else None
    return Origin(client_session(request), protocol_of(request.path), salt)


def salted(origin: Origin, request_salt: str | None) -> Origin:
    """The origin with a request's own cache salt added to its tenant's."""
    if request_salt is None:
        return origin
    return replace(origin, cache_salt=f"{origin.cache_salt or ''}|request:{request_salt}")


def protocol_of(path: str) -> str:
    """/v1/messages* speaks Anthropic's protocol, the rest OpenAI's."""
    return "anthropic" if path.startswith(ANTHROPIC_PREFIX) else "openai"


def client_session(request: web.Request) -> str:
    for header in SESSION_HEADERS:
        value = request.headers.get(header, "").strip()
        if value:
            return f"{header.lower()}:{value[:MAX_SESSION_ID]}"
    key = supplied_api_key(request)
    return "key:" + key_digest(key) if key else ""
