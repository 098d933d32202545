"""Tool-call parsers by format, and which one a model's template and vocabulary call for."""

import re
from collections.abc import Container, Iterable

from api.tool_calls.bare_json import WithBareJson
from api.tool_calls.base import ToolCallParser
from api.tool_calls.hermes import HermesParser
from api.tool_calls.llama3_json import Llama3JsonParser
from api.tool_calls.mistral import MistralParser
from api.tool_calls.pythonic import PythonicParser
from api.tool_calls.qwen3_coder import Qwen3CoderParser

PARSERS: dict[str, type[ToolCallParser]] = {
    parser.name: parser
    for parser in (HermesParser, Qwen3CoderParser, Llama3JsonParser, MistralParser, PythonicParser)
}

# What a template (first) or the vocabulary shows of a format, most telling first.
_TEMPLATE_MARKERS = (("<function=", "qwen3_coder"), ("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"))
_VOCABULARY_MARKERS = (("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"),
                       ("<|python_tag|>", "llama3_json"))
# A template that shows its tools' calls as `[func_name(param=...`: the pythonic format.
_PYTHONIC_EXAMPLE = re.compile(r"\[\s*[A-Za-z_]\w*\(\s*[A-Za-z_]\w*\s*=")


def make_parser(name: str, tool_names: frozenset[str]) -> ToolCallParser:
    """The parser for one answer. With tools offered, it also takes an answer that is one bare
    call object as a call (without tools there is nothing to call: a JSON answer stays text)."""
    if name not in PARSERS:
        raise ValueError(f"unknown tool-call parser {name!r}; choose from {', '.join(PARSERS)}")
    parser = PARSERS[name](tool_names)
    return WithBareJson(parser) if tool_names else parser


def choose_parser_name(chat_template: str | None, vocab: Iterable[str]) -> str:
    """The format the model was trained to call tools in: what its template writes first, then
    its special tokens. Without either (a model with no tool support, for which the server writes
    a fallback tool prompt asking for Hermes tags): "hermes"."""
    template = chat_template or ""
    tokens = vocab if isinstance(vocab, Container) else frozenset(vocab)
    for marker, name in _TEMPLATE_MARKERS:
        if marker in template:
            return name
    if "tools" in template and _PYTHONIC_EXAMPLE.search(template):
        return "pythonic"
    for marker, name in _VOCABULARY_MARKERS:
        if marker in tokens or marker in template:
            return name
    return "hermes"
