"""Sampler and logits processors on random logits (no model)."""

import math
from collections import Counter
from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest

from engine.logits_processors import NUCLEUS_CANDIDATES, truncate
from engine import penalties as penalties_module
from engine.penalties import Penalties
from engine.sampler import Sampler
from engine.sampling_params import MAX_TOP_LOGPROBS, SamplingParams
from engine.step_types import SeqStep

GREEDY = SamplingParams(temperature=0.0)
RANDOM = SamplingParams(temperature=1.0)


def step(seq_id: int, sampling: SamplingParams, history=(), prompt_len: int | None = None) -> SeqStep:
    history = list(history)
    return SeqStep(
        seq_id=seq_id,
        token_ids=history[-1:],
        start_pos=max(len(history) - 1, 0),
        block_table=[],
        sampling=sampling,
        sample=True,
        prompt_len=len(history) if prompt_len is None else prompt_len,
        history=history,
    )


def random_logits(rows: int, vocab: int, seed: int = 0, scale: float = 3.0) -> mx.array:
    return mx.array(np.random.default_rng(seed).normal(0.0, scale, (rows, vocab)).astype(np.float32))


def tokens(outputs) -> list[int]:
    return [o.token_id for o in outputs]


def argmax_rows(logits: mx.array) -> list[int]:
    return np.asarray(logits).argmax(axis=-1).tolist()


def test_temperature_zero_is_argmax_and_keeps_row_order():
    logits = random_logits(8, 1000)
    outputs = Sampler()(logits, [step(100 + i, GREEDY) for i in range(8)])
    assert [o.seq_id for o in outputs] == [100 + i for i in range(8)]
    assert tokens(outputs) == argmax_rows(logits)
    assert all(o.logprob is None and o.top_logprobs is None for o in outputs)


def test_top_k_one_equals_greedy_in_a_mixed_batch():
    logits = random_logits(6, 1000, seed=1)
    params = [RANDOM, replace(RANDOM, top_k=1), GREEDY, replace(RANDOM, top_k=1, seed=3), RANDOM, GREEDY]
    outputs = Sampler()(logits, [step(i, p) for i, p in enumerate(params)])
    expected = argmax_rows(logits)
    for i, p in enumerate(params):
        if p.greedy:
            assert outputs[i].token_id == expected[i]


def test_tiny_top_p_gives_the_argmax():
    logits = random_logits(16, 5000, seed=2)
    sampler = Sampler()
    seqs = [step(i, replace(RANDOM, top_p=1e-6, temperature=2.0)) for i in range(16)]
    for _ in range(3):
        assert tokens(sampler(logits, seqs)) == argmax_rows(logits)


def test_min_p_filters_draws():
    # Per row: three tokens near the top, the rest of the vocab far below but with much mass in total.
    vocab = 2000
    base = np.zeros((64, vocab), dtype=np.float32)
    base[:, :3] = [6.0, 5.9, 5.8]
    logits = mx.array(base)
    allowed = {0, 1, 2}
    filtered = Sampler()(logits, [step(i, replace(RANDOM, min_p=0.5, seed=i)) for i in range(64)])
    unfiltered = Sampler()(logits, [step(i, replace(RANDOM, seed=i)) for i in range(64)])
    assert set(tokens(filtered)) <= allowed
    assert not set(tokens(unfiltered)) <= allowed


def test_top_k_draws_stay_in_the_top_k():
    logits = random_logits(64, 3000, seed=4, scale=0.5)
    top5 = np.argsort(-np.asarray(logits), axis=-1)[:, :5]
    drawn = tokens(Sampler()(logits, [step(i, replace(RANDOM, top_k=5, seed=i)) for i in range(64)]))
    assert all(token in top5[row] for row, token in enumerate(drawn))
    assert len(set(drawn) - set(top5[:, 0].tolist())) > 0  # not just the argmax


def reference_kept(scaled: np.ndarray, top_k: int, top_p: float, min_p: float) -> set[int]:
    """min-p, then top-k, then top-p over the renormalised survivors, by a full sort."""
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-scaled, kind="stable")
    kept = [t for t in order if probs[t] >= min_p * probs[order[0]]]
    if top_k:
        kept = kept[:top_k]
    mass = probs[kept] / probs[kept].sum()
    before = np.cumsum(mass) - mass
    return {int(t) for t, b in zip(kept, before) if b < top_p or top_p >= 1.0}


def test_truncate_matches_a_full_sort_reference():
    vocab = 4 * NUCLEUS_CANDIDATES
    rng = np.random.default_rng(5)
    settings = [
        (0, 0.9, 0.0),
        (0, 0.5, 0.0),
        (50, 1.0, 0.0),
        (0, 1.0, 0.05),
        (40, 0.8, 0.01),
        (1500, 0.95, 0.0),  # top_k beyond the candidate width
        (0, 0.9, 0.0),  # flat row below: the nucleus is wider than the candidates (fallback sort)
        (0, 0.3, 0.0),
        (0, 1.0, 0.0),  # all off, beside rows that truncate
        (0, 1.0, 0.5),  # min-p keeping more than the candidates
    ]
    scales = [3.0] * 6 + [0.1] * 4
    scaled = np.stack([rng.normal(0, s, vocab) for s in scales]).astype(np.float32)
    seqs = [step(i, replace(RANDOM, top_k=k, top_p=p, min_p=m)) for i, (k, p, m) in enumerate(settings)]
    masked = np.asarray(truncate(mx.array(scaled), seqs))
    for row, (k, p, m) in enumerate(settings):
        kept = set(np.flatnonzero(np.isfinite(masked[row])).tolist())
        assert kept == reference_kept(scaled[row], k, p, m), settings[row]
        assert np.array_equal(masked[row][list(kept)], scaled[row][list(kept)])
    assert len(reference_kept(scaled[6], 0, 0.9, 0.0)) > NUCLEUS_CANDIDATES
    assert len(reference_kept(scaled[9], 0, 1.0, 0.5)) > NUCLEUS_CANDIDATES


def test_logit_bias_forces_and_forbids_without_touching_the_input():
    logits = random_logits(4, 500, seed=6)
    original = np.asarray(logits).copy()
    best = argmax_rows(logits)
    seqs = [
        step(0, replace(GREEDY, logit_bias=((7, 100.0),))),
        step(1, replace(RANDOM, seed=1, logit_bias=((9, 100.0),))),
        step(2, replace(GREEDY, logit_bias=((best[2], -100.0), (10**6, 5.0)))),  # out of vocab: ignored
        step(3, replace(GREEDY, logprobs=0, logit_bias=((11, 100.0),))),
    ]
    outputs = Sampler()(logits, seqs)
    assert outputs[0].token_id == 7
    assert outputs[1].token_id == 9
    second = np.argsort(-original[2])[1]
    assert outputs[2].token_id == second
    assert outputs[3].token_id == 11
    np.testing.assert_array_equal(np.asarray(logits), original)


def penalised(values, sampling: SamplingParams, history, prompt_len) -> np.ndarray:
    logits = mx.array(np.array([values], dtype=np.float32))
    return np.asarray(Penalties()(logits, [step(0, sampling, history, prompt_len)]))[0]


def test_repetition_penalty_divides_positive_and_multiplies_negative_over_prompt_and_output():
    values = [2.0, -1.0, 3.0, -2.0, 1.0]
    out = penalised(values, SamplingParams(repetition_penalty=2.0), history=[0, 1, 0, 3], prompt_len=2)
    np.testing.assert_allclose(out, [1.0, -2.0, 3.0, -4.0, 1.0], rtol=1e-6)


def test_presence_and_frequency_count_only_generated_tokens():
    values = [1.0, 1.0, 1.0, 1.0]
    history = [0, 0, 1, 2, 2, 2]  # prompt [0, 0], output [1, 2, 2, 2]
    presence = penalised(values, SamplingParams(presence_penalty=0.5), history, prompt_len=2)
    np.testing.assert_allclose(presence, [1.0, 0.5, 0.5, 1.0])
    frequency = penalised(values, SamplingParams(frequency_penalty=0.25), history, prompt_len=2)
    np.testing.assert_allclose(frequency, [1.0, 0.75, 0.25, 1.0])
    both = penalised(values, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), history, 2)
    np.testing.assert_allclose(both, [1.0, 0.25, -0.25, 1.0])


def test_penalties_flip_the_greedy_choice_only_where_they_should():
    logits = mx.array(np.array([[2.0, 1.8, -5.0]] * 4, dtype=np.float32))
    seqs = [
        step(0, replace(GREEDY, repetition_penalty=1.5), history=[0, 2], prompt_len=2),
        step(1, replace(GREEDY, presence_penalty=1.0), history=[0, 2], prompt_len=2),
        step(2, replace(GREEDY, presence_penalty=1.0), history=[2, 0], prompt_len=1),
        step(3, GREEDY, history=[0, 0, 0], prompt_len=1),
    ]
    assert tokens(Sampler()(logits, seqs)) == [1, 0, 1, 0]


def reference_penalties(values: np.ndarray, sampling: SamplingParams, history, prompt_len) -> np.ndarray:
    """Recounted from the whole history: repetition over prompt and output, then presence and
    frequency over the output."""
    out = values.copy()
    penalty = np.float32(sampling.repetition_penalty)
    for t in set(history):
        out[t] = out[t] / penalty if out[t] > 0 else out[t] * penalty
    for t, c in Counter(history[prompt_len:]).items():
        out[t] -= np.float32(sampling.presence_penalty + sampling.frequency_penalty * c)
    return out


MIXED_PENALTIES = [
    SamplingParams(repetition_penalty=1.3),
    SamplingParams(presence_penalty=0.7, frequency_penalty=0.2),
    SamplingParams(repetition_penalty=0.8, presence_penalty=-0.4, frequency_penalty=0.5),
    SamplingParams(frequency_penalty=1.5),
    GREEDY,
]


@pytest.mark.parametrize("padding_limit", [math.inf, 0.0], ids=["by_row", "flat"])
def test_incremental_counts_equal_a_recount_at_every_step(monkeypatch, padding_limit):
    monkeypatch.setattr(penalties_module, "PADDING_LIMIT", padding_limit)
    vocab = 1000
    rng = np.random.default_rng(10)
    logits = random_logits(len(MIXED_PENALTIES), vocab, seed=10)
    # Prompts with more distinct tokens than TokenCounts starts with room for; outputs drawn from a
    # few tokens, so that they repeat, and repeat the prompt's.
    histories = [rng.integers(0, vocab, 400).tolist() for _ in MIXED_PENALTIES]
    prompt_lens = [len(h) for h in histories]
    penalties = Penalties()
    for step_index in range(60):
        # Rows sit out four steps in turn (preempted) and come back with five new tokens; the row
        # order changes every step.
        present = [int(i) for i in rng.permutation(len(MIXED_PENALTIES)) if (step_index // 4) % 7 != i]
        batch = [step(i, MIXED_PENALTIES[i], histories[i], prompt_lens[i]) for i in present]
        rows = logits[mx.array(present)]
        incremental = np.asarray(penalties(rows, batch))
        np.testing.assert_array_equal(incremental, np.asarray(Penalties()(rows, batch)))
        for row, i in enumerate(present):
            params, history, prompt_len = MIXED_PENALTIES[i], histories[i], prompt_lens[i]
            expected = reference_penalties(np.asarray(rows)[row], params, history, prompt_len)
            np.testing.assert_allclose(incremental[row], expected, rtol=1e-6, atol=1e-6)
        for i in range(len(histories)):
            histories[i].append(int(rng.integers(0, 40)))


def test_release_then_reuse_of_a_seq_id_counts_afresh():
    logits = random_logits(1, 50, seed=11)
    params = MIXED_PENALTIES[2]
    penalties = Penalties()
    penalties(logits, [step(3, params, history=list(range(10)), prompt_len=5)])
    penalties.release(3)
    reused = step(3, params, history=list(range(20, 32)), prompt_len=5)  # longer, other tokens
    fresh = Penalties()(logits, [reused])
    np.testing.assert_array_equal(np.asarray(penalties(logits, [reused])), np.asarray(fresh))


def test_sampler_release_forgets_penalty_counts():
    logits = mx.array(np.array([[2.0, 1.8, -5.0]], dtype=np.float32))
    params = replace(GREEDY, frequency_penalty=1.0)
    sampler = Sampler()
    assert tokens(sampler(logits, [step(3, params, history=[2, 0, 0, 0], prompt_len=1)])) == [1]
    sampler.release(3)
    # Counted on top of the released output, token 0 would still be penalised by 3.
    assert tokens(sampler(logits, [step(3, params, history=[2, 1, 2, 2, 2, 2], prompt_len=1)])) == [0]


def test_a_history_that_does_not_extend_the_counted_one_is_recounted():
    logits = random_logits(1, 50, seed=12)
    params = MIXED_PENALTIES[2]
    penalties = Penalties()
    penalties(logits, [step(4, params, history=list(range(10)), prompt_len=5)])
    for shorter in (step(4, params, history=[30, 31, 30, 32, 33, 30, 31], prompt_len=5),
                    step(4, params, history=[40] * 12, prompt_len=6)):  # longer, another prompt length
        fresh = Penalties()(logits, [shorter])
        np.testing.assert_array_equal(np.asarray(penalties(logits, [shorter])), np.asarray(fresh))


def test_penalties_leave_default_rows_and_the_input_alone():
    logits = random_logits(2, 50, seed=13)
    original = np.asarray(logits).copy()
    penalties = Penalties()
    assert penalties(logits, [step(0, GREEDY, [1, 2, 3]), step(1, RANDOM, [4])]) is logits
    out = np.asarray(penalties(logits, [step(0, GREEDY, [1, 2, 3]), step(1, MIXED_PENALTIES[0], [4])]))
    np.testing.assert_array_equal(out[0], original[0])
    assert out[1][4] != original[1][4]
    np.testing.assert_array_equal(np.asarray(logits), original)


def test_logprobs_are_of_the_raw_distribution_with_sorted_top_k():
    logits = random_logits(5, 3000, seed=7)
    raw = np.asarray(logits).astype(np.float64)
    shifted = raw - raw.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    seqs = [
        step(0, replace(GREEDY, logprobs=5)),
        step(1, replace(RANDOM, temperature=0.5, seed=3, logprobs=0, logit_bias=((4, 3.0),))),
        step(2, GREEDY),
        step(3, replace(RANDOM, top_p=0.5, seed=4, logprobs=MAX_TOP_LOGPROBS + 5)),
        step(4, replace(GREEDY, repetition_penalty=3.0, logprobs=1), history=[int(raw[4].argmax())]),
    ]
    outputs = Sampler()(logits, seqs)
    for row in (0, 1, 3, 4):
        out = outputs[row]
        assert out.logprob == pytest.approx(log_softmax[row, out.token_id], abs=1e-4)
    assert outputs[1].top_logprobs is None
    assert outputs[2].logprob is None and outputs[2].top_logprobs is None
    for row, k in ((0, 5), (3, MAX_TOP_LOGPROBS), (4, 1)):
        top = outputs[row].top_logprobs
        assert len(top) == k
        assert [t for t, _ in top] == np.argsort(-raw[row])[:k].tolist()
        values = [v for _, v in top]
        assert values == sorted(values, reverse=True)
        np.testing.assert_allclose(values, log_softmax[row, [t for t, _ in top]], atol=1e-4)


def run_steps(sampler: Sampler, logits: mx.array, batches: list[list[SeqStep]], seq_id: int) -> list[int]:
    """Sample each batch in turn, seq_id always on logits row 0; return seq_id's tokens."""
    drawn = []
    for batch in batches:
        rows = [logits[0] if s.seq_id == seq_id else logits[1 + i % 3] for i, s in enumerate(batch)]
        rows = mx.stack(rows)
        drawn += [o.token_id for o in sampler(rows, batch) if o.seq_id == seq_id]
    return drawn


def test_seeded_sequences_repeat_whatever_their_neighbours():
    logits = random_logits(4, 4000, seed=8, scale=0.3)  # flat: draws are far from deterministic
    params = replace(RANDOM, seed=1234, top_p=0.95)
    alone = run_steps(Sampler(), logits, [[step(7, params)]] * 6, seq_id=7)

    neighbours = [
        step(1, RANDOM),
        step(2, replace(RANDOM, seed=99, top_k=2000)),
        step(3, GREEDY),
        step(4, replace(RANDOM, min_p=0.1, logprobs=3)),
    ]
    target = step(7, params)
    batches = [
        [target] + neighbours,
        neighbours[::-1] + [target],
        [neighbours[0], target],
        [neighbours[2], target, neighbours[1]],
        neighbours[1:] + [target],
        [target],
    ]
    assert run_steps(Sampler(), logits, batches, seq_id=7) == alone
    assert len(set(alone)) > 1

    other_seed = run_steps(Sampler(), logits, [[step(7, replace(params, seed=1235))]] * 6, seq_id=7)
    assert other_seed != alone


def test_release_restarts_a_seeded_sequence():
    logits = random_logits(1, 4000, seed=9, scale=0.3)
    sampler = Sampler()
    seq = step(5, replace(RANDOM, seed=42))
    first = [sampler(logits, [seq])[0].token_id for _ in range(4)]
    sampler.release(5)
    again = [sampler(logits, [seq])[0].token_id for _ in range(4)]
    assert again == first
    assert len(set(first)) > 1


def test_empirical_distribution_follows_softmax_over_temperature():
    values = np.array([1.0, 0.5, 0.0, -1.0])
    temperature = 0.7
    draws = 4000
    logits = mx.array(np.tile(values.astype(np.float32), (draws, 1)))
    seqs = [step(i, replace(RANDOM, temperature=temperature, seed=i)) for i in range(draws)]
    counts = np.bincount(tokens(Sampler()(logits, seqs)), minlength=4)
    expected = np.exp(values / temperature) / np.exp(values / temperature).sum()
    untempered = np.exp(values) / np.exp(values).sum()
    # ~5 standard deviations of a binomial frequency at 4,000 draws
    bound = 5 * math.sqrt(0.25 / draws)
    assert np.abs(counts / draws - expected).max() < bound
    assert np.abs(untempered - expected).max() > 2 * bound
