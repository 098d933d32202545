"""One KV block on disk: the file format of the prefix cache's disk tier (issue 19).

A file holds one full block's K and V for every layer, named by the block's chained hash
(scheduler/block_hash.py), and carries what a reader needs to trust it:

    magic (8 bytes) | header length (uint32 LE) | header (JSON) | payload | sha256(header + payload)

The header names the model key (model identity, dtype, block size, KV layout version), the
block's hash, its token ids, the payload's dtype and shape. `read_block` returns None for a file
that is truncated, corrupted, of another model key or of another block, and deletes it: such a
file is never served. Writes go to a temporary file in the same directory, then `os.replace`,
so a reader (another server on the same directory included) sees a whole file or none.
"""

import hashlib
import os
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

MAGIC = b"PMLXKV1\0"
_LENGTH = struct.Struct("<I")
_DIGEST_BYTES = 32


@dataclass(frozen=True)
class StoredBlock:
    token_ids: tuple[int, ...]
    kv: np.ndarray  # [layers, 2 (K, V), kv_heads, block_size, head_dim]
    nbytes: int  # of the file


def block_path(directory: Path, block_hash: bytes) -> Path:
    """Files fan out over 256 subdirectories by the hash's first byte."""
    name = block_hash.hex()
    return directory / name[:2] / f"{name}.kv"


def write_block(directory: Path, model_key: str, block_hash: bytes, token_ids: Sequence[int],
                kv: np.ndarray) -> int:
    """Write one block atomically; returns the bytes written."""
    header = orjson.dumps({"model_key": model_key, "hash": block_hash.hex(), "tokens": list(token_ids),
                           "dtype": kv.dtype.name, "shape": list(kv.shape)})
    payload = np.ascontiguousarray(kv).tobytes()
    digest = hashlib.sha256(header + payload).digest()
    path = block_path(directory, block_hash)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "wb") as file:
        file.write(MAGIC + _LENGTH.pack(len(header)) + header + payload + digest)
    os.replace(temporary, path)
    return len(MAGIC) + _LENGTH.size + len(header) + len(payload) + len(digest)


def read_block(directory: Path, model_key: str, block_hash: bytes) -> StoredBlock | None:
    """The block stored under block_hash, or None (a damaged or foreign file is deleted)."""
    path = block_path(directory, block_hash)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    block = _parse(data, model_key, block_hash)
    if block is None:
        path.unlink(missing_ok=True)
    return block


def remove_stale_temporaries(directory: Path, older_than_s: float = 600.0) -> None:
    """Delete temporary files left by a writer that crashed mid-write (a live writer's are younger)."""
    cutoff = time.time() - older_than_s
    for path in directory.glob("??/*.tmp"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:
            pass


def touch_block(directory: Path, block_hash: bytes) -> None:
    """Bump the file's mtime: the start-up scan orders the least recently used by it."""
    try:
        os.utime(block_path(directory, block_hash))
    except OSError:  # deleted meanwhile, by eviction or another server sharing the directory
        pass


def delete_block(directory: Path, block_hash: bytes) -> None:
    block_path(directory, block_hash).unlink(missing_ok=True)


def _parse(data: bytes, model_key: str, block_hash: bytes) -> StoredBlock | None:
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start + _DIGEST_BYTES or not data.startswith(MAGIC):
        return None
    (header_length,) = _LENGTH.unpack_from(data, len(MAGIC))
    body, digest = data[start:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    if header_length > len(body) or hashlib.sha256(body).digest() != digest:
        return None
    try:
        header = orjson.loads(body[:header_length])
        dtype, shape = np.dtype(header["dtype"]), tuple(header["shape"])
        if header["model_key"] != model_key or header["hash"] != block_hash.hex():
            return None
        kv = np.frombuffer(body[header_length:], dtype=dtype).reshape(shape)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return StoredBlock(tuple(header["tokens"]), kv, len(data))
