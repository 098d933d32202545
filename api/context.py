"""What every handler needs: the engine loop, the tokenizer, the settings, the metrics."""

import asyncio
import copy
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from api.errors import APIError
from api.settings import Settings

if TYPE_CHECKING:
    from api.metrics import Metrics

T = TypeVar("T")
CLAUDE_WINDOW = 200_000


@dataclass
class ServerContext:
    settings: Settings
    engine: Any                     # scheduler.engine_loop.EngineLoop
    tokenizer: Any                  # a transformers PreTrainedTokenizerFast, for the event loop
    model_name: str                 # the served name, echoed when a request names none
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    metrics: "Metrics"
    block_size: int
    tool_parser_name: str           # the format of tool calls in this model's answers
    grammar: Any                    # engine.guided.GrammarCompiler, for constrained decoding
    reasoning_markers: tuple[str, str] | None = None   # ("<think>", "</think>") for such models
    max_queue: int | None = None    # requests waiting for the engine past which new ones are refused
    api_keys: tuple[str, ...] = ()  # accepted on /v1/*, each a tenant; none: no key is checked
    started_at: float = field(default_factory=time.time)
    shutting_down: bool = False
    inflight: set[asyncio.Task] = field(default_factory=set)    # handler tasks, for shutdown
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
        """--claude-context-scale: token counts reported to Anthropic clients are scaled so that
        Claude Code, which assumes a 200k window, compacts before our real limit."""
        return CLAUDE_WINDOW / self.max_model_len if self.settings.claude_context_scale else 1.0

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    async def run_off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)

    def check_model_name(self, requested: str | None) -> str:
        """The name to echo back. Any name is served by the loaded model unless --strict-model-name."""
        if requested is None:
            return self.model_name
        if self.settings.strict_model_name and requested != self.model_name:
            raise APIError(404, f"The model '{requested}' does not exist; this server serves "
                           f"'{self.model_name}'", param="model", code="model_not_found")
        return requested

    def close(self) -> None:
        self._cpu.shutdown(wait=False, cancel_futures=True)


CONTEXT = web.AppKey("context", ServerContext)
