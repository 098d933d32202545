"""POST /v1/messages/count_tokens: the prompt's size as /v1/messages would render it."""

from aiohttp import web

from api.anthropic.convert import read_request
from api.context import CONTEXT
from api.errors import json_response
from api.json_body import read_json_body
from api.model_lease import requested_model
from api.prompt_render import render_prompt


async def count_tokens(request: web.Request) -> web.Response:
    body = await read_json_body(request)
    async with request.app[CONTEXT].models.use(requested_model(body)) as ctx:
        _, conversation = await ctx.run_off_loop(read_request, body, True)
        prompt_ids = await ctx.run_off_loop(render_prompt, ctx.encode_tokenizer, conversation)
        return json_response({"input_tokens": round(len(prompt_ids) * ctx.claude_token_scale)})
