"""The Messages API's response shape: SSE events exactly as Anthropic sends them, or one body.

message_start goes out once the engine has accepted the request (within a step: the prefix hit
it expects is known, the prefill has not run, it may still wait its turn); then ping events
keep the stream alive through a long wait or prefill. The anthropic SDKs drop ping events, and
Claude Code 2.1.197 abandons (and retries) a stream that yields no event for 300 s, which a cold
20k-token prompt on a CPU exceeds; so when the request asked for thinking, each keep-alive
before the answer also sends an empty thinking delta, in a thinking block opened for it (where
a reasoning model's own thinking then goes).
"""

import json
from typing import Any

from api.anthropic.errors import error_body
from api.anthropic.usage import anthropic_usage
from api.deltas import ChoiceDelta, ReasoningPart, TextPart, ToolCallArguments, ToolCallStart
from api.errors import APIError
from api.generation import Submission, Usage, usage
from api.results import ChoiceResult
from api.sse import KEEPALIVE_COMMENT, event_frame

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "abort": "end_turn"}
PING = event_frame("ping", {"type": "ping"})
THINKING_BLOCK = {"type": "thinking", "thinking": "", "signature": ""}


def stop_reason(finish_reason: str | None, stop_sequence: str | None) -> str:
    return "stop_sequence" if stop_sequence else STOP_REASONS.get(finish_reason, "end_turn")


class MessageShape:
    def __init__(self, message_id: str, model: str, submission: Submission, block_size: int,
                 token_scale: float, thinking: bool = False) -> None:
        self._message_id = message_id
        self._model = model
        self._submission = submission
        self._block_size = block_size
        self._token_scale = token_scale
        self._started = False
        self._block_index = -1
        self._block_type: str | None = None   # the open content block's type
        self._finish: ChoiceDelta | None = None
        self._thinking_keepalive = thinking   # until the first content block opens

    def _usage(self, figures: Usage, output: bool = True) -> dict:
        return anthropic_usage(figures, self._block_size, self._token_scale, output)

    def _message(self, content: list[dict], stop: str | None, stop_sequence: str | None,
                 figures: Usage) -> dict:
        return {"id": self._message_id, "type": "message", "role": "assistant",
                "model": self._model, "content": content, "stop_reason": stop,
                "stop_sequence": stop_sequence, "usage": self._usage(figures)}

    def opening(self) -> list[bytes]:
        return []

    def frames(self, delta: ChoiceDelta) -> list[bytes]:
        frames = [] if self._started else [self._message_start()]
        for part in delta.parts:
            frames += self._part_frames(part)
        if delta.finish_reason is not None:
            self._finish = delta
        return frames

    def _message_start(self) -> bytes:
        self._started = True
        figures = usage(self._submission)
        message = self._message([], None, None, figures)
        message["usage"] = self._usage(figures, output=False)
        return event_frame("message_start", {"type": "message_start", "message": message})

    def _part_frames(self, part: Any) -> list[bytes]:
        if isinstance(part, TextPart) and part.text:
            return self._open("text", {"type": "text", "text": ""}) + [
                self._delta({"type": "text_delta", "text": part.text})]
        if isinstance(part, ReasoningPart) and part.text:
            return self._open("thinking", THINKING_BLOCK) + [
                self._delta({"type": "thinking_delta", "thinking": part.text})]
        if isinstance(part, ToolCallStart):
            return self._open("tool_use", {"type": "tool_use", "id": f"toolu_{part.call_id}",
                                           "name": part.name, "input": {}}, new=True)
        if isinstance(part, ToolCallArguments) and part.fragment:
            return [self._delta({"type": "input_json_delta", "partial_json": part.fragment})]
        return []

    def _open(self, block_type: str, block: dict, new: bool = False) -> list[bytes]:
        """Opens a content block unless one of this type is open (a tool call always opens one)."""
        self._thinking_keepalive = False
        if self._block_type == block_type and not new:
            return []
        frames = self._close_block()
        self._block_index += 1
        self._block_type = block_type
        return frames + [event_frame("content_block_start", {
            "type": "content_block_start", "index": self._block_index, "content_block": block})]

    def _delta(self, delta: dict) -> bytes:
        return event_frame("content_block_delta", {
            "type": "content_block_delta", "index": self._block_index, "delta": delta})

    def _close_block(self) -> list[bytes]:
        if self._block_type is None:
            return []
        self._block_type = None
        return [event_frame("content_block_stop",
                            {"type": "content_block_stop", "index": self._block_index})]

    def keepalive(self) -> list[bytes]:
        if not self._started:
            return [KEEPALIVE_COMMENT]
        if not self._thinking_keepalive:
            return [PING]
        frames = self._open("thinking", THINKING_BLOCK)
        self._thinking_keepalive = True
        return [PING, *frames, self._delta({"type": "thinking_delta", "thinking": ""})]

    def closing(self, figures: Usage) -> list[bytes]:
        finish = self._finish or ChoiceDelta(0, finish_reason="stop")
        frames = [] if self._started else [self._message_start()]
        frames += self._close_block()
        frames.append(event_frame("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(finish.finish_reason, finish.stop_sequence),
                      "stop_sequence": finish.stop_sequence},
            "usage": self._usage(figures)}))
        return frames + [event_frame("message_stop", {"type": "message_stop"})]

    def error(self, error: APIError) -> list[bytes]:
        return error_frames(error, self._token_scale)

    def body(self, results: list[ChoiceResult], figures: Usage) -> dict:
        (result,) = results
        return self._message(_content(result), stop_reason(result.finish_reason,
                                                            result.stop_sequence),
                             result.stop_sequence, figures)


def _content(result: ChoiceResult) -> list[dict]:
    content: list[dict] = []
    if result.reasoning:
        content.append({"type": "thinking", "thinking": result.reasoning, "signature": ""})
    if result.text or not result.tool_calls:
        content.append({"type": "text", "text": result.text})
    for call in result.tool_calls:
        content.append({"type": "tool_use", "id": f"toolu_{call.call_id}", "name": call.name,
                        "input": json.loads(call.arguments or "{}")})
    return content


def error_frames(error: APIError, token_scale: float) -> list[bytes]:
    """An error after the status line: Anthropic's `error` event."""
    return [event_frame("error", error_body(error, token_scale))]
