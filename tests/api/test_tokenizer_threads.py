"""The tokenize thread encodes with its own copy of the tokenizer while the event loop decodes
with the original: a HF fast tokenizer shared across threads can raise "Already borrowed"."""

import asyncio
from collections.abc import Iterator

import pytest

from api.model_context import ModelContext
from api.detokenizer import incremental_detokenizer
from api.settings import Settings
from engine.model_loader import LoadedModel

TEXT = "Hello 🙂 world, 中文字符 and code: def f(x): return x * 2\n" * 8
ROUNDS = 200


@pytest.fixture
def ctx(loaded_model: LoadedModel) -> Iterator[ModelContext]:
    context = ModelContext(settings=Settings(), engine=None, tokenizer=loaded_model.tokenizer,
                            model_name="m", max_model_len=2048, eos_token_ids=(), metrics=None,
                            block_size=16, tool_parser_name="hermes", grammar=None)
    yield context
    context.close()


def test_the_tokenize_thread_has_its_own_tokenizer(ctx: ModelContext):
    assert ctx.encode_tokenizer is not ctx.tokenizer
    assert ctx.encode_tokenizer.backend_tokenizer is not ctx.tokenizer.backend_tokenizer
    assert ctx.encode_tokenizer.encode(TEXT) == ctx.tokenizer.encode(TEXT)
    assert ctx.encode_tokenizer.chat_template == ctx.tokenizer.chat_template


def test_encoding_off_the_loop_while_the_loop_decodes(ctx: ModelContext):
    ids = ctx.tokenizer.encode(TEXT)

    def stream() -> str:
        detokenizer = incremental_detokenizer(ctx.tokenizer, ids[:5])
        return "".join(map(detokenizer.add, ids[5:200])) + detokenizer.flush()

    def encode_rounds(tokenizer) -> list[int]:
        for _ in range(ROUNDS):
            # Switching truncation on and off reconfigures the Rust backend (a mutable borrow).
            tokenizer(TEXT, truncation=True, max_length=64)
            encoded = tokenizer.encode(TEXT)
        return encoded

    async def race() -> tuple[list[int], list[str]]:
        encoding = asyncio.ensure_future(ctx.run_off_loop(encode_rounds, ctx.encode_tokenizer))
        decoded = []
        while not encoding.done():
            decoded.append(stream())
            await asyncio.sleep(0.001)  # lets the thread take the GIL
        return await encoding, decoded

    expected = stream()
    encoded, decoded = asyncio.run(race())
    assert encoded == ids
    assert decoded and set(decoded) == {expected}
