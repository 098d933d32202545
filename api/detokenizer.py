"""Incremental detokenization that never splits a multi-byte character.

A token of a byte-level BPE may hold half of an emoji or CJK character; decoding it alone
yields U+FFFD. Like vLLM, we decode a small window of tokens and emit only the text that
grew past the window's settled prefix, holding back text that still ends in U+FFFD.

Fast tokenizers run that algorithm in Rust (tokenizers' DecodeStream, as vLLM V1 does), several
times faster per token than the window over tokenizer.decode (benchmarks/detokenize_bench.py);
other tokenizers get the window.
"""

from collections import deque
from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

# Prompt tokens decoded ahead of the output so that tokenizers which drop a leading space
# when decoding from the start (SentencePiece) still produce it for the first output token.
PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"
# DecodeStream raises this when a byte run turns invalid UTF-8 after part of it was emitted.
_INVALID_PREFIX = "Invalid prefix encountered"


def _decode(tokenizer: Any, token_ids: list[int]) -> str:
    return tokenizer.decode(token_ids, skip_special_tokens=True,
                            clean_up_tokenization_spaces=False)


def _held_text(tokenizer: Any, settled: list[int], held: list[int]) -> str:
    """The text the held tokens add after the settled ones, an unfinished character dropped
    rather than sent as U+FFFD (max_tokens cut it)."""
    prefix_text = _decode(tokenizer, settled)
    return _decode(tokenizer, settled + held)[len(prefix_text):].rstrip(_REPLACEMENT)


class WindowDetokenizer:
    """The window over tokenizer.decode, for any tokenizer."""

    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._tokens = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._tokens)

    def add(self, token_id: int) -> str:
        self._tokens.append(token_id)
        window = self._tokens[self._prefix_offset :]
        prefix_text = _decode(self._tokenizer, window[: self._read_offset - self._prefix_offset])
        full_text = _decode(self._tokenizer, window)
        if len(full_text) <= len(prefix_text) or full_text.endswith(_REPLACEMENT):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._tokens)
        return full_text[len(prefix_text) :]

    def flush(self) -> str:
        text = _held_text(self._tokenizer, self._tokens[self._prefix_offset : self._read_offset],
                          self._tokens[self._read_offset :])
        self._prefix_offset = self._read_offset = len(self._tokens)
        return text


class StreamDetokenizer:
    """The same window in Rust: tokenizers' DecodeStream over the fast tokenizer's backend."""

    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._backend: Tokenizer = tokenizer.backend_tokenizer
        # The last tokens whose text was emitted (or the prompt's), and those held back since.
        self._settled = deque(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:], PROMPT_CONTEXT_TOKENS)
        self._held: list[int] = []
        self._stream = DecodeStream(list(self._settled), skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        try:
            text = self._stream.step(self._backend, token_id)
        except Exception as error:
            if _INVALID_PREFIX not in str(error):
                raise
            # As vLLM does: restart the stream from nothing (an empty prefix cannot be invalid),
            # dropping the held tokens, bytes that never formed a character.
            self._held.clear()
            self._stream = DecodeStream(skip_special_tokens=True)
            text = self._stream.step(self._backend, token_id)
        if text is None:
            self._held.append(token_id)
            return ""
        if self._held:
            self._settled.extend(self._held)
            self._held.clear()
        self._settled.append(token_id)
        return text

    def flush(self) -> str:
        """The last call: the stream's state is not kept past it."""
        return _held_text(self._tokenizer, list(self._settled), self._held)


def incremental_detokenizer(tokenizer: Any, prompt_token_ids: Sequence[int] = ()
                            ) -> StreamDetokenizer | WindowDetokenizer:
    """add() each output token for the newly completed text (possibly empty); flush() at the
    end for what was still held back."""
    fast = isinstance(getattr(tokenizer, "backend_tokenizer", None), Tokenizer)
    kind = StreamDetokenizer if fast else WindowDetokenizer
    return kind(tokenizer, prompt_token_ids)
