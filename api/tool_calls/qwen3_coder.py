"""Qwen3-Coder's XML calls:
`<tool_call>\\n<function=f>\\n<parameter=p>\\nvalue\\n</parameter>\\n...</function>\\n</tool_call>`.

The arguments go out as a JSON object, one member per parameter as it completes; a value that
parses as JSON is taken as that (`3`, `true`, `[1, 2]`), anything else as a string.
"""

import re

from api.tool_calls.call import StreamedCall, json_or, offered
from api.tool_calls.markers import cut_at_marker
from api.tool_calls.markup import MarkupParser

_OPEN, _FUNCTION, _PARAMETER = "<tool_call>", "<function=", "<parameter="
_END_PARAMETER, _END_FUNCTION, _CLOSE = "</parameter>", "</function>", "</tool_call>"
_NAME = re.compile(r"\s*[^<>\s]{0,128}\s*")
_TEXT, _OPENED, _NAMING, _BODY, _KEY, _CLOSING = range(6)


class Qwen3CoderParser(MarkupParser):
    """`<function=` alone (without `<tool_call>`) opens a call too; a missing `</parameter>` is
    implied by the next `<parameter=` or `</function>`."""

    name = "qwen3_coder"

    def __init__(self, tool_names: frozenset[str]) -> None:
        super().__init__(tool_names)
        self._state = _TEXT
        self._call: StreamedCall | None = None
        self._key: str | None = None  # the parameter being read
        self._value = ""

    def _step(self, final: bool) -> bool:
        if self._state == _TEXT:
            text, marker, self._buffer = cut_at_marker(self._buffer, (_OPEN, _FUNCTION), hold=not final)
            self._text(text)
            if marker is None:
                return False
            self._markup, self._state = marker, _OPENED if marker == _OPEN else _NAMING
        elif self._state == _OPENED:
            found = self._skip_to(_FUNCTION, final)
            if found is None:
                return False
            self._state = _NAMING if found else _TEXT
            if not found:
                self._not_a_call()
        elif self._state == _NAMING:
            return self._read_name(final)
        elif self._state == _BODY:
            return self._read_body(final)
        elif self._state == _KEY:
            key, marker, rest = cut_at_marker(self._buffer, (">",))
            if marker is None:
                return final and self._break_off()
            self._buffer, self._key, self._value, self._state = rest, key.strip(), "", _BODY
        else:
            closed = self._skip_to(_CLOSE, final)
            if closed is None:
                return False
            self._markup, self._state = "", _TEXT
        return True

    def _read_name(self, final: bool) -> bool:
        name, marker, rest = cut_at_marker(self._buffer, (">",))
        named = _NAME.fullmatch(name) is not None
        if marker is None and named and not final:
            return False
        if marker is not None and named and offered(name.strip(), self.tool_names):
            self._buffer, self._state = rest, _BODY
            self._call = self._start_call(name.strip())
        else:
            self._not_a_call()
            self._state = _TEXT
        return True

    def _read_body(self, final: bool) -> bool:
        text, marker, self._buffer = cut_at_marker(
            self._buffer, (_PARAMETER, _END_PARAMETER, _END_FUNCTION), hold=not final)
        if self._key is not None:
            self._value += text  # outside a parameter, only blanks (or stray text, dropped)
        if marker is None:
            return final and self._break_off()
        if self._key is not None:
            value = self._value.removeprefix("\n").removesuffix("\n")
            self._parts += self._call.send_member(self._key, json_or(value, value))
            self._key = None
        if marker == _PARAMETER:
            self._state = _KEY
        elif marker == _END_FUNCTION:
            self._end_call(self._call, close_members=True)
            self._state = _CLOSING
        return True

    def _break_off(self) -> bool:
        """The answer ended inside the call: it ends as it is (its arguments unclosed, not valid)."""
        self._end_call(self._call)
        self._key, self._state = None, _TEXT
        return True
