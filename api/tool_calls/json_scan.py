"""Where one JSON value ends in streamed text, told a character at a time."""

_LITERAL_ENDS = frozenset(",:]} \t\r\n")


class JsonValueScanner:
    """Follows strings (and their escapes) and nesting without validating: the value is parsed
    once whole. This is what lets a parser stream a call's arguments as they are generated and
    stop exactly at their end, before the closing brace of the object around them."""

    def __init__(self) -> None:
        self.done = False
        self.in_string = False
        self._depth = 0
        self._escaped = False

    def step(self, char: str) -> bool:
        """Whether `char` belongs to the value. A number or literal (true, null) ends at the first
        character after it, which is not its own; strings and containers end with their own."""
        if self.in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self.in_string = False
                self.done = not self._depth
            return True
        if char == '"':
            self.in_string = True
        elif char in "{[":
            self._depth += 1
        elif self._depth:
            if char in "}]":
                self._depth -= 1
                self.done = not self._depth
        elif char in _LITERAL_ENDS:
            self.done = True
            return False
        return True
