"""Server-sent events: `data: {json}` chunks, `data: [DONE]`, and `: keep-alive` comments."""

from typing import Any

import orjson
from aiohttp import web

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


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

    async def send(self, payload: Any) -> None:
        await self.response.write(b"data: " + orjson.dumps(payload) + b"\n\n")

    async def keepalive(self) -> None:
        await self.response.write(KEEPALIVE)

    async def close(self) -> None:
        await self.response.write(DONE)
        await self.response.write_eof()
