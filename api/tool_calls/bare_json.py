"""The bare-JSON fallback: an answer that is nothing but one call object, `{"name": ..., "arguments":
{...}}`, perhaps in a ```json fence, is a call whatever the format. Small coder models answer
that way even when their template asks for tags."""

import re

from api.deltas import Part
from api.tool_calls.base import ToolCallParser
from api.tool_calls.json_call import JsonCallReader

_FENCE = re.compile(r"```[ \t]*(json)?[ \t]*\n", re.IGNORECASE)
_FENCE_BEGUN = re.compile(r"`{0,2}|```[ \t]*(j(s(on?)?)?)?[ \t]*", re.IGNORECASE)


class WithBareJson(ToolCallParser):
    """Wraps a format's parser. Holds the answer back only while it may still be such an object;
    once it cannot (other text, another key first, an unknown name, text after the object), all
    of it goes to the inner parser. The call comes out whole at the end, since only the end shows
    that nothing followed it."""

    def __init__(self, inner: ToolCallParser) -> None:
        super().__init__(inner.tool_names)
        self.inner = inner
        self.name = inner.name
        self.syntax = inner.syntax
        self._held = ""
        self._reader: JsonCallReader | None = None
        self._fenced = False
        self._after = ""      # what followed the object: blanks, and the closing fence if fenced
        self._parts: list[Part] = []
        self._passed = False  # not a bare call: the inner parser has it all

    def feed(self, text: str) -> list[Part]:
        if self._passed:
            return self.inner.feed(text)
        self._held += text
        if self._may_be_call(text):
            return []
        self._passed = True
        return self.inner.feed(self._held)

    def finish(self) -> list[Part]:
        if self._passed:
            return self.inner.finish()
        if self._reader is not None and self._reader.done:
            return self._parts + self.inner.finish()
        return self.inner.feed(self._held) + self.inner.finish()

    def _may_be_call(self, text: str) -> bool:
        if self._reader is None:
            start = self._object_start()
            if start is None:
                return True
            if start < 0:
                return False
            self._reader, text = JsonCallReader(0, self.tool_names), self._held[start:]
        if not self._reader.over:
            self._parts += self._reader.feed(text)
            if not self._reader.done:
                return not self._reader.failed
            text = self._reader.rest
        self._after += text
        tail = self._after.strip()
        return not tail or (self._fenced and "```".startswith(tail))

    def _object_start(self) -> int | None:
        """Where the object starts in the answer; None while that is unclear, -1 if there is none."""
        lead = self._held.lstrip()
        fence = _FENCE.match(lead)
        if fence is not None:
            self._fenced, lead = True, lead[fence.end():].lstrip()
        if lead.startswith("{"):
            return len(self._held) - len(lead)
        unclear = not lead or (fence is None and _FENCE_BEGUN.fullmatch(lead) is not None)
        return None if unclear else -1
