"""Llama 3.1 / 3.2 JSON calls: `{"name": "f", "parameters": {...}}`, several joined by `;`, after
`<|python_tag|>` or (as these models mostly answer) at the very start of the answer."""

from api.tool_calls.base import CallSyntax
from api.tool_calls.markers import cut_at_marker
from api.tool_calls.markup import MarkupParser

_TAG = "<|python_tag|>"
_START, _TEXT, _CALL, _NEXT, _SEPARATED = range(5)


class Llama3JsonParser(MarkupParser):
    """After a `;`, the next call may repeat the tag (the grammar writes it before every call)."""

    name = "llama3_json"
    syntax = CallSyntax(open=_TAG, close="", arguments_key="parameters", separator=";", trigger=_TAG)

    def __init__(self, tool_names: frozenset[str]) -> None:
        super().__init__(tool_names)
        self._state = _START

    def _step(self, final: bool) -> bool:
        if self._state == _START:
            lead = self._buffer.lstrip()
            if not lead and not final:
                return False
            self._state = _CALL if lead.startswith("{") else _TEXT
            self._reader = self._new_reader() if self._state == _CALL else None
        elif self._state == _TEXT:
            text, marker, self._buffer = cut_at_marker(self._buffer, (_TAG,), hold=not final)
            self._text(text)
            if marker is None:
                return False
            self._markup, self._reader, self._state = marker, self._new_reader(), _CALL
        elif self._state == _CALL:
            if not self._read(self._reader, self._buffer, final):
                self._buffer = ""
                return False
            self._buffer = self._reader.rest
            self._state = _NEXT if self._reader.call else _TEXT
        elif self._state == _NEXT:
            found = self._skip_to(";", final)
            if found is None:
                return False
            self._state = _SEPARATED if found else _TEXT
        else:
            if self._skip_to(_TAG, final) is None:
                return False
            self._reader, self._state = self._new_reader(), _CALL
        return True
