"""The neutral conversation both APIs render: OpenAI/HF chat-template messages plus tools."""

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Conversation:
    """What api/prompt_render.py turns into prompt token ids, whichever API the request came in by.

    messages are in the shape HF chat templates expect: {"role": "system"|"user"|"assistant"|"tool",
    "content": str}, an assistant's calls as "tool_calls": [{"id", "type": "function",
    "function": {"name", "arguments": <JSON string>}}], a tool result's "tool_call_id" (and
    "name" where known), an assistant's "reasoning_content". tools are OpenAI function tools
    {"type": "function", "function": {"name", "description", "parameters"}}, in the order the
    prompt lists them. deferred_tools (name -> tool, same shape) are offered but not listed: their
    definitions are written into the conversation where they are loaded, so loading one does not
    change the prompt's prefix; a tool-call parser should still accept their names.
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    deferred_tools: dict[str, dict[str, Any]] = field(default_factory=dict)
