"""POST /v1/completions: a prompt string, strings, token ids or lists of token ids."""

import time
import uuid
from typing import Any

from aiohttp import web

from api.deltas import ChoiceDelta
from api.errors import bad_request
from api.generation import Usage, submit_choices
from api.openai.framing import OpenAIStream, openai_usage
from api.openai.logprobs import completion_logprobs
from api.json_body import read_json_body
from api.model_lease import Lease, with_model
from api.openai.validation import parse_completion_request
from api.responding import respond
from api.sessions import request_origin
from api.results import ChoiceResult
from api.text_stages import TextStages


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json_body(request)
    return await with_model(request, body, lambda lease: _complete(request, body, lease))


async def _complete(request: web.Request, body: Any, lease: Lease) -> web.StreamResponse:
    ctx = lease.ctx
    completion = parse_completion_request(body, ctx.vocab_size)
    prompts = await ctx.run_off_loop(tokenize_prompts, ctx.encode_tokenizer, completion.prompts)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    stop = completion.params.stop
    submission = submit_choices(ctx, request_id, prompts, completion.params, "prompt",
                                lambda: TextStages(stop), request_origin(request))
    n = completion.params.n
    echoes = [_prompt_text(ctx.tokenizer, completion.prompts[i // n]) if completion.echo else ""
              for i in range(len(submission.choices))]
    shape = CompletionShape(request_id, lease.model, ctx.tokenizer, echoes,
                            completion.params.include_usage)
    return await respond(request, ctx, submission, shape, completion.params.stream,
                         lease.events)


def tokenize_prompts(tokenizer: Any, prompts: list[str | list[int]]) -> list[list[int]]:
    token_lists = [tokenizer.encode(p) if isinstance(p, str) else p for p in prompts]
    for index, tokens in enumerate(token_lists):
        if not tokens:
            raise bad_request(f"Prompt {index} is empty", "prompt")
    return token_lists


def _prompt_text(tokenizer: Any, prompt: str | list[int]) -> str:
    if isinstance(prompt, str):
        return prompt
    return tokenizer.decode(prompt, clean_up_tokenization_spaces=False)


class CompletionShape(OpenAIStream):
    def __init__(self, request_id: str, model: str, tokenizer: Any, echoes: list[str],
                 include_usage: bool) -> None:
        self._head = {"id": request_id, "object": "text_completion", "created": int(time.time()),
                      "model": model}
        super().__init__(self._head, include_usage)
        self._tokenizer = tokenizer
        self._echoes = echoes
        self._text_lengths = [len(echo) for echo in echoes]   # for logprobs' text_offset

    def opening(self) -> list[bytes]:
        return [self._chunk([{"index": index, "text": echo, "logprobs": None,
                              "finish_reason": None}])
                for index, echo in enumerate(self._echoes) if echo]

    def frames(self, delta: ChoiceDelta) -> list[bytes]:
        if not (delta.text or delta.logprobs or delta.finish_reason):
            return []
        offset = self._text_lengths[delta.index]
        self._text_lengths[delta.index] += len(delta.text)
        return [self._chunk([{
            "index": delta.index,
            "text": delta.text,
            "logprobs": completion_logprobs(self._tokenizer, delta.logprobs, offset),
            "finish_reason": delta.finish_reason,
        }])]

    def body(self, results: list[ChoiceResult], usage: Usage) -> dict:
        return {**self._head, "choices": [
            {
                "index": index,
                "text": self._echoes[index] + result.text,
                "logprobs": completion_logprobs(self._tokenizer, result.logprobs,
                                                len(self._echoes[index])),
                "finish_reason": result.finish_reason,
            }
            for index, result in enumerate(results)
        ], "usage": openai_usage(usage)}
