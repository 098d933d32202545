"""What a handler needs of the model serving its request: the engine loop, the tokenizer, the
model's settings and metrics."""

import asyncio
import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from api.settings import Settings

if TYPE_CHECKING:
    from api.metrics import ModelMetrics

T = TypeVar("T")
CLAUDE_WINDOW = 200_000


def claude_token_scale(settings: Settings, max_model_len: int) -> float:
    """--claude-context-scale: token counts reported to Anthropic clients are scaled so that
    Claude Code, which assumes a 200k window, compacts before our real limit."""
    return CLAUDE_WINDOW / max_model_len if settings.claude_context_scale else 1.0


@dataclass
class ModelContext:
    settings: Settings              # the server's, with this model's overrides
    engine: Any                     # scheduler.engine_loop.EngineLoop
    tokenizer: Any                  # a transformers PreTrainedTokenizerFast, for the event loop
    model_name: str                 # the served name, echoed when a request names none
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    metrics: "ModelMetrics"
    block_size: int
    tool_parser_name: str           # the format of tool calls in this model's answers
    grammar: Any                    # engine.guided.GrammarCompiler, for constrained decoding
    reasoning_markers: tuple[str, str] | None = None   # ("<think>", "</think>") for such models
    max_queue: int | None = None    # requests waiting for the engine past which new ones are refused
    # One thread renders chat templates and tokenizes, off the event loop (a long prompt
    # takes tens of ms). A HF fast tokenizer is not safe to share across threads (encode may
    # reconfigure its Rust backend: "Already borrowed"), so that thread has its own copy, which
    # only functions given to run_off_loop may use; the event loop decodes with `tokenizer`.
    _cpu: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="tokenize")
    )
    encode_tokenizer: Any = field(default=None, repr=False)   # a copy of tokenizer when not given

    def __post_init__(self) -> None:
        if self.encode_tokenizer is None:
            self.encode_tokenizer = copy.deepcopy(self.tokenizer)  # ~0.2 s and ~5 MiB for SmolLM2

    @property
    def claude_token_scale(self) -> float:
        return claude_token_scale(self.settings, self.max_model_len)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    async def run_off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)

    def close(self) -> None:
        self._cpu.shutdown(wait=False, cancel_futures=True)
