"""What the sampler needs from a constrained-decoding state, and the mask it applies to logits.

Masks use llguidance's layout: per row, ceil(vocab / 32) int32 words, bit i of word w allowing token
32w + i. They are unpacked with plain MLX ops (llguidance.mlx's Metal kernel has no CPU version).
The logits may be wider than the tokenizer's vocab (a model's embedding is often padded): columns
the mask does not cover are disallowed, and mask bits beyond the logits are dropped.
"""

from typing import Protocol

import mlx.core as mx
import numpy as np

_NEG_INF_BITS = -0x800000  # 0xFF800000 as int32: the bits of float32 -inf


class TokenConstraint(Protocol):
    """One sequence's constraint, driven by the sampler: each sampled step asks for the mask of the
    next token, then hands back the token drawn. Prefill-only and recomputed steps (preemption)
    never reach the sampler, so the state advances exactly once per generated token."""

    def next_token_bitmask(self) -> np.ndarray | None:
        """The allowed next tokens as one int32 bitmask row; None: no constraint on this token."""
        ...

    def accept(self, token_id: int) -> None:
        """Advance past the token the sampler drew for this sequence."""
        ...

    @property
    def finished(self) -> bool:
        """The constrained text is complete: from now on only EOS is allowed."""
        ...


def bitmask_penalty(bitmask: mx.array, width: int) -> mx.array:
    """[rows, width] float32: 0 where `bitmask` [rows, words] allows the token, -inf elsewhere.

    Built without a select: MLX's CPU `where` over a batch of 49k-token rows costs ~3 ms, a gather
    of the words per column ~7 ms; shifting every word by 0..31 and turning each bit b into the
    float32 bit pattern (b - 1) & bits(-inf) takes ~0.5 ms for 16 rows."""
    rows, words = bitmask.shape
    # Built per call: an array made at import would belong to the importing thread's stream,
    # and the engine thread could not evaluate it.
    shifts = mx.arange(32, dtype=mx.int32)
    bits = ((bitmask[:, :, None] >> shifts) & 1).reshape(rows, 32 * words)
    penalty = ((bits - 1) & _NEG_INF_BITS).view(mx.float32)
    if width <= 32 * words:
        return penalty[:, :width]
    return mx.concatenate([penalty, mx.full((rows, width - 32 * words), -mx.inf)], axis=1)


def apply_token_bitmask(logits: mx.array, bitmask: mx.array) -> mx.array:
    """`logits` [rows, width] with -inf where bitmask row [rows, words] disallows the token (an
    all-ones row leaves its row as it was): a new array, the input (the raw logits, whose logprobs
    are reported) untouched."""
    return logits + bitmask_penalty(bitmask, logits.shape[-1])
