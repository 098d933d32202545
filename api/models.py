"""GET (and HEAD) /, GET /v1/models, /v1/models/{model}, /health and /version."""

from importlib import metadata

from aiohttp import web

from api.context import CONTEXT, ServerContext
from api.errors import APIError, json_response


def _model_card(ctx: ServerContext) -> dict:
    return {
        "id": ctx.model_name,
        "object": "model",
        "created": int(ctx.started_at),
        "owned_by": "pagedmlx",
        "max_model_len": ctx.max_model_len,
    }


async def list_models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": [_model_card(request.app[CONTEXT])]})


async def retrieve_model(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    name = request.match_info["model"]
    if name != ctx.model_name:
        raise APIError(404, f"The model '{name}' does not exist; this server serves "
                       f"'{ctx.model_name}'", param="model", code="model_not_found")
    return json_response(_model_card(ctx))


async def root(request: web.Request) -> web.Response:
    """What a client probing the base URL gets (Claude Code 2.1.197 sends HEAD / first)."""
    ctx = request.app[CONTEXT]
    return json_response({"name": "pagedmlx", "model": ctx.model_name,
                          "endpoints": ["/v1/chat/completions", "/v1/completions", "/v1/messages",
                                        "/v1/messages/count_tokens", "/v1/models", "/health",
                                        "/metrics", "/openapi.json"]})


async def health(request: web.Request) -> web.Response:
    """Liveness and readiness: the port opens only once the model is loaded."""
    ctx = request.app[CONTEXT]
    if ctx.shutting_down:
        return json_response({"status": "shutting_down", "model_loaded": True}, status=503)
    problem = ctx.engine.health()
    if problem is not None:
        return json_response({"status": "unhealthy", "model_loaded": True, "reason": problem},
                             status=503)
    stats = ctx.engine.stats
    return json_response({
        "status": "ok",
        "model_loaded": True,
        "model": ctx.model_name,
        "num_requests_running": stats.num_running,
        "num_requests_waiting": stats.num_waiting,
        "kv_cache_free_blocks": stats.num_free_blocks,
        "kv_cache_blocks": stats.num_blocks,
    })


async def version(request: web.Request) -> web.Response:
    return json_response({"version": _version_of("pagedmlx"), "mlx": _version_of("mlx"),
                          "mlx_lm": _version_of("mlx-lm")})


def _version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
