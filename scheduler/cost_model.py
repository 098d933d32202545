"""How long a step will take, so the scheduler can keep each one under its target time.

A token budget alone does not bound a step: on a CPU, attention of a 512-token chunk costs ~0.8 s at
512 tokens of context and ~35 s at 20k. A step's time is modelled as linear in five features:

    forwards       one for the batched decode rows plus one per prefill chunk (fixed cost of a pass)
    tokens         rows through the weight matmuls (projections, MLP)
    decode_pairs   query x key pairs of the decode rows (memory-bound attention)
    prefill_pairs  query x key pairs of the chunks, L x (start + (L + 1) / 2) each (exp-bound on a CPU)
    restored       blocks copied from the disk tier's read-ahead into the pool (memory-bound)

The coefficients start at priors measured on a 2-core CPU with SmolLM2-135M and are refitted after every
step by exponentially weighted least squares on relative error, ridge-regularised toward the priors
scaled by the best single factor, so a uniformly faster device (a GPU) is learned from the first steps
while a feature the data has not excited yet keeps the prior's proportion to the others.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from engine.step_types import SeqStep

# ms per forward, per token, per decode query-key pair, per prefill query-key pair, per restored block.
PRIOR_MS = (40.0, 2.5, 9e-3, 3.4e-3, 0.5)
NUM_FEATURES = len(PRIOR_MS)
_MIN_MULTIPLIER = 0.01  # of the overall scale: no feature is free


@dataclass
class StepShape:
    """A step's rows reduced to what its cost depends on; the scheduler grows it row by row."""

    decode_rows: int = 0
    decode_pairs: int = 0
    chunks: int = 0
    chunk_tokens: int = 0
    prefill_pairs: int = 0
    restored_blocks: int = 0

    @classmethod
    def of(cls, seqs: Sequence[SeqStep]) -> "StepShape":
        shape = cls()
        for seq in seqs:
            shape.add(seq.start_pos, len(seq.token_ids))
        return shape

    def add(self, start: int, length: int) -> None:
        """A row running `length` tokens after `start` computed ones (1 token: a decode row)."""
        if length == 1:
            self.decode_rows += 1
            self.decode_pairs += start + 1
        else:
            self.chunks += 1
            self.chunk_tokens += length
            self.prefill_pairs += chunk_pairs(start, length)

    @property
    def num_tokens(self) -> int:
        return self.decode_rows + self.chunk_tokens

    def features(self) -> tuple[float, ...]:
        forwards = (self.decode_rows > 0) + self.chunks
        return (forwards, self.num_tokens, self.decode_pairs, self.prefill_pairs, self.restored_blocks)


def chunk_pairs(start: int, length: int) -> int:
    """Query-key pairs of a causal chunk of `length` tokens after `start` cached ones."""
    return length * start + length * (length + 1) // 2


class CostModel:
    def __init__(
        self, prior_ms: Sequence[float] = PRIOR_MS, decay: float = 0.98, prior_strength: float = 0.01
    ) -> None:
        self.prior = tuple(prior_ms)
        self.decay = decay
        self.prior_strength = prior_strength
        self.coefficients = self.prior
        self.num_observations = 0
        # Decayed normal equations of the fit in multiplier space: y ~ sum_j m_j * prior_j * x_j.
        self._gram = [[0.0] * NUM_FEATURES for _ in range(NUM_FEATURES)]
        self._moment = [0.0] * NUM_FEATURES

    def estimate_ms(self, shape: StepShape) -> float:
        return sum(c * x for c, x in zip(self.coefficients, shape.features()))

    def restore_ms(self, num_blocks: int) -> float:
        """Estimated time of copying num_blocks read from disk into the pool."""
        return self.coefficients[4] * num_blocks

    def max_chunk_tokens(self, start: int, budget_ms: float) -> int:
        """Longest chunk after `start` computed tokens whose own forward fits in budget_ms (maybe 0)."""
        per_forward, per_token, _, per_pair, _ = self.coefficients
        spare = budget_ms - per_forward
        if spare <= 0:
            return 0
        # per_pair * L^2 / 2 + (per_token + per_pair * (start + 1/2)) * L <= spare
        linear = per_token + per_pair * (start + 0.5)
        quadratic = per_pair / 2
        length = (math.sqrt(linear * linear + 4 * quadratic * spare) - linear) / (2 * quadratic)
        return max(0, math.floor(length))

    def observe(self, shape: StepShape, measured_ms: float) -> None:
        """Refit the coefficients with one measured step."""
        contributions = [p * x for p, x in zip(self.prior, shape.features())]
        weight = 1.0 / max(measured_ms, 1e-3) ** 2  # relative error: a 50 ms step counts like a 30 s one
        for i in range(NUM_FEATURES):
            self._moment[i] = self.decay * self._moment[i] + weight * contributions[i] * measured_ms
            for j in range(NUM_FEATURES):
                self._gram[i][j] = (
                    self.decay * self._gram[i][j] + weight * contributions[i] * contributions[j]
                )
        self.num_observations += 1
        multipliers = self._fit_multipliers()
        self.coefficients = tuple(p * m for p, m in zip(self.prior, multipliers))

    def _fit_multipliers(self) -> list[float]:
        total_gram = sum(map(sum, self._gram))
        scale = sum(self._moment) / total_gram if total_gram > 0 else 1.0
        ridge = self.prior_strength
        matrix = [
            [g + (ridge if i == j else 0.0) for j, g in enumerate(row)] for i, row in enumerate(self._gram)
        ]
        rhs = [m + ridge * scale for m in self._moment]
        return [max(m, _MIN_MULTIPLIER * scale) for m in _solve(matrix, rhs)]


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the matrix is small and positive definite)."""
    n = len(rhs)
    rows = [row[:] + [value] for row, value in zip(matrix, rhs)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(rows[r][col]))
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(col + 1, n):
            factor = rows[r][col] / rows[col][col]
            for c in range(col, n + 1):
                rows[r][c] -= factor * rows[col][c]
    solution = [0.0] * n
    for r in reversed(range(n)):
        tail = sum(rows[r][c] * solution[c] for c in range(r + 1, n))
        solution[r] = (rows[r][n] - tail) / rows[r][r]
    return solution
