import pytest

from engine.gguf_tokenizer import UnsupportedTokenizer, eos_token_ids_from_gguf, tokenizer_from_gguf
from engine.gguf_weights import read_gguf
from engine.model_loader import LoadedModel, default_model_path

IM_START, IM_END = 1, 2


@pytest.fixture(scope="module")
def metadata() -> dict:
    return read_gguf(str(default_model_path()))[1]


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! How are you today?",
        "Digits 0123456789 and 3.14159",
        "Emoji 🙂👍🏽 and a flag 🇫🇷",
        "中文字符 日本語のテキスト 한국어",
        "  leading spaces,\ttabs\n\nand blank lines  ",
    ],
)
def test_round_trip(loaded_model: LoadedModel, text: str):
    ids = loaded_model.tokenizer.encode(text)
    assert loaded_model.tokenizer.decode(ids) == text


def test_known_encoding(loaded_model: LoadedModel):
    # SmolLM2's vocabulary has no multi-digit tokens, so each digit is its own id.
    assert loaded_model.tokenizer.encode("What is 12?") == [1780, 314, 216, 33, 34, 47]


def test_special_tokens_encode_as_single_ids(loaded_model: LoadedModel):
    tokenizer = loaded_model.tokenizer
    assert tokenizer.encode("<|im_start|>") == [IM_START]
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == IM_START and ids[-1] == IM_END
    assert tokenizer.eos_token_id == IM_END
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_chat_template_renders(loaded_model: LoadedModel):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = loaded_model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("pre", "pieces"),
    [
        ("smollm", ["1", "2", "3", "4", "5", "Ġabc"]),
        ("llama-bpe", ["123", "45", "Ġabc"]),
        ("default", ["12345", "Ġabc"]),
    ],
)
def test_pre_tokenizer_follows_gguf_pre(metadata: dict, pre: str, pieces: list[str]):
    tokenizer = tokenizer_from_gguf({**metadata, "tokenizer.ggml.pre": pre})
    split = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str("12345 abc")
    assert [piece for piece, _ in split] == pieces


def test_add_bos_token(metadata: dict):
    tokenizer = tokenizer_from_gguf({**metadata, "tokenizer.ggml.add_bos_token": True})
    bos = metadata["tokenizer.ggml.bos_token_id"]
    assert tokenizer.encode("hi")[0] == bos


def test_eos_ids_include_end_of_turn(metadata: dict):
    assert eos_token_ids_from_gguf(metadata) == (IM_END,)
    with_eot = {**metadata, "tokenizer.ggml.eot_token_id": 0}
    assert eos_token_ids_from_gguf(with_eot) == (IM_END, 0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"tokenizer.ggml.model": "llama"}, "'llama' is not supported"),
        ({"tokenizer.ggml.pre": "qwen2"}, "'qwen2' is not supported; known: .*smollm"),
    ],
)
def test_unsupported_tokenizers_raise(metadata: dict, override: dict, message: str):
    with pytest.raises(UnsupportedTokenizer, match=message):
        tokenizer_from_gguf({**metadata, **override})
