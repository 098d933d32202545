"""Greedy token streams compared as vLLM's tests do (tests/models/utils.py, check_logprobs_close).

Two greedy runs of the same model that differ only in batch shape (or dense vs paged attention) agree
token for token until a near-tie: float32 OpenBLAS results move slightly with the matrix shapes, so where
the top two candidates are within that noise either side may pick the other. The streams are equal up to
their first divergence; there each side's token must be in the other side's top-2 with a logprob gap under
`max_gap`, and the comparison stops (after a different token the two continuations are different texts).

MAX_LOGPROB_GAP: the logprob of one token at one position moves by at most ~3e-5 nats between SmolLM2's
float32 runs alone and batched with 7 others (tests/engine/test_runner.py's streams), so a legitimate flip
happens only between candidates about that close. 0.02 nats leaves a margin of several hundred for longer
contexts and other models, while a wrong position, mask or stale K/V moves logprobs by far more.
"""

from collections.abc import Sequence

MAX_LOGPROB_GAP = 0.02

TopLogprobs = Sequence[tuple[int, float]]


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where a and b differ over their common length, else None."""
    for index, (token_a, token_b) in enumerate(zip(a, b)):
        if token_a != token_b:
            return index
    return None


def assert_tokens_match(
    a: Sequence[int],
    b: Sequence[int],
    a_top: Sequence[TopLogprobs],
    b_top: Sequence[TopLogprobs],
    max_gap: float = MAX_LOGPROB_GAP,
) -> int | None:
    """Assert the vLLM-style match of two greedy streams; return the divergence index (None: equal).

    a_top[i] / b_top[i] are each side's top candidates (at least 2) at position i as (token_id, logprob).
    """
    index = first_divergence(a, b)
    if index is None:
        return None
    context = f"streams diverge at position {index}: {a[index]} vs {b[index]}\n a={list(a)}\n b={list(b)}"
    for side, own_token, other_token, top in (
        ("a", a[index], b[index], a_top[index]),
        ("b", b[index], a[index], b_top[index]),
    ):
        candidates = dict(list(top)[:2])
        assert len(candidates) == 2, f"side {side} needs top-2 logprobs at {index}; {context}"
        for token in (own_token, other_token):
            assert token in candidates, f"side {side}: token {token} not in its top-2 {candidates}; {context}"
        gap = candidates[own_token] - candidates[other_token]
        assert gap <= max_gap, f"side {side}: logprob gap {gap:.4f} > {max_gap}; {context}"
    return index
