"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

from typing import Any

from api.errors import SHARED_ERROR_TYPES, APIError

_TYPE_BY_STATUS = {
    **SHARED_ERROR_TYPES,
    413: "invalid_request_error",
    503: "service_unavailable_error",
}


def error_body(error: APIError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.error_type or _TYPE_BY_STATUS.get(error.status, "server_error"),
            "param": error.param,
            "code": error.code,
        }
    }
