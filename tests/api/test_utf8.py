"""Emoji and CJK output never contains U+FFFD from a character split across tokens."""

import json

import openai
from http_client import open_stream, sse_lines
from live_server import LiveServer

from engine.model_loader import LoadedModel


def test_forced_multi_byte_tokens_stream_whole_characters(server: LiveServer,
                                                          loaded_model: LoadedModel):
    # Completions over a prompt that ends inside a run of emoji and CJK: the greedy continuation
    # of such text is more of it, and its tokens split characters across token boundaries.
    tokenizer = loaded_model.tokenizer
    text = "🙂👍🏽🇫🇷 你好，世界。日本語のテキスト。" * 3
    ids = tokenizer.encode(text)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    body = {"prompt": ids, "max_tokens": 24, "temperature": 0, "stream": True}
    connection, response = open_stream(server.port, "/v1/completions", body)
    try:
        pieces = [json.loads(line.removeprefix("data: "))["choices"][0]["text"]
                  for line in sse_lines(response)
                  if line.startswith("data: {")]
    finally:
        connection.close()
    output = "".join(pieces)
    assert any(ord(ch) > 0x2E80 for ch in output), output
    assert "\ufffd" not in output


def test_chat_reply_in_chinese_has_no_replacement_characters(client: openai.OpenAI):
    messages = [{"role": "user", "content": "请用中文回答：你好吗？🙂"}]
    chunks = client.chat.completions.create(model="m", messages=messages, max_tokens=24,
                                            temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert "\ufffd" not in text
