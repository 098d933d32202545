"""The raw bytes of a token, for the `bytes` field of OpenAI logprobs.

decode([id]) of a token that holds part of a multi-byte character gives U+FFFD, so the bytes are
read from the token's vocabulary string instead: through GPT-2's byte-to-unicode table for a
byte-level BPE, or from the `<0xAB>` byte tokens and '▁' spaces of a SentencePiece vocabulary.
Added tokens, and vocabularies of any other kind, fall back to the decoded text's bytes.
"""

import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: printable bytes stand for their own character, the
    others for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    others = [b for b in range(256) if chr(b) not in table]
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


_UNICODE_TO_BYTE = _gpt2_unicode_to_byte()


def _byte_level_bytes(piece: str) -> bytes | None:
    try:
        return bytes(_UNICODE_TO_BYTE[char] for char in piece)
    except KeyError:
        return None


def _sentencepiece_bytes(piece: str) -> bytes:
    byte_token = _BYTE_TOKEN.fullmatch(piece)
    if byte_token:
        return bytes([int(byte_token.group(1), 16)])
    return piece.replace("▁", " ").encode()


def _decoder_types(tokenizer: Any) -> set[str]:
    """The types of the fast tokenizer's decoder ("ByteLevel", ...), a Sequence's included."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None:
        return set()
    state = json.loads(decoder.__getstate__())
    return {step["type"] for step in state.get("decoders", [state])}


class TokenBytes:
    """token id -> its raw bytes, for one tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        # Added tokens (the chat markers, ...) are stored as plain text, not in the vocabulary's
        # byte encoding.
        self._added = frozenset(getattr(tokenizer, "added_tokens_decoder", ()))
        kinds = _decoder_types(tokenizer)
        self._from_piece: Callable[[str], bytes | None] | None = None
        if "ByteLevel" in kinds:
            self._from_piece = _byte_level_bytes
        elif kinds & {"ByteFallback", "Metaspace"}:
            self._from_piece = _sentencepiece_bytes

    def __call__(self, token_id: int) -> bytes:
        if self._from_piece is not None and token_id not in self._added:
            piece = self._tokenizer.convert_ids_to_tokens(token_id)
            raw = None if piece is None else self._from_piece(piece)
            if raw is not None:
                return raw
        return self._tokenizer.decode([token_id], clean_up_tokenization_spaces=False).encode()


@lru_cache(maxsize=8)
def token_bytes(tokenizer: Any) -> TokenBytes:
    """The TokenBytes of `tokenizer`, built once per tokenizer object."""
    return TokenBytes(tokenizer)
