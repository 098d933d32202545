"""Markers in streamed text: find the first one, and hold back what may be the start of one."""

from collections.abc import Sequence


def partial_marker_length(text: str, markers: Sequence[str]) -> int:
    """How many characters at the end of `text` are the start of a marker (and may become one)."""
    longest = max(map(len, markers), default=1) - 1
    for length in range(min(len(text), longest), 0, -1):
        if any(marker.startswith(text[-length:]) for marker in markers):
            return length
    return 0


def cut_at_marker(text: str, markers: Sequence[str], hold: bool = True) -> tuple[str, str | None, str]:
    """Splits `text` at its first marker: (before, marker, after). With none: (text, None, ""),
    except that with `hold` an end that may be the start of a marker is kept back as `after`
    (the next piece of the stream tells whether it is one)."""
    found = [(index, -len(marker), marker) for marker in markers if (index := text.find(marker)) >= 0]
    if found:
        index, _, marker = min(found)  # the earliest; of two there, the longer
        return text[:index], marker, text[index + len(marker):]
    kept = partial_marker_length(text, markers) if hold else 0
    return text[: len(text) - kept], None, text[len(text) - kept:]
