"""What one forward call's attention reads from the KV pool, decided once per call for all layers.

Each query row's context is cut into tiles: windows of `width` consecutive pool slots, one width
for the call, so that one `gather_mm` reads every tile of every row (on the CPU through a
zero-copy `as_strided` view of all the pool's windows, so K/V are never copied). Keys of a
window outside its tile, and for prefill chunks the keys after each query's position
(causal), are masked by an additive bias. Each tile yields softmax partials (max, sum, output)
that are merged into their row by log-sum-exp (split-KV, as flash-decoding does).

Rows that share the physical blocks of a long cached prefix (sessions with the same system
prompt) read that prefix once for all their queries: a cascade (vLLM's cascade attention,
Hydragen), whose partials merge into each of those rows like any other tile's.
"""

from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

import mlx.core as mx
import numpy as np

# The cost model that picks the tile width, in units of one score (one query x one key of one kv
# head), fitted to timings on the 2-core CPU here: reading a key and value column costs about
# COLUMN_COST scores; a tile costs about TILE_COLUMNS more columns (BLAS is slow on small
# matrices); merging the partials of rows with several tiles costs MERGE_COST.
COLUMN_COST = 4.0
TILE_COLUMNS = 64
MERGE_COST = 4000.0
# Windows larger than this (one head's keys) fall out of the CPU's L2 cache between the matmul's
# passes over them: 2048-wide windows of 64-dim float32 keys read 1.45x slower than 1024-wide.
MAX_TILE_BYTES = 256 * 1024
# A prefix shared by n rows is read once for all of them when that saves reading at least this
# many key/value columns, (n - 1) x prefix length: a cascade costs a dozen extra small ops.
CASCADE_MIN_SAVED = 2048
# Added to masked scores: finite, so that a tile masked for a query gives no NaN (its partials
# get weight exp(-1e30) = 0 in the merge).
MASKED = -1e30


class Segment(NamedTuple):
    """Consecutive positions of one sequence held in consecutive pool slots."""

    slot: int  # pool slot of the first token
    position: int  # sequence position of the first token
    length: int


@dataclass(frozen=True)
class TileRead:
    """N tiles of `width` slots; tile n is read by query row query_rows[n]."""

    width: int
    windows: mx.array  # [N, kv_heads] uint32: the window of head h at slot s is h * (slots - width + 1) + s
    query_rows: mx.array | None  # [N, kv_heads] uint32 row * kv_heads + h; None: tile n is row n's, or Q is 1
    bias: mx.array | None  # [N, 1, 1, L or 1, width] float32, 0 or MASKED; None when all is visible


@dataclass(frozen=True)
class Cascade:
    rows: mx.array  # [n] batch rows that share the prefix
    tiles: TileRead  # read by one query row: those rows' queries stacked


@dataclass(frozen=True)
class AttentionPlan:
    rows: TileRead  # each row's own context: everything after its cascade prefix, if any
    cascades: list[Cascade]
    # Batch row of each softmax partial: the rows' tiles, then for each cascade its (tile, row)
    # pairs, tile-major. None when every row has one tile and there is no cascade: nothing to merge.
    destinations: mx.array | None


def context_runs(block_table: list[int], context_len: int, block_size: int) -> list[Segment]:
    """Maximal runs of consecutive block ids covering positions [0, context_len)."""
    num_blocks = -(-context_len // block_size)
    table = np.asarray(block_table[:num_blocks], dtype=np.int64)
    breaks = np.flatnonzero(np.diff(table) != 1) + 1
    starts = [0, *breaks.tolist()]
    ends = [*breaks.tolist(), num_blocks]
    return [
        Segment(int(table[s]) * block_size, s * block_size, min(e * block_size, context_len) - s * block_size)
        for s, e in zip(starts, ends)
    ]


def count_runs(block_table: list[int]) -> int:
    """Number of runs of consecutive block ids in a block table."""
    if not block_table:
        return 0
    return 1 + int(np.count_nonzero(np.diff(np.asarray(block_table)) != 1))


def plan_attention(
    block_tables: list[list[int]],
    start_positions: list[int],
    q_len: int,
    block_size: int,
    runs: list[list[Segment]],
    num_slots: int,
    num_kv_heads: int,
    max_width: int,
    tile_width: int | None = None,
    cascade_min_saved: int | None = CASCADE_MIN_SAVED,
) -> AttentionPlan:
    """Plan the reads of B rows, each with `q_len` new tokens from `start_positions[b]` on, whose
    contexts are `runs[b]`, in a pool of `num_slots` slots. Tiles are at most `max_width` wide
    unless `tile_width` forces the width of the rows' tiles; `cascade_min_saved=None` turns
    cascades off."""
    groups = cascade_groups(block_tables, start_positions, block_size, cascade_min_saved)
    own, prefixes = split_shared_prefixes(runs, start_positions, q_len, groups)
    cascades = []
    for (rows, _), prefix in zip(groups, prefixes):
        tiles, _ = _tile_read([prefix], len(rows) * q_len, None, max_width, num_slots, num_kv_heads)
        cascades.append(Cascade(mx.array(rows, dtype=mx.uint32), tiles))

    causal = (start_positions, q_len) if q_len > 1 else None
    row_tiles, tile_rows = _tile_read(own, q_len, tile_width, max_width, num_slots, num_kv_heads, causal)

    destinations = None
    if cascades or len(tile_rows) != len(runs):
        cascade_rows = [
            rows * cascade.tiles.windows.shape[0] for (rows, _), cascade in zip(groups, cascades)
        ]
        destinations = mx.array(np.concatenate([tile_rows, *cascade_rows]).astype(np.uint32))
    return AttentionPlan(row_tiles, cascades, destinations)


def cascade_groups(
    block_tables: list[list[int]], start_positions: list[int], block_size: int, min_saved: int | None
) -> list[tuple[list[int], int]]:
    """(rows, shared tokens) for each set of rows that start with the same physical blocks, shared
    up to their longest common prefix of blocks, when reading it once saves at least `min_saved`
    key/value columns. Only blocks wholly before every row's new tokens count: they are complete
    and nobody writes them this step."""
    if min_saved is None or len(block_tables) < 2:
        return []
    by_first_block = defaultdict(list)
    for row, (table, start) in enumerate(zip(block_tables, start_positions)):
        if start >= block_size:
            by_first_block[table[0]].append(row)
    groups = []
    for rows in by_first_block.values():
        limit = min(start_positions[row] // block_size for row in rows)
        tables = np.array([block_tables[row][:limit] for row in rows])
        differs = np.flatnonzero((tables != tables[0]).any(axis=0))
        shared = (int(differs[0]) if len(differs) else limit) * block_size
        if (len(rows) - 1) * shared >= max(min_saved, 1):
            groups.append((rows, shared))
    return groups


def split_shared_prefixes(
    runs: list[list[Segment]], start_positions: list[int], q_len: int, groups: list[tuple[list[int], int]]
) -> tuple[list[list[Segment]], list[list[Segment]]]:
    """For cascade groups (rows, shared tokens): each row's own runs, after its group's shared
    prefix and up to its last new token, and each group's shared prefix (its first row's runs)."""
    shared = [0] * len(runs)
    for rows, shared_len in groups:
        for row in rows:
            shared[row] = shared_len
    own = [_clip(row_runs, shared[b], start_positions[b] + q_len) for b, row_runs in enumerate(runs)]
    prefixes = [_clip(runs[rows[0]], 0, shared_len) for rows, shared_len in groups]
    return own, prefixes


def _clip(runs: list[Segment], begin: int, end: int) -> list[Segment]:
    """The parts of runs between positions begin and end."""
    clipped = []
    for slot, position, length in runs:
        lo, hi = max(position, begin), min(position + length, end)
        if lo < hi:
            clipped.append(Segment(slot + lo - position, lo, hi - lo))
    return clipped


def _tile_read(
    segments: list[list[Segment]],
    queries: int,
    width: int | None,
    max_width: int,
    num_slots: int,
    num_kv_heads: int,
    causal: tuple[list[int], int] | None = None,
) -> tuple[TileRead, np.ndarray]:
    """Tiles of Q query rows (row q reads `segments[q]`, with `queries` queries per kv head for the
    cost model), and the row of each tile. With causal = (starts, L), query l of row q sees no key
    after position starts[q] + l."""
    width = min(width or _cheapest_width(segments, queries, max_width), num_slots)
    rows, windows, pieces = _pack(segments, width)
    # A window must end inside the pool: near its end, slide it back and shift the tile in it.
    slid = np.minimum(windows, num_slots - width)
    key_pos = np.full((len(windows), width), -1, dtype=np.int64)  # -1: no key of the tile's row
    for tile, slot, position, length in pieces:
        first = slot - slid[tile]
        key_pos[tile, first : first + length] = np.arange(position, position + length)
    windows = slid
    visible = (key_pos >= 0)[:, None, :]
    if causal is not None:
        starts, q_len = causal
        query_pos = np.asarray(starts)[rows][:, None] + np.arange(q_len)
        visible = visible & (key_pos[:, None, :] <= query_pos[:, :, None])  # [N, L, width]
    bias = None
    if not visible.all():
        bias = mx.array(np.where(visible, np.float32(0), np.float32(MASKED)))[:, None, None]

    heads = np.arange(num_kv_heads)
    window_index = mx.array((heads * (num_slots - width + 1) + windows[:, None]).astype(np.uint32))
    one_each = len(segments) == 1 or np.array_equal(rows, np.arange(len(segments)))
    query_rows = None if one_each else mx.array((rows[:, None] * num_kv_heads + heads).astype(np.uint32))
    return TileRead(width, window_index, query_rows, bias), rows


def _pack(segments: list[list[Segment]], width: int) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """Tiles of each row's segments: windows of `width` slots, each holding every piece of the row's
    segments that fits from its first slot on, so a row whose blocks are scattered close together
    (blocks allocated while other sequences grow) gets a few masked windows, not one per run.
    Returns the row and first slot of each tile, and its pieces (tile, slot, position, length)."""
    rows, windows, pieces = [], [], []
    for q, row in enumerate(segments):
        window = None
        for slot, position, length in sorted(row):
            while length:
                if window is None or slot >= window + width:
                    window = slot
                    rows.append(q)
                    windows.append(slot)
                take = min(length, window + width - slot)
                pieces.append((len(windows) - 1, slot, position, take))
                slot, position, length = slot + take, position + take, length - take
    return np.array(rows, dtype=np.int64), np.array(windows, dtype=np.int64), pieces


def _count_tiles(row: list[Segment], width: int) -> int:
    """len(_pack([row], width)[1]), without making the pieces."""
    count, window_end = 0, 0
    for slot, _, length in sorted(row):
        skip = min(length, max(window_end - slot, 0))
        if length > skip:
            new = -(-(length - skip) // width)
            count, window_end = count + new, slot + skip + new * width
    return count


def _cheapest_width(segments: list[list[Segment]], queries: int, max_width: int) -> int:
    spans = [max(s.slot + s.length for s in row) - min(s.slot for s in row) for row in segments if row]
    widest = min(max(spans), max_width)
    candidates = {widest} | {1 << k for k in range(4, widest.bit_length())}

    def cost(width: int) -> float:
        tiles = sum(_count_tiles(row, width) for row in segments)
        merge = MERGE_COST if tiles != len(segments) else 0.0
        return tiles * (width + TILE_COLUMNS) * (queries + COLUMN_COST) + merge

    return min(candidates, key=cost)
