"""Typed deltas: what the shared response pipeline hands each protocol.

Engine token events -> detokenizer -> stop strings -> reasoning parser -> tool-call parser ->
these parts. OpenAI chat turns them into `content` / `reasoning_content` / `tool_calls` chunk
deltas, the Anthropic Messages API into content blocks and their events.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ReasoningPart:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    call_index: int     # 0, 1, ... within one answer
    call_id: str        # unique per call ("call_..." / "toolu_..." is the protocol's business)
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    call_index: int
    fragment: str       # the next piece of the call's arguments, as JSON text


@dataclass(frozen=True)
class ToolCallEnd:
    call_index: int
    valid: bool = True  # False: the arguments, joined, are not a JSON object


Part = TextPart | ReasoningPart | ToolCallStart | ToolCallArguments | ToolCallEnd


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class ChoiceDelta:
    """What one engine event of one choice became: parts, logprobs, and the finish."""

    index: int
    parts: list[Part] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None  # stop, length, tool_calls, abort; set on the last delta
    stop_sequence: str | None = None  # the stop string that ended the choice, if one did

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.parts if isinstance(part, TextPart))
