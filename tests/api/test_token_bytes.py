"""The `bytes` of OpenAI logprobs are each token's raw bytes, also for a token that holds only
part of a multi-byte character (whose decoded text is U+FFFD)."""

import openai
import pytest
from sentencepiece_tokenizer import sentencepiece_tokenizer

from api.deltas import TokenLogprob
from api.openai.logprobs import chat_logprobs
from api.openai.token_bytes import TokenBytes, token_bytes
from engine.model_loader import LoadedModel

SPLIT_TEXTS = ["😀", "中文字符", " 🇫🇷 日本語"]


def chat_bytes(tokenizer, text: str) -> list[bytes]:
    entries = [TokenLogprob(i, -0.5, [(i, -0.5)]) for i in tokenizer.encode(text)]
    content = chat_logprobs(tokenizer, entries)["content"]
    assert all(e["top_logprobs"][0]["bytes"] == e["bytes"] for e in content)
    return [bytes(e["bytes"]) for e in content]


@pytest.mark.parametrize("text", SPLIT_TEXTS)
def test_byte_level_tokens_of_a_split_character_join_to_its_bytes(loaded_model: LoadedModel,
                                                                   text: str):
    tokenizer = loaded_model.tokenizer
    assert any("\ufffd" in tokenizer.decode([i]) for i in tokenizer.encode(text))
    pieces = chat_bytes(tokenizer, text)
    assert b"".join(pieces) == text.encode()


def test_every_byte_level_token_gives_the_bytes_of_its_text(loaded_model: LoadedModel):
    # Checks the GPT-2 byte table over the whole vocabulary: wherever a token decodes alone to
    # whole characters, its raw bytes are that text's.
    tokenizer = loaded_model.tokenizer
    raw = TokenBytes(tokenizer)
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
        if "\ufffd" not in text:
            assert raw(token_id) == text.encode(), token_id


def test_added_tokens_give_their_text(loaded_model: LoadedModel):
    tokenizer = loaded_model.tokenizer
    assert token_bytes(tokenizer)(tokenizer.eos_token_id) == tokenizer.eos_token.encode()


@pytest.mark.parametrize("text", ["hello 你好 😀 cat", "the cat"])
def test_sentencepiece_byte_tokens_and_spaces(text: str):
    tokenizer = sentencepiece_tokenizer()
    ids = tokenizer.encode(text, add_special_tokens=False)
    raw = TokenBytes(tokenizer)
    assert b"".join(raw(i) for i in ids) == b" " + text.encode()


def test_a_tokenizer_of_another_kind_falls_back_to_the_decoded_text():
    class PlainTokenizer:
        def decode(self, ids: list[int], clean_up_tokenization_spaces: bool) -> str:
            return "é" * len(ids)

    assert TokenBytes(PlainTokenizer())(7) == "é".encode()


def test_one_lookup_per_tokenizer(loaded_model: LoadedModel):
    assert token_bytes(loaded_model.tokenizer) is token_bytes(loaded_model.tokenizer)


def test_the_server_sends_bytes_that_join_to_the_content(client: openai.OpenAI):
    messages = [{"role": "user", "content": "请用中文回答：你好吗？🙂"}]
    response = client.chat.completions.create(model="m", messages=messages, max_tokens=24,
                                              temperature=0, logprobs=True, top_logprobs=1)
    content = response.choices[0].message.content
    entries = response.choices[0].logprobs.content
    assert any(ord(char) > 0x2E80 for char in content), content
    assert any("\ufffd" in entry.token for entry in entries)  # a character split across tokens
    # Cut by max_tokens, the content drops an unfinished last character that the bytes still hold.
    joined = b"".join(bytes(entry.bytes) for entry in entries)
    assert joined.decode(errors="ignore") == content
