"""The streaming tool-call parser interface: generated text in, typed parts out."""

from abc import ABC, abstractmethod
from dataclasses import dataclass

from api.deltas import Part


@dataclass(frozen=True)
class CallSyntax:
    """How one call is written, for formats whose calls are a JSON object in fixed markup:
    `open + {"name": N, <arguments_key>: {...}} + close`, calls joined by `separator`.
    The constrained-decoding grammar (api/tool_grammar.py) is built from this."""

    open: str
    close: str
    arguments_key: str = "arguments"
    separator: str = ""
    trigger: str | None = None   # the text that starts a call; None: the whole answer is calls


class ToolCallParser(ABC):
    """Fed the answer's text as it is generated (any split, even mid-marker), returns parts.

    Text outside calls comes back as TextPart (never markup); a call as ToolCallStart once its
    name is known, ToolCallArguments fragments as they arrive, ToolCallEnd. Something that looked
    like a call but was not (no offered tool's name, malformed before the name) comes back as
    text. Parsers hold back only what might still become markup.
    """

    name: str                         # the --tool-call-parser value
    syntax: CallSyntax | None = None  # None: no grammar for this format (parser only)

    def __init__(self, tool_names: frozenset[str]) -> None:
        self.tool_names = tool_names

    @abstractmethod
    def feed(self, text: str) -> list[Part]: ...

    @abstractmethod
    def finish(self) -> list[Part]:
        """At the end of the answer: flush held-back text, close or give back a pending call."""
