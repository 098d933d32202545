"""Errors in the Anthropic shape: {"type": "error", "error": {"type", "message"}}, with
Anthropic's types per status; a prompt over the context in the wording Claude Code acts on."""

from typing import Any

from api.errors import SHARED_ERROR_TYPES, APIError
from api.generation import ContextLengthError

_TYPE_BY_STATUS = {
    **SHARED_ERROR_TYPES,
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(error: APIError, token_scale: float = 1.0) -> dict[str, Any]:
    """token_scale: --claude-context-scale's factor, applied to the token counts we report."""
    message = error.message
    if isinstance(error, ContextLengthError):
        message = (f"prompt is too long: {round(error.prompt_tokens * token_scale)} tokens > "
                   f"{round(error.limit * token_scale)} maximum")
    return {"type": "error",
            "error": {"type": _TYPE_BY_STATUS.get(error.status, "api_error"), "message": message}}
