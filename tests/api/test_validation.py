import pytest

from api.errors import APIError
from api.openai.validation import parse_chat_request, parse_completion_request

VOCAB = 1000
USER = [{"role": "user", "content": "hi"}]


def chat_error(**body) -> APIError:
    with pytest.raises(APIError) as caught:
        parse_chat_request({"messages": USER, **body}, VOCAB)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    "body, param, fragment",
    [
        ({"temperature": "hot"}, "temperature", "must be a number"),
        ({"temperature": -0.5}, "temperature", "at least 0.0"),
        ({"top_p": 0}, "top_p", "greater than 0.0"),
        ({"max_tokens": 0}, "max_tokens", "at least 1"),
        ({"max_tokens": 2.5}, "max_tokens", "must be an integer"),
        ({"n": True}, "n", "must be an integer"),
        ({"stop": [1, 2]}, "stop", "string or an array of strings"),
        ({"logit_bias": {"5000": 1}}, "logit_bias", "not a token id"),
        ({"logit_bias": {"5": 101}}, "logit_bias", "[-100, 100]"),
        ({"top_logprobs": 3}, "top_logprobs", "requires 'logprobs'"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "at most 20"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed"),
        ({"stream": True, "stream_options": {"include_usage": 1}},
         "stream_options.include_usage", "must be a boolean"),
        ({"messages": []}, "messages", "non-empty"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "one of"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "messages[0].content[0]", "only text"),
        ({"response_format": {"type": "xml"}}, "response_format", "not supported"),
        ({"messages": [*USER, {"role": "assistant"}]}, "messages[1].content",
         "needs 'content' or 'tool_calls'"),
    ],
)
def test_chat_errors_name_the_parameter(body, param, fragment):
    error = chat_error(**body)
    assert error.param == param
    assert fragment in error.message


def test_chat_request_is_parsed_to_sampling_params():
    chat = parse_chat_request({
        "model": "m", "messages": [{"role": "system", "content": [
            {"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]}, *USER],
        "temperature": 0, "top_k": -1, "logprobs": True, "top_logprobs": 2, "seed": 7,
        "logit_bias": {"42": -100}, "max_completion_tokens": 5, "max_tokens": 99,
        "stop": "END", "n": 2, "stream": True, "stream_options": {"include_usage": True},
        "chat_template_kwargs": {"enable_thinking": False}, "unknown_field": [1],
    }, VOCAB)
    assert chat.messages[0]["content"] == "be brief"
    assert chat.params.max_tokens == 5
    assert chat.params.stop == ("END",)
    assert (chat.params.n, chat.params.stream, chat.params.include_usage) == (2, True, True)
    sampling = chat.params.sampling
    assert sampling.greedy and sampling.top_k == 0 and sampling.seed == 7
    assert sampling.logprobs == 2 and sampling.logit_bias == ((42, -100.0),)
    assert chat.chat_template_kwargs == {"enable_thinking": False}


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("text", ["text"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
    ],
)
def test_completion_prompt_forms(prompt, expected):
    assert parse_completion_request({"prompt": prompt}, VOCAB).prompts == expected


@pytest.mark.parametrize("prompt", [None, [], [[]], [1, "a"], [VOCAB], 5])
def test_bad_completion_prompts_are_rejected(prompt):
    with pytest.raises(APIError) as caught:
        parse_completion_request({"prompt": prompt}, VOCAB)
    assert caught.value.param.startswith("prompt")
