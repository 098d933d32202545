import json

import pytest

from api.anthropic.convert import system_text, to_conversation
from api.anthropic.schema import TextBlock, parse_messages_request
from api.errors import APIError

BASH = {"name": "Bash", "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                         "required": ["command"]}}
SLACK = {"name": "mcp__slack__post", "description": "Post to Slack", "defer_loading": True,
         "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}}
CACHE = {"cache_control": {"type": "ephemeral"}}
HI = {"messages": [{"role": "user", "content": "hi"}]}


def claude_code_body() -> dict:
    """A Claude Code-like request: every block kind, a mid-conversation system message."""
    return {
        "model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": True,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.37; cch=fa690;"},
            {"type": "text", "text": "You are Claude Code.", **CACHE},
            {"type": "text", "text": "x-anthropic-billing-header: cch=1\nBe brief."},
        ],
        "tools": [BASH, SLACK, {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                  {"name": "ToolSearch", "input_schema": {"type": "object"}, **CACHE}],
        "tool_choice": {"type": "auto"},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                {"type": "text", "text": "List the files", **CACHE}]},
            {"role": "system", "content": [{"type": "text", "text": "cwd: /repo", **CACHE}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Use ls.", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Listing."},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash",
                 "input": {"command": "ls", "description": "liste ü"}},
                {"type": "tool_use", "id": "toolu_2", "name": "ToolSearch",
                 "input": {"q": "slack"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.py", **CACHE},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [
                    {"type": "text", "text": "Found:"},
                    {"type": "tool_reference", "tool_name": "mcp__slack__post"},
                    {"type": "tool_reference", "tool_name": "gone"}]},
                {"type": "tool_result", "tool_use_id": "toolu_9", "is_error": True,
                 "content": [{"type": "text", "text": "denied"}]},
                {"type": "text", "text": "Now post it."},
                {"type": "tool_reference", "tool_name": "mcp__slack__post"}]},
        ],
        "metadata": {"user_id": "u"}, "thinking": {"type": "enabled", "budget_tokens": 1024},
        "context_management": {"edits": []}, "output_config": {"effort": "high"},
        "service_tier": "auto", "temperature": 1, "top_k": 40, "stop_sequences": ["</end>"],
        "a_field_from_the_future": {"x": 1},
    }


def test_claude_code_body_converts_to_a_conversation():
    request = parse_messages_request(claude_code_body())
    assert (request.max_tokens, request.stream, request.top_k) == (32000, True, 40)
    assert request.stop_sequences == ["</end>"] and request.tool_choice.type == "auto"
    conversation = to_conversation(request)
    slack_line = ('{"name": "mcp__slack__post", "description": "Post to Slack", "parameters": '
                  '{"type": "object", "properties": {"text": {"type": "string"}}}}')
    assert conversation.messages == [
        {"role": "system", "content": "You are Claude Code.\n\nBe brief."},
        {"role": "user", "content": "<system-reminder>ctx</system-reminder>\n\nList the files"},
        {"role": "system", "content": "cwd: /repo"},
        {"role": "assistant", "content": "Listing.", "reasoning_content": "Use ls.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {
                "name": "Bash", "arguments": '{"command": "ls", "description": "liste ü"}'}},
            {"id": "toolu_2", "type": "function", "function": {
                "name": "ToolSearch", "arguments": '{"q": "slack"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "name": "Bash", "content": "a.py"},
        {"role": "tool", "tool_call_id": "toolu_2", "name": "ToolSearch",
         "content": f"Found:\n\nTool loaded: mcp__slack__post\n{slack_line}\n\nTool loaded: gone"},
        {"role": "tool", "tool_call_id": "toolu_9", "content": "Error: denied"},
        {"role": "user", "content": f"Now post it.\n\nTool loaded: mcp__slack__post\n{slack_line}"},
    ]
    assert [tool["function"]["name"] for tool in conversation.tools] == ["Bash", "ToolSearch"]
    assert conversation.tools[0] == {"type": "function", "function": {
        "name": "Bash", "description": "Run a shell command", "parameters": BASH["input_schema"]}}
    assert "description" not in conversation.tools[1]["function"]
    assert list(conversation.deferred_tools) == ["mcp__slack__post"]
    assert json.loads(slack_line) == {
        "name": "mcp__slack__post", **{k: v for k, v in conversation.deferred_tools[
            "mcp__slack__post"]["function"].items() if k != "name"}}


def test_string_and_block_forms_convert_alike():
    one, two = {"type": "text", "text": "one", **CACHE}, {"type": "text", "text": "two"}
    as_blocks = {"model": "m", "max_tokens": 8, "system": [one, two],
                 "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                              {"role": "system", "content": [one, two]}]}
    as_strings = {"model": "m", "max_tokens": 8, "system": "one\n\ntwo",
                  "messages": [{"role": "user", "content": "hi"},
                               {"role": "system", "content": "one\n\ntwo"}]}
    assert (to_conversation(parse_messages_request(as_blocks))
            == to_conversation(parse_messages_request(as_strings)))


@pytest.mark.parametrize("texts, expected", [
    (["x-anthropic-billing-header: cch=1;", "A"], "A"),
    (["x-anthropic-billing-header: cch=2;\nA", "B"], "A\n\nB"),
    (["A\nx-anthropic-billing-header: kept, not a leading line"],
     "A\nx-anthropic-billing-header: kept, not a leading line"),
    (["", "A"], "A"),
])
def test_system_text_drops_billing_lines(texts, expected):
    assert system_text([TextBlock(type="text", text=text) for text in texts]) == expected


def test_count_tokens_needs_no_max_tokens():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert parse_messages_request(body, for_count_tokens=True).max_tokens is None
    with pytest.raises(APIError, match="max_tokens: Field required"):
        parse_messages_request(body)


def error_of(body: dict, *, convert: bool = False) -> APIError:
    with pytest.raises(APIError) as caught:
        request = parse_messages_request({"model": "m", "max_tokens": 8, **HI, **body})
        if convert:
            to_conversation(request)
    assert caught.value.status == 400
    return caught.value


def user(*blocks) -> dict:
    return {"messages": [{"role": "user", "content": list(blocks)}]}


@pytest.mark.parametrize("body, param, fragment", [
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"max_tokens": "8"}, "max_tokens", "valid integer"),
    ({"temperature": 1.5}, "temperature", "less than or equal to 1"),
    ({"messages": []}, "messages", "at least 1 item"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "'user', 'assistant'"),
    ({"messages": [{"role": "user"}]}, "messages.0.content", "Field required"),
    (user({"type": "text", "text": "a"}, {"type": "video"}), "messages.0.content.1.type",
     "does not match any of the expected tags"),
    (user({"text": "a"}), "messages.0.content.0.type", "Unable to extract tag"),
    (user({"type": "text", "text": 5}), "messages.0.content.0.text", "valid string"),
    (user({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text"}]}),
     "messages.0.content.0.content.0.text", "Field required"),
    ({"messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "Bash", "input": "ls"}]}]},
     "messages.0.content.0.input", "valid dictionary"),
    ({"tools": [{"name": "Bash"}]}, "tools.0", "input_schema is required"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice", "name is required"),
    ({"system": 5}, "system", "valid list"),
])
def test_bad_bodies_name_the_field_path(body, param, fragment):
    error = error_of(body)
    assert error.param == param
    assert error.message.startswith(f"{param}: ") and fragment in error.message


@pytest.mark.parametrize("body, param, fragment", [
    (user({"type": "text", "text": "look"},
          {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}),
     "messages.0.content.1", "This model does not support image input"),
    (user({"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "image", "source": {"type": "url", "url": "http://x"}}]}),
     "messages.0.content.0.content.0", "This model does not support image input"),
    (user({"type": "document", "source": {"type": "text", "data": "x"}}),
     "messages.0.content.0", "This model does not support document input"),
    (user({"type": "tool_use", "id": "t", "name": "Bash", "input": {}}),
     "messages.0.content.0", "a tool_use block is not allowed in a user message"),
    ({"messages": [{"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "t"}]}]},
     "messages.0.content.0", "a tool_result block is not allowed in an assistant message"),
])
def test_blocks_this_server_cannot_take_are_refused_with_their_path(body, param, fragment):
    error = error_of(body, convert=True)
    assert error.param == param and fragment in error.message


def test_tool_use_arguments_are_written_the_same_every_time():
    def arguments(body_input: dict) -> str:
        body = {"model": "m", "max_tokens": 8, "messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "Edit", "input": body_input}]}]}
        return to_conversation(parse_messages_request(body)).messages[0]["tool_calls"][0][
            "function"]["arguments"]

    value = {"path": "ü.py", "edits": [{"old": "a", "new": "b"}], "n": 1.5}
    assert arguments(value) == '{"path": "ü.py", "edits": [{"old": "a", "new": "b"}], "n": 1.5}'
    assert arguments(json.loads(json.dumps(value))) == arguments(value)
