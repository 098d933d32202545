"""The aiohttp application: routes and the middlewares for errors, shutdown and auth.

Errors leave in the shape of the route's protocol: /v1/messages* speaks Anthropic's, the rest
OpenAI's.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from api.anthropic import errors as anthropic_errors
from api.anthropic.count_tokens import count_tokens
from api.anthropic.messages import messages
from api.api_keys import is_accepted, supplied_api_key
from api.context import CONTEXT, ServerContext
from api.errors import APIError, json_response
from api.generation import ContextLengthError
from api.model_context import claude_token_scale
from api.metrics import http_metrics_middleware, metrics_endpoint
from api.models import health, list_models, retrieve_model, root, version
from api.openai import errors as openai_errors
from api.openai.chat import chat_completions
from api.openai.completions import completions
from api.openapi import openapi_json
from api.request_ids import add_request_id_headers
from api.sessions import protocol_of

log = logging.getLogger("pagedmlx.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MB = 1024 * 1024
OPEN_PATHS = frozenset({"/health"})  # answered without an API key


def create_app(ctx: ServerContext) -> web.Application:
    app = web.Application(
        middlewares=[http_metrics_middleware, error_middleware, lifecycle_middleware,
                     auth_middleware],
        client_max_size=int(ctx.settings.max_body_mb * MB),
    )
    app[CONTEXT] = ctx
    app.on_response_prepare.append(add_request_id_headers)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", retrieve_model)
    app.router.add_get("/", root)  # HEAD / too: Claude Code 2.1.197 checks it first
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.json", openapi_json)
    return app


def error_response(request: web.Request, error: APIError) -> web.Response:
    settings = request.app[CONTEXT].settings
    if protocol_of(request.path) == "anthropic":
        scale = (claude_token_scale(settings, error.limit)
                 if isinstance(error, ContextLengthError) else 1.0)
        body: dict[str, Any] = anthropic_errors.error_body(error, scale)
    else:
        body = openai_errors.error_body(error)
    return json_response(body, status=error.status, headers=error.headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except APIError as error:
        return error_response(request, error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return error_response(request, _from_http_exception(request, error))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(request, APIError(500, "Internal server error",
                                                error_type="server_error"))


def _from_http_exception(request: web.Request, error: web.HTTPException) -> APIError:
    headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
    if error.status == 404:
        message = f"Unknown route: {request.method} {request.path}"
    elif error.status == 405:
        message = f"Method {request.method} is not allowed on {request.path}"
    elif error.status == 413:
        limit_mb = request.app[CONTEXT].settings.max_body_mb
        message = f"The request body is larger than the limit of {limit_mb:g} MB (--max-body-mb)"
    else:
        message = error.reason
    return APIError(error.status, message, headers=headers)


@web.middleware
async def lifecycle_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """While shutting down, new requests get 503 (529 overloaded_error on Anthropic's routes, which
    Claude Code retries); running ones are tracked for the grace period."""
    ctx = request.app[CONTEXT]
    if ctx.shutting_down and request.path != "/health":
        status = 529 if protocol_of(request.path) == "anthropic" else 503
        raise APIError(status, "The server is shutting down", code="shutting_down")
    task = asyncio.current_task()
    ctx.inflight.add(task)
    try:
        return await handler(request)
    finally:
        ctx.inflight.discard(task)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With --api-key or --api-key-file, every route needs a key as a bearer token or in x-api-key,
    but /health (for probes) and /metrics (for Prometheus, unless --metrics-require-key)."""
    ctx = request.app[CONTEXT]
    keys = ctx.api_keys
    open_paths = OPEN_PATHS if ctx.settings.metrics_require_key else OPEN_PATHS | {"/metrics"}
    if keys and request.path not in open_paths:
        supplied = supplied_api_key(request)
        if supplied is None:
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>' "
                           "or 'x-api-key: <key>'", code="invalid_api_key")
        if not is_accepted(supplied, keys):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key")
    return await handler(request)
