"""Grammar-constrained decoding with llguidance: a compiler per model, a matcher per sequence.

The compiler wraps the model's HF tokenizer in an LLTokenizer (about 0.4 s for SmolLM2's 49k
tokens, so built on first use and then shared) whose EOS ids are the engine's stop ids: the masks
llguidance computes then allow exactly the tokens that end a sequence wherever the grammar may
end, and nothing else once it is complete.

Threads: compile() runs in the API's worker thread, off the event loop and the engine thread. It
is safe to call from several (the one shared object, the LLTokenizer, is built under a lock and
immutable afterwards), but the first call reads the HF tokenizer, so it belongs on the thread that
owns that tokenizer (the API's tokenize thread). A GrammarConstraint is then driven by the engine
thread alone.
"""

import logging
import re
import threading
from typing import Any

import llguidance.hf
import numpy as np
from llguidance import LLMatcher, LLTokenizer
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

log = logging.getLogger(__name__)
# llguidance's errors quote the grammar's lines ("   2 | x: %json {...}", then a "^" line): for a
# tool grammar that is whole inline schemas, so the message keeps only what and where.
_SOURCE_QUOTE = re.compile(r"^\s*(\d+ \|.*|\^)\s*$")


def _without_source(error: str) -> str:
    kept = [line.strip() for line in error.splitlines() if not _SOURCE_QUOTE.match(line)]
    return " ".join(line for line in kept if line)


class GrammarError(ValueError):
    """A grammar (or the JSON schema inside it) that llguidance rejects; the message is for users."""


class GrammarConstraint:
    """TokenConstraint over one llguidance matcher. The matcher is dropped once the grammar is
    complete (or, should a token ever be rejected, broken): from then on the mask allows EOS only."""

    def __init__(self, matcher: LLMatcher, vocab_size: int, eos_token_ids: list[int]) -> None:
        self._matcher: LLMatcher | None = matcher
        self._bitmask = allocate_token_bitmask(1, vocab_size)
        allowed = np.zeros(self._bitmask.shape[1] * 32, dtype=np.uint8)
        allowed[eos_token_ids] = 1
        self._eos_only = np.packbits(allowed, bitorder="little").view(np.int32)

    @property
    def finished(self) -> bool:
        return self._matcher is None

    def next_token_bitmask(self) -> np.ndarray:
        """The mask row, in a buffer reused by the next call (the sampler copies it at once)."""
        if self._matcher is None:
            return self._eos_only
        fill_next_token_bitmask(self._matcher, self._bitmask)
        return self._bitmask[0]

    def accept(self, token_id: int) -> None:
        if self._matcher is None:
            return
        if not self._matcher.consume_token(token_id):
            log.warning("grammar matcher rejected token %d: %s", token_id, self._matcher.get_error())
            self._matcher = None
        elif self._matcher.is_stopped():
            self._matcher = None


class GrammarCompiler:
    """Compiles grammars in llguidance's Lark dialect (JSON schemas inline as `%json {...}`)
    against one model's tokenizer."""

    def __init__(self, tokenizer: Any, eos_token_ids: tuple[int, ...]) -> None:
        """tokenizer: a transformers PreTrainedTokenizerFast; eos_token_ids: the engine's stop ids."""
        self._hf_tokenizer = tokenizer
        self._eos_token_ids = list(eos_token_ids) or [tokenizer.eos_token_id]
        self._lock = threading.Lock()
        self._tokenizer: LLTokenizer | None = None

    def compile(self, lark: str) -> GrammarConstraint:
        """A fresh constraint for one sequence; GrammarError if the grammar does not compile."""
        tokenizer = self._ll_tokenizer()
        matcher = LLMatcher(tokenizer, LLMatcher.grammar_from_lark(lark), log_level=0)
        if matcher.is_error():
            raise GrammarError(f"invalid grammar: {_without_source(matcher.get_error())}")
        for warning in matcher.get_grammar_warnings():
            log.debug("grammar warning: %s", warning)  # keywords the lenient JSON compile ignored
        return GrammarConstraint(matcher, tokenizer.vocab_size, self._eos_token_ids)

    def _ll_tokenizer(self) -> LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer,
                    n_vocab=len(self._hf_tokenizer),
                    eos_token=self._eos_token_ids,
                )
            return self._tokenizer
