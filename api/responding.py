"""Drives submitted choices to a response: an SSE stream or one JSON body.

The protocol's shape (OpenAI chat, completions, Anthropic messages) turns deltas into frames
and results into a body; this module owns the flow: keep-alives, usage, errors after the status
line, and aborting the requests however the handler ends (finished, stop string, client gone,
server stopping).
"""

import asyncio
import contextlib
import logging
from typing import Protocol

from aiohttp import web

from api.deltas import ChoiceDelta
from api.errors import APIError, json_response
from api.model_context import ModelContext
from api.generation import Submission, Usage, merged_deltas, usage
from api.prompt_log import log_exchange
from api.request_ids import request_id_of
from api.results import ChoiceResult
from api.sse import EventStream

log = logging.getLogger("pagedmlx.api")


class ResponseShape(Protocol):
    def opening(self) -> list[bytes]: ...
    def frames(self, delta: ChoiceDelta) -> list[bytes]: ...
    def keepalive(self) -> list[bytes]: ...
    def closing(self, usage: Usage) -> list[bytes]: ...
    def error(self, error: APIError) -> list[bytes]: ...
    def body(self, results: list[ChoiceResult], usage: Usage) -> dict: ...


async def respond(request: web.Request, ctx: ModelContext, submission: Submission,
                  shape: ResponseShape, stream: bool,
                  events: EventStream | None = None) -> web.StreamResponse:
    """events: the stream, when it was opened already (while the model loaded)."""
    try:
        if stream:
            return await _stream(request, ctx, submission, shape, events)
        results = await _collect(submission)
        return json_response(shape.body(results, usage(submission)), headers=submission.headers)
    except asyncio.CancelledError:
        log.info("%s: cancelled (client disconnected or server stopping); aborted",
                 submission.request_id)
        raise
    finally:
        for choice in submission.choices:
            await choice.close()
        _count_tool_calls(ctx, submission)
        if ctx.settings.log_prompts:
            log_exchange(ctx, submission)
        figures = usage(submission)
        ttft = submission.choices[0].ttft_s
        log.info("%s (%s): %d prompt tokens (%d cached), %d generated, first token after %s, "
                 "session %s", submission.request_id, request_id_of(request),
                 figures.prompt_tokens, figures.cached_tokens,
                 figures.completion_tokens, "-" if ttft is None else f"{ttft:.2f} s",
                 submission.origin.session or "anonymous")


async def _collect(submission: Submission) -> list[ChoiceResult]:
    results = [ChoiceResult() for _ in submission.choices]
    async with contextlib.aclosing(merged_deltas(submission.choices)) as deltas:
        async for delta in deltas:
            results[delta.index].add(delta)
    for result in results:
        result.settle_broken_calls()
    return results


async def _stream(request: web.Request, ctx: ModelContext, submission: Submission,
                  shape: ResponseShape, events: EventStream | None) -> web.StreamResponse:
    if events is None:
        events = EventStream(request, submission.headers)
    try:
        if not events.response.prepared:
            await events.open()
        await events.send(shape.opening())
        keepalive_s = ctx.settings.keepalive_s
        async with contextlib.aclosing(merged_deltas(submission.choices, keepalive_s)) as deltas:
            try:
                async for delta in deltas:
                    await events.send(shape.keepalive() if delta is None else shape.frames(delta))
            except APIError as error:  # the status line is already out: report it in the stream
                await events.send(shape.error(error))
                await events.close()
                return events.response
        await events.send(shape.closing(usage(submission)))
        await events.close()
    except ConnectionError:
        log.info("%s: client disconnected mid-stream; aborted", submission.request_id)
    return events.response


def _count_tool_calls(ctx: ModelContext, submission: Submission) -> None:
    for choice in submission.choices:
        ctx.metrics.count_tool_calls(choice.stages.num_calls, choice.stages.num_broken_calls)
