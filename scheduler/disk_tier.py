"""The disk tier of the prefix cache: full KV blocks written behind to a directory, read back ahead.

The scheduler asks it, for a waiting request whose pool hit ends at block `start`, how far the chain
continues on disk (`lookup`). The first ask starts a load on the reader thread and the request waits
for it, as for a block another request is computing; once the blocks are in memory they count as
cached: the scheduler allocates pool blocks for them, takes them (`take`) and the engine loop copies
them into the pool before the step's forward. Blocks published by a step are copied out of the pool
and queued to the writer thread (`write_behind`), which never makes the loop wait.

State shared with the two threads (the index, the loads, the counters) is guarded by one lock. Another
server may share the directory: each keeps its own index; a block it deleted reads as a miss.
"""

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.disk_reader import BlockLoad, DiskReader
from engine.disk_writer import DiskWriter, PendingBlock
from engine.kv_block_file import StoredBlock, delete_block, remove_stale_temporaries
from scheduler.block_hash import BlockHash
from scheduler.disk_index import DiskIndex

log = logging.getLogger(__name__)

WRITE_QUEUE_BLOCKS = 1024  # ~0.4-0.7 GB of SmolLM2 blocks in flight at most


@dataclass(frozen=True)
class PublishedBlock:
    """A block a step made cached, to be written to disk if it is not there yet."""

    block_id: int
    block_hash: BlockHash
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class DiskStats:
    hits: int  # blocks read from disk into the pool
    misses: int  # prompt blocks neither in the pool nor on disk, at admission
    bytes_read: int
    bytes_written: int
    dropped_writes: int  # not written: the queue was full, or the write failed
    queue_depth: int
    size_bytes: int
    capacity_bytes: int
    num_blocks: int


class DiskTier:
    def __init__(self, directory: Path, model_key: str, capacity_bytes: int, dtype: str,
                 max_queue: int = WRITE_QUEUE_BLOCKS) -> None:
        """dtype: of the K/V on disk (a numpy name): the writer thread converts the pool's to it,
        the copy into the pool converts back (no fresh memory for a converted copy)."""
        self.directory, self.model_key, self.dtype = directory, model_key, dtype
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(directory)
        self._index, evicted = DiskIndex.scan(directory, capacity_bytes)
        for block_hash in evicted:
            delete_block(directory, block_hash)
        self._lock = threading.Lock()
        self._loads: dict[int, BlockLoad] = {}  # seq_id -> its load, until taken or cancelled
        self._loading: dict[BlockHash, int] = {}  # hash -> seq_id whose load holds it
        self._queued: set[BlockHash] = set()  # handed to the writer, not written yet
        self._hits = self._misses = self._bytes_read = 0
        self._wake: Callable[[], None] = lambda: None
        self._reader = DiskReader(directory, model_key, self._on_loaded)
        self._writer = DiskWriter(directory, model_key, max_queue, self._on_written, dtype)

    def set_wake(self, wake: Callable[[], None]) -> None:
        """Called (from the reader thread) when a load is done, so an idle engine loop looks again."""
        self._wake = wake

    # -- reads (engine thread) -------------------------------------------------------

    def lookup(self, seq_id: int, hashes: Sequence[BlockHash], start: int, stop: int,
               token_ids: Callable[[int], tuple[int, ...]]) -> tuple[int, bool]:
        """(blocks from hashes[start] read into memory and ready to take, whether some are still
        being read). A first lookup starts the load of those stored on disk, up to hashes[stop].
        token_ids(i): the prompt's tokens of block i, which a stored block must hold."""
        with self._lock:
            load = self._loads.get(seq_id)
            if load is not None:
                if not load.done:
                    return 0, True
                if load.start <= start < load.start + len(load.blocks):
                    return load.start + len(load.blocks) - start, False
                self._drop(seq_id)  # the pool hit moved past or before it
            if start >= stop or hashes[start] not in self._index:
                return 0, False
            if hashes[start] in self._loading:  # another request is reading it: wait, then hit the pool
                return 0, True
            count = self._index.num_stored_after(hashes[:stop], start)
            load = BlockLoad(seq_id, start, tuple(hashes[start:start + count]),
                             tuple(token_ids(i) for i in range(start, start + count)))
            self._loads[seq_id] = load
            self._loading.update((block_hash, seq_id) for block_hash in load.hashes)
        self._reader.load(load)
        return 0, True

    def take(self, seq_id: int, start: int) -> list[StoredBlock]:
        """The ready blocks from hashes[start] (as lookup counted them); the load is done with."""
        with self._lock:
            load = self._loads.get(seq_id)
            self._drop(seq_id)
        if load is None or not load.done or start < load.start:
            return []
        return load.blocks[start - load.start:]

    def cancel(self, seq_id: int) -> None:
        """The request finished or was aborted: forget its load (and stop reading it)."""
        with self._lock:
            self._drop(seq_id)

    def count_stored(self, hashes: Sequence[BlockHash], start: int, stop: int) -> int:
        with self._lock:
            return self._index.num_stored_after(hashes[:stop], start)

    def record_admission(self, hits: int, misses: int) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses

    def touch(self, hashes: Sequence[BlockHash]) -> None:
        """Blocks used from the pool: their disk copies are used too (evicted last)."""
        with self._lock:
            on_disk = [block_hash for block_hash in hashes if block_hash in self._index]
            self._index.touch(on_disk)
        if on_disk:
            self._writer.touch(on_disk)

    def _drop(self, seq_id: int) -> None:
        load = self._loads.pop(seq_id, None)
        if load is None:
            return
        load.cancelled = True
        for block_hash in load.hashes:
            if self._loading.get(block_hash) == seq_id:
                del self._loading[block_hash]

    def _on_loaded(self, load: BlockLoad) -> None:
        log.debug("disk cache: read %d of %d blocks (%.1f MB) in %.0f ms", len(load.blocks),
                  len(load.hashes), load.bytes_read / 1e6, load.seconds * 1000)
        with self._lock:
            self._bytes_read += load.bytes_read
            if len(load.blocks) < len(load.hashes) and not load.cancelled:
                self._index.forget(load.hashes[len(load.blocks)])  # missing, damaged or foreign
        self._wake()

    # -- writes ------------------------------------------------------------------------

    def write_behind(self, published: Sequence[PublishedBlock],
                     copy_out: Callable[[list[int]], np.ndarray]) -> None:
        """Queue the blocks not on disk yet; copy_out(block_ids): their K/V out of the pool,
        `[n, layers, 2, kv_heads, block_size, head_dim]`. Engine thread, right after the step."""
        with self._lock:
            new = [block for block in published
                   if block.block_hash not in self._index and block.block_hash not in self._queued]
        room = self._writer.room
        if len(new) > room:
            self._writer.dropped += len(new) - room
            new = new[:room]
        if not new:
            return
        kv = copy_out([block.block_id for block in new])
        with self._lock:
            self._queued.update(block.block_hash for block in new)
        for block, block_kv in zip(new, kv):
            if not self._writer.put(PendingBlock(block.block_hash, block.token_ids, block_kv)):
                with self._lock:
                    self._queued.discard(block.block_hash)

    def _on_written(self, block_hash: BlockHash, size: int | None) -> None:
        """On the writer thread: index the block and delete the files evicted to make room."""
        with self._lock:
            self._queued.discard(block_hash)
            evicted = self._index.add(block_hash, size) if size is not None else []
        for old_hash in evicted:
            delete_block(self.directory, old_hash)

    # -- the rest ----------------------------------------------------------------------

    def stats(self) -> DiskStats:
        with self._lock:
            return DiskStats(
                hits=self._hits, misses=self._misses, bytes_read=self._bytes_read,
                bytes_written=self._writer.bytes_written,
                dropped_writes=self._writer.dropped + self._writer.failed,
                queue_depth=self._writer.depth, size_bytes=self._index.size_bytes,
                capacity_bytes=self._index.capacity_bytes, num_blocks=len(self._index))

    def close(self) -> None:
        self._writer.close()
        self._reader.close()
