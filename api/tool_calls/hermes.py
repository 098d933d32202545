"""Hermes / Qwen2.5 / Qwen3 calls: `<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>`."""

from api.tool_calls.base import CallSyntax
from api.tool_calls.markers import cut_at_marker
from api.tool_calls.markup import MarkupParser

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"


class HermesParser(MarkupParser):
    """Text, then calls each in its tags. The object is read from the text before the close
    marker (outside JSON strings), so one missing its last brace still ends at `</tool_call>`;
    what follows the object inside the tags is dropped; a new `<tool_call>` also closes the one
    before."""

    name = "hermes"
    syntax = CallSyntax(open="<tool_call>\n", close="\n</tool_call>", arguments_key="arguments",
                        separator="\n", trigger="<tool_call>")

    def _step(self, final: bool) -> bool:
        if self._reader is None:
            text, marker, self._buffer = cut_at_marker(self._buffer, (_OPEN,), hold=not final)
            self._text(text)
            if marker is None:
                return False
            self._markup, self._reader = marker, self._new_reader()
            return True
        body, marker, rest = cut_at_marker(self._buffer, (_CLOSE, _OPEN), hold=not final)
        ended = marker is not None or final
        reader = self._reader
        self._read(reader, body, ended=False)
        if marker is not None and reader.in_string:  # the marker is text of a JSON string
            self._read(reader, marker, ended=False)
            self._buffer = rest
            return True
        self._read(reader, "", ended)
        if reader.failed:  # no call: what it did not read is text again, the close marker too
            self._buffer = reader.rest + (marker or "") + rest
        elif ended:
            self._buffer = (marker if marker == _OPEN else "") + rest
        else:
            self._buffer = rest
            return False
        self._reader = None
        return True
