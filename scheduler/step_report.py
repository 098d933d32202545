"""What one engine step ran, handed to the step observer (the metrics) on the engine thread."""

from collections.abc import Callable
from dataclasses import dataclass

from scheduler.cost_model import StepShape


@dataclass(frozen=True, slots=True)
class StepReport:
    duration_s: float
    decode_rows: int  # rows of one token: decodes, and prompts whose last token alone was left
    prefill_rows: int  # prompt chunks of several tokens
    prefill_tokens: int
    runs_per_seq: list[int]  # contiguous block runs of each row's block table

    @classmethod
    def of(cls, shape: StepShape, duration_s: float, runs_per_seq: list[int]) -> "StepReport":
        return cls(duration_s, shape.decode_rows, shape.chunks, shape.chunk_tokens, runs_per_seq)

    @property
    def kind(self) -> str:
        if not self.prefill_rows:
            return "decode"
        return "mixed" if self.decode_rows else "prefill"

    @property
    def num_tokens(self) -> int:
        return self.decode_rows + self.prefill_tokens


StepObserver = Callable[[StepReport], None]
