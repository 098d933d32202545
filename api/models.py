"""GET (and HEAD) /, GET /v1/models, /v1/models/{model}, /health and /version."""

from importlib import metadata

from aiohttp import web

from api.context import CONTEXT, ServerContext
from api.model_set import ModelEntry
from api.errors import json_response


def _model_card(server: ServerContext, entry: ModelEntry) -> dict:
    card = {
        "id": entry.name,
        "object": "model",
        "created": int(server.started_at),
        "owned_by": "pagedmlx",
        "max_model_len": entry.config.settings.max_model_len,
    }
    return {**card, **server.models.describe(entry)}


async def list_models(request: web.Request) -> web.Response:
    """The default model first (`pagedmlx claude-env` makes it Claude Code's main model)."""
    server = request.app[CONTEXT]
    entries = sorted(server.models.entries(), key=lambda e: e.name != server.models.default)
    return json_response({"object": "list", "data": [_model_card(server, e) for e in entries]})


async def retrieve_model(request: web.Request) -> web.Response:
    server = request.app[CONTEXT]
    return json_response(_model_card(server, server.models.named(request.match_info["model"])))


async def root(request: web.Request) -> web.Response:
    """What a client probing the base URL gets (Claude Code 2.1.197 sends HEAD / first)."""
    server = request.app[CONTEXT]
    return json_response({"name": "pagedmlx", "model": server.models.default,
                          "models": [entry.name for entry in server.models.entries()],
                          "endpoints": ["/v1/chat/completions", "/v1/completions", "/v1/messages",
                                        "/v1/messages/count_tokens", "/v1/models", "/health",
                                        "/metrics", "/openapi.json"]})


async def health(request: web.Request) -> web.Response:
    """Liveness and readiness: the port opens only once the default model is loaded. The totals
    are over the loaded models; `models` has each one's state."""
    server = request.app[CONTEXT]
    models = server.models
    default_loaded = any(entry.name == models.default for entry, _ in models.loaded())
    if server.shutting_down:
        return json_response({"status": "shutting_down", "model_loaded": default_loaded},
                             status=503)
    for entry, ctx in models.loaded():
        problem = ctx.engine.health()
        if problem is not None:
            return json_response({"status": "unhealthy", "model_loaded": default_loaded,
                                  "reason": f"model {entry.name}: {problem}"}, status=503)
    per_model = []
    for entry in models.entries():
        row: dict = {"name": entry.name, "state": entry.state, "pinned": entry.config.pinned}
        if entry.built is not None:
            stats = entry.built.ctx.engine.stats
            row.update(num_requests_running=stats.num_running,
                       num_requests_waiting=stats.num_waiting,
                       kv_cache_free_blocks=stats.num_free_blocks, kv_cache_blocks=stats.num_blocks)
        per_model.append(row)
    totals = {key: sum(row.get(key, 0) for row in per_model)
              for key in ("num_requests_running", "num_requests_waiting",
                          "kv_cache_free_blocks", "kv_cache_blocks")}
    return json_response({"status": "ok", "model_loaded": default_loaded,
                          "model": models.default, **totals, "models": per_model,
                          "memory_budget_bytes": models.budget_bytes})


async def version(request: web.Request) -> web.Response:
    return json_response({"version": _version_of("pagedmlx"), "mlx": _version_of("mlx"),
                          "mlx_lm": _version_of("mlx-lm")})


def _version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
