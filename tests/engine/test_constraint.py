"""Token constraints: the bitmask unpacking against numpy, the sampler's masked rows next to free
ones, and llguidance's GrammarCompiler / GrammarConstraint on the default model's tokenizer."""

import json
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
import pytest

from engine.constraint import apply_token_bitmask
from engine.guided import GrammarCompiler, GrammarConstraint, GrammarError
from engine.model_loader import LoadedModel
from engine.sampler import Sampler
from engine.sampling_params import SamplingParams
from engine.step_types import SeqStep
from tests.prompts import QUESTIONS, chat_ids

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def compiler(loaded_model: LoadedModel) -> GrammarCompiler:
    return GrammarCompiler(loaded_model.tokenizer, loaded_model.eos_token_ids)


def step(seq_id: int, sampling: SamplingParams) -> SeqStep:
    return SeqStep(seq_id, [1], 0, [], sampling, True, 1, [1])


def allowed_ids(bitmask: np.ndarray) -> set[int]:
    return set(np.unpackbits(bitmask.view(np.uint8), bitorder="little").nonzero()[0].tolist())


def numpy_masked(logits: np.ndarray, bitmask: np.ndarray) -> np.ndarray:
    """The reference: bits unpacked by numpy, columns beyond the mask disallowed."""
    bits = np.unpackbits(bitmask.view(np.uint8), axis=-1, bitorder="little").astype(bool)
    width = logits.shape[1]
    allowed = np.zeros_like(logits, dtype=bool)
    covered = min(width, bits.shape[1])
    allowed[:, :covered] = bits[:, :covered]
    return np.where(allowed, logits, -np.inf)


@pytest.mark.parametrize("width", [100, 96, 130, 49152 + 64])
def test_bitmask_matches_numpy_including_columns_beyond_the_mask(width: int):
    rng = np.random.default_rng(width)
    words = 3 if width < 1000 else 49152 // 32  # masks for 96 tokens or for SmolLM2's tokenizer
    bitmask = rng.integers(-(2**31), 2**31, (4, words), dtype=np.int64).astype(np.int32)
    bitmask[0, -1] = -1  # the sign bit: token 32 * words - 1 allowed
    logits = rng.normal(size=(4, width)).astype(np.float32)
    got = np.asarray(apply_token_bitmask(mx.array(logits), mx.array(bitmask)))
    np.testing.assert_array_equal(got, numpy_masked(logits, bitmask))


def test_an_all_ones_row_passes_unchanged_and_the_input_is_untouched():
    rng = np.random.default_rng(0)
    logits = mx.array(rng.normal(size=(3, 64)).astype(np.float32))
    bitmask = rng.integers(-(2**31), 2**31, (3, 2), dtype=np.int64).astype(np.int32)
    bitmask[[0, 2]] = -1
    before = np.asarray(logits).copy()
    got = np.asarray(apply_token_bitmask(logits, mx.array(bitmask)))
    np.testing.assert_array_equal(np.asarray(logits), before)
    np.testing.assert_array_equal(got[[0, 2]], before[[0, 2]])
    np.testing.assert_array_equal(got[1], numpy_masked(before[1:2], bitmask[1:2])[0])


@dataclass
class Scripted:
    """A TokenConstraint with fixed answers: the mask (None: unconstrained), the tokens accepted."""

    mask: np.ndarray | None
    accepted: list[int] = field(default_factory=list)
    finished: bool = False

    def next_token_bitmask(self) -> np.ndarray | None:
        return self.mask

    def accept(self, token_id: int) -> None:
        self.accepted.append(token_id)


def test_sampler_masks_constrained_rows_only_and_reports_raw_logprobs():
    logits = mx.array(np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32))
    only_7 = np.zeros(2, dtype=np.int32)
    only_7[0] = 1 << 7
    masked, unconstrained = Scripted(only_7), Scripted(None)
    seqs = [
        step(0, SamplingParams(temperature=0.0, logprobs=0, constraint=masked)),
        step(1, SamplingParams(temperature=0.0)),
        step(2, SamplingParams(temperature=1.0, seed=0, constraint=unconstrained)),
    ]
    outputs = Sampler()(logits, seqs)
    raw = np.asarray(logits)
    assert outputs[0].token_id == 7
    assert outputs[0].logprob == pytest.approx(float(raw[0, 7] - np.log(np.exp(raw[0]).sum())), abs=1e-5)
    assert outputs[1].token_id == int(raw[1].argmax())
    assert masked.accepted == [7] and unconstrained.accepted == [outputs[2].token_id]


def test_grammar_row_obeys_and_free_row_is_unchanged(loaded_model: LoadedModel, compiler: GrammarCompiler):
    last_logits = [loaded_model.model(mx.array([chat_ids(loaded_model, q)]))[:, -1, :] for q in QUESTIONS[:2]]
    logits = mx.concatenate(last_logits).astype(mx.float32)
    free = SamplingParams(temperature=0.0)
    constraint = compiler.compile("start: %json " + json.dumps(PERSON))
    mask = constraint.next_token_bitmask().copy()
    constrained = SamplingParams(temperature=0.0, constraint=constraint)
    together = Sampler()(logits, [step(0, constrained), step(1, free)])
    alone = Sampler()(logits[1:], [step(1, free)])
    assert together[1].token_id == alone[0].token_id == int(np.asarray(logits[1]).argmax())
    assert together[0].token_id in allowed_ids(mask)
    assert loaded_model.tokenizer.decode([together[0].token_id]).startswith("{")


def feed(constraint: GrammarConstraint, tokenizer, text: str) -> None:
    for token in tokenizer.encode(text):
        assert token in allowed_ids(constraint.next_token_bitmask())
        constraint.accept(token)


def test_a_complete_grammar_allows_only_eos(loaded_model: LoadedModel, compiler: GrammarCompiler):
    constraint = compiler.compile("start: %json " + json.dumps(PERSON))
    feed(constraint, loaded_model.tokenizer, '{"name": "Ada", "age": 36}')
    assert constraint.finished
    assert allowed_ids(constraint.next_token_bitmask()) == set(loaded_model.eos_token_ids)


def test_a_rejected_token_ends_in_eos_only(loaded_model: LoadedModel, compiler: GrammarCompiler):
    constraint = compiler.compile('start: "yes" | "no"')
    constraint.accept(loaded_model.tokenizer.encode("maybe")[0])
    assert constraint.finished
    assert allowed_ids(constraint.next_token_bitmask()) == set(loaded_model.eos_token_ids)


@pytest.mark.parametrize(
    "lark, message",
    [
        ("start: undefined_rule", "undefined_rule"),
        ('start: %json {"type": "objekt"}', "objekt"),
        ('start: %json {"type": "string", "pattern": "(?=a)b"}', "look-around"),
    ],
)
def test_invalid_grammars_raise_grammar_error(compiler: GrammarCompiler, lark: str, message: str):
    with pytest.raises(GrammarError, match=message):
        compiler.compile(lark)


def test_masks_apply_on_another_thread_than_the_importing_one():
    """The engine thread samples; nothing the mask needs may belong to the importing thread."""
    import threading

    from engine.constraint import apply_token_bitmask

    results = []

    def engine_thread() -> None:
        logits = mx.zeros((1, 40))
        bitmask = mx.array([[0b101, 0]], dtype=mx.int32)
        results.append(apply_token_bitmask(logits, bitmask).tolist()[0][:3])

    thread = threading.Thread(target=engine_thread)
    thread.start()
    thread.join()
    assert results == [[0.0, float("-inf"), 0.0]]
