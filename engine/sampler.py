"""Batched sampling: one call turns a step's logits into one token per sequence.

Per row, in order: logit_bias, repetition penalty, presence and frequency penalties; greedy rows
(temperature 0 or top_k 1) then take the argmax, the others divide by their temperature, apply
min_p, top_k and top_p, and draw with a key from their own RNG. All greedy rows share one argmax,
all sampling rows one vmapped categorical draw, and one evaluation brings everything to the host
(top_p adds one small sync of its own: see logits_processors.truncate).

Rows with a constraint (a grammar) get its mask after bias and penalties, before the argmax and
temperature: one op over the batch, the masks computed on the host while the forward that makes
the logits is still running; each constraint then accepts its row's token. Without such rows
nothing of this runs.

Logprobs are those of the model's distribution: log_softmax of the raw logits, before bias,
penalties, temperature and truncation, as vLLM reports them by default ("raw_logprobs").
"""

import random

import mlx.core as mx
import numpy as np

from engine.constraint import apply_token_bitmask
from engine.logits_processors import apply_logit_bias, truncate
from engine.penalties import Penalties
from engine.sampling_params import MAX_TOP_LOGPROBS
from engine.step_types import SeqStep, TokenOutput

# One key per row: a row's draw depends only on its logits and its key, never on its neighbours.
_categorical_per_row = mx.vmap(lambda logits, key: mx.random.categorical(logits, key=key))


def _select_rows(x: mx.array, rows: list[int], total: int) -> mx.array:
    return x if len(rows) == total else x[mx.array(rows)]


def _num_top_logprobs(seq: SeqStep) -> int:
    return min(seq.sampling.logprobs or 0, MAX_TOP_LOGPROBS)


def _logprobs(raw_logits: mx.array, tokens: mx.array, num_top: int) -> tuple[mx.array, ...]:
    """Chosen-token logprobs [rows], and the best num_top token ids and logprobs [rows, num_top],
    best first."""
    logprobs = raw_logits - mx.logsumexp(raw_logits, axis=-1, keepdims=True)
    chosen = mx.take_along_axis(logprobs, tokens[:, None], axis=-1).squeeze(-1)
    if num_top == 0:
        nothing = mx.zeros((len(tokens), 0))
        return chosen, nothing, nothing
    top_ids = mx.argpartition(-logprobs, kth=num_top - 1, axis=-1)[:, :num_top]
    top_values = mx.take_along_axis(logprobs, top_ids, axis=-1)
    order = mx.argsort(-top_values, axis=-1)
    return (
        chosen,
        mx.take_along_axis(top_ids, order, axis=-1),
        mx.take_along_axis(top_values, order, axis=-1),
    )


def _apply_constraints(logits: mx.array, seqs: list[SeqStep], constrained: list[int]) -> mx.array:
    """Mask the rows whose constraint restricts this token. One bitmask covers the whole batch,
    rows without a mask all ones: adding a penalty to every row is cheaper than a scatter into
    some (MLX's CPU scatter of 8 rows of 49k costs ~1.2 ms, the whole add ~0.2 ms)."""
    masks = {i: seqs[i].sampling.constraint.next_token_bitmask() for i in constrained}
    masks = {i: mask for i, mask in masks.items() if mask is not None}
    if not masks:
        return logits
    bitmask = np.full((len(seqs), len(next(iter(masks.values())))), -1, dtype=np.int32)
    for i, mask in masks.items():
        bitmask[i] = mask
    return apply_token_bitmask(logits, mx.array(bitmask))


class Sampler:
    """Samples one token per row. Seeded sequences keep a private RNG (keyed by seq_id, seeded
    from sampling.seed, advanced once per sampled token), so their tokens repeat whatever the
    batch around them; unseeded ones share a process RNG. Penalised sequences keep their token
    counts, also by seq_id, until release."""

    def __init__(self) -> None:
        self._process_rng = random.Random()
        self._seq_rngs: dict[int, random.Random] = {}
        self._penalties = Penalties()

    def __call__(self, logits: mx.array, seqs: list[SeqStep]) -> list[TokenOutput]:
        """logits: [len(seqs), vocab] float32, row i belonging to seqs[i]."""
        total = len(seqs)
        constrained = [i for i, seq in enumerate(seqs) if seq.sampling.constraint is not None]
        processed = self._penalties(apply_logit_bias(logits, seqs), seqs)
        if constrained:
            processed = _apply_constraints(processed, seqs, constrained)
        tokens = mx.argmax(processed, axis=-1)  # lazy: never computed if every row samples
        sampling_rows = [i for i, seq in enumerate(seqs) if not seq.sampling.greedy]
        if sampling_rows:
            drawn = self._draw(
                _select_rows(processed, sampling_rows, total), [seqs[i] for i in sampling_rows]
            )
            if len(sampling_rows) == total:
                tokens = drawn
            else:
                tokens[mx.array(sampling_rows)] = drawn

        logprob_rows = [i for i, seq in enumerate(seqs) if seq.sampling.logprobs is not None]
        logprob_arrays: tuple[mx.array, ...] = ()
        if logprob_rows:
            logprob_arrays = _logprobs(
                _select_rows(logits, logprob_rows, total),
                _select_rows(tokens, logprob_rows, total),
                max(_num_top_logprobs(seqs[i]) for i in logprob_rows),
            )
        mx.eval(tokens, *logprob_arrays)

        token_ids = tokens.tolist()
        for i in constrained:
            seqs[i].sampling.constraint.accept(token_ids[i])
        outputs = [TokenOutput(seq.seq_id, token) for seq, token in zip(seqs, token_ids)]
        if logprob_rows:
            chosen, top_ids, top_values = (a.tolist() for a in logprob_arrays)
            for j, row in enumerate(logprob_rows):
                outputs[row].logprob = chosen[j]
                num_top = _num_top_logprobs(seqs[row])
                if num_top:
                    outputs[row].top_logprobs = list(zip(top_ids[j][:num_top], top_values[j][:num_top]))
        return outputs

    def release(self, seq_id: int) -> None:
        """Forget a finished sequence's RNG and penalty counts."""
        self._seq_rngs.pop(seq_id, None)
        self._penalties.release(seq_id)

    def _draw(self, logits: mx.array, seqs: list[SeqStep]) -> mx.array:
        temperatures = mx.array([seq.sampling.temperature for seq in seqs])[:, None]
        candidates = truncate(logits / temperatures, seqs)
        keys = mx.stack([mx.random.key(self._rng(seq).getrandbits(64)) for seq in seqs])
        return _categorical_per_row(candidates, keys)

    def _rng(self, seq: SeqStep) -> random.Random:
        seed = seq.sampling.seed
        if seed is None:
            return self._process_rng
        rng = self._seq_rngs.get(seq.seq_id)
        if rng is None:
            rng = self._seq_rngs[seq.seq_id] = random.Random(seed)
        return rng
