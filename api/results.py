"""A whole answer, gathered from its deltas: what a non-streaming response is built from."""

from dataclasses import dataclass, field

from api.deltas import (ChoiceDelta, ReasoningPart, TextPart, TokenLogprob, ToolCallArguments,
                        ToolCallEnd, ToolCallStart)


@dataclass
class ToolCall:
    call_id: str
    name: str
    arguments: str = ""
    valid: bool = True


@dataclass
class ChoiceResult:
    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_sequence: str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        for part in delta.parts:
            if isinstance(part, TextPart):
                self.text += part.text
            elif isinstance(part, ReasoningPart):
                self.reasoning += part.text
            elif isinstance(part, ToolCallStart):
                self.tool_calls.append(ToolCall(part.call_id, part.name))
            elif isinstance(part, ToolCallArguments):
                self.tool_calls[-1].arguments += part.fragment
            elif isinstance(part, ToolCallEnd):
                self.tool_calls[-1].valid = part.valid
        self.logprobs += delta.logprobs
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.stop_sequence = delta.stop_sequence or self.stop_sequence

    def settle_broken_calls(self) -> None:
        """A call whose arguments do not parse comes back as text: a client can act on neither."""
        for call in [c for c in self.tool_calls if not c.valid]:
            self.text += call.arguments
            self.tool_calls.remove(call)
        if self.finish_reason == "tool_calls" and not self.tool_calls:
            self.finish_reason = "stop"
