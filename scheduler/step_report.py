"""What one engine step ran, handed to the step observer (the metrics) on the engine thread."""

from collections.abc import Callable
from dataclasses import dataclass

from scheduler.cost_model import StepShape


@dataclass(frozen=True, slots=True)
class StepReport:
    duration_s: float
    shape: StepShape  # its rows: one-token rows (decode_rows) and prompt chunks (chunks, chunk_tokens)
    runs_per_seq: list[int]  # contiguous block runs of each row's block table

    @property
    def kind(self) -> str:
        if not self.shape.chunks:
            return "decode"
        return "mixed" if self.shape.decode_rows else "prefill"


StepObserver = Callable[[StepReport], None]
