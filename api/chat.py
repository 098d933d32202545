"""POST /v1/chat/completions."""

import time
import uuid
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from jinja2 import TemplateError

from api.context import CONTEXT
from api.errors import bad_request
from api.generation import ChoiceDelta, submit_choices
from api.logprobs import chat_logprobs
from api.responding import ChoiceResult, respond
from api.validation import ChatRequest, parse_chat_request, read_json_body


async def chat_completions(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    chat = parse_chat_request(await read_json_body(request), ctx.vocab_size)
    model = ctx.check_model_name(chat.params.model)
    prompt_ids = await ctx.run_off_loop(render_chat_prompt, ctx.tokenizer, chat)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    submission = submit_choices(ctx, request_id, [prompt_ids], chat.params, "messages")
    shape = ChatShape(request_id, model, ctx.tokenizer, len(submission.choices),
                      chat.params.include_usage)
    return await respond(request, ctx, submission, shape, chat.params.stream,
                         chat.params.include_usage)


def render_chat_prompt(tokenizer: Any, chat: ChatRequest) -> list[int]:
    kwargs: dict[str, Any] = {"add_generation_prompt": True, **chat.chat_template_kwargs}
    if chat.tools:
        kwargs["tools"] = chat.tools
    try:
        text = tokenizer.apply_chat_template(chat.messages, tokenize=False, **kwargs)
    except (TemplateError, ValueError, TypeError) as error:
        raise bad_request(f"The chat template failed on these messages: {error}", "messages") from None
    # The template writes the special tokens (BOS) itself.
    return tokenizer.encode(text, add_special_tokens=False)


class ChatShape:
    def __init__(self, request_id: str, model: str, tokenizer: Any, num_choices: int,
                 include_usage: bool) -> None:
        self._head = {"id": request_id, "created": int(time.time()), "model": model}
        self._tokenizer = tokenizer
        self._num_choices = num_choices
        self._usage_field = {"usage": None} if include_usage else {}

    def _chunk(self, choices: list[dict]) -> dict:
        return {**self._head, "object": "chat.completion.chunk", "choices": choices,
                **self._usage_field}

    def opening_chunks(self) -> Iterable[dict]:
        for index in range(self._num_choices):
            yield self._chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                                "logprobs": None, "finish_reason": None}])

    def chunk(self, delta: ChoiceDelta) -> dict:
        return self._chunk([{
            "index": delta.index,
            "delta": {"content": delta.text} if delta.text else {},
            "logprobs": chat_logprobs(self._tokenizer, delta.logprobs),
            "finish_reason": delta.finish_reason,
        }])

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._chunk([]), "usage": usage}

    def body(self, results: list[ChoiceResult], usage: dict) -> dict:
        return {**self._head, "object": "chat.completion", "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": chat_logprobs(self._tokenizer, result.logprobs),
                "finish_reason": result.finish_reason,
            }
            for index, result in enumerate(results)
        ], "usage": usage}
