"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

from typing import Any

from api.errors import APIError

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
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
