"""A generation request and its life: waiting -> running (-> preempted -> waiting ...) -> finished."""

import enum
import time
from dataclasses import dataclass, field

from engine.sampling_params import SamplingParams
from scheduler.block_hash import BlockHashChain


class RequestRejected(ValueError):
    """The request can never run here (an empty prompt, or one beyond the context or the KV pool)."""


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # its blocks were taken back; it waits at the head of the queue to recompute
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"


class AbortCause(str, enum.Enum):
    """Why a request was ended before it finished by itself, for metrics."""

    CLIENT_DISCONNECT = "client_disconnect"  # its stream was left: the client went away
    STOP_STRING = "stop_string"  # the API matched a stop string in the text
    REJECTED = "rejected"  # a sibling choice of the same API request was refused
    SHUTDOWN = "shutdown"  # the server stopped before it finished
    ENGINE_ERROR = "engine_error"  # a failed step, the scheduler, or the engine thread


@dataclass
class RequestTimings:
    """time.monotonic() of each stage; None until the stage is reached."""

    arrival: float
    first_scheduled: float | None = None
    first_token: float | None = None
    finish: float | None = None


@dataclass(eq=False)
class Request:
    request_id: str
    seq_id: int  # the runner's and block manager's key; increases with arrival
    token_ids: list[int]  # the prompt, then each output token appended: the runner's `history`
    sampling: SamplingParams
    max_tokens: int  # sampling.max_tokens clamped to what the context leaves after the prompt
    block_hashes: BlockHashChain  # over token_ids' full blocks, extended on append
    cache_salt: str | None = None
    session: str = ""  # the client it comes from: prefill is shared fairly between sessions
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    error: str | None = None
    num_computed_tokens: int = 0  # tokens whose K/V are in the sequence's blocks
    num_cached_tokens: int = 0  # prefix-cache hit when first scheduled
    timings: RequestTimings = field(default_factory=lambda: RequestTimings(time.monotonic()))
    num_prompt_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.token_ids)
        self.block_hashes.extend(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens to run before the next sample: 1 for a decode, the rest of the prompt for a prefill."""
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_token(self, token_id: int, now: float) -> FinishReason | None:
        """Add a sampled token; the reason to finish if it is a stop token or the last one allowed."""
        self.token_ids.append(token_id)
        self.block_hashes.extend(self.token_ids)
        if self.timings.first_token is None:
            self.timings.first_token = now
        if token_id in self.sampling.stop_token_ids:
            return FinishReason.STOP
        if self.num_output_tokens >= self.max_tokens:
            return FinishReason.LENGTH
        return None

    def finish(self, reason: FinishReason, now: float, error: str | None = None) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason
        self.error = error
        self.timings.finish = now
