"""Incremental detokenization that never splits a multi-byte character.

A token of a byte-level BPE may hold half of an emoji or CJK character; decoding it alone
yields U+FFFD. Like vLLM, we decode a small window of tokens and emit only the text that
grew past the window's settled prefix, holding back text that still ends in U+FFFD.
"""

from collections.abc import Sequence
from typing import Any

# Prompt tokens decoded ahead of the output so that tokenizers which drop a leading space
# when decoding from the start (SentencePiece) still produce it for the first output token.
PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._tokens = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._tokens)

    def add(self, token_id: int) -> str:
        """Appends one token; returns the newly completed text (possibly empty)."""
        self._tokens.append(token_id)
        prefix_text = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._tokens[self._prefix_offset :])
        if len(full_text) <= len(prefix_text) or full_text.endswith(_REPLACEMENT):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._tokens)
        return full_text[len(prefix_text) :]

    def flush(self) -> str:
        """Text still held back when the stream ends. A character left unfinished (max_tokens cut
        it) is dropped rather than sent as U+FFFD."""
        prefix_text = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._tokens[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._tokens)
        return full_text[len(prefix_text) :].rstrip(_REPLACEMENT)

    def _decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(
            token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
