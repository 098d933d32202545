"""ModelRunner on the real default model: greedy streams against mlx-lm's own generate, batched against
alone, chunked against one chunk, a reused prefix against a cold run; plus the token comparison helper."""

import random
from dataclasses import dataclass, field

import mlx.core as mx
import pytest
from mlx_lm.generate import stream_generate
from mlx_lm.models import llama

from engine.model_loader import LoadedModel
from engine.runner import ModelRunner, split_head
from engine.sampling_params import SamplingParams
from engine.step_types import SeqStep
from tests.prompts import QUESTIONS, chat_ids
from tests.token_compare import assert_tokens_match, first_divergence

BLOCK_SIZE = 16
GREEDY_TOP2 = SamplingParams(max_tokens=12, temperature=0.0, logprobs=2)
PROMPTS = QUESTIONS[:8]


@pytest.fixture(scope="module")
def runner(loaded_model: LoadedModel) -> ModelRunner:
    return ModelRunner(loaded_model, num_blocks=256, block_size=BLOCK_SIZE)


@dataclass
class Stream:
    """One sequence driven through the runner the way the scheduler would: prompt chunks, then decodes."""

    seq_id: int
    prompt: list[int]
    block_ids: list[int]  # enough for prompt + max_tokens; the step gets the prefix it needs
    chunk_size: int
    computed: int = 0  # tokens whose K/V are in the pool
    output: list[int] = field(default_factory=list)
    top2: list[list[tuple[int, float]]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return len(self.output) >= GREEDY_TOP2.max_tokens

    def next_step(self) -> SeqStep:
        history = self.prompt + self.output
        if self.computed < len(self.prompt):
            tokens = self.prompt[self.computed : self.computed + self.chunk_size]
        else:
            tokens = history[-1:]
        end = self.computed + len(tokens)
        return SeqStep(
            seq_id=self.seq_id,
            token_ids=tokens,
            start_pos=self.computed,
            block_table=self.block_ids[: -(-end // BLOCK_SIZE)],
            sampling=GREEDY_TOP2,
            sample=end >= len(self.prompt),
            prompt_len=len(self.prompt),
            history=history,
        )


def run_together(runner: ModelRunner, streams: list[Stream], max_steps: int = 10**6) -> None:
    """Step all unfinished streams together until each has max_tokens tokens (or max_steps)."""
    for _ in range(max_steps):
        active = [s for s in streams if not s.done]
        if not active:
            return
        steps = [s.next_step() for s in active]
        outputs = iter(runner.step(steps))
        for stream, step in zip(active, steps):
            stream.computed += len(step.token_ids)
            if step.sample:
                out = next(outputs)
                assert out.seq_id == stream.seq_id
                stream.output.append(out.token_id)
                stream.top2.append(out.top_logprobs)
        assert next(outputs, None) is None


class Blocks:
    """Hands out block ids, in order or shuffled (a shuffled pool gives tables of many short runs)."""

    def __init__(self, num_blocks: int, shuffle_seed: int | None = None):
        self.free = list(range(num_blocks))
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(self.free)

    def take(self, num_tokens: int) -> list[int]:
        count = -(-num_tokens // BLOCK_SIZE)
        taken, self.free = self.free[:count], self.free[count:]
        return taken


_next_seq_id = iter(range(10**9))


def new_stream(blocks: Blocks, prompt: list[int], chunk_size: int | None = None) -> Stream:
    return Stream(
        seq_id=next(_next_seq_id),
        prompt=prompt,
        block_ids=blocks.take(len(prompt) + GREEDY_TOP2.max_tokens),
        chunk_size=chunk_size or len(prompt),
    )


def generate_alone(runner: ModelRunner, prompt: list[int], chunk_size: int | None = None) -> Stream:
    stream = new_stream(Blocks(runner.num_blocks), prompt, chunk_size)
    run_together(runner, [stream])
    return stream


def assert_same_stream(a: Stream, b: Stream) -> None:
    assert_tokens_match(a.output, b.output, a.top2, b.top2)


def test_france_matches_mlx_lm_generate(runner: ModelRunner, loaded_model: LoadedModel):
    prompt = chat_ids(loaded_model, "What is the capital of France?")
    ours = generate_alone(runner, prompt)

    reference, reference_top2 = [], []
    for response in stream_generate(
        loaded_model.model, loaded_model.tokenizer, mx.array(prompt), max_tokens=GREEDY_TOP2.max_tokens
    ):
        reference.append(response.token)
        top = mx.argsort(-response.logprobs)[:2].tolist()
        reference_top2.append([(t, response.logprobs[t].item()) for t in top])

    assert_tokens_match(ours.output, reference, ours.top2, reference_top2)
    assert "Paris" in loaded_model.tokenizer.decode(ours.output)


def test_batched_prompts_match_alone(runner: ModelRunner, loaded_model: LoadedModel):
    prompts = [chat_ids(loaded_model, question) for question in PROMPTS]
    alone = [generate_alone(runner, prompt) for prompt in prompts]

    # Shuffled blocks: every table has several runs. Chunks of 20 tokens: the short prompts decode
    # while the long ones are still prefilling, so steps mix [B, 1] decode rows with chunks.
    blocks = Blocks(runner.num_blocks, shuffle_seed=0)
    batched = [new_stream(blocks, prompt, chunk_size=20) for prompt in prompts]
    run_together(runner, batched)

    assert max(runner.last_step_runs) > 1
    for together, single in zip(batched, alone):
        assert_same_stream(together, single)


def test_chunked_prefill_matches_one_chunk(runner: ModelRunner, loaded_model: LoadedModel):
    prompt = chat_ids(loaded_model, " ".join(PROMPTS[2:]))
    assert len(prompt) > 3 * 21
    one_chunk = generate_alone(runner, prompt)
    chunked = generate_alone(runner, prompt, chunk_size=21)  # not block-aligned
    assert_same_stream(chunked, one_chunk)


def test_reused_prefix_matches_cold_run(runner: ModelRunner, loaded_model: LoadedModel):
    first_prompt = chat_ids(loaded_model, PROMPTS[6])
    second_prompt = chat_ids(loaded_model, PROMPTS[6][:40] + " and who painted the Mona Lisa?")
    cold = generate_alone(runner, second_prompt)

    blocks = Blocks(runner.num_blocks)
    first = new_stream(blocks, first_prompt)
    run_together(runner, [first])
    shared_blocks = first_divergence(first_prompt, second_prompt) // BLOCK_SIZE
    assert shared_blocks >= 1
    second = new_stream(blocks, second_prompt)
    second.block_ids = first.block_ids[:shared_blocks] + second.block_ids
    second.computed = shared_blocks * BLOCK_SIZE
    run_together(runner, [second])
    assert_same_stream(second, cold)


def test_decodes_and_chunk_in_one_step(runner: ModelRunner, loaded_model: LoadedModel):
    prompts = [chat_ids(loaded_model, question) for question in PROMPTS[:3]]
    alone = [generate_alone(runner, prompt) for prompt in prompts]

    blocks = Blocks(runner.num_blocks)
    first, newcomer, last = (new_stream(blocks, prompt) for prompt in prompts)
    run_together(runner, [first, last], max_steps=1)
    assert (len(first.output), len(last.output)) == (1, 1)
    # Next step: a decode row, the newcomer's whole prompt as a chunk, another decode row.
    run_together(runner, [first, newcomer, last])
    for stream, single in zip((first, newcomer, last), alone):
        assert_same_stream(stream, single)


def test_unsampled_chunk_writes_kv_and_returns_nothing(runner: ModelRunner, loaded_model: LoadedModel):
    prompt = chat_ids(loaded_model, PROMPTS[1])
    stream = new_stream(Blocks(runner.num_blocks), prompt, chunk_size=len(prompt) - 5)
    step = stream.next_step()
    assert not step.sample
    assert runner.step([step]) == []
    stream.computed += len(step.token_ids)
    run_together(runner, [stream])
    assert_same_stream(stream, generate_alone(runner, prompt))


def test_split_head_only_for_models_that_end_in_the_head():
    args = llama.ModelArgs(
        model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=50,
    )
    plain = llama.Model(args)
    body, head = split_head(plain)
    assert body is plain.model

    class ScaledLogits(llama.Model):
        def __call__(self, inputs, cache=None):
            return super().__call__(inputs, cache) * 0.5

    scaled = ScaledLogits(args)
    body, head = split_head(scaled)
    assert body is scaled
    tokens = mx.array([[3, 4]])
    assert mx.array_equal(head(body(tokens)), scaled(tokens))


def test_blocks_for_budget(loaded_model: LoadedModel):
    blocks = ModelRunner.blocks_for_budget(loaded_model, 0.5, BLOCK_SIZE)
    # float32 K and V per token: layers x kv_heads x head_dim x 4 bytes x 2
    per_token = loaded_model.num_layers * loaded_model.num_kv_heads * loaded_model.head_dim * 8
    assert blocks == 2**29 // (per_token * BLOCK_SIZE)
    with pytest.raises(ValueError):
        ModelRunner.blocks_for_budget(loaded_model, 1e-9, BLOCK_SIZE)


# The comparison helper itself: it must pass near-ties and fail real mismatches.

def test_token_compare_accepts_equal_streams_and_near_ties():
    top = [[(5, -0.1), (6, -2.0)], [(7, -0.70), (8, -0.71)]]
    other_top = [[(5, -0.1), (6, -2.0)], [(8, -0.700), (7, -0.705)]]
    assert assert_tokens_match([5, 7], [5, 7], top, top) is None
    assert assert_tokens_match([5, 7, 1], [5, 8, 2], top, other_top) == 1


@pytest.mark.parametrize(
    "b_top_at_divergence",
    [
        [(8, -0.5), (9, -0.6)],  # a's token is not in b's top-2
        [(8, -0.1), (7, -3.0)],  # in the top-2, but far from a tie
    ],
)
def test_token_compare_rejects_real_mismatches(b_top_at_divergence):
    a_top = [[(5, -0.1), (6, -2.0)], [(7, -0.70), (8, -0.71)]]
    b_top = [[(5, -0.1), (6, -2.0)], b_top_at_divergence]
    with pytest.raises(AssertionError):
        assert_tokens_match([5, 7], [5, 8], a_top, b_top)
