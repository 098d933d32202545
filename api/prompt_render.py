"""A Conversation -> prompt token ids through the model's chat template; one renderer for both APIs.

A template that references `tools` gets them as HF templates expect (OpenAI function tools, calls
with their arguments as objects, role "tool" results). Any other template gets the tool prompt
and text calls of api/tool_prompt.py. Either way system messages are folded first
(api/system_folding.py). The rendering is deterministic and prefix-stable: a conversation with
turns appended renders to a prompt that starts with the earlier prompt's tokens (up to the
generation prompt), which is what the prefix cache needs.
"""

import json
import re
from typing import Any

from api.conversation import Conversation
from api.errors import bad_request
from api.system_folding import fold_system_messages
from api.tool_prompt import tools_as_text
from engine.chat_template import ChatTemplate, ChatTemplateError

_TOOLS_VARIABLE = re.compile(r"\btools\b")


def render_prompt(
    tokenizer: Any, conversation: Conversation, chat_template_kwargs: dict[str, Any] | None = None
) -> list[int]:
    """The prompt's token ids, ready for the assistant's answer, rendered in the sandbox of
    engine/chat_template.py. Template errors, output past its bound and malformed tool calls are
    the client's: a 400 naming "messages"."""
    kwargs: dict[str, Any] = {"add_generation_prompt": True, **(chat_template_kwargs or {})}
    messages = fold_system_messages(conversation.messages)
    try:
        if template_supports_tools(tokenizer):
            messages = [_with_argument_objects(message) for message in messages]
            if conversation.tools:
                kwargs["tools"] = conversation.tools
        else:
            messages = tools_as_text(messages, conversation.tools)
        text = ChatTemplate.of(tokenizer).render(messages, **kwargs)
    except (ChatTemplateError, ValueError, TypeError, KeyError) as error:
        raise bad_request(f"The chat template failed on these messages: {error}", "messages") from None
    # The template writes the special tokens (BOS) itself.
    return tokenizer.encode(text, add_special_tokens=False)


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the chat template (any of them, where the tokenizer has several) uses `tools`."""
    template = tokenizer.chat_template
    templates = template.values() if isinstance(template, dict) else [template]
    return any(t and _TOOLS_VARIABLE.search(t) for t in templates)


def _with_argument_objects(message: dict[str, Any]) -> dict[str, Any]:
    """Calls' JSON-string arguments as objects: templates write them with `tojson` (a string would
    come out quoted twice). Arguments that are not a JSON object stay as sent."""
    if not message.get("tool_calls"):
        return message
    return {**message, "tool_calls": [_call_with_argument_object(call)
                                      for call in message["tool_calls"]]}


def _call_with_argument_object(call: dict[str, Any]) -> dict[str, Any]:
    arguments = call["function"]["arguments"]
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        return call
    if not isinstance(parsed, dict):
        return call
    return {**call, "function": {**call["function"], "arguments": parsed}}
