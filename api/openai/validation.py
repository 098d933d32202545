"""Request bodies -> typed requests. Every error names the offending parameter."""

from dataclasses import dataclass
from typing import Any

import orjson

from api.errors import bad_request
from api.generation import GenerationParams
from api.tool_choice import AUTO, ToolChoice
from engine.sampling_params import MAX_TOP_LOGPROBS, SamplingParams

MAX_N = 128
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "an object"}


@dataclass(frozen=True)
class ChatRequest:
    params: GenerationParams
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    tool_choice: ToolChoice
    response_format: dict[str, Any] | None   # None, {"type": "json_object"} or json_schema's
    chat_template_kwargs: dict[str, Any]


@dataclass(frozen=True)
class CompletionRequest:
    params: GenerationParams
    prompts: list[str | list[int]]
    echo: bool


def parse_chat_request(body: dict[str, Any], vocab_size: int) -> ChatRequest:
    messages = _get(body, "messages", list)
    if not messages:
        raise bad_request("'messages' must be a non-empty array", "messages")
    logprobs = _top_logprobs_for_chat(body)
    max_tokens = _int(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", minimum=1)
    kwargs = _get(body, "chat_template_kwargs", dict) or {}
    tools = _tools(_get(body, "tools", list) or [])
    return ChatRequest(
        params=_generation_params(body, vocab_size, max_tokens, logprobs),
        messages=[_message(m, i) for i, m in enumerate(messages)],
        tools=tools,
        tool_choice=_tool_choice(body, tools),
        response_format=_response_format(body),
        chat_template_kwargs=kwargs,
    )


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    names = set()
    for index, tool in enumerate(tools):
        param = f"tools[{index}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                or not isinstance(function, dict):
            raise bad_request(f"'{param}' must be {{\"type\": \"function\", \"function\": "
                              "{\"name\": ..., \"parameters\": ...}}", param)
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request(f"'{param}.function.name' must be a non-empty string",
                              f"{param}.function.name")
        if name in names:
            raise bad_request(f"Tool name {name!r} appears twice in 'tools'", param)
        names.add(name)
        parameters = function.get("parameters", {})
        if not isinstance(parameters, dict):
            raise bad_request(f"'{param}.function.parameters' must be a JSON schema object",
                              f"{param}.function.parameters")
    return tools


def _tool_choice(body: dict[str, Any], tools: list[dict[str, Any]]) -> ToolChoice:
    parallel = _get(body, "parallel_tool_calls", bool)
    parallel = True if parallel is None else parallel
    choice = body.get("tool_choice")
    if choice is None:
        return ToolChoice(parallel=parallel) if tools else AUTO
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise bad_request("'tool_choice' is 'required' but no 'tools' were given", "tool_choice")
        return ToolChoice(choice, parallel=parallel)
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise bad_request("'tool_choice' must be 'none', 'auto', 'required' or "
                          "{\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")
    if name not in {tool["function"]["name"] for tool in tools}:
        raise bad_request(f"'tool_choice' names {name!r}, which is not in 'tools'", "tool_choice")
    return ToolChoice("named", name, parallel=False)


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    response_format = _get(body, "response_format", dict)
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema", {}) if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_request("'response_format.json_schema.schema' must be a JSON schema object",
                              "response_format.json_schema")
        return {"type": "json_schema", "schema": schema}
    raise bad_request(f"response_format type {kind!r} is not supported (text, json_object, "
                      "json_schema)", "response_format")


def parse_completion_request(body: dict[str, Any], vocab_size: int) -> CompletionRequest:
    logprobs = _int(body, "logprobs", minimum=0, maximum=MAX_TOP_LOGPROBS)
    echo = _bool(body, "echo")
    if echo and logprobs is not None:
        raise bad_request("'echo' together with 'logprobs' is not supported", "echo")
    best_of = _int(body, "best_of", minimum=1)
    if best_of is not None and best_of != _int(body, "n", minimum=1, default=1):
        raise bad_request("'best_of' other than 'n' is not supported", "best_of")
    return CompletionRequest(
        params=_generation_params(body, vocab_size, _int(body, "max_tokens", minimum=1), logprobs),
        prompts=_prompts(body.get("prompt"), vocab_size),
        echo=echo,
    )


def _generation_params(
    body: dict[str, Any], vocab_size: int, max_tokens: int | None, logprobs: int | None
) -> GenerationParams:
    stream = _bool(body, "stream")
    stream_options = _get(body, "stream_options", dict)
    if stream_options is not None and not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
    include_usage = _bool(stream_options or {}, "include_usage", param="stream_options.include_usage")
    _get(body, "user", str)
    top_k = _int(body, "top_k", minimum=-1, default=0)
    sampling = SamplingParams(
        temperature=_float(body, "temperature", 1.0, minimum=0.0),
        top_p=_float(body, "top_p", 1.0, minimum=0.0, maximum=1.0, exclusive_minimum=True),
        top_k=max(top_k, 0),
        min_p=_float(body, "min_p", 0.0, minimum=0.0, maximum=1.0),
        repetition_penalty=_float(
            body, "repetition_penalty", 1.0, minimum=0.0, exclusive_minimum=True
        ),
        presence_penalty=_float(body, "presence_penalty", 0.0, minimum=-2.0, maximum=2.0),
        frequency_penalty=_float(body, "frequency_penalty", 0.0, minimum=-2.0, maximum=2.0),
        logit_bias=_logit_bias(body, vocab_size),
        seed=_int(body, "seed"),
        logprobs=logprobs,
        stop_token_ids=tuple(_token_ids(_get(body, "stop_token_ids", list) or [], vocab_size,
                                        "stop_token_ids")),
    )
    return GenerationParams(
        model=_get(body, "model", str),
        n=_int(body, "n", minimum=1, maximum=MAX_N, default=1),
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        stop=_stop(body),
        ignore_eos=_bool(body, "ignore_eos"),
        logprobs=logprobs,
        sampling=sampling,
        cache_salt=_cache_salt(body),
    )


def _cache_salt(body: dict[str, Any]) -> str | None:
    """vLLM's field: requests with different salts share no prefix-cache blocks."""
    salt = _get(body, "cache_salt", str)
    if salt is not None and not salt:
        raise bad_request("'cache_salt' must be a non-empty string", "cache_salt")
    return salt


def _top_logprobs_for_chat(body: dict[str, Any]) -> int | None:
    top = _int(body, "top_logprobs", minimum=0, maximum=MAX_TOP_LOGPROBS)
    if not _bool(body, "logprobs"):
        if top:
            raise bad_request("'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
        return None
    return top or 0


def _message(message: Any, index: int) -> dict[str, Any]:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_request(f"'{param}' must be an object", param)
    role = message.get("role")
    if role not in CHAT_ROLES:
        raise bad_request(
            f"'{param}.role' must be one of {', '.join(CHAT_ROLES)}, got {role!r}", f"{param}.role"
        )
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(_text_part(part, f"{param}.content[{i}]") for i, part in enumerate(content))
    elif content is None:
        if role != "assistant":
            raise bad_request(f"'{param}.content' is required for role {role!r}", f"{param}.content")
        if not message.get("tool_calls"):
            raise bad_request(f"'{param}' needs 'content' or 'tool_calls'", f"{param}.content")
    elif not isinstance(content, str):
        raise bad_request(f"'{param}.content' must be a string or an array of parts", f"{param}.content")
    return {**message, "content": content}


def _text_part(part: Any, param: str) -> str:
    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
        raise bad_request(f"'{param}' must be a text part ({{\"type\": \"text\", \"text\": ...}}); "
                          "only text content is supported", param)
    return part["text"]


def _prompts(prompt: Any, vocab_size: int) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return [_token_ids(prompt, vocab_size, "prompt")]
        if all(isinstance(p, list) and p for p in prompt):
            return [_token_ids(p, vocab_size, f"prompt[{i}]") for i, p in enumerate(prompt)]
    raise bad_request(
        "'prompt' must be a string, an array of strings, an array of token ids "
        "or an array of token id arrays, and not empty", "prompt")


def _token_ids(values: list[Any], vocab_size: int, param: str) -> list[int]:
    for value in values:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab_size:
            raise bad_request(f"'{param}' holds {value!r}, not a token id in [0, {vocab_size})", param)
    return values


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad_request("'stop' must be a string or an array of strings", "stop")
    return tuple(s for s in stop if s)


def _logit_bias(body: dict[str, Any], vocab_size: int) -> tuple[tuple[int, float], ...]:
    bias = _get(body, "logit_bias", dict) or {}
    entries = []
    for key, value in bias.items():
        if not key.removeprefix("-").isdecimal() or not 0 <= int(key) < vocab_size:
            raise bad_request(f"'logit_bias' key {key!r} is not a token id in [0, {vocab_size})",
                              "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise bad_request(f"'logit_bias' value for {key} must be a number in [-100, 100]",
                              "logit_bias")
        entries.append((int(key), float(value)))
    return tuple(entries)


def _get(body: dict[str, Any], name: str, kind: type, param: str | None = None) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        param = param or name
        raise bad_request(f"'{param}' must be {_TYPE_NAMES[kind]}, got {_describe(value)}", param)
    return value


def _bool(body: dict[str, Any], name: str, param: str | None = None) -> bool:
    return bool(_get(body, name, bool, param))


def _int(body: dict[str, Any], name: str, *, minimum: int | None = None,
         maximum: int | None = None, default: int | None = None) -> int | None:
    value = _get(body, name, int)
    if value is None:
        return default
    _check_range(name, value, minimum, maximum, exclusive_minimum=False)
    return value


def _float(body: dict[str, Any], name: str, default: float, *, minimum: float | None = None,
           maximum: float | None = None, exclusive_minimum: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"'{name}' must be a number, got {_describe(value)}", name)
    _check_range(name, value, minimum, maximum, exclusive_minimum)
    return float(value)


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None,
                 exclusive_minimum: bool) -> None:
    too_low = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
    if too_low:
        bound = "greater than" if exclusive_minimum else "at least"
        raise bad_request(f"'{name}' must be {bound} {minimum}, got {value}", name)
    if maximum is not None and value > maximum:
        raise bad_request(f"'{name}' must be at most {maximum}, got {value}", name)


def _describe(value: Any) -> str:
    return f"{_TYPE_NAMES.get(type(value), type(value).__name__)} ({orjson.dumps(value).decode()[:40]})"
