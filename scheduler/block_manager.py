"""The block manager: KV block tables, ref counts and the automatic prefix cache.

A full block whose KV has been computed is published under its chained hash (block_hash.py),
and a later sequence whose tokens start the same way maps it instead of computing it again.
Generated tokens are published too, so turn N+1 of a conversation reuses turn N's answer.
Freed blocks keep their hash until they are reused, so a finished conversation's next turn
still hits.

Free blocks live in one of two places:
- without a hash: in a bitmap, handed out as contiguous runs, because attention reads a
  sequence's KV run by run and fewer runs are faster;
- with a hash: in an LRU queue, freed deepest-first so that leaves are evicted before the
  prefixes they hang from.
Allocation takes hashless blocks first and evicts cached ones only when those run out, oldest
first. Where the KV pool is allocated on demand, blocks past its allocated end count as free
(hashless) and the pool grows before any cached block is evicted: a cached prefix is worth the
memory while the budget lasts. The trade-off: LRU is exact among cached blocks and no cached block is evicted while a
hashless one is free, but once every free block holds a hash, the blocks a sequence evicts are
wherever the LRU puts them (evictions are sorted by id to keep what runs they have).

Placement of hashless runs: a table grows in place when the next block id is free, else a new
run goes into the largest free gap, starting halfway into the gap's slack unless the gap starts
the pool, so that the run before the gap (a sequence still growing, or a cached prefix the next
turn will extend) can grow in place too. Concurrent decoders thus keep one or two runs each
instead of one per block; the price is that large gaps get split (first fit would keep them),
so a later very large prompt may take a few runs instead of one.

Pending blocks: ensure_capacity() announces the hashes of the known full blocks a sequence
is about to compute, so match_prefix() can tell a request that the next block of its prompt
is in flight (the scheduler lets it wait, then hit) instead of computing it twice.

The manager never sees tokens: each request keeps the chained hashes of its full blocks
(block_hash.BlockHashChain, extended as tokens are appended) and passes them in, so no step
hashes a prompt again. A hit is trusted to its sha256 chain, as vLLM trusts it.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from scheduler.block_hash import BlockHash
from scheduler.free_queue import FreeBlockQueue

_FREE_RUN = re.compile(rb"\x01+")


@dataclass(frozen=True)
class PrefixMatch:
    block_ids: list[int]  # cached, computed full blocks matching the prompt's prefix
    num_tokens: int  # len(block_ids) * block_size, capped so >= 1 prompt token remains
    pending: bool  # the next full block of the prompt is being computed by another sequence
    block_hashes: tuple[BlockHash, ...] = field(default=(), repr=False)  # checked by acquire()


@dataclass(eq=False, slots=True)
class _Block:
    block_id: int
    ref_count: int = 0
    block_hash: BlockHash | None = None  # set while the block is in the prefix cache


@dataclass(slots=True)
class _SeqBlocks:
    table: list[int] = field(default_factory=list)
    hashes: Sequence[BlockHash] = ()  # the request's chain over its known full blocks
    num_published: int = 0  # leading blocks settled: prefix hits, or computed and published
    num_announced: int = 0  # leading blocks whose hashes were offered as pending (>= num_published)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int,
                 grow: Callable[[int], int] | None = None) -> None:
        """grow: where the KV pool is allocated on demand, grows it to hold at least the given
        number of blocks if it can, and returns how many it holds (engine/pool_growth.py); None:
        all num_blocks are allocated."""
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._grow = grow
        self._reset(num_blocks if grow is None else 0)

    def _reset(self, num_allocated: int) -> None:
        self.num_allocated_blocks = num_allocated  # blocks [0, num_allocated) have memory
        self._blocks = [_Block(i) for i in range(self.num_blocks)]
        self._cached: dict[BlockHash, int] = {}  # hash -> block holding that computed KV
        self._pending: dict[BlockHash, int] = {}  # hash -> sequence that will compute it
        self._lru = FreeBlockQueue(self.num_blocks)  # free blocks with a hash
        # 1 = allocated, free and without a hash
        self._hashless_free = bytearray(b"\x01") * num_allocated + bytes(self.num_blocks - num_allocated)
        self._num_hashless_free = num_allocated
        self._seqs: dict[int, _SeqBlocks] = {}

    # -- queries -----------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds: never written or evicted, plus cached ones kept for reuse,
        plus those the pool may still grow by."""
        return self._num_hashless_free + len(self._lru) + self.num_blocks - self.num_allocated_blocks

    @property
    def num_reusable_blocks(self) -> int:
        """Free blocks that still hold a cached prefix (evicted least recently used first)."""
        return len(self._lru)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Blocks holding published KV, in use or free."""
        return len(self._cached)

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_free_blocks

    def num_blocks_needed(self, seq_id: int, num_tokens: int) -> int:
        """New blocks ensure_capacity(seq_id, num_tokens, ...) would take."""
        seq = self._seqs.get(seq_id)
        return max(0, self._blocks_for(num_tokens) - (len(seq.table) if seq else 0))

    def num_blocks_to_admit(self, match: PrefixMatch, num_tokens: int) -> int:
        """Free blocks that acquire(match) followed by ensure_capacity(num_tokens) would use up."""
        free_hits = sum(1 for block_id in match.block_ids if self._blocks[block_id].ref_count == 0)
        return free_hits + max(0, self._blocks_for(num_tokens) - len(match.block_ids))

    def block_table(self, seq_id: int) -> list[int]:
        seq = self._seqs.get(seq_id)
        return list(seq.table) if seq else []

    def num_runs(self, seq_id: int) -> int:
        """Contiguous runs of block ids in the sequence's table."""
        table = self.block_table(seq_id)
        return sum(1 for i, block_id in enumerate(table) if i == 0 or block_id != table[i - 1] + 1)

    def match_prefix(self, hashes: Sequence[BlockHash], num_tokens: int) -> PrefixMatch:
        """The cached blocks that start a sequence of num_tokens tokens whose full blocks have the
        chained `hashes`. Read-only; valid until the next allocation."""
        block_ids: list[int] = []
        pending = False
        for block_hash in self._prefix_hashes(hashes, num_tokens):
            block_id = self._cached.get(block_hash)
            if block_id is None:
                pending = block_hash in self._pending
                break
            block_ids.append(block_id)
        num_hits = len(block_ids)
        return PrefixMatch(block_ids, num_hits * self.block_size, pending, tuple(hashes[:num_hits]))

    def num_expected_hit_tokens(self, hashes: Sequence[BlockHash], num_tokens: int) -> int:
        """Prefix tokens that are cached or being computed by another sequence: what a request
        arriving now will most likely read from the cache. Read-only."""
        blocks = 0
        for block_hash in self._prefix_hashes(hashes, num_tokens):
            if block_hash not in self._cached and block_hash not in self._pending:
                break
            blocks += 1
        return blocks * self.block_size

    def num_hittable_blocks(self, num_tokens: int) -> int:
        """Full blocks of a sequence of num_tokens that can hit: all but the one holding the last
        token, which is always left to compute, since its logits give the first output token."""
        return (num_tokens - 1) // self.block_size

    def _prefix_hashes(self, hashes: Sequence[BlockHash], num_tokens: int) -> Sequence[BlockHash]:
        return hashes[: self.num_hittable_blocks(num_tokens)]

    # -- sequence lifecycle ------------------------------------------------------------

    def acquire(self, seq_id: int, match: PrefixMatch) -> None:
        """Start the sequence's table with the prefix hits (each gains a reference)."""
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id} already has blocks")
        for block_id, block_hash in zip(match.block_ids, match.block_hashes):
            if self._blocks[block_id].block_hash != block_hash:
                raise ValueError(f"stale PrefixMatch: block {block_id} was evicted after match_prefix")
        for block_id in match.block_ids:
            block = self._blocks[block_id]
            if block.ref_count == 0:
                self._lru.remove(block_id)
            block.ref_count += 1
        hits = len(match.block_ids)
        self._seqs[seq_id] = _SeqBlocks(list(match.block_ids), match.block_hashes, hits, hits)

    def ensure_capacity(self, seq_id: int, num_tokens: int, hashes: Sequence[BlockHash]) -> bool:
        """Grow the table to cover num_tokens slots, all or nothing; announce the known full
        blocks (`hashes`, the sequence's chain) that this sequence will compute as pending."""
        needed = self.num_blocks_needed(seq_id, num_tokens)
        if needed > self.num_free_blocks:
            return False
        self.grow_for(needed)  # before evicting cached KV
        if needed > self._num_hashless_free + len(self._lru):
            return False
        seq = self._seqs.setdefault(seq_id, _SeqBlocks())
        if needed:
            new_blocks = self._allocate(needed, seq.table[-1] if seq.table else None)
            for block_id in new_blocks:
                self._blocks[block_id].ref_count = 1
            seq.table.extend(new_blocks)
        self._announce(seq_id, seq, hashes)
        return True

    def grow_for(self, num_blocks: int) -> None:
        """Where the pool grows on demand, grow it (if it can) until num_blocks are free without
        evicting cached KV: ahead of a request that will need them, or for one now."""
        if num_blocks > self._num_hashless_free and self.num_allocated_blocks < self.num_blocks:
            self._allocate_more(num_blocks - self._num_hashless_free)

    def publish(self, seq_id: int, hashes: Sequence[BlockHash], num_computed: int) -> list[int]:
        """Blocks fully inside [0, num_computed) become cached; their pending entries end. Returns
        the table indexes of the blocks that entered the cache (not those already cached elsewhere)."""
        seq = self._seqs[seq_id]
        seq.hashes = hashes
        num_full = min(num_computed // self.block_size, len(hashes))
        if num_full <= seq.num_published:
            return []
        if num_full > len(seq.table):
            raise ValueError(f"sequence {seq_id} has no blocks for {num_computed} computed tokens")
        cached = []
        for i in range(seq.num_published, num_full):
            block_hash = hashes[i]
            if self._pending.get(block_hash) == seq_id:
                del self._pending[block_hash]
            # A block some other sequence computed too stays out of the cache (one copy is enough).
            if block_hash not in self._cached:
                block = self._blocks[seq.table[i]]
                block.block_hash = block_hash
                self._cached[block_hash] = block.block_id
                cached.append(i)
        seq.num_published = num_full
        seq.num_announced = max(seq.num_announced, num_full)
        return cached

    def free(self, seq_id: int) -> None:
        """Release the sequence's blocks (also for an abort); unknown ids are ignored."""
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            return
        for block_hash in seq.hashes[seq.num_published : seq.num_announced]:
            if self._pending.get(block_hash) == seq_id:
                del self._pending[block_hash]
        # Deepest block first, so that leaves reach the LRU head before their prefixes.
        for block_id in reversed(seq.table):
            block = self._blocks[block_id]
            block.ref_count -= 1
            if block.ref_count > 0:
                continue
            if block.block_hash is None:
                self._release_hashless(block_id)
            else:
                self._lru.append(block_id)

    def clear(self) -> None:
        """Forget every cached block (after the KV pool was rebuilt); no sequence may hold blocks."""
        if self._seqs:
            raise ValueError(f"{len(self._seqs)} sequences still hold blocks")
        self._reset(self.num_allocated_blocks)

    # -- internals ---------------------------------------------------------------------

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _announce(self, seq_id: int, seq: _SeqBlocks, hashes: Sequence[BlockHash]) -> None:
        seq.hashes = hashes
        num_full = len(hashes)
        if num_full <= seq.num_announced:
            return
        for block_hash in hashes[seq.num_announced : num_full]:
            if block_hash not in self._cached and block_hash not in self._pending:
                self._pending[block_hash] = seq_id
        seq.num_announced = num_full

    def _allocate(self, num_blocks: int, after: int | None) -> list[int]:
        hashless = self._take_hashless(min(num_blocks, self._num_hashless_free), after)
        evicted = sorted(self._evict_oldest() for _ in range(num_blocks - len(hashless)))
        last = hashless[-1] if hashless else after
        if last is not None and last + 1 in evicted:  # continue the table's last run
            start = evicted.index(last + 1)
            evicted = evicted[start:] + evicted[:start]
        return hashless + evicted

    def _allocate_more(self, num_blocks: int) -> None:
        """Ask the pool for num_blocks more blocks (it may give more, or none)."""
        start = self.num_allocated_blocks
        end = min(self._grow(start + num_blocks), self.num_blocks)
        if end > start:
            self._hashless_free[start:end] = b"\x01" * (end - start)
            self._num_hashless_free += end - start
            self.num_allocated_blocks = end

    def _take_hashless(self, num_blocks: int, after: int | None) -> list[int]:
        taken = self._take_run(after + 1, num_blocks) if after is not None else []
        while len(taken) < num_blocks:
            needed = num_blocks - len(taken)
            gap = max(_FREE_RUN.finditer(self._hashless_free), key=lambda m: m.end() - m.start())
            start, slack = gap.start(), gap.end() - gap.start() - needed
            if slack > 0 and start > 0:  # leave the run before the gap room to grow in place
                start += slack // 2
            taken += self._take_run(start, needed)
        return taken

    def _take_run(self, start: int, max_blocks: int) -> list[int]:
        """The hashless free blocks from `start` up to the first used one, at most max_blocks."""
        end = min(start + max_blocks, self.num_blocks)
        first_used = self._hashless_free.find(0, start, end)
        if first_used != -1:
            end = first_used
        if end <= start:
            return []
        self._hashless_free[start:end] = bytes(end - start)
        self._num_hashless_free -= end - start
        return list(range(start, end))

    def _evict_oldest(self) -> int:
        block = self._blocks[self._lru.popleft()]
        del self._cached[block.block_hash]
        block.block_hash = None
        return block.block_id

    def _release_hashless(self, block_id: int) -> None:
        self._hashless_free[block_id] = 1
        self._num_hashless_free += 1
