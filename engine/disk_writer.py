"""Write-behind of KV blocks to the disk tier: a bounded queue and one daemon thread.

The engine loop puts a block's K/V (already copied out of the pool, as numpy) and never waits:
when the queue is full the block is dropped and counted, since a block not written is only a
later miss. The thread writes each with engine/kv_block_file.write_block and reports each block
through `on_written(hash, bytes)`, bytes None when the write failed (run on the writer thread: it must
be thread-safe). The same thread bumps the mtime of blocks used from the pool (the start-up scan
orders by it), so no file operation runs on the engine loop.
"""

import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.kv_block_file import touch_block, write_block

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingBlock:
    block_hash: bytes
    token_ids: Sequence[int]
    kv: np.ndarray


@dataclass(frozen=True)
class _Touch:
    hashes: Sequence[bytes]


class DiskWriter:
    def __init__(self, directory: Path, model_key: str, max_queue: int,
                 on_written: Callable[[bytes, int | None], None], dtype: str | None = None):
        """dtype: what a block's K/V are converted to before they are written (None: as given)."""
        self.directory, self.model_key, self.dtype = directory, model_key, dtype
        self._max_queue = max_queue
        self._queue: queue.Queue[PendingBlock | _Touch | None] = queue.Queue(max_queue)
        self._on_written = on_written
        self.dropped = 0
        self.bytes_written = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="pagedmlx-disk-writer", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items queued or being written."""
        return self._queue.unfinished_tasks

    @property
    def room(self) -> int:
        """Blocks that can be queued now without a drop."""
        return max(0, self._max_queue - self._queue.qsize())

    def put(self, block: PendingBlock) -> bool:
        """Queue a block; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(block)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def touch(self, hashes: Sequence[bytes]) -> None:
        """Bump the blocks' files' mtime, on the thread; skipped when the queue is full (a hint)."""
        try:
            self._queue.put_nowait(_Touch(hashes))
        except queue.Full:
            pass

    def drain(self) -> None:
        """Wait until every queued block is written (warm-up runs, tests, shutdown)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        _lower_priority()
        while (item := self._queue.get()) is not None:
            try:
                if isinstance(item, _Touch):
                    self._touch(item.hashes)
                else:
                    self._write(item)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _write(self, block: PendingBlock) -> None:
        try:
            kv = block.kv if self.dtype is None else block.kv.astype(self.dtype, copy=False)
            size = write_block(self.directory, self.model_key, block.block_hash, block.token_ids, kv)
        except OSError as error:  # a full disk or a removed directory costs hits, not the server
            self.failed += 1
            if self.failed in (1, 10) or self.failed % 1000 == 0:  # a full disk fails every block
                log.warning("disk cache: could not write a block (%d failed so far): %s", self.failed, error)
            self._on_written(block.block_hash, None)
            return
        self.bytes_written += size
        self._on_written(block.block_hash, size)

    def _touch(self, hashes: Sequence[bytes]) -> None:
        for block_hash in hashes:
            touch_block(self.directory, block_hash)


def _lower_priority() -> None:
    """Let the engine's threads have the cores first: a write can wait, a decode step should not.
    Linux gives each thread its own nice value; elsewhere the call would renice the whole process."""
    if sys.platform == "linux":
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass
