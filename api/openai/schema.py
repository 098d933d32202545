"""The OpenAI request bodies (POST /v1/chat/completions and /v1/completions) as pydantic models,
for the OpenAPI description (api/openapi.py).

What checks a request is api/openai/validation.py; these models describe its fields, types and
bounds, with its constants (MAX_N, MAX_TOP_LOGPROBS, CHAT_ROLES), so those cannot drift apart.
Optional fields may be null (the validator reads null as absent); unknown fields are allowed, as
the server ignores them.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.openai.validation import CHAT_ROLES, MAX_N, MAX_TOP_LOGPROBS

TokenId = Annotated[int, Field(ge=0, description="a token id below the vocabulary size")]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Bias = Annotated[float, Field(ge=-100, le=100)]
TokenIdKey = Annotated[str, Field(pattern=r"^[0-9]+$")]
Prompt = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Model):
    include_usage: bool | None = None


class _GenerationFields(_Model):
    """The fields both routes read (api.openai.validation._generation_params)."""

    model: str | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = Field(default=None,
                                                 description="only when stream is true")
    user: str | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool | None = None
    temperature: Annotated[float, Field(ge=0.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1, description="0 or -1: off")] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[TokenIdKey, Bias] | None = None
    seed: int | None = None
    stop_token_ids: list[TokenId] | None = None
    cache_salt: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="requests with different salts share no prefix-cache blocks")


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ChatMessage(_Model):
    role: Literal[tuple(role for role in CHAT_ROLES if role != "assistant")]
    content: str | list[TextPart]


class AssistantMessage(_Model):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None


class FunctionDefinition(_Model):
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    parameters: dict[str, Any] = Field(default={}, description="a JSON schema")


class ChatTool(_Model):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(_Model):
    name: str


class NamedToolChoice(_Model):
    type: Literal["function"] = "function"
    function: FunctionName


class JSONSchemaFormat(_Model):
    name: str | None = None
    schema_: dict[str, Any] = Field(default={}, alias="schema")


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JSONSchemaFormat | None = Field(default=None,
                                                 description="when type is json_schema")


class ChatCompletionRequest(_GenerationFields):
    messages: Annotated[list[Annotated[ChatMessage | AssistantMessage,
                                       Field(discriminator="role")]], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="takes precedence over max_tokens")
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = Field(
        default=None, description="requires logprobs")
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class CompletionRequest(_GenerationFields):
    prompt: (Prompt | Annotated[list[Prompt], Field(min_length=1)]
             | Annotated[list[TokenId], Field(min_length=1)]
             | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)])
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool | None = Field(default=None, description="not together with logprobs")
    best_of: Annotated[int, Field(ge=1)] | None = Field(default=None, description="equal to n")
