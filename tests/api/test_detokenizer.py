import pytest
from sentencepiece_tokenizer import sentencepiece_tokenizer

from api.detokenizer import StreamDetokenizer, WindowDetokenizer, incremental_detokenizer
from engine.model_loader import LoadedModel

TEXTS = [
    "Hello, world! How are you today?",
    "Emoji 🙂👍🏽 and a flag 🇫🇷 then 🧑‍🚀!",
    "中文字符 日本語のテキスト 한국어",
    "  spaces,\ttabs\n\nand 3.14159  ",
]
KINDS = [WindowDetokenizer, StreamDetokenizer]


@pytest.fixture(params=["byte-level", "sentencepiece"])
def tokenizer(request: pytest.FixtureRequest, loaded_model: LoadedModel):
    """SmolLM2's byte-level BPE, and a SentencePiece vocabulary spelling CJK and emoji in bytes."""
    return loaded_model.tokenizer if request.param == "byte-level" else sentencepiece_tokenizer()


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def stream(kind: type, tokenizer, ids: list[int], prompt_ids: list[int] = ()) -> list[str]:
    detokenizer = kind(tokenizer, prompt_ids)
    pieces = [detokenizer.add(token_id) for token_id in ids]
    return pieces + [detokenizer.flush()]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_join_to_the_text_and_never_split_a_character(kind: type, tokenizer,
                                                                      text: str):
    ids, prompt_ids = encode(tokenizer, text), encode(tokenizer, "hello the")
    pieces = stream(kind, tokenizer, ids, prompt_ids)
    # What the text adds after the prompt: for SmolLM2 the text itself; SentencePiece encodes
    # it with a leading '▁'.
    after_prompt = tokenizer.decode(prompt_ids + ids)[len(tokenizer.decode(prompt_ids)):]
    assert "".join(pieces) == after_prompt
    assert after_prompt in (text, " " + text)
    assert not any("\ufffd" in piece for piece in pieces)


@pytest.mark.parametrize("text", TEXTS)
def test_both_paths_give_the_same_pieces(tokenizer, text: str):
    ids, prompt_ids = encode(tokenizer, text), encode(tokenizer, "hello")
    assert stream(StreamDetokenizer, tokenizer, ids, prompt_ids) == stream(
        WindowDetokenizer, tokenizer, ids, prompt_ids)


def test_multi_token_characters_exist_in_the_test_text(tokenizer):
    # Guards the tests above: some emoji must really span several tokens.
    assert any("\ufffd" in tokenizer.decode([i]) for i in encode(tokenizer, TEXTS[1]))


@pytest.mark.parametrize("kind", KINDS)
def test_the_first_token_keeps_its_leading_space(kind: type, tokenizer):
    ids = encode(tokenizer, "hello world")
    assert tokenizer.decode(ids[1:]) in ("world", " world")  # sentencepiece strips it
    assert "".join(stream(kind, tokenizer, ids[1:], prompt_ids=ids[:1])) == " world"


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_are_skipped(kind: type, tokenizer):
    words = [encode(tokenizer, "hello"), encode(tokenizer, " cat")]
    ids = words[0] + [tokenizer.eos_token_id] + words[1] + [tokenizer.eos_token_id]
    text = "".join(stream(kind, tokenizer, ids))
    assert text == tokenizer.decode(words[0] + words[1]) and tokenizer.eos_token not in text


@pytest.mark.parametrize("kind", KINDS)
def test_an_unfinished_character_at_the_end_is_dropped(kind: type, tokenizer):
    ids = encode(tokenizer, TEXTS[1])
    cut = next(i for i in range(len(ids)) if tokenizer.decode(ids[:i]).endswith("\ufffd"))
    partial = ids[:cut]
    pieces = stream(kind, tokenizer, partial)
    assert pieces[-1] == "" or not pieces[-1].endswith("\ufffd")
    assert "".join(pieces) == tokenizer.decode(partial).rstrip("\ufffd")


@pytest.mark.parametrize("kind", KINDS)
def test_a_byte_run_turned_invalid_does_not_stop_the_stream(kind: type):
    # 섬 (EC 84 AC) is emitted, then a stray continuation byte makes the whole byte run invalid
    # UTF-8, which DecodeStream reports as an invalid prefix.
    tokenizer = sentencepiece_tokenizer()
    ids = [tokenizer.convert_tokens_to_ids(f"<0x{b:02X}>") for b in (0xEC, 0x84, 0xAC, 0x80)]
    text = "".join(stream(kind, tokenizer, ids + encode(tokenizer, " cat")))
    assert text.startswith("섬") and text.endswith("cat")


def test_fast_tokenizers_get_the_stream(tokenizer):
    class SlowTokenizer:
        def decode(self, ids: list[int], **kwargs) -> str:
            return "x" * len(ids)

    assert isinstance(incremental_detokenizer(tokenizer), StreamDetokenizer)
    slow = incremental_detokenizer(SlowTokenizer(), [1, 2])
    assert isinstance(slow, WindowDetokenizer)
    assert slow.add(3) + slow.flush() == "x"
