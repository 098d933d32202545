"""Reasoning text: what a thinking model writes between `<think>` and `</think>`, kept apart from
the answer (OpenAI's `reasoning_content`, Anthropic's thinking blocks)."""

from collections.abc import Container, Iterable

from api.deltas import ReasoningPart, TextPart
from api.tool_calls.markers import cut_at_marker

THINK_MARKERS = ("<think>", "</think>")


class ReasoningParser:
    """Fed the answer's text as generated (any split, even mid-marker): text inside the markers
    comes back as ReasoningPart, outside as TextPart, the markers removed and the blanks right
    after them dropped (templates put newlines there). `starts_inside`: the prompt itself
    opened the reasoning (see `starts_inside_for`)."""

    def __init__(self, start: str = "<think>", end: str = "</think>", starts_inside: bool = False) -> None:
        self._start, self._end = start, end
        self._inside = starts_inside
        self._after_marker = starts_inside
        self._buffer = ""

    def feed(self, text: str) -> list[TextPart | ReasoningPart]:
        self._buffer += text
        return self._read(hold=True)

    def finish(self) -> list[TextPart | ReasoningPart]:
        """The held-back end (a marker never completed is text, or reasoning when inside)."""
        return self._read(hold=False)

    def _read(self, hold: bool) -> list[TextPart | ReasoningPart]:
        parts: list[TextPart | ReasoningPart] = []
        while True:
            marker = self._end if self._inside else self._start
            text, found, self._buffer = cut_at_marker(self._buffer, (marker,), hold)
            if self._after_marker:
                text = text.lstrip()
                self._after_marker = not text and found is None
            if text:
                parts.append(ReasoningPart(text) if self._inside else TextPart(text))
            if found is None:
                return parts
            self._inside, self._after_marker = not self._inside, True


def reasoning_markers(chat_template: str | None, vocab: Iterable[str]) -> tuple[str, str] | None:
    """("<think>", "</think>") for a model that thinks in them (its vocabulary has the token, or
    its template writes it), else None."""
    start = THINK_MARKERS[0]
    tokens = vocab if isinstance(vocab, Container) else frozenset(vocab)
    return THINK_MARKERS if start in tokens or start in (chat_template or "") else None


def starts_inside_for(prompt_text: str, start: str = THINK_MARKERS[0]) -> bool:
    """Whether the rendered prompt already opened the reasoning (Qwen3 thinking, DeepSeek-R1
    templates end the generation prompt with `<think>\\n`): the answer starts inside it."""
    return prompt_text.rstrip().endswith(start)
