"""One tool call as it streams out: its parts, and whether its arguments came out a JSON object."""

import json
import uuid

from api.deltas import Part, ToolCallArguments, ToolCallEnd, ToolCallStart


def new_call_id() -> str:
    """A fresh id per call; the protocols add their own prefix ("call_", "toolu_")."""
    return uuid.uuid4().hex[:24]


def offered(name: str, tool_names: frozenset[str]) -> bool:
    """Whether a call may name `name`: one of the offered tools, or any name when none were listed."""
    return name in tool_names if tool_names else bool(name)


def json_or(text: str, default: object) -> object:
    """`text` parsed as JSON, or `default` when it is not JSON (model output often is not)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return default


def is_json_object(text: str) -> bool:
    return isinstance(json_or(text, None), dict)


class StreamedCall:
    """Makes one call's parts, remembering the arguments sent so that its end can tell if they
    joined into a JSON object."""

    def __init__(self, call_index: int, name: str) -> None:
        self.call_index = call_index
        self.name = name
        self.arguments = ""

    def start(self) -> list[Part]:
        return [ToolCallStart(self.call_index, new_call_id(), self.name)]

    def send(self, fragment: str) -> list[Part]:
        self.arguments += fragment
        return [ToolCallArguments(self.call_index, fragment)] if fragment else []

    def send_member(self, key: str, value: object) -> list[Part]:
        """For formats whose arguments come one by one: `"key": value` as the next member."""
        member = f"{json.dumps(key, ensure_ascii=False)}: {json.dumps(value, ensure_ascii=False, default=str)}"
        return self.send(("{" if not self.arguments else ", ") + member)

    def close_members(self) -> list[Part]:
        return self.send("}" if self.arguments else "{}")

    def end(self) -> list[Part]:
        return [ToolCallEnd(self.call_index, is_json_object(self.arguments))]
