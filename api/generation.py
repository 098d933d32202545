"""Submitting a request's choices to the engine, merging their deltas, and their usage."""

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from api.back_pressure import overloaded, queue_is_full
from api.choice import Choice
from api.model_context import ModelContext
from api.deltas import ChoiceDelta
from api.errors import APIError, bad_request
from api.sessions import Origin, salted
from api.text_stages import TextStages
from engine.sampling_params import SamplingParams
from scheduler.request import AbortCause

CLAMP_HEADER = "x-pagedmlx-max-tokens-clamped"


@dataclass(frozen=True)
class GenerationParams:
    """What every generating route shares. sampling.max_tokens is set once the prompt is known."""

    model: str | None
    n: int
    stream: bool
    include_usage: bool
    max_tokens: int | None
    stop: tuple[str, ...]
    ignore_eos: bool
    logprobs: int | None
    sampling: SamplingParams
    cache_salt: str | None = None  # the request's own (OpenAI's body field), beside its tenant's


class ContextLengthError(APIError):
    """The prompt leaves no room for output; each protocol words it its own way."""

    def __init__(self, prompt_tokens: int, limit: int, param: str) -> None:
        super().__init__(
            400, f"This model's maximum context length is {limit} tokens, but the prompt has "
            f"{prompt_tokens} tokens, which leaves no room for output", param=param,
            code="context_length_exceeded")
        self.prompt_tokens = prompt_tokens
        self.limit = limit


def resolve_max_tokens(ctx: ModelContext, params: GenerationParams, prompt_len: int,
                       prompt_param: str) -> tuple[int, str | None]:
    """The max_tokens to run with and, when it was clamped to the context, the header value."""
    limit = ctx.max_model_len
    room = limit - prompt_len
    if room <= 0:
        raise ContextLengthError(prompt_len, limit, prompt_param)
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
    origin: Origin


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


def submit_choices(ctx: ModelContext, request_id: str, prompts: list[list[int]],
                   params: GenerationParams, prompt_param: str,
                   make_stages: Callable[[], TextStages], origin: Origin,
                   constraints: Sequence[object] | None = None) -> Submission:
    """n choices per prompt (index = prompt * n + i), submitted to the engine. constraints: one
    per choice (compiled grammars), or None. Raises the protocol's overload error past
    --max-queue."""
    queued, sequences = ctx.engine.num_queued, len(prompts) * params.n
    if ctx.max_queue is not None and sequences > ctx.max_queue:  # waiting never makes room
        raise bad_request(f"The request asks for {sequences} sequences (prompts x n), more than "
                          f"the {ctx.max_queue} that may wait at once (--max-queue)", "n")
    if queue_is_full(queued, sequences, ctx.max_queue):
        ctx.metrics.count_queue_full()
        raise overloaded(queued, ctx.max_queue, origin.protocol)
    origin = salted(origin, params.cache_salt)
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
            constraint = constraints[len(choices)] if constraints else None
            choices.append(Choice(
                ctx, len(choices), f"{request_id}-{len(choices)}", prompt_ids,
                dataclasses.replace(sampling, seed=seed, constraint=constraint), make_stages(),
                origin))
    submitted = []
    try:
        for choice in choices:
            choice.submit()
            submitted.append(choice)
    except APIError:
        for choice in submitted:
            ctx.engine.abort(choice.request_id, cause=AbortCause.REJECTED)
        raise
    ctx.metrics.sessions.touch(origin.session)
    ctx.metrics.requests.observe_submitted(params.n)
    return Submission(request_id, prompts, choices, headers, origin)


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


def usage(submission: Submission) -> Usage:
    choices, prompts = submission.choices, submission.prompts
    # Each prompt is counted once, like OpenAI; cached tokens of its first choice.
    n = len(choices) // len(prompts)
    return Usage(
        prompt_tokens=sum(len(p) for p in prompts),
        cached_tokens=sum(choices[i * n].cached_tokens for i in range(len(prompts))),
        completion_tokens=sum(c.output_tokens for c in choices),
    )
