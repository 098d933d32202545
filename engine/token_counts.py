"""One sequence's distinct tokens and output counts, kept up to date from its growing history.

Each call folds in only the tokens appended since the last one, so a generation of N tokens costs
O(N) in all rather than O(N) per step. Tokens live in numpy arrays in order of first appearance
(the prompt's first), so a step reads them with no Python loop over the history.
"""

from collections.abc import Sequence

import numpy as np

_INITIAL_CAPACITY = 256


class TokenCounts:
    def __init__(self, prompt_len: int) -> None:
        self.prompt_len = prompt_len
        self.num_seen = 0
        self._slots: dict[int, int] = {}
        self._tokens = np.empty(_INITIAL_CAPACITY, dtype=np.int32)
        self._counts = np.zeros(_INITIAL_CAPACITY, dtype=np.int64)

    def update(self, history: Sequence[int]) -> None:
        """Count history[num_seen:]; history must extend the one seen so far."""
        for position in range(self.num_seen, len(history)):
            token = history[position]
            slot = self._slots.get(token)
            if slot is None:
                slot = self._slots[token] = len(self._slots)
                if slot == len(self._tokens):
                    self._grow()
                self._tokens[slot] = token
            if position >= self.prompt_len:
                self._counts[slot] += 1
        self.num_seen = len(history)

    @property
    def tokens(self) -> np.ndarray:
        """Every distinct token of prompt and output, int32."""
        return self._tokens[: len(self._slots)]

    @property
    def output_counts(self) -> np.ndarray:
        """Occurrences in the output of each of `tokens` (0 for a prompt-only token)."""
        return self._counts[: len(self._slots)]

    def _grow(self) -> None:
        self._tokens = np.concatenate([self._tokens, np.empty_like(self._tokens)])
        self._counts = np.concatenate([self._counts, np.zeros_like(self._counts)])
