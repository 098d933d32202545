"""GET /openapi.json: an OpenAPI 3.1 description of every route, its request bodies generated from
the request models (api/openai/schema.py, api/anthropic/schema.py) and its errors in the shape of
the route's protocol. Built once: nothing in it depends on the request or the settings."""

from collections.abc import Sequence
from functools import cache
from importlib import metadata
from typing import Any

from aiohttp import web
from pydantic.json_schema import models_json_schema

from api.anthropic.schema import MessagesRequest
from api.errors import json_response
from api.openai.schema import ChatCompletionRequest, CompletionRequest
from api.sessions import SESSION_HEADERS

REF = "#/components/schemas/{model}"
OPENAI_ERRORS = (400, 401, 404, 413, 429, 503)
ANTHROPIC_ERRORS = (400, 401, 404, 413, 503, 529)
ERROR_DESCRIPTIONS = {
    400: "The request is malformed or names a bad parameter",
    401: "Missing or incorrect API key (only with --api-key)",
    404: "Unknown route or model",
    413: "The body is over --max-body-mb",
    429: "Over --max-queue waiting requests; retry after Retry-After",
    503: "The server is shutting down or cannot take requests",
    529: "Overloaded (over --max-queue) or shutting down; retry after Retry-After",
}
OPTIONAL_KEY = [{"bearer": []}, {"x-api-key": []}, {}]  # {}: a key only with --api-key
_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}
BETA = {"name": "beta", "in": "query", "required": False, "schema": _STRING}  # Claude Code's
_ERROR_SCHEMAS = {
    "OpenAIError": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": _STRING, "type": _STRING, "param": _NULLABLE_STRING,
                           "code": _NULLABLE_STRING}}},
    },
    "AnthropicError": {
        "type": "object", "required": ["type", "error"],
        "properties": {"type": {"const": "error"}, "error": {
            "type": "object", "required": ["type", "message"],
            "properties": {"type": _STRING, "message": _STRING}}},
    },
}


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(openapi_document())


@cache
def openapi_document() -> dict[str, Any]:
    refs, definitions = models_json_schema(
        [(model, "validation") for model in (ChatCompletionRequest, CompletionRequest,
                                             MessagesRequest)], ref_template=REF)
    chat, completion, messages = (refs[(model, "validation")] for model in (
        ChatCompletionRequest, CompletionRequest, MessagesRequest))
    # count_tokens reads the same body with max_tokens optional; /v1/messages requires it.
    messages_with_max_tokens = {"allOf": [messages, {
        "required": ["max_tokens"], "properties": {"max_tokens": {"type": "integer"}}}]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "pagedmlx", "version": metadata.version("pagedmlx"),
                 "description": "OpenAI- and Anthropic-compatible LLM inference on MLX"},
        "paths": {
            "/v1/chat/completions": {"post": _generation(
                "Chat completion", chat, "a chat.completion", "chat.completion.chunk events",
                "OpenAIError", OPENAI_ERRORS)},
            "/v1/completions": {"post": _generation(
                "Text completion", completion, "a text_completion", "text_completion events",
                "OpenAIError", OPENAI_ERRORS)},
            "/v1/messages": {"post": _generation(
                "Anthropic Messages", messages_with_max_tokens, "a message",
                "Anthropic's message events", "AnthropicError", ANTHROPIC_ERRORS, [BETA])},
            "/v1/messages/count_tokens": {"post": _operation(
                "The prompt's size as /v1/messages renders it", _json_body(messages),
                {200: _json("the prompt's token count", {
                    "type": "object", "required": ["input_tokens"],
                    "properties": {"input_tokens": {"type": "integer"}}})},
                "AnthropicError", (400, 401, 413, 529), OPTIONAL_KEY, [BETA])},
            "/v1/models": {"get": _operation(
                "The served models", None,
                {200: _json("the served models, the default first, each with its state (loaded, "
                            "loading, unloaded, unloading), aliases and pin")},
                "OpenAIError", (401,), OPTIONAL_KEY)},
            "/v1/models/{model}": {"get": _operation(
                "One model", None, {200: _json("the model's card")}, "OpenAIError", (401, 404),
                OPTIONAL_KEY,
                [{"name": "model", "in": "path", "required": True, "schema": _STRING}])},
            "/": {"get": _operation("The server's name, models and endpoints", None,
                                    {200: _json("name, default model, models and endpoints")})},
            "/health": {"get": _operation(
                "Liveness and readiness", None,
                {200: _json("ok, with the running and waiting requests and the KV-cache blocks"),
                 503: _json("shutting down or unhealthy")})},
            "/version": {"get": _operation("Versions of pagedmlx, mlx and mlx-lm", None,
                                           {200: _json("the versions")})},
            "/metrics": {"get": _operation(
                "Prometheus metrics", None,
                {200: {"description": "Prometheus text format",
                       "content": {"text/plain": {"schema": _STRING}}}})},
            "/openapi.json": {"get": _operation("This document", None,
                                                {200: _json("OpenAPI 3.1")})},
        },
        "components": {
            "schemas": {**definitions["$defs"], **_ERROR_SCHEMAS},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


def _generation(summary: str, body: dict[str, Any], answer: str, events: str, error: str,
                statuses: tuple[int, ...], parameters: Sequence[dict[str, Any]] = ()
                ) -> dict[str, Any]:
    """A route that generates: JSON, or server-sent events with "stream": true."""
    sessions = [{"name": name, "in": "header", "required": False, "schema": _STRING,
                 "description": "names the client's session, for fair scheduling"}
                for name in SESSION_HEADERS]
    ok = {"description": f"{answer}; with \"stream\": true, {events}",
          "content": {"application/json": {"schema": {"type": "object"}},
                      "text/event-stream": {"schema": _STRING}}}
    return _operation(summary, _json_body(body), {200: ok}, error, statuses, OPTIONAL_KEY,
                      [*parameters, *sessions])


def _operation(summary: str, body: dict[str, Any] | None, responses: dict[int, dict],
               error: str | None = None, statuses: tuple[int, ...] = (),
               security: list[dict] | None = None, parameters: Sequence[dict[str, Any]] = ()
               ) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {
        **{str(status): response for status, response in responses.items()},
        **{str(status): {"description": ERROR_DESCRIPTIONS[status], "content": {
            "application/json": {"schema": {"$ref": REF.format(model=error)}}}}
           for status in statuses},
    }}
    if body is not None:
        operation["requestBody"] = body
    if parameters:
        operation["parameters"] = list(parameters)
    if security is not None:
        operation["security"] = security
    return operation


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": schema or {"type": "object"}}}}
