"""Tools and structured output through the openai SDK against a live server."""

import json

import jsonschema
import openai
import pytest

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast.",
                                      "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {
        "name": "search_files", "description": "Search files by pattern.",
        "parameters": {"type": "object", "properties": {
            "pattern": {"type": "string"},
            "options": {"type": "object", "properties": {
                "case_sensitive": {"type": "boolean"},
                "paths": {"type": "array", "items": {"type": "string"}}}}},
            "required": ["pattern"]}}},
]
ASK = [{"role": "user", "content": "What will the weather be in Oslo for the next 3 days?"}]


def schema_of(name: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


def test_tool_choice_required_returns_a_valid_call(client: openai.OpenAI):
    response = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS,
                                              tool_choice="required", parallel_tool_calls=False,
                                              temperature=0, max_tokens=80)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1, choice.message
    for call in choice.message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), schema_of(call.function.name))
    assert "<tool_call>" not in (choice.message.content or "")


def test_named_tool_call_streams_its_arguments(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model="m", messages=ASK, tools=TOOLS, temperature=0, max_tokens=200, stream=True,
        tool_choice={"type": "function", "function": {"name": "search_files"}})
    chunks = list(stream)
    calls = [call for chunk in chunks for call in (chunk.choices[0].delta.tool_calls or [])]
    assert calls[0].id.startswith("call_") and calls[0].function.name == "search_files"
    assert {call.index for call in calls} == {0}
    fragments = [call.function.arguments for call in calls if call.function.arguments]
    assert len(fragments) > 1   # streamed as generated, not in one piece
    jsonschema.validate(json.loads("".join(fragments)), schema_of("search_files"))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(chunk.choices[0].delta.content for chunk in chunks)


def test_tool_result_round_trip(client: openai.OpenAI):
    first = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS,
                                           tool_choice="required", parallel_tool_calls=False,
                                           temperature=0, max_tokens=80)
    call = first.choices[0].message.tool_calls[0]
    follow_up = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Sunny all week."}]
    answer = client.chat.completions.create(model="m", messages=follow_up, tools=TOOLS,
                                            temperature=0, max_tokens=12)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert answer.usage.prompt_tokens_details.cached_tokens > 0


def test_parallel_calls_each_parse(client: openai.OpenAI):
    response = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS,
                                              tool_choice="required", temperature=0,
                                              max_tokens=120)
    calls = response.choices[0].message.tool_calls
    assert calls and len({call.id for call in calls}) == len(calls)
    for call in calls:   # a call cut by max_tokens comes back as text, never as a broken call
        jsonschema.validate(json.loads(call.function.arguments), schema_of(call.function.name))


def test_response_format_json_schema_validates(client: openai.OpenAI):
    schema = {"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"},
        "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
        "required": ["name", "age", "hobbies"], "additionalProperties": False}
    response = client.chat.completions.create(
        model="m", temperature=0, max_tokens=120,
        messages=[{"role": "user", "content": "Invent a person and describe them as JSON."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(response.choices[0].message.content), schema)


def test_response_format_json_object_parses(client: openai.OpenAI):
    response = client.chat.completions.create(
        model="m", temperature=0, max_tokens=60, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}])
    assert isinstance(json.loads(response.choices[0].message.content), dict)


@pytest.mark.parametrize("kwargs, param", [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
])
def test_bad_tools_are_400s_naming_the_parameter(client: openai.OpenAI, kwargs, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=ASK, max_tokens=4, **kwargs)
    assert caught.value.body["param"] == param


def test_a_schema_llguidance_cannot_compile(client: openai.OpenAI):
    """Auto mode parses such calls unconstrained; a demanded call is a 400 naming the problem."""
    look_around = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "pattern": "(?=a)a"}}}}}]
    answered = client.chat.completions.create(model="m", messages=ASK, tools=look_around,
                                              max_tokens=4)
    assert answered.choices[0].finish_reason in ("stop", "length", "tool_calls")
    with pytest.raises(openai.BadRequestError, match="Cannot constrain"):
        client.chat.completions.create(model="m", messages=ASK, tools=look_around,
                                       tool_choice="required", max_tokens=4)
