"""Pythonic calls (Llama 3.2 / Llama 4 style): the answer is a list of calls, `[f(a=1, b="x"), g()]`.

Keyword values are Python literals (JSON's `true` / `null` accepted too); the arguments go out
as a JSON object, a member per keyword as its value completes.
"""

import ast
import re

from api.tool_calls.call import StreamedCall, json_or, offered
from api.tool_calls.markup import MarkupParser

_CALL = re.compile(r"\s*([A-Za-z_][\w.]*)\s*\(")
_CALL_BEGUN = re.compile(r"\s*([A-Za-z_][\w.]*\s*)?")
_KEYWORD = re.compile(r"\s*([A-Za-z_]\w*)\s*=")
_KEYWORD_BEGUN = re.compile(r"\s*([A-Za-z_]\w*\s*)?")
_VALUE_ENDS = re.compile(r"[,)]")
_NOT_A_VALUE = object()
_START, _TEXT, _NAMING, _KEYWORDS, _VALUE, _AFTER_VALUE, _AFTER_CALL = range(7)


def _literal(text: str) -> object:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return json_or(text, _NOT_A_VALUE)


class PythonicParser(MarkupParser):
    """Only an answer that starts (after blanks) with `[` and an offered tool's name is calls;
    after the list, text. A call that breaks (a positional argument, a value that is no literal)
    ends there, not valid, and the rest is text."""

    name = "pythonic"

    def __init__(self, tool_names: frozenset[str]) -> None:
        super().__init__(tool_names)
        self._state = _START
        self._call: StreamedCall | None = None
        self._key = ""
        self._scanned = 0  # how much of the value in `_buffer` has been tried for its end

    def _step(self, final: bool) -> bool:
        if self._state == _TEXT:
            self._text(self._buffer)
            self._buffer = ""
            return False
        if self._state == _START:
            listed = self._skip_to("[", final)
            if listed is None:
                return False
            self._state = _NAMING if listed else _TEXT
        elif self._state == _NAMING:
            return self._read_name(final)
        elif self._state == _KEYWORDS:
            return self._read_keyword(final)
        elif self._state == _VALUE:
            return self._read_value(final)
        elif self._state == _AFTER_VALUE:
            more = self._skip_to(",", final)
            if more is None:
                return False
            if more:
                self._state = _KEYWORDS
            elif not self._close_call(final):
                return False
        else:
            more = self._list_goes_on(final)
            if more is None:
                return False
            self._state = _NAMING if more else _TEXT
        return True

    def _read_name(self, final: bool) -> bool:
        match = _CALL.match(self._buffer)
        if match is None and _CALL_BEGUN.fullmatch(self._buffer) and not final:
            return False
        if match is not None and offered(match[1], self.tool_names):
            self._buffer, self._state = self._buffer[match.end():], _KEYWORDS
            self._call = self._start_call(match[1])
        else:
            self._not_a_call()
            self._state = _TEXT
        return True

    def _read_keyword(self, final: bool) -> bool:
        match = _KEYWORD.match(self._buffer)
        if match is not None:
            self._buffer, self._key = self._buffer[match.end():], match[1]
            self._scanned, self._state = 0, _VALUE
            return True
        if _KEYWORD_BEGUN.fullmatch(self._buffer) and not final:
            return False
        return self._close_call(final)

    def _read_value(self, final: bool) -> bool:
        """The value ends at the first `,` or `)` before which the text is a whole literal."""
        for end in _VALUE_ENDS.finditer(self._buffer, self._scanned):
            value = _literal(self._buffer[: end.start()])
            if value is not _NOT_A_VALUE:
                self._parts += self._call.send_member(self._key, value)
                self._buffer, self._state = self._buffer[end.start():], _AFTER_VALUE
                return True
        self._scanned = len(self._buffer)
        if not final:
            return False
        self._buffer = ""  # cut short: the partial value is not sent, the call is not valid
        return self._break_off()

    def _close_call(self, final: bool) -> bool:
        """`)` ends the call; anything else breaks it."""
        closed = self._skip_to(")", final)
        if closed is None:
            return False
        if not closed:
            return self._break_off()
        self._end_call(self._call, close_members=True)
        self._state = _AFTER_CALL
        return True

    def _break_off(self) -> bool:
        self._end_call(self._call)
        self._markup, self._state = "", _TEXT
        return True
