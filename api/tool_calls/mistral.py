"""Mistral calls: `[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]` (the list form), and
the newer `[TOOL_CALLS]f[ARGS]{...}`, one marker per call."""

import re

from api.tool_calls.base import CallSyntax
from api.tool_calls.call import offered
from api.tool_calls.markers import cut_at_marker
from api.tool_calls.markup import MarkupParser

_TRIGGER, _ARGS = "[TOOL_CALLS]", "[ARGS]"
_NAME = re.compile(r"\s*[\w.\-]{0,128}")
_TEXT, _TRIGGERED, _LISTED, _NEXT, _ARGUMENTS = range(5)


class MistralParser(MarkupParser):
    """The grammar writes each call as a list of its own, `[TOOL_CALLS][{...}][TOOL_CALLS][{...}]`,
    which CallSyntax can say (a marker around each call) and this parser reads like any list."""

    name = "mistral"
    syntax = CallSyntax(open=_TRIGGER + "[", close="]", arguments_key="arguments", trigger=_TRIGGER)

    def __init__(self, tool_names: frozenset[str]) -> None:
        super().__init__(tool_names)
        self._state = _TEXT

    def _step(self, final: bool) -> bool:
        if self._state == _TEXT:
            text, marker, self._buffer = cut_at_marker(self._buffer, (_TRIGGER,), hold=not final)
            self._text(text)
            if marker is None:
                return False
            self._markup, self._state = marker, _TRIGGERED
            return True
        if self._state == _TRIGGERED:
            return self._after_trigger(final)
        if self._state == _NEXT:
            return self._next_in_list(final)
        if not self._read(self._reader, self._buffer, final):
            self._buffer = ""
            return False
        self._buffer = self._reader.rest
        self._state = _NEXT if self._state == _LISTED and self._reader.call else _TEXT
        return True

    def _after_trigger(self, final: bool) -> bool:
        """`[` opens the list (a lone `{` is taken as a list of one); a name, the `[ARGS]` form."""
        listed = self._skip_to("[", final)
        if listed is None:
            return False
        if listed or self._buffer.lstrip().startswith("{"):
            self._reader, self._state = self._new_reader(), _LISTED
            return True
        name, marker, rest = cut_at_marker(self._buffer, (_ARGS,), hold=not final)
        named = _NAME.fullmatch(name) is not None
        if named and marker is None and not final:
            return False
        if named and marker is not None and offered(name.strip(), self.tool_names):
            self._buffer, self._reader, self._state = rest, self._new_reader(name.strip()), _ARGUMENTS
        else:
            self._not_a_call()
            self._state = _TEXT
        return True

    def _next_in_list(self, final: bool) -> bool:
        more = self._list_goes_on(final)
        if more is None:
            return False
        self._state = _LISTED if more else _TEXT
        self._reader = self._new_reader() if more else None
        return True
