"""POST /v1/messages (also ?beta=true): the Anthropic Messages API, as Claude Code uses it."""

import uuid
from typing import Any

from aiohttp import web

from api.anthropic.convert import read_request
from api.anthropic.schema import MessagesRequest
from api.anthropic.stream import MessageShape
from api.errors import bad_request
from api.generation import GenerationParams, submit_choices
from api.json_body import read_json_body
from api.model_lease import Lease, with_model
from api.prompt_render import render_prompt
from api.responding import respond
from api.sessions import request_origin
from api.tool_choice import ToolChoice
from api.tool_use import request_constraints, stages_factory
from engine.sampling_params import SamplingParams

ANTHROPIC_TOOL_CHOICE = {"auto": "auto", "any": "required", "tool": "named", "none": "none"}


async def messages(request: web.Request) -> web.StreamResponse:
    raw = await read_json_body(request)
    return await with_model(request, raw, lambda lease: _message(request, raw, lease))


async def _message(request: web.Request, raw: Any, lease: Lease) -> web.StreamResponse:
    ctx = lease.ctx
    body, conversation = await ctx.run_off_loop(read_request, raw)
    prompt_ids = await ctx.run_off_loop(render_prompt, ctx.encode_tokenizer, conversation)
    choice = tool_choice(body)
    # A deferred tool, once loaded through a tool_reference, can be called like the others.
    all_tools = conversation.tools + list(conversation.deferred_tools.values())
    if choice.mode == "named" and choice.name not in {t["function"]["name"] for t in all_tools}:
        raise bad_request(f"tool_choice.name: {choice.name!r} is not among the tools",
                          "tool_choice.name")
    constraints = await request_constraints(ctx, all_tools, choice, 1)
    params = generation_params(body)
    make_stages = stages_factory(ctx, params.stop, all_tools, choice, prompt_ids)
    message_id = f"msg_{uuid.uuid4().hex}"
    submission = submit_choices(ctx, message_id, [prompt_ids], params, "messages", make_stages,
                                request_origin(request), constraints)
    thinking = (body.thinking or {}).get("type") in ("enabled", "adaptive")
    shape = MessageShape(message_id, lease.model, submission, ctx.block_size,
                         ctx.claude_token_scale, thinking)
    return await respond(request, ctx, submission, shape, params.stream, lease.events)


def tool_choice(body: MessagesRequest) -> ToolChoice:
    choice = body.tool_choice
    if choice is None:
        return ToolChoice()
    mode = ANTHROPIC_TOOL_CHOICE[choice.type]
    return ToolChoice(mode, choice.name if mode == "named" else None,
                      not choice.disable_parallel_tool_use and mode != "named")


def generation_params(body: MessagesRequest) -> GenerationParams:
    sampling = SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
    )
    return GenerationParams(
        model=body.model, n=1, stream=bool(body.stream), include_usage=True,
        max_tokens=body.max_tokens, stop=tuple(s for s in body.stop_sequences if s),
        ignore_eos=False, logprobs=None, sampling=sampling)
