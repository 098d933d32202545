"""A MessagesRequest -> the neutral Conversation api/prompt_render.py renders.

Decisions, all deterministic so that re-sent history renders to the same tokens:
- Text blocks are joined with a blank line ("\\n\\n"), in system prompts, messages and tool
  results alike; a string stands for one text block, so both forms render alike.
- The system prompt loses Claude Code's billing line (`x-anthropic-billing-header: ...`, whose
  suffix changes on every request and would end the cached prefix at the first token).
- A user message's tool_result blocks become role "tool" messages, in order, then its other
  text (text blocks, tool_reference blocks) one user message. An error result reads
  "Error: <content>".
- A tool_reference (Claude Code's tool search loads deferred tools this way) becomes
  "Tool loaded: <name>" and, for a deferred tool, the tool's JSON line (as in the tool prompt)
  below it. Deferred tools (defer_loading) are not in the leading tool list, so loading one does
  not change the prompt's prefix.
- Assistant tool_use -> tool_calls with arguments written by prompt_json; thinking ->
  "reasoning_content"; redacted_thinking is dropped (nothing to show a model).
- Server tools (web_search_...) are left out: this server cannot run them.
Sampling fields are not converted: the integrator reads them from the MessagesRequest.
"""

from typing import Any

from api.anthropic.schema import (
    ContentBlock,
    DocumentBlock,
    ImageBlock,
    Message,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    Tool,
    ToolReferenceBlock,
    ToolResultBlock,
    ToolUseBlock,
    parse_messages_request,
)
from api.conversation import Conversation
from api.errors import bad_request
from api.tool_prompt import prompt_json, tool_line

BILLING_LINE_PREFIX = "x-anthropic-billing-header:"
_JOIN = "\n\n"
_ASSISTANT_BLOCKS = (TextBlock, ThinkingBlock, RedactedThinkingBlock, ToolUseBlock)
_USER_BLOCKS = (TextBlock, ToolReferenceBlock, ToolResultBlock)
_TOOL_RESULT_BLOCKS = (TextBlock, ToolReferenceBlock)


def read_request(body: dict[str, Any], for_count_tokens: bool = False
                 ) -> tuple[MessagesRequest, Conversation]:
    """The validated request and its conversation. For 100k messages this is about a second of
    Python: the routes run it off the event loop."""
    request = parse_messages_request(body, for_count_tokens=for_count_tokens)
    return request, to_conversation(request)


def to_conversation(request: MessagesRequest) -> Conversation:
    """Raises a 400 (naming the block's path) for blocks this server or that role cannot take."""
    custom = [tool for tool in request.tools if tool.is_custom]
    converter = _Converter({tool.name: _openai_tool(tool) for tool in custom if tool.defer_loading})
    system = system_text(request.system)
    messages = [{"role": "system", "content": system}] if system else []
    for index, message in enumerate(request.messages):
        messages += converter.message(message, f"messages.{index}")
    return Conversation(
        messages=messages,
        tools=[_openai_tool(tool) for tool in custom if not tool.defer_loading],
        deferred_tools=converter.deferred_tools,
    )


def system_text(blocks: list[TextBlock]) -> str:
    """The text of system blocks without billing lines, joined with a blank line."""
    texts = (_without_billing_line(block.text) for block in blocks)
    return _JOIN.join(text for text in texts if text)


def _without_billing_line(text: str) -> str:
    first, _, rest = text.partition("\n")
    return rest if first.lstrip().startswith(BILLING_LINE_PREFIX) else text


def _openai_tool(tool: Tool) -> dict[str, Any]:
    described = {} if tool.description is None else {"description": tool.description}
    return {"type": "function",
            "function": {"name": tool.name, **described, "parameters": tool.input_schema}}


class _Converter:
    """Converts messages in order, remembering each tool_use's name for its result."""

    def __init__(self, deferred_tools: dict[str, dict[str, Any]]) -> None:
        self.deferred_tools = deferred_tools
        self._call_names: dict[str, str] = {}

    def message(self, message: Message, path: str) -> list[dict[str, Any]]:
        if message.role == "assistant":
            return [self._assistant(message.content, path)]
        if message.role == "system":
            blocks = [_expect(block, (TextBlock,), "a system message", f"{path}.content.{i}")
                      for i, block in enumerate(message.content)]
            return [{"role": "system", "content": system_text(blocks)}]
        return self._user(message.content, path)

    def _assistant(self, blocks: list[ContentBlock], path: str) -> dict[str, Any]:
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        for index, block in enumerate(blocks):
            block_path = f"{path}.content.{index}"
            block = _expect(block, _ASSISTANT_BLOCKS, "an assistant message", block_path)
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ThinkingBlock):
                thoughts.append(block.thinking)
            elif isinstance(block, ToolUseBlock):
                self._call_names[block.id] = block.name
                calls.append({"id": block.id, "type": "function", "function": {
                    "name": block.name, "arguments": prompt_json(block.input)}})
        message: dict[str, Any] = {"role": "assistant", "content": _JOIN.join(texts)}
        if calls:
            message["tool_calls"] = calls
        if thoughts:
            message["reasoning_content"] = _JOIN.join(thoughts)
        return message

    def _user(self, blocks: list[ContentBlock], path: str) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        texts: list[str] = []
        for index, block in enumerate(blocks):
            block_path = f"{path}.content.{index}"
            block = _expect(block, _USER_BLOCKS, "a user message", block_path)
            if isinstance(block, ToolResultBlock):
                results.append(self._tool_result(block, block_path))
            else:
                texts.append(self._text(block))
        return results + ([{"role": "user", "content": _JOIN.join(texts)}] if texts else [])

    def _tool_result(self, block: ToolResultBlock, path: str) -> dict[str, Any]:
        parts = [_expect(part, _TOOL_RESULT_BLOCKS, "a tool_result", f"{path}.content.{index}")
                 for index, part in enumerate(block.content)]
        content = _JOIN.join(self._text(part) for part in parts)
        message = {"role": "tool", "tool_call_id": block.tool_use_id,
                   "content": f"Error: {content}" if block.is_error else content}
        if block.tool_use_id in self._call_names:
            message["name"] = self._call_names[block.tool_use_id]
        return message

    def _text(self, block: TextBlock | ToolReferenceBlock) -> str:
        if isinstance(block, TextBlock):
            return block.text
        tool = self.deferred_tools.get(block.tool_name)
        loaded = f"Tool loaded: {block.tool_name}"
        return f"{loaded}\n{tool_line(tool)}" if tool else loaded


def _expect(block: Any, allowed: tuple[type, ...], where: str, path: str) -> Any:
    """`block` if `where` may hold it; images and documents are refused (a text-only server)."""
    if isinstance(block, ImageBlock | DocumentBlock):
        raise bad_request(f"{path}: This model does not support {block.type} input", path)
    if not isinstance(block, allowed):
        raise bad_request(f"{path}: a {block.type} block is not allowed in {where}", path)
    return block
