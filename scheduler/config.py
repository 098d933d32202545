"""The scheduler's limits: batch size, token and step-time budgets, the KV pool's shape."""

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    num_blocks: int  # KV pool size; the runner's must match
    block_size: int = 16
    max_model_len: int = 8192  # prompt + output; the API sets the model's context here
    max_num_seqs: int = 32  # running sequences (decoding or mid-prefill) at once
    max_num_batched_tokens: int = 2048  # decode rows + prefill chunk tokens in one step
    # Target wall time of one step. Prefill chunks shrink as their context grows to stay under it, so
    # running streams get a token at least this often (a step always moves one prefill by a block).
    max_step_ms: float = 750.0
    # Share of each step's spare prefill budget guaranteed to the oldest prefill (aging), so that steady
    # short traffic cannot starve a long prompt: its time to first token stays near 1 / share of alone.
    oldest_prefill_share: float = 0.5
    cache_key: str = ""  # the model's identity in block hashes

    def __post_init__(self) -> None:
        for name in ("num_blocks", "block_size", "max_model_len", "max_num_seqs", "max_step_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SchedulerConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.oldest_prefill_share <= 1.0:
            raise ValueError(
                f"SchedulerConfig.oldest_prefill_share must be in (0, 1], got {self.oldest_prefill_share}")
        if self.max_num_batched_tokens < max(self.max_num_seqs, self.block_size):
            raise ValueError(
                f"SchedulerConfig.max_num_batched_tokens ({self.max_num_batched_tokens}) must hold a "
                f"decode row per sequence ({self.max_num_seqs}) and one block ({self.block_size})"
            )

    @property
    def context_limit(self) -> int:
        """Longest sequence (prompt + output) that can run: the context, or the whole pool if smaller."""
        return min(self.max_model_len, self.num_blocks * self.block_size)
