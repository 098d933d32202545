"""What crosses from the engine thread to the asyncio side: token events, the per-request stream that
yields them, and the outbox that hands a step's events to each event loop in one call."""

import asyncio
import logging
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.request import Request, RequestTimings

log = logging.getLogger(__name__)


@dataclass
class TokenEvent:
    """One new token, or (token_id None) the request's acceptance or its end without a token.

    The acceptance event comes once, when the engine thread takes the request in (within a step
    of submit): its cached_tokens are the prefix tokens then cached or being computed by another
    request, what it will most likely read from the cache. Later events carry the real hit.
    """

    token_id: int | None  # None on the acceptance event and on a final event without a token
    logprob: float | None
    top_logprobs: list[tuple[int, float]] | None
    finish_reason: str | None  # None, "stop", "length", "abort", "error"
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    error: str | None = None
    timings: RequestTimings | None = None  # on the final event


FinishCallback = Callable[[TokenEvent], None]


@dataclass(eq=False)
class Subscriber:
    """Where one request's events go: a queue on an event loop, and an optional callback for the
    final event that runs even when nobody reads the queue any more (a stop string ended it)."""

    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    request: Request
    on_finish: FinishCallback | None = None

    def deliver(self, event: TokenEvent) -> None:
        """On its loop."""
        self.events.put_nowait(event)
        if event.finish_reason is not None and self.on_finish is not None:
            try:
                self.on_finish(event)
            except Exception:
                log.exception("the finish callback of request %s failed", self.request.request_id)


class Outbox:
    """A step's events, handed to each event loop with one call_soon_threadsafe."""

    def __init__(self) -> None:
        self._batches: dict[asyncio.AbstractEventLoop, list[tuple[Subscriber, TokenEvent]]] = defaultdict(list)

    def put(self, subscriber: Subscriber, event: TokenEvent) -> None:
        self._batches[subscriber.loop].append((subscriber, event))

    def flush(self) -> list[Request]:
        """Send everything; returns the unfinished requests whose event loop is closed."""
        orphans = []
        for loop, batch in self._batches.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, batch)
            except RuntimeError:  # the client's event loop is closed: nobody is listening
                orphans += [s.request for s, event in batch if event.finish_reason is None]
        self._batches.clear()
        return orphans


def _deliver_all(batch: list[tuple[Subscriber, TokenEvent]]) -> None:
    for subscriber, event in batch:
        subscriber.deliver(event)


class RequestStream:
    """Async iterator of one request's TokenEvents, ending after the one with a finish_reason.

    Leaving it early (aclose(), `async with` exit, a cancelled task, or dropping it) aborts the
    request. The abort only posts to the engine's inbox, so it is safe from a finalizer on any thread.
    """

    def __init__(self, request: Request, events: asyncio.Queue, abort: Callable[[str], None]) -> None:
        self.request_id = request.request_id
        self.max_tokens = request.max_tokens  # after clamping to the context
        self._events = events
        self._done = False
        self._abort_on_drop = weakref.finalize(self, abort, request.request_id)
        self._abort_on_drop.atexit = False

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            event = await self._events.get()
        except asyncio.CancelledError:
            self._close()
            raise
        if event.finish_reason is not None:
            self._done = True
            self._abort_on_drop.detach()
        return event

    async def aclose(self) -> None:
        self._close()

    async def __aenter__(self) -> "RequestStream":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close()

    def _close(self) -> None:
        if not self._done:
            self._done = True
            self._abort_on_drop()
