"""Stop strings over streamed text: never emit text past a stop string, even one that spans chunks."""

from collections.abc import Sequence


class StopStringMatcher:
    """Feed text chunks; get back what is safe to emit and whether a stop string was hit.

    Text that could be the start of a stop string is held back until the next chunk
    settles it. The stop string itself is never emitted (OpenAI semantics).
    """

    def __init__(self, stop_strings: Sequence[str]) -> None:
        self._stops = tuple(s for s in stop_strings if s)
        self._max_hold = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""
        self.matched: str | None = None  # the stop string that was hit

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text to emit, stopped). After a stop, the matcher must not be fed again."""
        if not self._stops:
            return text, False
        buffer = self._pending + text
        hits = [(at, stop) for stop in self._stops if (at := buffer.find(stop)) >= 0]
        if hits:
            stop_at, self.matched = min(hits, key=lambda hit: hit[0])
            self._pending = ""
            return buffer[:stop_at], True
        hold = self._held_suffix_length(buffer)
        self._pending = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """The held-back text, once the stream has ended without a stop."""
        pending, self._pending = self._pending, ""
        return pending

    def _held_suffix_length(self, buffer: str) -> int:
        for length in range(min(len(buffer), self._max_hold), 0, -1):
            suffix = buffer[-length:]
            if any(stop.startswith(suffix) for stop in self._stops):
                return length
        return 0
