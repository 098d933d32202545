"""The LRU queue of free blocks that still hold cached KV: a doubly linked list over block ids.

Freed blocks enter at the tail, eviction takes the head (the least recently freed), and a
prefix hit takes its block out of the middle, all in O(1). This is vLLM's
FreeKVCacheBlockQueue, with the links kept in two int lists instead of node objects.
"""

from collections.abc import Iterator

_ABSENT = -1  # the _prev entry of a block that is not queued


class FreeBlockQueue:
    def __init__(self, num_blocks: int) -> None:
        # Index num_blocks is the sentinel: its next is the oldest block, its prev the newest.
        self._sentinel = num_blocks
        self._next = [num_blocks] * (num_blocks + 1)
        self._prev = [_ABSENT] * num_blocks + [num_blocks]
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __contains__(self, block_id: int) -> bool:
        return self._prev[block_id] != _ABSENT

    def __iter__(self) -> Iterator[int]:
        """Oldest first."""
        block_id = self._next[self._sentinel]
        while block_id != self._sentinel:
            yield block_id
            block_id = self._next[block_id]

    def append(self, block_id: int) -> None:
        if block_id in self:
            raise ValueError(f"block {block_id} is already in the free queue")
        newest = self._prev[self._sentinel]
        self._next[newest] = block_id
        self._prev[block_id] = newest
        self._next[block_id] = self._sentinel
        self._prev[self._sentinel] = block_id
        self._len += 1

    def remove(self, block_id: int) -> None:
        prev, next_ = self._prev[block_id], self._next[block_id]
        if prev == _ABSENT:
            raise KeyError(f"block {block_id} is not in the free queue")
        self._next[prev] = next_
        self._prev[next_] = prev
        self._prev[block_id] = _ABSENT
        self._len -= 1

    def popleft(self) -> int:
        """Take out the least recently appended block."""
        if not self._len:
            raise IndexError("pop from an empty free queue")
        block_id = self._next[self._sentinel]
        self.remove(block_id)
        return block_id
