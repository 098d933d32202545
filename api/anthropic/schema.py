"""POST /v1/messages and /v1/messages/count_tokens bodies -> typed requests (pydantic).

Unknown fields, top-level or on a block (cache_control, citations, ...), are ignored, so new
client fields do not break requests. A string where blocks may stand (system, a message's or a
tool result's content) is read as one text block: both forms render alike. Which blocks a role
may hold, and the text-only limits, are checked in api/anthropic/convert.py.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from api.errors import bad_request


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextBlock(_Model):
    type: Literal["text"]
    text: str


class ImageBlock(_Model):
    type: Literal["image"]
    source: dict[str, Any]


class DocumentBlock(_Model):
    type: Literal["document"]
    source: dict[str, Any]


class ToolReferenceBlock(_Model):
    """A deferred tool loaded into the conversation (what Claude Code's tool search answers)."""

    type: Literal["tool_reference"]
    tool_name: str


class ToolUseBlock(_Model):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(_Model):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Model):
    type: Literal["redacted_thinking"]
    data: str


def _as_blocks(value: Any) -> Any:
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


ToolResultContent = Annotated[
    TextBlock | ImageBlock | DocumentBlock | ToolReferenceBlock, Field(discriminator="type")
]


class ToolResultBlock(_Model):
    type: Literal["tool_result"]
    tool_use_id: str
    content: Annotated[list[ToolResultContent], BeforeValidator(
        _as_blocks, json_schema_input_type=str | list[ToolResultContent])] = []
    is_error: bool = False


ContentBlock = Annotated[
    TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock
    | RedactedThinkingBlock | ToolReferenceBlock,
    Field(discriminator="type"),
]


class Message(_Model):
    # "system": a mid-conversation system message, which Claude Code sends after the first turn.
    role: Literal["user", "assistant", "system"]
    content: Annotated[list[ContentBlock], BeforeValidator(
        _as_blocks, json_schema_input_type=str | list[ContentBlock])]


class Tool(_Model):
    """A custom tool (no type, or "custom"), or a server/built-in one ("web_search_20250305"...),
    which this server cannot run: convert leaves those out."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None
    defer_loading: bool = False

    @property
    def is_custom(self) -> bool:
        return self.type in (None, "custom")

    @model_validator(mode="after")
    def _custom_tools_have_a_schema(self) -> "Tool":
        if self.is_custom and self.input_schema is None:
            raise PydanticCustomError("missing", "input_schema is required for a custom tool")
        return self


class ToolChoice(_Model):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False

    @model_validator(mode="after")
    def _tool_has_a_name(self) -> "ToolChoice":
        if self.type == "tool" and self.name is None:
            raise PydanticCustomError("missing", 'name is required when type is "tool"')
        return self


class MessagesRequest(_Model):
    """The integrator reads the sampling fields (max_tokens, stop_sequences, temperature, top_p,
    top_k, tool_choice, stream, thinking) straight from here; max_tokens is None only for
    count_tokens."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    messages: list[Message] = Field(min_length=1)
    system: Annotated[list[TextBlock], BeforeValidator(
        _as_blocks, json_schema_input_type=str | list[TextBlock])] = []
    tools: list[Tool] = []
    tool_choice: ToolChoice | None = None
    stop_sequences: list[str] = []
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool = False
    metadata: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    context_management: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    service_tier: str | None = None


def parse_messages_request(
    body: dict[str, Any], *, for_count_tokens: bool = False
) -> MessagesRequest:
    """Validate `body`; the first problem is a 400 naming its path ("messages.0.content.1.type")."""
    try:
        request = MessagesRequest.model_validate(body)
    except ValidationError as error:
        raise _bad_request(error, body) from None
    if request.max_tokens is None and not for_count_tokens:
        raise bad_request("max_tokens: Field required", "max_tokens")
    return request


def _bad_request(error: ValidationError, body: dict[str, Any]) -> Exception:
    first = error.errors(include_url=False)[0]
    path = ".".join(str(part) for part in _body_path(first["loc"], body))
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        path = f"{path}.type"
    more = error.error_count() - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return bad_request(f"{path}: {first['msg']}{suffix}", path)


def _body_path(loc: tuple[int | str, ...], body: Any) -> list[int | str]:
    """pydantic's error location without the union tags it inserts: a tagged block's location
    reads (..., 1, "tool_use", "input"), the body's path is (..., 1, "input"). A tag is the part
    after a list index that names the `type` of that list item."""
    path: list[int | str] = []
    node = body
    for index, part in enumerate(loc):
        is_tag = (index and isinstance(loc[index - 1], int) and isinstance(node, dict)
                  and node.get("type") == part)
        if is_tag:
            continue
        path.append(part)
        node = node[part] if _has(node, part) else None
    return path


def _has(node: Any, part: int | str) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
