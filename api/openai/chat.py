"""POST /v1/chat/completions: messages (tools, tool calls, tool results) in, text, reasoning and
tool_calls out."""

import time
import uuid
from typing import Any

from aiohttp import web

from api.conversation import Conversation
from api.deltas import (ChoiceDelta, ReasoningPart, TextPart, ToolCallArguments, ToolCallStart)
from api.generation import Usage, submit_choices
from api.openai.framing import OpenAIStream, openai_usage
from api.openai.logprobs import chat_logprobs
from api.json_body import read_json_body
from api.model_lease import Lease, with_model
from api.openai.validation import parse_chat_request
from api.prompt_render import render_prompt
from api.responding import respond
from api.sessions import request_origin
from api.results import ChoiceResult
from api.tool_use import request_constraints, stages_factory


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json_body(request)
    return await with_model(request, body, lambda lease: _chat(request, body, lease))


async def _chat(request: web.Request, body: Any, lease: Lease) -> web.StreamResponse:
    ctx = lease.ctx
    chat = parse_chat_request(body, ctx.vocab_size)
    params = chat.params
    conversation = Conversation(messages=chat.messages, tools=chat.tools, deferred_tools={})
    prompt_ids = await ctx.run_off_loop(render_prompt, ctx.encode_tokenizer, conversation,
                                        chat.chat_template_kwargs)
    constraints = await request_constraints(ctx, chat.tools, chat.tool_choice, params.n,
                                            chat.response_format)
    make_stages = stages_factory(ctx, params.stop, chat.tools, chat.tool_choice, prompt_ids)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    submission = submit_choices(ctx, request_id, [prompt_ids], params, "messages", make_stages,
                                request_origin(request), constraints)
    shape = ChatShape(request_id, lease.model, ctx.tokenizer, len(submission.choices),
                      params.include_usage)
    return await respond(request, ctx, submission, shape, params.stream, lease.events)


class ChatShape(OpenAIStream):
    def __init__(self, request_id: str, model: str, tokenizer: Any, num_choices: int,
                 include_usage: bool) -> None:
        self._head = {"id": request_id, "created": int(time.time()), "model": model}
        super().__init__({**self._head, "object": "chat.completion.chunk"}, include_usage)
        self._tokenizer = tokenizer
        self._num_choices = num_choices

    def opening(self) -> list[bytes]:
        return [self._chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}])
                for index in range(self._num_choices)]

    def frames(self, delta: ChoiceDelta) -> list[bytes]:
        pieces = [_delta_of(part) for part in delta.parts]
        pieces = [piece for piece in pieces if piece] or [{}]
        if not delta.logprobs and delta.finish_reason is None and pieces == [{}]:
            return []
        frames = []
        for position, piece in enumerate(pieces):
            last = position == len(pieces) - 1
            frames.append(self._chunk([{
                "index": delta.index,
                "delta": piece,
                "logprobs": chat_logprobs(self._tokenizer, delta.logprobs) if position == 0 else None,
                "finish_reason": delta.finish_reason if last else None,
            }]))
        return frames

    def body(self, results: list[ChoiceResult], usage: Usage) -> dict:
        return {**self._head, "object": "chat.completion", "choices": [
            {
                "index": index,
                "message": _message(result),
                "logprobs": chat_logprobs(self._tokenizer, result.logprobs),
                "finish_reason": result.finish_reason,
            }
            for index, result in enumerate(results)
        ], "usage": openai_usage(usage)}


def _delta_of(part: Any) -> dict:
    if isinstance(part, TextPart):
        return {"content": part.text} if part.text else {}
    if isinstance(part, ReasoningPart):
        return {"reasoning_content": part.text} if part.text else {}
    if isinstance(part, ToolCallStart):
        return {"tool_calls": [{"index": part.call_index, "id": f"call_{part.call_id}",
                                "type": "function",
                                "function": {"name": part.name, "arguments": ""}}]}
    if isinstance(part, ToolCallArguments):
        return {"tool_calls": [{"index": part.call_index,
                                "function": {"arguments": part.fragment}}]}
    return {}  # ToolCallEnd: OpenAI has no event for it


def _message(result: ChoiceResult) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": result.text or None}
    if result.reasoning:
        message["reasoning_content"] = result.reasoning
    if result.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{call.call_id}", "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}
            for call in result.tool_calls]
    elif message["content"] is None:
        message["content"] = ""
    return message
