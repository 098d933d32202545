"""What OpenAI's two streaming shapes share: data frames, keep-alive comments, the usage chunk,
errors after the status line, and the [DONE] sentinel."""

from api.errors import APIError
from api.generation import Usage
from api.openai.errors import error_body
from api.sse import KEEPALIVE_COMMENT, data_frame

DONE = b"data: [DONE]\n\n"


def openai_usage(usage: Usage) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


class OpenAIStream:
    """chunk_head: the fields every chunk starts with (id, object, created, model)."""

    def __init__(self, chunk_head: dict, include_usage: bool) -> None:
        self._chunk_head = chunk_head
        self._include_usage = include_usage
        self._usage_field = {"usage": None} if include_usage else {}

    def _chunk(self, choices: list[dict]) -> bytes:
        return data_frame({**self._chunk_head, "choices": choices, **self._usage_field})

    def keepalive(self) -> list[bytes]:
        return [KEEPALIVE_COMMENT]

    def closing(self, usage: Usage) -> list[bytes]:
        if not self._include_usage:
            return [DONE]
        return [data_frame({**self._chunk_head, "choices": [], "usage": openai_usage(usage)}), DONE]

    def error(self, error: APIError) -> list[bytes]:
        return error_frames(error)


def error_frames(error: APIError) -> list[bytes]:
    """An error after the status line: OpenAI's error body as a data frame, then [DONE]."""
    return [data_frame(error_body(error)), DONE]
