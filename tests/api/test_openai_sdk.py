"""The official openai SDK against a live server."""

import uuid

import openai
import pytest

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def greedy_chat(client: openai.OpenAI, **kwargs):
    return client.chat.completions.create(model="anything", messages=CAPITAL, temperature=0,
                                          **kwargs)


def warm_greedy_reply(client: openai.OpenAI, max_tokens: int) -> str:
    """The greedy reply once the prompt's blocks are cached, so that the calls compared with it
    run the same shapes (a cold prefill and a cache hit may break a near-tie differently)."""
    greedy_chat(client, max_tokens=1)
    return greedy_chat(client, max_tokens=max_tokens).choices[0].message.content


def test_chat_answers_and_echoes_the_model_name(client: openai.OpenAI):
    response = greedy_chat(client, max_tokens=16)
    choice = response.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert response.model == "anything"
    assert response.usage.completion_tokens <= 16
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens)


def test_stream_starts_with_the_role_and_ends_with_usage(client: openai.OpenAI):
    full = warm_greedy_reply(client, max_tokens=12)
    chunks = list(greedy_chat(client, max_tokens=12, stream=True,
                              stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == full
    assert content_chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert all(c.usage is None for c in chunks[:-1])


def test_repeated_prefix_reports_cached_tokens(client: openai.OpenAI):
    system = f"{uuid.uuid4()} You are a terse assistant. " + "Answer in one word. " * 40
    messages = [{"role": "system", "content": system}, *CAPITAL]
    first = client.chat.completions.create(model="m", messages=messages, max_tokens=2)
    second = client.chat.completions.create(model="m", messages=messages, max_tokens=2)
    assert first.usage.prompt_tokens > 200
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    # Whole 16-token blocks, and at least one prompt token is always computed.
    assert cached % 16 == 0
    assert second.usage.prompt_tokens - 16 <= cached < second.usage.prompt_tokens


def test_stop_string_cuts_the_text_in_both_modes(client: openai.OpenAI):
    full = warm_greedy_reply(client, max_tokens=16)
    stop = "of Fra"  # spans tokens: " of" and " France"
    assert stop in full
    expected = full[: full.index(stop)]
    response = greedy_chat(client, max_tokens=16, stop=[stop, "never-appears"])
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason == "stop"
    chunks = list(greedy_chat(client, max_tokens=16, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_returns_independent_choices(client: openai.OpenAI):
    response = client.chat.completions.create(
        model="m", messages=CAPITAL, n=2, max_tokens=8, temperature=1.0, seed=3)
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.message.content for c in response.choices)
    assert response.usage.completion_tokens <= 16
    streamed = list(client.chat.completions.create(
        model="m", messages=CAPITAL, n=2, max_tokens=4, stream=True))
    assert {c.choices[0].index for c in streamed if c.choices} == {0, 1}


def test_logprobs_of_a_greedy_choice(client: openai.OpenAI):
    response = greedy_chat(client, max_tokens=6, logprobs=True, top_logprobs=2)
    entries = response.choices[0].logprobs.content
    assert len(entries) == response.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-5)
        assert entry.top_logprobs[1].logprob <= entry.logprob


def test_completions_with_string_token_and_echo_prompts(client: openai.OpenAI):
    prompt = "The capital of France is"
    text = client.completions.create(model="m", prompt=prompt, max_tokens=4,
                                     temperature=0).choices[0].text
    assert text.strip()
    echoed = client.completions.create(model="m", prompt=prompt, max_tokens=4, temperature=0,
                                       echo=True)
    assert echoed.choices[0].text == prompt + text
    many = client.completions.create(model="m", prompt=[prompt, "One, two,"], max_tokens=3,
                                     temperature=0, n=2)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert all(c.text for c in many.choices)
    tokens = client.completions.create(model="m", prompt=[[504, 3575, 282]], max_tokens=2,
                                       logprobs=1)
    assert tokens.usage.prompt_tokens == 3
    assert len(tokens.choices[0].logprobs.tokens) == tokens.usage.completion_tokens


def test_models_list_and_retrieve(client: openai.OpenAI):
    models = client.models.list().data
    assert [m.id for m in models] == ["SmolLM2-135M-Instruct"]
    assert client.models.retrieve("SmolLM2-135M-Instruct").id == "SmolLM2-135M-Instruct"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.models.retrieve("gpt-4")


def test_errors_raise_the_sdk_exceptions_with_our_messages(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as caught:
        greedy_chat(client, top_p=1.5)
    assert caught.value.body["param"] == "top_p"
    assert "at most 1.0" in caught.value.message
    with pytest.raises(openai.BadRequestError, match="maximum context length is 1024 tokens, "
                       r"but the prompt has \d+ tokens"):
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "word " * 1100}])
