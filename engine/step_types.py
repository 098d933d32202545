"""What the scheduler hands the runner each step, and what comes back. Pure Python, no MLX."""

from collections.abc import Sequence
from dataclasses import dataclass

from engine.sampling_params import SamplingParams


@dataclass
class SeqStep:
    seq_id: int
    token_ids: list[int]
    start_pos: int
    block_table: list[int]
    sampling: SamplingParams
    sample: bool
    prompt_len: int
    history: Sequence[int]

    @property
    def is_decode(self) -> bool:
        return len(self.token_ids) == 1 and self.start_pos >= self.prompt_len


@dataclass
class TokenOutput:
    seq_id: int
    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
