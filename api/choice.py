"""One continuation of one prompt: its request in the engine, and the shared pipeline from the
engine's token events to typed deltas (detokenizer -> text stages -> parts)."""

import time
from collections.abc import AsyncIterator

from api.model_context import ModelContext
from api.deltas import ChoiceDelta, TokenLogprob
from api.detokenizer import incremental_detokenizer
from api.errors import APIError, bad_request
from api.sessions import Origin
from api.text_stages import TextStages
from engine.sampling_params import SamplingParams
from scheduler.engine_loop import (AbortCause, EngineUnavailable, RequestRejected, RequestStream,
                                   TokenEvent)


class Choice:
    def __init__(self, ctx: ModelContext, index: int, request_id: str, prompt_ids: list[int],
                 sampling: SamplingParams, stages: TextStages, origin: Origin) -> None:
        self.index = index
        self.request_id = request_id
        self.cached_tokens = 0
        self.output_tokens = 0
        self.output_text = ""  # kept for --log-prompts only
        self.accepted = False  # the engine has taken it in: cached_tokens holds its expected hit
        self.ttft_s: float | None = None  # arrival to first token, once finished
        self.stages = stages
        self._ctx = ctx
        self._prompt_ids = prompt_ids
        self._sampling = sampling
        self._origin = origin
        self._stop_token_ids = set(sampling.stop_token_ids)
        self._detokenizer = incremental_detokenizer(ctx.tokenizer, prompt_ids)
        self._stream: RequestStream | None = None
        self._keep_text = ctx.settings.log_prompts

    def submit(self) -> None:
        """Raises APIError: 400 when the engine can never fit the request, 503 when it takes none."""
        try:
            self._stream = self._ctx.engine.submit(
                self._prompt_ids, self._sampling, request_id=self.request_id,
                cache_salt=self._origin.cache_salt, session=self._origin.session,
                on_finish=self._observe_finish)
        except RequestRejected as error:
            raise bad_request(str(error), code="request_rejected") from None
        except EngineUnavailable as error:
            raise APIError(503, f"The server cannot take requests: {error}",
                           error_type="server_error", code="engine_unavailable") from None

    async def deltas(self) -> AsyncIterator[ChoiceDelta]:
        """Deltas until this choice finishes (the first, empty, once the engine has accepted the
        request); leaving early aborts the request in the engine."""
        last_token_at = None
        async for event in self._stream:
            delta = ChoiceDelta(self.index)
            self.cached_tokens = event.cached_tokens
            if not self.accepted:
                self.accepted = True
                yield ChoiceDelta(self.index)
            text = ""
            if event.token_id is not None:
                now = time.monotonic()
                if last_token_at is not None:
                    self._ctx.metrics.requests.observe_inter_token(now - last_token_at)
                last_token_at = now
                self.output_tokens += 1
                if event.token_id not in self._stop_token_ids:
                    text = self._kept(self._detokenizer.add(event.token_id))
                if event.logprob is not None:
                    delta.logprobs.append(TokenLogprob(
                        event.token_id, event.logprob, event.top_logprobs or []))
            delta.parts, stopped = self.stages.feed(text)
            if stopped:
                self._ctx.engine.abort(self.request_id, "stop", AbortCause.STOP_STRING)
                delta.parts += self.stages.finish(stopped=True)
                yield self._finished(delta, "stop")
                return
            if event.finish_reason is not None:
                self._finish(event)
                tail, stopped = self.stages.feed(self._kept(self._detokenizer.flush()))
                delta.parts += tail + self.stages.finish(stopped)
                yield self._finished(delta, "stop" if stopped else event.finish_reason)
                return
            if delta.parts or delta.logprobs:
                yield delta

    def _kept(self, text: str) -> str:
        if self._keep_text:
            self.output_text += text
        return text

    def _finished(self, delta: ChoiceDelta, reason: str) -> ChoiceDelta:
        delta.stop_sequence = self.stages.stop_sequence
        if reason == "stop" and delta.stop_sequence is None and self.stages.num_calls:
            reason = "tool_calls"
        delta.finish_reason = reason
        return delta

    async def close(self) -> None:
        """Leaves the engine's stream: aborts the request unless it already finished."""
        if self._stream is not None:
            await self._stream.aclose()

    def _finish(self, event: TokenEvent) -> None:
        if event.finish_reason == "error":
            status = 500 if self._ctx.engine.health() is None else 503
            raise APIError(status, f"The engine failed on this request: {event.error}",
                           error_type="server_error")
        self.output_tokens = event.output_tokens
        timings = event.timings
        if timings is not None and timings.first_token is not None:
            self.ttft_s = timings.first_token - timings.arrival

    def _observe_finish(self, event: TokenEvent) -> None:
        """Every finish, a stop string's too (its final event comes after the stream was left)."""
        self._ctx.metrics.requests.observe_finished(
            event, self._sampling.max_tokens, self._origin.protocol)
