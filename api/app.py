"""The aiohttp application: routes and the middlewares for errors, shutdown and auth."""

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from api.chat import chat_completions
from api.completions import completions
from api.context import CONTEXT, ServerContext
from api.errors import APIError
from api.metrics import metrics_endpoint
from api.models import health, list_models, retrieve_model, version

log = logging.getLogger("pagedmlx.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MB = 1024 * 1024


def create_app(ctx: ServerContext) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, lifecycle_middleware, auth_middleware],
        client_max_size=int(ctx.settings.max_body_mb * MB),
    )
    app[CONTEXT] = ctx
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", retrieve_model)
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves in the OpenAI shape."""
    try:
        return await handler(request)
    except APIError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _from_http_exception(request, error).response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return APIError(500, "Internal server error", error_type="server_error").response()


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
    """While shutting down, new requests get 503; running ones are tracked for the grace period."""
    ctx = request.app[CONTEXT]
    if ctx.shutting_down and request.path != "/health":
        raise APIError(503, "The server is shutting down", code="shutting_down")
    task = asyncio.current_task()
    ctx.inflight.add(task)
    try:
        return await handler(request)
    finally:
        ctx.inflight.discard(task)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With --api-key, /v1/* needs it as a bearer token or in x-api-key; the rest stays open."""
    key = request.app[CONTEXT].settings.api_key
    if key and request.path.startswith("/v1/"):
        supplied = _supplied_key(request)
        if supplied is None:
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
        if not hmac.compare_digest(supplied.encode(), key.encode()):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key")
    return await handler(request)


def _supplied_key(request: web.Request) -> str | None:
    authorization = request.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key")
