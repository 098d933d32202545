"""The official anthropic SDK against a live server: text, streaming, tools, usage, errors."""

import json
import uuid

import anthropic
import jsonschema
import pytest

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
# This SDK has no sampling parameters (temperature, top_p, top_k); the server still takes them.
GREEDY = {"temperature": 0}
WEATHER = {
    "name": "get_weather",
    "description": "Current weather of a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"},
                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
    },
}


def test_text_answer_with_usage_and_a_unique_id(anthropic_client: anthropic.Anthropic):
    first = anthropic_client.messages.create(model="claude-sonnet-4-5", max_tokens=16,
                                             extra_body=GREEDY, messages=CAPITAL)
    second = anthropic_client.messages.create(model="claude-sonnet-4-5", max_tokens=16,
                                              extra_body=GREEDY, messages=CAPITAL)
    assert first.type == "message" and first.role == "assistant"
    assert first.model == "claude-sonnet-4-5"
    assert first.content[0].type == "text" and "Paris" in first.content[0].text
    assert first.stop_reason in ("end_turn", "max_tokens")
    assert first.id.startswith("msg_") and first.id != second.id
    usage = second.usage
    prompt = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    assert usage.cache_read_input_tokens > 0 and prompt > usage.cache_read_input_tokens
    assert 1 <= usage.output_tokens <= 16


def test_stream_events_in_anthropic_order(anthropic_client: anthropic.Anthropic):
    whole = anthropic_client.messages.create(model="m", max_tokens=12, extra_body=GREEDY,
                                             messages=CAPITAL)
    with anthropic_client.messages.stream(model="m", max_tokens=12, extra_body=GREEDY,
                                          messages=CAPITAL) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop" and kinds[-2] == "message_delta"
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    start = events[0].message
    assert start.usage.input_tokens + start.usage.cache_read_input_tokens \
        + start.usage.cache_creation_input_tokens == whole.usage.input_tokens \
        + whole.usage.cache_read_input_tokens + whole.usage.cache_creation_input_tokens
    assert final.content[0].text == whole.content[0].text
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_stop_sequence_is_reported(anthropic_client: anthropic.Anthropic):
    whole = anthropic_client.messages.create(model="m", max_tokens=16, extra_body=GREEDY,
                                             messages=CAPITAL)
    word = whole.content[0].text.split()[2]
    stopped = anthropic_client.messages.create(model="m", max_tokens=16, extra_body=GREEDY,
                                               messages=CAPITAL, stop_sequences=[word])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert word not in stopped.content[0].text


def test_tool_choice_any_returns_schema_valid_input(anthropic_client: anthropic.Anthropic):
    # One call: with parallel calls allowed, the 135M model goes on writing calls to max_tokens.
    message = anthropic_client.messages.create(
        model="m", max_tokens=64, extra_body=GREEDY, tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "What's the weather in Paris?"}])
    assert message.stop_reason == "tool_use"
    (call,) = [block for block in message.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    jsonschema.validate(call.input, WEATHER["input_schema"])


def test_full_tool_round_trip(anthropic_client: anthropic.Anthropic):
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    with anthropic_client.messages.stream(model="m", max_tokens=64, extra_body=GREEDY,
                                          tools=[WEATHER], tool_choice={"type": "tool",
                                                                        "name": "get_weather"},
                                          messages=ask) as stream:
        events = list(stream)
        first = stream.get_final_message()
    (call,) = [block for block in first.content if block.type == "tool_use"]
    fragments = [e.delta.partial_json for e in events
                 if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert json.loads("".join(fragments)) == call.input
    jsonschema.validate(call.input, WEATHER["input_schema"])
    answer = anthropic_client.messages.create(
        model="m", max_tokens=16, extra_body=GREEDY, tools=[WEATHER],
        messages=[*ask, {"role": "assistant", "content": first.content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                "content": "Sunny, 21 degrees celsius."}]}])
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert answer.usage.cache_read_input_tokens > 0   # the first turn's prompt is cached


def test_count_tokens_matches_the_prompt(anthropic_client: anthropic.Anthropic):
    counted = anthropic_client.messages.count_tokens(model="m", messages=CAPITAL, tools=[WEATHER])
    message = anthropic_client.messages.create(model="m", max_tokens=1, messages=CAPITAL,
                                               tools=[WEATHER])
    usage = message.usage
    assert counted.input_tokens == (usage.input_tokens + usage.cache_read_input_tokens
                                    + usage.cache_creation_input_tokens)


def test_second_turn_reads_the_first_from_cache(anthropic_client: anthropic.Anthropic):
    system = f"{uuid.uuid4()} You are terse. " + "Answer in one word. " * 30
    turn = [{"role": "user", "content": "Name a colour."}]
    first = anthropic_client.messages.create(model="m", max_tokens=4, system=system,
                                             messages=turn)
    second = anthropic_client.messages.create(
        model="m", max_tokens=4, system=system,
        messages=[*turn, {"role": "assistant", "content": first.content},
                  {"role": "user", "content": "Another one."}])
    assert first.usage.cache_read_input_tokens == 0
    first_prompt = first.usage.input_tokens + first.usage.cache_creation_input_tokens
    assert second.usage.cache_read_input_tokens >= first_prompt - 16


@pytest.mark.parametrize("body, error_class, status", [
    ({"max_tokens": 8, "messages": []}, anthropic.BadRequestError, 400),
    ({"max_tokens": 0, "messages": CAPITAL}, anthropic.BadRequestError, 400),
    ({"max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]},
     anthropic.BadRequestError, 400),
])
def test_errors_arrive_as_the_sdks_exceptions(anthropic_client, body, error_class, status):
    with pytest.raises(error_class) as caught:
        anthropic_client.messages.create(model="m", **body)
    assert caught.value.status_code == status
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"


def test_a_prompt_over_the_context_says_prompt_is_too_long(anthropic_client):
    with pytest.raises(anthropic.BadRequestError, match=r"prompt is too long: \d+ tokens > 1024 maximum"):
        anthropic_client.messages.create(model="m", max_tokens=8, messages=[
            {"role": "user", "content": "word " * 1500}])
