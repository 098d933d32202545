"""The per-layer cache object passed to mlx-lm models in place of `KVCache`, and the batch layout
that all layers of one forward call share."""

from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from engine.attention_plan import CASCADE_MIN_SAVED, Segment, context_runs, count_runs
from engine.attention_reads import plan_read
from engine.kv_pool import KVPool

__all__ = ["BatchLayout", "PagedCache", "build_layout", "count_runs", "make_caches"]


@dataclass
class BatchLayout:
    """One forward call: B rows, each feeding `q_len` new tokens from `start_positions[b]` on."""

    block_tables: list[list[int]]
    start_positions: list[int]
    q_len: int
    block_size: int
    slot_ids: mx.array  # [B * q_len] pool slots of the new tokens, row-major
    rope_offset: int | mx.array  # position of the first new token: an int for one row, [B] otherwise
    runs: list[list[Segment]]  # per row, runs of consecutive slots covering its context
    tile_width: int | None = None  # forces the tile width (tests, benchmarks)
    cascade_min_saved: int | None = CASCADE_MIN_SAVED
    plan: object | None = field(default=None, repr=False)  # by make_caches: the read's plan (attention_reads)


def build_layout(
    block_tables: list[list[int]],
    start_positions: list[int],
    q_len: int,
    block_size: int,
    *,
    tile_width: int | None = None,
    cascade_min_saved: int | None = CASCADE_MIN_SAVED,
) -> BatchLayout:
    """Decode: B rows with q_len 1. Prefill chunk: one row with q_len L, start_position > 0 when it
    continues a cached prefix. Each block table covers positions [0, start + q_len)."""
    slot_ids = []
    for table, start in zip(block_tables, start_positions):
        positions = np.arange(start, start + q_len)
        blocks = np.asarray(table, dtype=np.int64)[positions // block_size]
        slot_ids.append(blocks * block_size + positions % block_size)
    rope_offset = start_positions[0] if len(start_positions) == 1 else mx.array(start_positions)
    return BatchLayout(
        block_tables=block_tables,
        start_positions=start_positions,
        q_len=q_len,
        block_size=block_size,
        slot_ids=mx.array(np.concatenate(slot_ids).astype(np.uint32)),
        rope_offset=rope_offset,
        runs=[context_runs(t, s + q_len, block_size) for t, s in zip(block_tables, start_positions)],
        tile_width=tile_width,
        cascade_min_saved=cascade_min_saved,
    )


class PagedCache:
    """One layer's view of the pool during one forward call, duck-typed like mlx-lm's `KVCache`:
    models read `offset` for RoPE and call `update_and_fetch`; the attention they then call (through
    engine.attention_dispatch) reads the whole context from the pool by the layout's plan."""

    def __init__(self, pool: KVPool, layer: int, layout: BatchLayout):
        self.pool = pool
        self.layer = layer
        self.layout = layout
        self.offset = layout.rope_offset
        self.reads = 0  # attention calls that went through the dispatcher (check_paged_dispatch)

    @property
    def plan(self):
        return self.layout.plan

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self.pool.write(self.layer, self.layout.slot_ids, keys, values)
        return keys, values

    def make_mask(self, *args, **kwargs) -> None:
        return None  # paged_attention masks by the plan


def make_caches(pool: KVPool, layout: BatchLayout) -> list[PagedCache]:
    """One cache per layer, for `model(inputs, cache=...)`; plans the attention reads once for all."""
    if layout.plan is None:
        layout.plan = plan_read(layout, pool)
    return [PagedCache(pool, layer, layout) for layer in range(pool.num_layers)]
