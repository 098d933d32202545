"""Logits processors for a batch of sequences: logit bias and min-p/top-k/top-p truncation
(the penalties, which keep per-sequence state, are in engine/penalties.py).

Bias touches only the (row, token) pairs it concerns, as a scatter whose index lists are built
from each row's params: a row with default params costs nothing.
"""

import mlx.core as mx

from engine.step_types import SeqStep

# Top-p looks for its nucleus among this many of the best tokens and sorts the whole row only
# when their mass falls short of top_p: a full sort of a 49k vocab row costs ~3.5 ms on the CPU,
# the top 1,024 ~0.4 ms.
NUCLEUS_CANDIDATES = 1024


def _scatter_indices(
    pairs_per_row: list[tuple[int, list[int], list[float]]],
) -> tuple[mx.array, mx.array, list[float]]:
    """(row, tokens, values) triples -> flat row and token index arrays plus the values."""
    rows: list[int] = []
    tokens: list[int] = []
    values: list[float] = []
    for row, row_tokens, row_values in pairs_per_row:
        rows += [row] * len(row_tokens)
        tokens += row_tokens
        values += row_values
    return mx.array(rows), mx.array(tokens), values


def apply_logit_bias(logits: mx.array, seqs: list[SeqStep]) -> mx.array:
    """Add each row's logit_bias to its logits (OpenAI semantics). Ids outside the vocab are ignored."""
    vocab = logits.shape[-1]
    per_row = []
    for row, seq in enumerate(seqs):
        bias = [(t, b) for t, b in seq.sampling.logit_bias if 0 <= t < vocab]
        if bias:
            per_row.append((row, [t for t, _ in bias], [b for _, b in bias]))
    if not per_row:
        return logits
    rows, tokens, values = _scatter_indices(per_row)
    return logits.at[rows, tokens].add(mx.array(values, dtype=logits.dtype))


def _truncation_floors(
    scaled: mx.array, top_k: mx.array, top_p: mx.array, min_p: mx.array, width: int
) -> tuple[mx.array, mx.array]:
    """Per row, the smallest logit that survives min-p, then top-k, then top-p over the rest
    (vLLM's order), found among the `width` best tokens. Returns (floors [rows, 1],
    covered [rows]): covered is False where top-p's nucleus may reach beyond those tokens."""
    vocab = scaled.shape[-1]
    best = scaled if width >= vocab else mx.topk(scaled, width, axis=-1)
    ranked = mx.sort(best, axis=-1)[:, ::-1]
    # min-p compares probabilities to the top one's: in logit space, a fixed offset from the max.
    floor = ranked[:, :1] + mx.log(min_p)
    kth = mx.take_along_axis(ranked, mx.maximum(top_k - 1, 0), axis=-1)
    floor = mx.maximum(floor, mx.where(top_k > 0, kth, -mx.inf))

    kept = ranked >= floor
    log_norm = mx.logsumexp(mx.where(scaled >= floor, scaled, -mx.inf), axis=-1, keepdims=True)
    probs = mx.where(kept, mx.exp(ranked - log_norm), 0.0)
    mass = mx.cumsum(probs, axis=-1)
    mass_before = mass - probs
    nucleus_size = mx.maximum((kept & (mass_before < top_p)).sum(axis=-1, keepdims=True), 1)
    nucleus_floor = mx.take_along_axis(ranked, nucleus_size - 1, axis=-1)
    nucleus_off = top_p >= 1.0
    floor = mx.where(nucleus_off, floor, mx.maximum(floor, nucleus_floor))
    covered = nucleus_off | (mass[:, -1:] >= top_p)
    return floor, covered.squeeze(-1)


def truncate(scaled: mx.array, seqs: list[SeqStep]) -> mx.array:
    """Mask (to -inf) the tokens that min_p, top_k and top_p exclude; rows with all three off
    pass unchanged. `scaled`: temperature-scaled logits, row i belonging to seqs[i]."""
    params = [s.sampling for s in seqs]
    if all(p.min_p <= 0.0 and p.top_k <= 0 and p.top_p >= 1.0 for p in params):
        return scaled
    vocab = scaled.shape[-1]
    top_k = [min(p.top_k, vocab) for p in params]
    columns = (
        mx.array(top_k)[:, None],
        mx.array([p.top_p for p in params])[:, None],
        mx.array([p.min_p for p in params])[:, None],
    )
    width = min(vocab, max(NUCLEUS_CANDIDATES, *top_k))
    floors, covered = _truncation_floors(scaled, *columns, width)
    if width < vocab and any(p.top_p < 1.0 for p in params):
        short = [row for row, ok in enumerate(covered.tolist()) if not ok]
        if short:
            index = mx.array(short)
            floors[index] = _truncation_floors(scaled[index], *(c[index] for c in columns), vocab)[0]
    return mx.where(scaled >= floors, scaled, -mx.inf)
