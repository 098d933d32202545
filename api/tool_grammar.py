"""Grammars that make the model write well-formed tool calls or JSON, in llguidance's Lark dialect.

A call is `syntax.open + {"name": N, <arguments_key>: {...}} + syntax.close`, the object an inline
`%json` schema per tool (name const, arguments the tool's own parameters schema), so llguidance
enforces the arguments as it generates them. Modes follow OpenAI's tool_choice:

- "required": the answer is calls only, joined by syntax.separator (one call if not parallel);
- "named": exactly one call, to tool_name;
- "auto": free text, constrained only once the model writes syntax.trigger: a lazy lexeme ends the
  text at the trigger's first occurrence and the call must follow (llama.cpp's lazy grammars,
  llguidance's StructTag); after its close, free text again (or one call at most, if not parallel).

Real-world schemas carry keywords llguidance does not implement (format flavours, $schema, ...):
every schema compiles leniently, ignoring those rather than failing (a `pattern` with look-around
still fails: GrammarError). The JSON is written as json.dumps writes it, `{"a": 1, "b": [2, 3]}`:
what chat templates' tojson renders calls as, hence what models were trained to emit, and with no
free whitespace a small model cannot fill an object with endless blank lines.
"""

import json
from typing import Any

from api.tool_calls.base import CallSyntax

TOOL_CHOICE_MODES = ("auto", "required", "named")

_JSON_OPTIONS = {
    "lenient": True,
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
_TEXT = r"TEXT: /(.|\n)*/"


def json_object_grammar() -> str:
    """response_format json_object: the answer is one JSON object."""
    return json_schema_grammar({"type": "object"})


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """response_format json_schema: the answer is one JSON value valid under `schema`."""
    return f"start: {_inline_json(schema)}\n"


def tool_call_grammar(
    tools: list[dict[str, Any]],
    syntax: CallSyntax,
    *,
    mode: str,
    tool_name: str | None = None,
    parallel: bool = True,
) -> str:
    """The grammar for an answer under tool_choice `mode` (one of TOOL_CHOICE_MODES). tools:
    OpenAI-shaped {"type": "function", "function": {"name", "parameters", ...}}. ValueError for a
    mode, tool_name or syntax the grammar cannot be built from."""
    functions = [tool["function"] for tool in tools]
    if mode == "named":
        functions = [f for f in functions if f["name"] == tool_name]
        if not functions:
            raise ValueError(f"tool_choice names {tool_name!r}, which is not among the tools")
        parallel = False
    elif mode not in TOOL_CHOICE_MODES:
        raise ValueError(f"unknown tool_choice mode {mode!r}")
    if not functions:
        raise ValueError("a tool-call grammar needs at least one tool")

    rules = _tool_rules(functions, syntax.arguments_key)
    if mode == "auto":
        return _lazy_calls(syntax, parallel, rules)
    call = f"call: {_literal(syntax.open)} tool {_literal(syntax.close)}"
    if not parallel:
        start = "start: call"
    elif syntax.separator:
        start = f"start: call ({_literal(syntax.separator)} call)*"
    else:
        start = "start: call+"
    return "\n".join([start, call, *rules]) + "\n"


def _lazy_calls(syntax: CallSyntax, parallel: bool, rules: list[str]) -> str:
    """Free text until the trigger, then the rest of the call. The trigger is a lazy lexeme: it
    matches the shortest text ending in the trigger, after which only the call can follow."""
    trigger = syntax.trigger or syntax.open
    if not trigger or not syntax.open.startswith(trigger):
        raise ValueError("an auto tool-call grammar needs a trigger that starts the call's open text")
    rest_of_open = syntax.open[len(trigger):]
    call = f"call: call_trigger {_literal(rest_of_open)} tool {_literal(syntax.close)}"
    start = "start: call* text" if parallel else "start: text | call"
    lazy = f"call_trigger[lazy]: TEXT {_literal(trigger)}"
    return "\n".join(["%llguidance {}", start, "text: TEXT", _TEXT, lazy, call, *rules]) + "\n"


def _tool_rules(functions: list[dict[str, Any]], arguments_key: str) -> list[str]:
    """`tool`: a call object to any of the functions, one %json rule each."""
    names = [f"tool_{i}" for i in range(len(functions))]
    bodies = [_inline_json(_call_schema(f, arguments_key)) for f in functions]
    return ["tool: " + " | ".join(names), *(f"{name}: {body}" for name, body in zip(names, bodies))]


def _call_schema(function: dict[str, Any], arguments_key: str) -> dict[str, Any]:
    """{"name": <const>, arguments_key: <parameters>}, both required, nothing else; the
    parameters' own properties only, unless their schema allows more."""
    parameters = function.get("parameters") or {"type": "object"}
    if parameters.get("type") == "object" and "additionalProperties" not in parameters:
        # As in OpenAI's strict mode: an argument the tool does not declare is one its client
        # cannot use, and a small model would pad calls with made-up ones up to max_tokens.
        parameters = {**parameters, "additionalProperties": False}
    pointer = "#/properties/" + arguments_key.replace("~", "~0").replace("/", "~1")
    return {
        "type": "object",
        "properties": {
            "name": {"const": function["name"]},
            arguments_key: _rebase_refs(parameters, pointer),
        },
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def _rebase_refs(schema: Any, pointer: str) -> Any:
    """The schema with its local $refs ("#", "#/$defs/X", ...) pointing to where it now sits,
    inside the call object's schema."""
    if isinstance(schema, list):
        return [_rebase_refs(item, pointer) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: pointer + value[1:] if key == "$ref" and isinstance(value, str) and value.startswith("#")
        else _rebase_refs(value, pointer)
        for key, value in schema.items()
    }


def _inline_json(schema: dict[str, Any]) -> str:
    """`%json {...}` with our compile options under the schema's own x-guidance ones."""
    options = {**_JSON_OPTIONS, **schema.get("x-guidance", {})}
    return "%json " + json.dumps({**schema, "x-guidance": options})


def _literal(text: str) -> str:
    """A Lark string literal; empty text is no symbol at all."""
    return json.dumps(text) if text else ""
