"""The scheduler and engine loop driving the real default model (SmolLM2-135M, float32 on the CPU).

Greedy streams are compared as vLLM's tests do (tests/token_compare.py): batching, chunking, prefix hits
and preemption may move logprobs by float noise, never produce a wrong token.
"""

import asyncio
from dataclasses import dataclass

import pytest

from engine.model_loader import LoadedModel
from engine.runner import ModelRunner
from engine.sampling_params import SamplingParams
from scheduler.config import SchedulerConfig
from scheduler.disk_tier import DiskTier
from scheduler.engine_loop import EngineLoop, TokenEvent
from tests.prompts import QUESTIONS, chat_ids
from tests.token_compare import assert_tokens_match

BLOCK = 16
GREEDY = SamplingParams(max_tokens=16, temperature=0.0, logprobs=2)
SYSTEM = (
    "You are a careful assistant for a small library. Answer in one short sentence, use plain words, "
    "never invent book titles, and if you do not know something, say that you do not know it. "
    "The library opens at nine and closes at five, every day except Sunday."
)


@dataclass
class Result:
    tokens: list[int]
    top2: list[list[tuple[int, float]]]
    final: TokenEvent


def make_engine(loaded: LoadedModel, num_blocks: int, disk: DiskTier | None = None) -> EngineLoop:
    runner = ModelRunner(loaded, num_blocks=num_blocks, block_size=BLOCK)
    config = SchedulerConfig(
        num_blocks=num_blocks, block_size=BLOCK, max_model_len=loaded.max_context, cache_key=loaded.model_id
    )
    return EngineLoop(runner, config, loaded.model_id, disk=disk)


async def generate(engine: EngineLoop, prompt: list[int], cache_salt: str | None = None) -> Result:
    events = [event async for event in engine.submit(prompt, GREEDY, cache_salt=cache_salt)]
    tokens = [event.token_id for event in events if event.token_id is not None]
    top2 = [event.top_logprobs for event in events if event.token_id is not None]
    return Result(tokens, top2, events[-1])


def run(engine: EngineLoop, *jobs) -> list[Result]:
    """Start the engine, run the coroutines (made by `jobs`, each given the engine) in order, stop."""

    async def main() -> list[Result]:
        engine.start()
        try:
            return [await job(engine) for job in jobs]
        finally:
            await engine.stop()

    return asyncio.run(main())


def assert_same_stream(a: Result, b: Result) -> None:
    assert a.final.finish_reason == b.final.finish_reason == "length"
    assert_tokens_match(a.tokens, b.tokens, a.top2, b.top2)


@pytest.fixture(scope="module")
def prompts(loaded_model: LoadedModel) -> list[list[int]]:
    return [chat_ids(loaded_model, question) for question in QUESTIONS]


@pytest.fixture(scope="module")
def sequential(loaded_model: LoadedModel, prompts: list[list[int]]) -> list[Result]:
    """Each prompt run alone, one after another."""
    engine = make_engine(loaded_model, num_blocks=64)
    return run(engine, *[lambda e, p=p: generate(e, p) for p in prompts])


def test_concurrent_requests_give_their_sequential_tokens(loaded_model, prompts, sequential):
    engine = make_engine(loaded_model, num_blocks=256)

    async def all_at_once(engine: EngineLoop) -> list[Result]:
        return await asyncio.gather(*(generate(engine, p) for p in prompts))

    (together,) = run(engine, all_at_once)
    for alone, batched in zip(sequential, together):
        assert_same_stream(alone, batched)
    assert engine.stats.num_free_blocks == 256


def test_preemption_in_a_tiny_pool_keeps_the_tokens(loaded_model, prompts, sequential):
    engine = make_engine(loaded_model, num_blocks=10)  # 160 tokens; four ~50-token requests need ~16 blocks

    async def four_at_once(engine: EngineLoop) -> list[Result]:
        return await asyncio.gather(*(generate(engine, p) for p in prompts[:4]))

    (together,) = run(engine, four_at_once)
    assert engine.stats.num_preempted_total > 0
    for alone, squeezed in zip(sequential, together):
        assert_same_stream(alone, squeezed)
    assert engine.stats.num_free_blocks == 10


def test_shared_prefix_hits_and_matches_a_cold_run(loaded_model):
    first = chat_ids(loaded_model, QUESTIONS[0], SYSTEM)
    second = chat_ids(loaded_model, QUESTIONS[1], SYSTEM)
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    assert shared >= 3 * BLOCK, "the system prompt should span a few blocks"
    engine = make_engine(loaded_model, num_blocks=64)
    _, hit, cold = run(
        engine,
        lambda e: generate(e, first),
        lambda e: generate(e, second),
        lambda e: generate(e, second, cache_salt="cold"),  # another tenant: no hit
    )
    assert hit.final.cached_tokens >= shared // BLOCK * BLOCK
    assert cold.final.cached_tokens == 0
    assert_same_stream(cold, hit)


def test_conversation_turn_two_hits_turn_ones_prompt_and_answer(loaded_model):
    turn_one = chat_ids(loaded_model, QUESTIONS[7])
    engine = make_engine(loaded_model, num_blocks=64)
    state = {}

    async def conversation(engine: EngineLoop) -> Result:
        answer = await generate(engine, turn_one)
        follow_up = loaded_model.tokenizer.encode(
            "<|im_end|>\n<|im_start|>user\nAnd at sunset?<|im_end|>\n<|im_start|>assistant\n"
        )
        state["turn_two"] = turn_one + answer.tokens + follow_up
        return await generate(engine, state["turn_two"])

    async def cold(engine: EngineLoop) -> Result:
        return await generate(engine, state["turn_two"], cache_salt="cold")

    hit, cold_run = run(engine, conversation, cold)
    # Every block of turn one's prompt and answer is cached except the one holding the answer's
    # last token, which was sampled but never run through the model.
    computed = len(turn_one) + GREEDY.max_tokens - 1
    assert hit.final.cached_tokens == computed // BLOCK * BLOCK
    assert_same_stream(cold_run, hit)


def test_abort_mid_generation_returns_every_block(loaded_model):
    engine = make_engine(loaded_model, num_blocks=64)
    long_answer = SamplingParams(max_tokens=500, temperature=0.0)

    async def abort_after_three_tokens(engine: EngineLoop) -> list[TokenEvent]:
        stream = engine.submit(chat_ids(loaded_model, QUESTIONS[3]), long_answer)
        events = [await stream.__anext__() for _ in range(3)]
        await stream.aclose()
        while engine.stats.finished.get("abort") != 1:
            await asyncio.sleep(0.01)
        return events

    (events,) = run(engine, abort_after_three_tokens)
    assert all(event.finish_reason is None for event in events)
    assert engine.stats.num_free_blocks == 64 and engine.stats.num_running == 0


@pytest.mark.parametrize("disk_dtype", ["float16", "float32"])
def test_a_prefix_read_back_from_disk_matches_a_cold_run(loaded_model: LoadedModel, sequential,
                                                         prompts, tmp_path, disk_dtype):
    """A restart: a new engine (new pool) on the disk tier the first one wrote. The K/V it reads back,
    float16 halving the pool's float32, must give the cold run's greedy stream."""
    def with_disk() -> EngineLoop:
        return make_engine(loaded_model, 64, DiskTier(tmp_path, "smollm2", 2**30, disk_dtype))

    jobs = [lambda e, p=p: generate(e, p) for p in prompts]
    run(with_disk(), *jobs)
    restarted = with_disk()
    results = run(restarted, *jobs)
    stats = restarted.stats
    assert stats.disk.misses == 0 and stats.disk.hits >= (len(prompts[0]) - 1) // BLOCK  # shared ones once
    for cold, restored in zip(sequential, results):
        assert restored.final.cached_tokens == (restored.final.prompt_tokens - 1) // BLOCK * BLOCK
        assert_same_stream(cold, restored)
