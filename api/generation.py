"""Engine token events -> text deltas, for one choice or several merged (chat and completions)."""

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from api.context import ServerContext
from api.detokenizer import IncrementalDetokenizer
from api.errors import APIError, bad_request
from api.stop_strings import StopStringMatcher
from api.validation import GenerationParams
from engine.sampling_params import SamplingParams
from scheduler.engine_loop import RequestRejected, RequestStream, TokenEvent

CLAMP_HEADER = "x-pagedmlx-max-tokens-clamped"


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class ChoiceDelta:
    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


class Choice:
    """One continuation of one prompt: a request in the engine, its detokenizer and stop strings."""

    def __init__(self, ctx: ServerContext, index: int, request_id: str,
                 prompt_ids: list[int], sampling: SamplingParams, stop: Sequence[str]) -> None:
        self.index = index
        self.request_id = request_id
        self.cached_tokens = 0
        self.output_tokens = 0
        self._ctx = ctx
        self._prompt_ids = prompt_ids
        self._sampling = sampling
        self._stop_token_ids = set(sampling.stop_token_ids)
        self._detokenizer = IncrementalDetokenizer(ctx.tokenizer, prompt_ids)
        self._stop_strings = StopStringMatcher(stop)
        self._stream: RequestStream | None = None

    def submit(self) -> None:
        """Raises APIError(400) when the engine can never fit the request."""
        try:
            self._stream = self._ctx.engine.submit(
                self._prompt_ids, self._sampling, request_id=self.request_id)
        except RequestRejected as error:
            raise bad_request(str(error), code="request_rejected") from None

    async def deltas(self) -> AsyncIterator[ChoiceDelta]:
        """Deltas until this choice finishes; leaving early aborts the request in the engine."""
        last_token_at = None
        async for event in self._stream:
            now = time.monotonic()
            delta = ChoiceDelta(self.index)
            text = ""
            if event.token_id is not None:
                if last_token_at is not None:
                    self._ctx.metrics.observe_inter_token(now - last_token_at)
                last_token_at = now
                self.output_tokens += 1
                if event.token_id not in self._stop_token_ids:
                    text = self._detokenizer.add(event.token_id)
                if event.logprob is not None:
                    delta.logprobs.append(TokenLogprob(
                        event.token_id, event.logprob, event.top_logprobs or []))
            self.cached_tokens = event.cached_tokens
            delta.text, stopped = self._stop_strings.feed(text)
            if stopped:
                self._ctx.engine.abort(self.request_id, "stop")
                delta.finish_reason = "stop"
                yield delta
                return
            if event.finish_reason is not None:
                self._finish(event)
                tail, stopped = self._stop_strings.feed(self._detokenizer.flush())
                delta.text += tail if stopped else tail + self._stop_strings.flush()
                delta.finish_reason = "stop" if stopped else event.finish_reason
            if delta.text or delta.logprobs or delta.finish_reason:
                yield delta
            if event.finish_reason is not None:
                return

    async def close(self) -> None:
        """Leaves the engine's stream: aborts the request unless it already finished."""
        if self._stream is not None:
            await self._stream.aclose()

    def _finish(self, event: TokenEvent) -> None:
        if event.finish_reason == "error":
            raise APIError(500, f"The engine failed on this request: {event.error}",
                           error_type="server_error")
        self.output_tokens = event.output_tokens
        self._ctx.metrics.observe_finished(event.timings, event.prompt_tokens, event.output_tokens)


def resolve_max_tokens(ctx: ServerContext, params: GenerationParams, prompt_len: int,
                       prompt_param: str) -> tuple[int, str | None]:
    """The max_tokens to run with and, when it was clamped to the context, the header value."""
    limit = ctx.max_model_len
    room = limit - prompt_len
    if room <= 0:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens, but the prompt has "
            f"{prompt_len} tokens, which leaves no room for output", prompt_param,
            code="context_length_exceeded")
    wanted = params.max_tokens or ctx.settings.default_max_tokens or room
    if wanted <= room:
        return wanted, None
    if params.max_tokens is not None and ctx.settings.strict_max_tokens:
        raise bad_request(
            f"max_tokens is {wanted}, but this model's maximum context length is {limit} tokens "
            f"and the prompt has {prompt_len}, which leaves {room}", "max_tokens",
            code="context_length_exceeded")
    return room, f"{wanted}->{room}"


@dataclass
class Submission:
    request_id: str
    prompts: list[list[int]]
    choices: list[Choice]
    headers: dict[str, str]     # response headers (the max_tokens clamp)


def submit_choices(ctx: ServerContext, request_id: str, prompts: list[list[int]],
                   params: GenerationParams, prompt_param: str) -> Submission:
    """n choices per prompt (index = prompt * n + i), submitted to the engine."""
    headers: dict[str, str] = {}
    stop_ids = () if params.ignore_eos else ctx.eos_token_ids
    choices = []
    for prompt_ids in prompts:
        max_tokens, clamped = resolve_max_tokens(ctx, params, len(prompt_ids), prompt_param)
        if clamped:
            headers[CLAMP_HEADER] = clamped
        sampling = dataclasses.replace(
            params.sampling, max_tokens=max_tokens,
            stop_token_ids=tuple(dict.fromkeys(params.sampling.stop_token_ids + stop_ids)))
        for i in range(params.n):
            # Like vLLM, sibling choices get distinct seeds so they do not repeat each other.
            seed = None if sampling.seed is None else sampling.seed + i
            choices.append(Choice(ctx, len(choices), f"{request_id}-{len(choices)}", prompt_ids,
                                  dataclasses.replace(sampling, seed=seed), params.stop))
    submitted = []
    try:
        for choice in choices:
            choice.submit()
            submitted.append(choice)
    except APIError:
        for choice in submitted:
            ctx.engine.abort(choice.request_id)
        raise
    return Submission(request_id, prompts, choices, headers)


async def merged_deltas(choices: list[Choice],
                        keepalive_s: float | None = None) -> AsyncIterator[ChoiceDelta | None]:
    """The deltas of all choices as they come; None after each keepalive_s of silence."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(choice: Choice) -> None:
        try:
            async for delta in choice.deltas():
                queue.put_nowait(delta)
            queue.put_nowait(done)
        except Exception as error:  # handed to the consumer, which re-raises it
            queue.put_nowait(error)

    tasks = [asyncio.create_task(pump(choice)) for choice in choices]
    try:
        remaining = len(tasks)
        while remaining:
            try:
                item = await asyncio.wait_for(queue.get(), keepalive_s)
            except asyncio.TimeoutError:
                yield None
                continue
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def usage(submission: Submission) -> dict:
    choices, prompts = submission.choices, submission.prompts
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(c.output_tokens for c in choices)
    # Each prompt is counted once, like OpenAI; cached tokens of its first choice.
    n = len(choices) // len(prompts)
    cached = sum(choices[i * n].cached_tokens for i in range(len(prompts)))
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
