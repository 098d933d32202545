import copy
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

import api.tool_prompt
from api.anthropic.convert import to_conversation
from api.anthropic.schema import parse_messages_request
from api.conversation import Conversation
from api.errors import APIError
from api.prompt_render import render_prompt, template_supports_tools
from api.system_folding import fold_system_messages
from api.tool_prompt import tool_prompt

CACHE = {"cache_control": {"type": "ephemeral"}}
SCHEMA = {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}
TOOLS = [
    {"name": "Bash", "description": "Run a shell command.", "input_schema": SCHEMA},
    {"name": "ToolSearch", "description": "Find deferred tools.",
     "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}},
    {"name": "mcp__slack__post", "description": "Post a message to Slack.", "defer_loading": True,
     "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}},
]
SYSTEM_PROMPT = "You are an interactive CLI tool that helps users with software tasks. " * 20
# Tests for the template path: a small Qwen2.5-style template that knows tools, calls and results.
TOOL_TEMPLATE = """
{%- if tools %}{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant' }}{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for call in message.tool_calls %}
{{- '\\n<tool_call>\\n{"name": "' + call.function.name + '", "arguments": ' }}
{{- call.function.arguments | tojson }}{{- '}\\n</tool_call>' }}
{%- endfor %}{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""


@pytest.fixture(scope="module")
def tokenizer(loaded_model):
    return loaded_model.tokenizer


@pytest.fixture(scope="module")
def tool_tokenizer(tokenizer):
    tool_aware = copy.deepcopy(tokenizer)
    tool_aware.chat_template = TOOL_TEMPLATE
    return tool_aware


def claude_code_request(messages: list[dict], billing: str, cwd: str = "/repo") -> Conversation:
    body = {
        "model": "claude-sonnet-4-5", "max_tokens": 1000, "tools": TOOLS,
        "system": [
            {"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1; cch={billing}"},
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {"type": "text", **CACHE,
             "text": f"{SYSTEM_PROMPT}\nMemory: /home/me/.claude/projects{cwd}/MEMORY.md"},
        ],
        "messages": messages,
    }
    return to_conversation(parse_messages_request(body))


def claude_code_turns(cwd: str = "/repo") -> list[Conversation]:
    """Three requests of one session: each re-sends the history and adds a turn."""
    first_user = {"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>Today is Monday.</system-reminder>"},
        {"type": "text", "text": "Post the test results to Slack.", **CACHE}]}
    env = f"Working directory: {cwd}\nPlatform: linux"
    turn_1 = [first_user, {"role": "system", "content": [{"type": "text", "text": env, **CACHE}]}]
    turn_2 = [first_user, {"role": "system", "content": env},
              {"role": "assistant", "content": [
                  {"type": "thinking", "thinking": "I need the Slack tool.", "signature": "s1"},
                  {"type": "text", "text": "Let me find the Slack tool."},
                  {"type": "tool_use", "id": "toolu_01", "name": "ToolSearch",
                   "input": {"query": "slack"}}]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                                            "content": [{"type": "tool_reference",
                                                         "tool_name": "mcp__slack__post"}]}]}]
    turn_3 = [*turn_2,
              {"role": "assistant", "content": [
                  {"type": "tool_use", "id": "toolu_02", "name": "Bash",
                   "input": {"command": "pytest -q"}},
                  {"type": "tool_use", "id": "toolu_03", "name": "mcp__slack__post",
                   "input": {"text": "tests: 12 passed ✓"}}]},
              {"role": "user", "content": [
                  {"type": "tool_result", "tool_use_id": "toolu_02", "content": "12 passed"},
                  {"type": "tool_result", "tool_use_id": "toolu_03", "is_error": True,
                   "content": "channel not found"},
                  {"type": "text", "text": "Use #general."}]}]
    return [claude_code_request(messages, billing, cwd)
            for messages, billing in ((turn_1, "fa690"), (turn_2, "07b1c"), (turn_3, "e4d02"))]


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("which", ["fallback", "template"])
def test_each_turn_extends_the_previous_prompt(which, tokenizer, tool_tokenizer):
    chosen = tokenizer if which == "fallback" else tool_tokenizer
    prompts = [render_prompt(chosen, turn) for turn in claude_code_turns()]
    for earlier, later in zip(prompts, prompts[1:]):
        assert len(later) > len(earlier)
        assert common_prefix(earlier, later) >= 0.9 * len(earlier)
        # In fact the whole earlier prompt, generation prompt included, opens the later one.
        assert later[:len(earlier)] == earlier


def test_sessions_in_other_directories_share_the_tool_prompt(tokenizer):
    here, there = (render_prompt(tokenizer, claude_code_turns(cwd)[0]) for cwd in ("/a", "/b"))
    conversation = claude_code_turns()[0]
    tools_only = tokenizer.encode(tool_prompt(conversation.tools), add_special_tokens=False)
    assert common_prefix(here, there) > len(tools_only)


def test_fallback_writes_calls_and_results_as_hermes_text(tokenizer):
    text = tokenizer.decode(render_prompt(tokenizer, claude_code_turns()[2]))
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert '\n{"name": "Bash", "description": "Run a shell command.", "parameters": ' in text
    assert "mcp__slack__post" not in text.split("</tools>")[0]
    assert ("<|im_start|>assistant\n<tool_call>\n"
            '{"name": "Bash", "arguments": {"command": "pytest -q"}}\n</tool_call>\n<tool_call>\n'
            '{"name": "mcp__slack__post", "arguments": {"text": "tests: 12 passed ✓"}}\n'
            "</tool_call><|im_end|>") in text
    assert ("<|im_start|>user\n<tool_response>\n12 passed\n</tool_response>\n"
            "<tool_response>\nError: channel not found\n</tool_response><|im_end|>\n"
            "<|im_start|>user\nUse #general.<|im_end|>\n<|im_start|>assistant\n") in text
    assert "Tool loaded: mcp__slack__post\n{\"name\": \"mcp__slack__post\"" in text
    assert "x-anthropic-billing-header" not in text


def test_openai_messages_render_in_the_fallback(tokenizer):
    conversation = Conversation(messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ], tools=[{"type": "function", "function": {"name": "weather", "parameters": {}}}])
    text = tokenizer.decode(render_prompt(tokenizer, conversation))
    assert ('<|im_start|>assistant\n<tool_call>\n'
            '{"name": "weather", "arguments": {"city":"Paris"}}') in text
    assert "<|im_start|>user\n<tool_response>\n18C\n</tool_response><|im_end|>" in text


def test_without_tools_the_prompt_is_the_plain_template(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert render_prompt(tokenizer, Conversation(messages)) == tokenizer.encode(
        expected, add_special_tokens=False)


def test_template_path_passes_tools_to_the_template(tokenizer, tool_tokenizer):
    assert not template_supports_tools(tokenizer)
    assert template_supports_tools(tool_tokenizer)
    text = tool_tokenizer.decode(render_prompt(tool_tokenizer, claude_code_turns()[2]))
    system, _, rest = text.partition("</tools>")
    assert system.startswith("<|im_start|>system\nYou are Claude Code")
    assert '{"type": "function", "function": {"name": "Bash"' in system
    assert "mcp__slack__post" not in system and "You may call tools" not in text
    # Arguments reach the template as objects, so its tojson writes them once.
    assert '{"name": "Bash", "arguments": {"command": "pytest -q"}}' in rest
    assert "<tool_response>\n12 passed\n</tool_response>\n<tool_response>\nError:" in rest


@pytest.mark.parametrize(("template", "message"), [
    ("{{ raise_exception('roles must alternate') }}", "line 1: roles must alternate"),
    ("{{ messages[0].__class__.__mro__ }}", "line 1: access to attribute '__class__'"),
    ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "wrote more than 67,108,864"),
    (None, "this model has no chat template"),
], ids=["raised", "sandbox", "runaway", "none"])
def test_template_errors_are_the_clients(tokenizer, template, message):
    failing = copy.deepcopy(tokenizer)
    failing.chat_template = template
    with pytest.raises(APIError) as caught:
        render_prompt(failing, Conversation([{"role": "user", "content": "hi"}]))
    assert caught.value.status == 400 and caught.value.param == "messages"
    assert message in caught.value.message


def test_the_module_docstring_quotes_the_tool_prompt():
    # The README quotes the docstring: it must show the prompt as written, but for the tool lines.
    doc = api.tool_prompt.__doc__
    documented = textwrap.dedent(doc[doc.index("    # Tools"):doc.index("That is the format")])
    prompt = tool_prompt([{"type": "function", "function": {"name": "Read"}}])

    def fixed(text: str) -> list[str]:
        return [line for line in text.strip().splitlines() if not line.startswith('{"name": "')]

    assert fixed(documented) == fixed(prompt)


def test_fold_system_messages():
    assert fold_system_messages([
        {"role": "system", "content": "a"}, {"role": "system", "content": "b"},
        {"role": "user", "content": "u"}, {"role": "system", "content": "c"},
        {"role": "system", "content": ""}, {"role": "assistant", "content": "x"},
        {"role": "system", "content": "d"},
    ]) == [{"role": "system", "content": "a\n\nb"}, {"role": "user", "content": "u\n\nc"},
           {"role": "assistant", "content": "x"}, {"role": "user", "content": "d"}]


MESSAGES = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant", "tool"]),
    "content": st.text(alphabet="ab ", max_size=3),
}), max_size=8)


@given(MESSAGES)
def test_folding_more_turns_never_changes_the_earlier_ones(messages):
    folded = fold_system_messages(messages)
    for cut in range(len(messages) + 1):
        if cut < len(messages) and messages[cut]["role"] == "system":
            continue  # a system message belongs to the request that carries the turn before it
        earlier = fold_system_messages(messages[:cut])
        assert folded[:len(earlier)] == earlier
    assert all(m["role"] != "system" for m in folded[1:])
