"""Repetition, presence and frequency penalties over a batch, from per-sequence token counts.

Repetition penalty (HF/vLLM): every token seen in prompt or output has a positive logit divided by
the penalty, a negative one multiplied by it. Then presence and frequency (OpenAI): subtract
presence_penalty once and frequency_penalty per occurrence, counting generated tokens only.

Each step gathers the penalised rows' distinct tokens, penalises them and puts them back, usually
in one [rows, width] take/put along the last axis, width the most tokens any row has: on MLX's CPU
that costs a third to a quarter of a gather/put at flat (row, token) indices, per entry. Its padding
(shorter rows repeat their first entry, rows without penalties hold token 0 unchanged) is wasted
work, which the default rows beside a few long penalised ones would pay for: past PADDING_LIMIT
times the real entries, the flat indices of those alone are used instead. Rows with default params
keep no counts, and a batch without penalties costs nothing.
"""

import mlx.core as mx
import numpy as np

from engine.sampling_params import SamplingParams
from engine.step_types import SeqStep
from engine.token_counts import TokenCounts

# Measured at 32 rows of 49k: the two layouts cost about the same with 8 rows of 1.7k-4.7k entries
# penalised and 24 padded.
PADDING_LIMIT = 4


def _penalised(params: SamplingParams) -> bool:
    return (
        params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
    )


_Entries = tuple[np.ndarray, np.ndarray]  # a row's tokens, and what presence/frequency subtract from each


def _row_entries(params: SamplingParams, counts: TokenCounts) -> _Entries:
    """The tokens a row penalises and what presence/frequency subtract from each."""
    tokens, occurrences = counts.tokens, counts.output_counts
    if params.repetition_penalty == 1.0:
        in_output = occurrences > 0
        tokens, occurrences = tokens[in_output], occurrences[in_output]
    subtracted = np.where(
        occurrences > 0, params.presence_penalty + params.frequency_penalty * occurrences, 0.0
    )
    return tokens, subtracted


def _penalise(picked: mx.array, penalty: mx.array, subtracted: mx.array) -> mx.array:
    return picked / mx.where(picked > 0, penalty, 1.0 / penalty) - subtracted


def _apply_by_row(
    logits: mx.array, seqs: list[SeqStep], entries: dict[int, _Entries], width: int
) -> mx.array:
    """One take/put along the last axis, every row padded to `width`: a penalised row with copies
    of its first entry (the same value written again), the others with token 0 left unchanged."""
    tokens = np.zeros((len(seqs), width), dtype=np.int32)
    subtracted = np.zeros((len(seqs), width), dtype=np.float32)
    penalty = np.ones((len(seqs), 1), dtype=np.float32)
    for row, (row_tokens, row_subtracted) in entries.items():
        n = len(row_tokens)
        if n:
            tokens[row, :n], tokens[row, n:] = row_tokens, row_tokens[0]
            subtracted[row, :n], subtracted[row, n:] = row_subtracted, row_subtracted[0]
        penalty[row] = seqs[row].sampling.repetition_penalty
    tokens = mx.array(tokens)
    picked = mx.take_along_axis(logits, tokens, axis=-1)
    penalised = _penalise(
        picked, mx.array(penalty, dtype=logits.dtype), mx.array(subtracted, dtype=logits.dtype)
    )
    return mx.put_along_axis(logits, tokens, penalised, axis=-1)


def _apply_flat(logits: mx.array, seqs: list[SeqStep], entries: dict[int, _Entries]) -> mx.array:
    """One gather/put of the penalised rows' entries alone, at flat indices into the batch."""
    rows, vocab = logits.shape
    index = mx.array(np.concatenate([row * vocab + tokens for row, (tokens, _) in entries.items()]))
    penalty = np.concatenate(
        [np.full(len(tokens), seqs[row].sampling.repetition_penalty) for row, (tokens, _) in entries.items()]
    )
    subtracted = np.concatenate([row_subtracted for _, row_subtracted in entries.values()])
    flat = logits.reshape(-1)
    penalised = _penalise(
        flat[index], mx.array(penalty, dtype=logits.dtype), mx.array(subtracted, dtype=logits.dtype)
    )
    return mx.put_along_axis(flat, index, penalised, axis=0).reshape(rows, vocab)


class Penalties:
    """Applies the penalties; keeps each penalised sequence's TokenCounts, keyed by seq_id."""

    def __init__(self) -> None:
        self._counts: dict[int, TokenCounts] = {}

    def __call__(self, logits: mx.array, seqs: list[SeqStep]) -> mx.array:
        """logits: [len(seqs), vocab], row i belonging to seqs[i]; a new array, the input untouched."""
        entries = {
            row: _row_entries(seq.sampling, self._updated_counts(seq))
            for row, seq in enumerate(seqs)
            if _penalised(seq.sampling)
        }
        num_entries = sum(len(tokens) for tokens, _ in entries.values())
        if num_entries == 0:
            return logits
        width = max(len(tokens) for tokens, _ in entries.values())
        if len(seqs) * width <= PADDING_LIMIT * num_entries:
            return _apply_by_row(logits, seqs, entries, width)
        return _apply_flat(logits, seqs, entries)

    def release(self, seq_id: int) -> None:
        """Forget a finished sequence's counts."""
        self._counts.pop(seq_id, None)

    def _updated_counts(self, seq: SeqStep) -> TokenCounts:
        counts = self._counts.get(seq.seq_id)
        # A history that does not extend the counted one (a seq_id reused without a release): recount.
        if counts is None or counts.prompt_len != seq.prompt_len or len(seq.history) < counts.num_seen:
            counts = self._counts[seq.seq_id] = TokenCounts(seq.prompt_len)
        counts.update(seq.history)
        return counts
