"""One call written as a JSON object, `{"name": N, "arguments": {...}}`, read as it streams in.

Shared by every JSON format (Hermes, Llama 3, Mistral, bare JSON): they differ only in the
markup around the object.
"""

from api.deltas import Part
from api.tool_calls.call import StreamedCall, json_or, offered
from api.tool_calls.json_scan import JsonValueScanner

_ARGUMENT_KEYS = ("arguments", "parameters")
_START, _KEY, _COLON, _VALUE, _AFTER = range(5)   # where in the object the next character is
_EXPECTED = {_START: "{", _KEY: "}", _COLON: ":", _AFTER: ",}"}


class JsonCallReader:
    """The call starts once the name is read and offered; the arguments stream as their raw JSON
    text grows (one written as a JSON-encoded string, OpenAI's wire form, is decoded whole).

    Before the name is known, anything off (another key, broken JSON, an unknown name) means it is
    no call: `failed`, and `source` is the text to give back. After it, a break ends the call
    (`done`, with `valid` telling what the arguments were) and what follows is left in `rest`.
    With `name`, the call is known already and the text is just its arguments (Mistral's
    `[TOOL_CALLS]name[ARGS]{...}`).
    """

    def __init__(self, call_index: int, tool_names: frozenset[str], name: str | None = None) -> None:
        self.call_index = call_index
        self.tool_names = tool_names
        self.call: StreamedCall | None = None
        self.source = ""     # all the text this reader consumed
        self.rest = ""       # what followed, once over
        self.done = False    # the call ended
        self.failed = False  # it was no call
        self._parts: list[Part] = []
        self._state = _START
        self._scanner: JsonValueScanner | None = None
        self._raw = ""                        # the key or value being read, as JSON text
        self._key = ""
        self._arguments: str | None = None    # the whole arguments value, once read
        self._sent = 0                        # how much of the arguments has been sent
        self._only_arguments = name is not None
        if name is not None:
            self._start_call(name)
            self._state, self._key = _VALUE, _ARGUMENT_KEYS[0]

    @property
    def over(self) -> bool:
        return self.done or self.failed

    @property
    def in_string(self) -> bool:
        """Inside a JSON string, where a close marker is just text of the string."""
        return self._scanner is not None and self._scanner.in_string

    def feed(self, text: str) -> list[Part]:
        end = len(text)
        for index, char in enumerate(text):
            if not self._take(char):
                end = index
                break
            if self.over:
                end = index + 1
                break
        self.source += text[:end]
        self.rest = text[end:]
        self._send_arguments()
        return self._take_parts()

    def finish(self) -> list[Part]:
        """The text ended (its close marker or the answer's end) before the object did."""
        if self.call is None:
            self.failed = True
        elif not self.over:
            self._end()
        return self._take_parts()

    def _take(self, char: str) -> bool:
        """Reads one character; False if it is not part of the object (the call broke there)."""
        if self._scanner is not None:
            if self._scanner.step(char):
                self._raw += char
                if self._scanner.done:
                    self._value_read()
                return True
            self._value_read()  # a number or literal, ended by this character
            if self.over:
                return False
        if char.isspace():
            return True
        if self._state == _VALUE or (self._state == _KEY and char == '"'):
            self._scanner, self._raw = JsonValueScanner(), ""
            return self._take(char)
        if char not in _EXPECTED[self._state]:
            return self._broken()
        if char == "}":
            self._close()
        else:
            self._state = _VALUE if char == ":" else _KEY
        return True

    def _value_read(self) -> None:
        self._scanner = None
        if self._state == _KEY:
            self._key = json_or(self._raw, "")
            self._state = _COLON
            if self.call is None and self._key not in ("name", *_ARGUMENT_KEYS):
                self.failed = True
            return
        self._state = _AFTER
        if self._reading_arguments(value_read=True):
            decoded = json_or(self._raw, None) if self._raw.startswith('"') else None
            self._arguments = decoded if isinstance(decoded, str) else self._raw
            if self._only_arguments:
                self._end()
        elif self._key == "name" and self.call is None:
            name = json_or(self._raw, None)
            if isinstance(name, str) and offered(name, self.tool_names):
                self._start_call(name)
            else:
                self.failed = True

    def _reading_arguments(self, value_read: bool = False) -> bool:
        """Whether the value being read (or just read) is the arguments, the first such key."""
        in_value = value_read or (self._scanner is not None and self._state == _VALUE)
        return in_value and self._key in _ARGUMENT_KEYS and self._arguments is None

    def _start_call(self, name: str) -> None:
        self.call = StreamedCall(self.call_index, name)
        self._parts += self.call.start()

    def _send_arguments(self) -> None:
        if self.call is None:
            return
        if self._reading_arguments():
            if self._raw.startswith('"'):
                return  # a JSON-encoded string is decoded once whole
            text = self._raw
        else:
            text = self._arguments or ""
        self._parts += self.call.send(text[self._sent:])
        self._sent = len(text)

    def _close(self) -> None:
        if self.call is None:
            self.failed = True
            return
        if self._arguments is None:
            self._arguments = "{}"  # a call without arguments
        self._end()

    def _broken(self) -> bool:
        if self.call is None:
            self.failed = True
            return True
        self._end()
        return False

    def _end(self) -> None:
        self._send_arguments()
        self._parts += self.call.end()
        self.done = True

    def _take_parts(self) -> list[Part]:
        parts, self._parts = self._parts, []
        return parts
