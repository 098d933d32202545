"""Drives submitted choices to a response: an SSE stream or one JSON body.

The shape object (chat or completions) formats the chunks and the body; this module owns
the flow: keep-alives, usage, [DONE], and aborting the requests however the handler ends
(finished, stop string, client gone, server stopping).
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from api.context import ServerContext
from api.errors import APIError, json_response
from api.generation import ChoiceDelta, Submission, TokenLogprob, merged_deltas, usage
from api.sse import EventStream

log = logging.getLogger("pagedmlx.api")


@dataclass
class ChoiceResult:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


class ResponseShape(Protocol):
    def opening_chunks(self) -> Iterable[dict]: ...
    def chunk(self, delta: ChoiceDelta) -> dict: ...
    def usage_chunk(self, usage: dict) -> dict: ...
    def body(self, results: list[ChoiceResult], usage: dict) -> dict: ...


async def respond(request: web.Request, ctx: ServerContext, submission: Submission,
                  shape: ResponseShape, stream: bool, include_usage: bool) -> web.StreamResponse:
    try:
        if stream:
            return await _stream(request, ctx, submission, shape, include_usage)
        return json_response(shape.body(await _collect(submission), usage(submission)),
                             headers=submission.headers)
    except asyncio.CancelledError:
        log.info("%s: cancelled (client disconnected or server stopping); aborted",
                 submission.request_id)
        raise
    finally:
        for choice in submission.choices:
            await choice.close()


async def _collect(submission: Submission) -> list[ChoiceResult]:
    results = [ChoiceResult() for _ in submission.choices]
    async with contextlib.aclosing(merged_deltas(submission.choices)) as deltas:
        async for delta in deltas:
            result = results[delta.index]
            result.text += delta.text
            result.logprobs += delta.logprobs
            result.finish_reason = delta.finish_reason or result.finish_reason
    return results


async def _stream(request: web.Request, ctx: ServerContext, submission: Submission,
                  shape: ResponseShape, include_usage: bool) -> web.StreamResponse:
    events = EventStream(request, submission.headers)
    try:
        await events.open()
        for chunk in shape.opening_chunks():
            await events.send(chunk)
        keepalive_s = ctx.settings.keepalive_s
        async with contextlib.aclosing(merged_deltas(submission.choices, keepalive_s)) as deltas:
            try:
                async for delta in deltas:
                    if delta is None:
                        await events.keepalive()
                    else:
                        await events.send(shape.chunk(delta))
            except APIError as error:  # the status line is already out: report it in the stream
                await events.send(error.body())
                await events.close()
                return events.response
        if include_usage:
            await events.send(shape.usage_chunk(usage(submission)))
        await events.close()
    except ConnectionError:
        log.info("%s: client disconnected mid-stream; aborted", submission.request_id)
    return events.response
