"""Stable chained block hashes: the identity of a full block of tokens in the prefix cache.

A block's hash covers every token before it (through its parent's hash), its own tokens and
the extra keys (the model id and the request's cache salt), so two blocks share a hash only
when the KV they hold is the same. sha256 over a fixed byte layout keeps a hash the same across
processes and restarts, unlike Python's salted hash():

    sha256(parent digest (32 bytes) + extra keys + token ids as little-endian int32)
"""

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

BlockHash = bytes

ROOT_HASH: BlockHash = bytes(32)  # the parent of a sequence's first block


def extra_keys(cache_key: str, cache_salt: str | None) -> bytes:
    """The model id and the tenant's salt, each length-prefixed (None and "" both mean no salt)."""
    parts = (cache_key.encode(), (cache_salt or "").encode())
    return b"".join(struct.pack("<I", len(part)) + part for part in parts)


def hash_block(parent: BlockHash, token_ids: Sequence[int], extra: bytes) -> BlockHash:
    tokens = struct.pack(f"<{len(token_ids)}i", *token_ids)
    return hashlib.sha256(parent + extra + tokens).digest()


def extend_block_hashes(
    hashes: list[BlockHash], token_ids: Sequence[int], block_size: int, extra: bytes, num_blocks: int
) -> None:
    """Append to `hashes`, the chain over token_ids' leading full blocks, until it covers num_blocks."""
    parent = hashes[-1] if hashes else ROOT_HASH
    for i in range(len(hashes), num_blocks):
        parent = hash_block(parent, token_ids[i * block_size : (i + 1) * block_size], extra)
        hashes.append(parent)


@dataclass
class BlockHashChain:
    """A growing sequence's chain, kept on its request so that no step hashes a prompt twice."""

    block_size: int
    extra: bytes
    hashes: list[BlockHash] = field(default_factory=list)

    def extend(self, token_ids: Sequence[int]) -> None:
        """Cover every full block of token_ids (a prefix of them is already covered)."""
        num_full = len(token_ids) // self.block_size
        if num_full > len(self.hashes):
            extend_block_hashes(self.hashes, token_ids, self.block_size, self.extra, num_full)
