import pytest

from api.detokenizer import IncrementalDetokenizer
from engine.model_loader import LoadedModel

TEXTS = [
    "Hello, world! How are you today?",
    "Emoji 🙂👍🏽 and a flag 🇫🇷 then 🧑‍🚀!",
    "中文字符 日本語のテキスト 한국어",
    "  spaces,\ttabs\n\nand 3.14159  ",
]


def stream(tokenizer, ids: list[int], prompt_ids: list[int] = ()) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
    pieces = [detokenizer.add(token_id) for token_id in ids]
    return pieces + [detokenizer.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_join_to_the_text_and_never_split_a_character(
    loaded_model: LoadedModel, text: str
):
    tokenizer = loaded_model.tokenizer
    ids = tokenizer.encode(text)
    pieces = stream(tokenizer, ids, prompt_ids=tokenizer.encode("<|im_start|>assistant\n"))
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_multi_token_characters_exist_in_the_test_text(loaded_model: LoadedModel):
    # Guards the test above: some emoji must really span several tokens.
    tokenizer = loaded_model.tokenizer
    assert any("\ufffd" in tokenizer.decode([i]) for i in tokenizer.encode(TEXTS[1]))


def test_special_tokens_are_skipped(loaded_model: LoadedModel):
    tokenizer = loaded_model.tokenizer
    ids = tokenizer.encode("Done.") + [tokenizer.eos_token_id]
    assert "".join(stream(tokenizer, ids)) == "Done."


def test_an_unfinished_character_at_the_end_is_dropped(loaded_model: LoadedModel):
    tokenizer = loaded_model.tokenizer
    ids = tokenizer.encode(TEXTS[1])
    cut = next(i for i in range(len(ids)) if tokenizer.decode(ids[:i]).endswith("\ufffd"))
    partial = ids[:cut]
    pieces = stream(tokenizer, partial)
    assert "".join(pieces) == tokenizer.decode(partial).rstrip("\ufffd")
