"""Reading a request body as one JSON object, with a clear 400 for anything else."""

from typing import Any

import orjson
from aiohttp import web

from api.errors import bad_request


async def read_json_body(request: web.Request) -> dict[str, Any]:
    content_type = request.headers.get("Content-Type")
    if content_type is not None and not _is_json(request.content_type):
        raise bad_request(
            f"Content-Type must be application/json, got {content_type!r}", code="invalid_content_type"
        )
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise bad_request(f"The request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object", code="invalid_json")
    return body


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")
