"""Server-sent events: the response, `data:` frames (OpenAI), `event:` + `data:` frames
(Anthropic) and `:` comments (keep-alives)."""

from typing import Any

import orjson
from aiohttp import web

KEEPALIVE_COMMENT = b": keep-alive\n\n"


def data_frame(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def event_frame(event: str, payload: Any) -> bytes:
    return b"event: " + event.encode() + b"\n" + data_frame(payload)


class EventStream:
    def __init__(self, request: web.Request, headers: dict[str, str] | None = None) -> None:
        self._request = request
        self.response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **(headers or {}),
        })

    async def open(self) -> None:
        """Sends the status and headers at once, so the client knows it was accepted."""
        await self.response.prepare(self._request)

    async def send(self, frames: list[bytes]) -> None:
        if frames:
            await self.response.write(b"".join(frames))

    async def close(self) -> None:
        await self.response.write_eof()
