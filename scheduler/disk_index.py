"""Which KV blocks the disk tier holds, and which to delete to stay under its size (LRU by last use).

Pure Python (no MLX): the scheduler asks it how far a prompt's chain continues on disk. It learns
the directory's files by name at start-up (their content is checked only when one is read,
engine/kv_block_file.py), records what the writer adds, and evicts the least recently used blocks
past `capacity_bytes`. Another server on the same directory may delete a file this index still
lists: reading it then misses, and `forget` drops it.
"""

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

from scheduler.block_hash import BlockHash


class DiskIndex:
    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self._sizes: OrderedDict[BlockHash, int] = OrderedDict()  # least recently used first
        self.size_bytes = 0

    @classmethod
    def scan(cls, directory: Path, capacity_bytes: int) -> tuple["DiskIndex", list[BlockHash]]:
        """The index of the block files under directory, oldest use first (by mtime), and the hashes
        evicted to fit the capacity (the caller deletes their files)."""
        index = cls(capacity_bytes)
        found = []
        for path in directory.glob("??/*.kv"):
            try:
                block_hash, stat = bytes.fromhex(path.stem), path.stat()
            except (ValueError, FileNotFoundError):
                continue
            found.append((stat.st_mtime, block_hash, stat.st_size))
        for _, block_hash, size in sorted(found):
            index._sizes[block_hash] = size
            index.size_bytes += size
        return index, index._evict()

    def __contains__(self, block_hash: BlockHash) -> bool:
        return block_hash in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def num_stored_after(self, hashes: Sequence[BlockHash], start: int) -> int:
        """How many of hashes[start:] are on disk, counting from start until the first that is not."""
        count = 0
        while start + count < len(hashes) and hashes[start + count] in self._sizes:
            count += 1
        return count

    def touch(self, hashes: Iterable[BlockHash]) -> None:
        """Mark blocks as just used (read back or matched), so they are evicted last."""
        for block_hash in hashes:
            if block_hash in self._sizes:
                self._sizes.move_to_end(block_hash)

    def add(self, block_hash: BlockHash, size: int) -> list[BlockHash]:
        """Record a written block; returns the hashes evicted to make room (the caller deletes them)."""
        self.forget(block_hash)
        self._sizes[block_hash] = size
        self.size_bytes += size
        return self._evict()

    def forget(self, block_hash: BlockHash) -> None:
        size = self._sizes.pop(block_hash, None)
        if size is not None:
            self.size_bytes -= size

    def _evict(self) -> list[BlockHash]:
        evicted = []
        while self.size_bytes > self.capacity_bytes and self._sizes:
            block_hash, size = self._sizes.popitem(last=False)
            self.size_bytes -= size
            evicted.append(block_hash)
        return evicted
