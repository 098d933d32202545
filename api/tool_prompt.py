"""Tools for templates that know nothing of tools: a tool prompt, and calls and results as text.

When the chat template does not reference `tools` (the default SmolLM2 template among them),
api/prompt_render.py puts this prompt first in the one leading system message, before the
conversation's own system text, so that conversations whose system text differs (Claude Code
sessions in different directories) still share the tools' tokens in the prefix cache. For tools
Read and Bash the prompt is:

    # Tools

    You may call tools to help with the user's request. The tools, one JSON object per line:
    <tools>
    {"name": "Read", "description": "Read a file", "parameters": {"type": "object", ...}}
    {"name": "Bash", "description": "Run a command", "parameters": {"type": "object", ...}}
    </tools>

    To call a tool, write its name and arguments as a JSON object within <tool_call></tool_call>:
    <tool_call>
    {"name": <tool-name>, "arguments": <args-json-object>}
    </tool_call>
    Write one such block per call; results come back within <tool_response></tool_response>.

That is the format the hermes tool-call parser reads. In the history an assistant's calls are
written in those tags after its text, and tool results become one user message of
<tool_response> blocks per run of results, so the template needs no tool roles. JSON is
written by prompt_json, in a fixed layout with keys in their given order, so that re-sent
history renders to the same tokens every time.
"""

import json
from typing import Any

_INTRO = (
    "# Tools\n\n"
    "You may call tools to help with the user's request. The tools, one JSON object per line:\n"
)
_CALL_FORMAT = (
    "\n\nTo call a tool, write its name and arguments as a JSON object within "
    "<tool_call></tool_call>:\n"
    '<tool_call>\n{"name": <tool-name>, "arguments": <args-json-object>}\n</tool_call>\n'
    "Write one such block per call; results come back within <tool_response></tool_response>."
)


def prompt_json(value: Any) -> str:
    """JSON as the prompt writes it: one line, `, ` and `: ` separators, keys in their given order,
    non-ASCII kept (what HF templates' `tojson` writes, and what models are used to reading)."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def tool_line(tool: dict[str, Any]) -> str:
    """An OpenAI function tool as one JSON line of its name, description and parameters."""
    function = tool["function"]
    return prompt_json({key: function[key] for key in ("name", "description", "parameters")
                        if key in function})


def tool_prompt(tools: list[dict[str, Any]]) -> str:
    lines = "\n".join(tool_line(tool) for tool in tools)
    return f"{_INTRO}<tools>\n{lines}\n</tools>{_CALL_FORMAT}"


def tools_as_text(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`messages` (system messages already folded) with the tool prompt leading the system message
    (none when there are no tools), calls written into assistant content and tool results as user
    messages."""
    rendered: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if message["role"] == "tool":
            response = f"<tool_response>\n{message['content']}\n</tool_response>"
            if index and messages[index - 1]["role"] == "tool":
                rendered[-1]["content"] += f"\n{response}"
            else:
                rendered.append({"role": "user", "content": response})
        elif message.get("tool_calls"):
            rendered.append(_calls_as_text(message))
        else:
            rendered.append(message)
    if not tools:
        return rendered
    prompt = tool_prompt(tools)
    if rendered and rendered[0]["role"] == "system":
        return [{**rendered[0], "content": f"{prompt}\n\n{rendered[0]['content']}"}, *rendered[1:]]
    return [{"role": "system", "content": prompt}, *rendered]


def _calls_as_text(message: dict[str, Any]) -> dict[str, Any]:
    calls = "\n".join(_call_text(call["function"]) for call in message["tool_calls"])
    text = message.get("content") or ""
    rest = {key: value for key, value in message.items() if key != "tool_calls"}
    return {**rest, "content": f"{text}\n{calls}" if text else calls}


def _call_text(function: dict[str, Any]) -> str:
    # A JSON string is written as sent (as HF templates do), an object as prompt_json writes it.
    arguments = function["arguments"]
    if not isinstance(arguments, str):
        arguments = prompt_json(arguments)
    call = f'{{"name": {prompt_json(function["name"])}, "arguments": {arguments}}}'
    return f"<tool_call>\n{call}\n</tool_call>"
