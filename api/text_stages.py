"""Generated text -> typed parts: stop strings, then the reasoning parser, then the tool-call parser.

Each stage holds back only what it cannot settle yet; `finish` flushes them in order. The tool
parser sees only the answer's text, never the reasoning.
"""

from collections.abc import Sequence
from typing import Protocol

from api.deltas import Part, TextPart, ToolCallEnd, ToolCallStart
from api.stop_strings import StopStringMatcher


class PartParser(Protocol):
    def feed(self, text: str) -> list[Part]: ...
    def finish(self) -> list[Part]: ...


class TextStages:
    def __init__(self, stop: Sequence[str], reasoning: PartParser | None = None,
                 tools: PartParser | None = None) -> None:
        self._stop = StopStringMatcher(stop)
        self._parsers = [parser for parser in (reasoning, tools) if parser is not None]
        self.num_calls = 0
        self.num_broken_calls = 0

    @property
    def stop_sequence(self) -> str | None:
        """The stop string that ended the text, once one has."""
        return self._stop.matched

    def feed(self, text: str) -> tuple[list[Part], bool]:
        """(parts, stopped): after a stop string the text is over and `finish` must follow."""
        kept, stopped = self._stop.feed(text)
        return self._parse(kept, final=False), stopped

    def finish(self, stopped: bool) -> list[Part]:
        return self._parse("" if stopped else self._stop.flush(), final=True)

    def _parse(self, text: str, final: bool) -> list[Part]:
        parts: list[Part] = [TextPart(text)] if text else []
        for parser in self._parsers:
            parts = _through(parser, parts, final)
        for part in parts:
            if isinstance(part, ToolCallStart):
                self.num_calls += 1
            elif isinstance(part, ToolCallEnd) and not part.valid:
                self.num_broken_calls += 1
        return parts


def _through(parser: PartParser, parts: list[Part], final: bool) -> list[Part]:
    """Feeds the TextParts of `parts` to parser, keeping the other parts where they stood."""
    out: list[Part] = []
    for part in parts:
        if isinstance(part, TextPart):
            out += parser.feed(part.text)
        else:
            out.append(part)
    if final:
        out += parser.finish()
    return out
