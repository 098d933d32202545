"""POST /v1/completions: a prompt string, strings, token ids or lists of token ids."""

import time
import uuid
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from api.context import CONTEXT
from api.errors import bad_request
from api.generation import ChoiceDelta, submit_choices
from api.logprobs import completion_logprobs
from api.responding import ChoiceResult, respond
from api.validation import parse_completion_request, read_json_body


async def completions(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    completion = parse_completion_request(await read_json_body(request), ctx.vocab_size)
    model = ctx.check_model_name(completion.params.model)
    prompts = await ctx.run_off_loop(tokenize_prompts, ctx.tokenizer, completion.prompts)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    submission = submit_choices(ctx, request_id, prompts, completion.params, "prompt")
    n = completion.params.n
    echoes = [_prompt_text(ctx.tokenizer, completion.prompts[i // n]) if completion.echo else ""
              for i in range(len(submission.choices))]
    shape = CompletionShape(request_id, model, ctx.tokenizer, echoes,
                            completion.params.include_usage)
    return await respond(request, ctx, submission, shape, completion.params.stream,
                         completion.params.include_usage)


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


class CompletionShape:
    def __init__(self, request_id: str, model: str, tokenizer: Any, echoes: list[str],
                 include_usage: bool) -> None:
        self._head = {"id": request_id, "object": "text_completion", "created": int(time.time()),
                      "model": model}
        self._tokenizer = tokenizer
        self._echoes = echoes
        self._text_lengths = [len(echo) for echo in echoes]   # for logprobs' text_offset
        self._usage_field = {"usage": None} if include_usage else {}

    def _chunk(self, choices: list[dict]) -> dict:
        return {**self._head, "choices": choices, **self._usage_field}

    def opening_chunks(self) -> Iterable[dict]:
        for index, echo in enumerate(self._echoes):
            if echo:
                yield self._chunk([{"index": index, "text": echo, "logprobs": None,
                                    "finish_reason": None}])

    def chunk(self, delta: ChoiceDelta) -> dict:
        offset = self._text_lengths[delta.index]
        self._text_lengths[delta.index] += len(delta.text)
        return self._chunk([{
            "index": delta.index,
            "text": delta.text,
            "logprobs": completion_logprobs(self._tokenizer, delta.logprobs, offset),
            "finish_reason": delta.finish_reason,
        }])

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._chunk([]), "usage": usage}

    def body(self, results: list[ChoiceResult], usage: dict) -> dict:
        return {**self._head, "choices": [
            {
                "index": index,
                "text": self._echoes[index] + result.text,
                "logprobs": completion_logprobs(self._tokenizer, result.logprobs,
                                                len(self._echoes[index])),
                "finish_reason": result.finish_reason,
            }
            for index, result in enumerate(results)
        ], "usage": usage}
