"""A generating route's hold on the model its body names, for the handler's whole response.

A streamed request whose model must load first gets its response opened at once and SSE keep-alive
comments while it waits, so that clients see it accepted; an error after that goes in the stream,
in the protocol's shape, as errors mid-stream already do."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from api.anthropic.stream import error_frames as anthropic_error_frames
from api.context import CONTEXT
from api.errors import APIError
from api.model_context import ModelContext
from api.openai.framing import error_frames as openai_error_frames
from api.sessions import protocol_of
from api.sse import KEEPALIVE_COMMENT, EventStream


@dataclass
class Lease:
    ctx: ModelContext
    model: str                   # the name to echo: the request's, or the model's own
    events: EventStream | None   # opened while the request waited for a load


Handler = Callable[[Lease], Awaitable[web.StreamResponse]]


def requested_model(body: Any) -> str | None:
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None  # a bad one is the schema's to report


async def with_model(request: web.Request, body: Any, handler: Handler) -> web.StreamResponse:
    requested = requested_model(body)
    streamed = isinstance(body, dict) and body.get("stream") is True
    early: EventStream | None = None

    async def waiting() -> None:
        nonlocal early
        if not streamed:
            return
        if early is None:
            early = EventStream(request)
            await early.open()
        else:
            await early.send([KEEPALIVE_COMMENT])

    async with request.app[CONTEXT].models.use(requested, waiting) as ctx:
        try:
            return await handler(Lease(ctx, requested or ctx.model_name, early))
        except APIError as error:
            if early is None:
                raise
            await early.send(_error_frames(request, error, ctx))
            await early.close()
            return early.response


def _error_frames(request: web.Request, error: APIError, ctx: ModelContext) -> list[bytes]:
    if protocol_of(request.path) == "anthropic":
        return anthropic_error_frames(error, ctx.claude_token_scale)
    return openai_error_frames(error)
