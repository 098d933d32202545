"""Per request: the text stages that parse its answers, and the grammar that constrains them.

Both protocols come here with OpenAI-shaped tools and a ToolChoice. Tools offered with
tool_choice required / named (Anthropic any / tool) get a grammar that guarantees a call whose
arguments fit the tool's schema; in auto mode a lazy grammar constrains a call once the model
opens one. response_format json_object / json_schema use the same machinery.
"""

import logging
from collections.abc import Callable
from typing import Any

from api.model_context import ModelContext
from api.errors import bad_request
from api.reasoning import ReasoningParser, starts_inside_for
from api.text_stages import TextStages
from api.tool_calls import PARSERS, make_parser
from api.tool_choice import ToolChoice
from api.tool_grammar import json_object_grammar, json_schema_grammar, tool_call_grammar

log = logging.getLogger("pagedmlx.api")


def stages_factory(ctx: ModelContext, stop: tuple[str, ...], tools: list[dict[str, Any]],
                   choice: ToolChoice, prompt_ids: list[int]) -> Callable[[], TextStages]:
    """The text stages of each choice: stop strings, reasoning, then tool calls when offered."""
    names = frozenset(tool["function"]["name"] for tool in tools)
    parse_tools = bool(tools) and choice.mode != "none"
    markers = ctx.reasoning_markers
    # Templates of thinking models may open the reasoning block in the generation prompt.
    opens_reasoning = markers is not None and starts_inside_for(
        ctx.tokenizer.decode(prompt_ids[-4:]))

    def make() -> TextStages:
        reasoning = None
        if markers is not None:
            reasoning = ReasoningParser(*markers, starts_inside=opens_reasoning)
        parser = make_parser(ctx.tool_parser_name, names) if parse_tools else None
        return TextStages(stop, reasoning, parser)

    return make


def _request_grammar(ctx: ModelContext, tools: list[dict[str, Any]], choice: ToolChoice,
                     response_format: dict[str, Any] | None) -> str | None:
    """The grammar for this request's answers, or None when they run free."""
    if response_format is not None:
        if response_format["type"] == "json_object":
            return json_object_grammar()
        return json_schema_grammar(response_format["schema"])
    if not tools or choice.mode == "none":
        return None
    syntax = PARSERS[ctx.tool_parser_name].syntax
    if syntax is None:
        if choice.mode == "auto":
            return None  # parsed, not constrained
        raise bad_request(f"tool_choice {choice.mode!r} needs constrained decoding, which the "
                          f"{ctx.tool_parser_name} tool-call format does not support", "tool_choice")
    if choice.mode == "auto" and syntax.trigger is None:
        return None
    return tool_call_grammar(tools, syntax, mode=choice.mode, tool_name=choice.name,
                             parallel=choice.parallel)


async def request_constraints(ctx: ModelContext, tools: list[dict[str, Any]], choice: ToolChoice,
                              count: int, response_format: dict[str, Any] | None = None
                              ) -> list | None:
    """One matcher per choice (None when the answers run free), compiled off the event loop and
    off the engine thread.

    A schema llguidance cannot compile is the client's error when a call (or a format) was
    demanded (tool_choice required / named, response_format); in auto mode the answer is parsed
    unconstrained instead, since agents such as Claude Code send whatever schemas their tools have.
    """
    grammar = _request_grammar(ctx, tools, choice, response_format)
    if grammar is None:
        return None
    demanded = choice.mode != "auto" or response_format is not None
    try:
        return [await ctx.run_off_loop(ctx.grammar.compile, grammar) for _ in range(count)]
    except ValueError as error:  # engine.guided.GrammarError
        if not demanded:
            log.warning("tool calls run unconstrained: their grammar does not compile: %s", error)
            return None
        raise bad_request(f"Cannot constrain the output to this schema: {error}") from None
