"""Read-ahead of KV blocks from the disk tier: one daemon thread, so the engine loop never waits on a file.

A load is a run of consecutive blocks of one prompt's chain. The thread reads and checks them in order
(engine/kv_block_file.read_block), then checks that each holds the tokens the prompt has there (a
file whose tokens differ is foreign: deleted). It stops at the first block that is missing, damaged
or foreign: the blocks after it could not be used anyway, since a prefix hit must be contiguous. It then hands the blocks read to
`on_loaded(load)`, which runs on the reader thread.
"""

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.kv_block_file import StoredBlock, delete_block, read_block, touch_block


@dataclass(eq=False)
class BlockLoad:
    seq_id: int
    start: int  # index in the sequence's chain of hashes[0]
    hashes: tuple[bytes, ...]
    token_ids: tuple[tuple[int, ...], ...]  # the prompt's tokens of each block
    blocks: list[StoredBlock] = field(default_factory=list)  # read and checked, a prefix of hashes
    bytes_read: int = 0
    seconds: float = 0.0
    done: bool = False
    cancelled: bool = False  # the request went away: stop reading


class DiskReader:
    def __init__(self, directory: Path, model_key: str, on_loaded: Callable[[BlockLoad], None]):
        self.directory, self.model_key = directory, model_key
        self._on_loaded = on_loaded
        self._queue: queue.SimpleQueue[BlockLoad | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pagedmlx-disk-reader", daemon=True)
        self._thread.start()

    def load(self, load: BlockLoad) -> None:
        self._queue.put(load)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (load := self._queue.get()) is not None:
            started = time.monotonic()
            for block_hash, token_ids in zip(load.hashes, load.token_ids):
                if load.cancelled:
                    break
                block = read_block(self.directory, self.model_key, block_hash)
                if block is None:
                    break
                if block.token_ids != token_ids:
                    delete_block(self.directory, block_hash)
                    break
                load.blocks.append(block)
                load.bytes_read += block.nbytes
                touch_block(self.directory, block_hash)
            load.seconds = time.monotonic() - started
            load.done = True
            self._on_loaded(load)
