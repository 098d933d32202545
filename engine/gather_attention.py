"""The GPU read of the paged KV pool: gather each row's context once, then one fused attention.

On a GPU the CPU read (engine/paged_attention.py) is the wrong shape: its tiles, prefill pieces,
per-tile bias masks and log-sum-exp merges issue thousands of small ops a layer at long contexts,
and each op costs a kernel launch. Here a forward call's plan (built once, shared by all layers)
holds, for every row, the pool slot of each of its context positions padded to the batch's longest
context C, and the attention mask. Per layer the read is then a constant handful of ops, whatever
the batch size and context length: one gather of the rows' keys and one of their values into
[B, kv_heads, C, head_dim], and one call of MLX's fused `scaled_dot_product_attention`, which
handles GQA itself and runs softmax in float32.

The mask is built on the device, from the rows' start positions and comparisons of `mx.arange`s,
rather than filled in numpy and copied over: it is B x L x C booleans, and only the B starts need
to cross. Where it is implied, no mask array is made at all: decode rows of equal length see their
whole context (no mask), and prefill chunks whose rows all start at the same position are exactly
SDPA's lower-right-aligned "causal" mask, which the fused kernels handle without reading a mask.
The same ops run on MLX's CPU backend, which is how this read is tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from engine.kv_pool import KVPool

if TYPE_CHECKING:  # paged_cache may import the reads that import this module
    from engine.paged_cache import BatchLayout

__all__ = ["GatherPlan", "context_slots", "gather_attention", "plan_gather"]


@dataclass(frozen=True, eq=False)
class GatherPlan:
    """What every layer of one forward call reads: B rows of queries at positions start[b] + l
    (l < L), each over its context of positions [0, start[b] + L), padded to C."""

    slots: mx.array  # [B, C] uint32: pool slot of each context position (any valid slot in padding)
    rows: mx.array  # [B, kv_heads, C]: row of the pool viewed as [kv_heads * slots, head_dim]
    mask: mx.array | str | None  # [B, 1, L, C] bool (True: visible), "causal", or None: all visible


def plan_gather(layout: BatchLayout, pool: KVPool) -> GatherPlan:
    """The gather read of one forward call's layout over `pool`, for all its layers."""
    starts = layout.start_positions
    context = max(starts) + layout.q_len
    slots = mx.array(context_slots(layout.block_tables, context, layout.block_size).astype(np.uint32))
    return GatherPlan(slots, _pool_rows(slots, pool), _mask(starts, layout.q_len, context))


def gather_attention(queries: mx.array, cache, scale: float) -> mx.array:
    """Attention of `queries` [B, n_heads, L, head_dim] (after RoPE) over each row's context in the
    pool, the new tokens included (the cache wrote them first), by `cache.plan`, a GatherPlan.
    Returns [B, n_heads, L, head_dim] in the queries' dtype."""
    plan: GatherPlan = cache.plan
    keys = _gather(cache.pool.keys[cache.layer], plan.rows, queries.dtype)
    values = _gather(cache.pool.values[cache.layer], plan.rows, queries.dtype)
    out = mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=plan.mask)
    return out if out.dtype == queries.dtype else out.astype(queries.dtype)


def context_slots(block_tables: list[list[int]], context: int, block_size: int) -> np.ndarray:
    """[B, context] int64 pool slots of positions 0 .. context - 1 of each row: position p is in slot
    table[p // block_size] * block_size + p % block_size. Past a row's table (rows shorter than the
    longest) the slots are block 0's: valid slots, whose keys the mask hides."""
    num_blocks = -(-context // block_size)
    tables = np.zeros((len(block_tables), num_blocks), dtype=np.int64)
    for row, table in enumerate(block_tables):
        used = table[:num_blocks]
        tables[row, : len(used)] = used
    positions = np.arange(context)
    return tables[:, positions // block_size] * block_size + positions % block_size


def _pool_rows(slots: mx.array, pool: KVPool) -> mx.array:
    """Each head's row of each slot in the pool viewed as one [kv_heads * slots, head_dim] matrix:
    gathering whole rows of one matrix gives [B, kv_heads, C, head_dim] contiguous in one op,
    without the transposed copy that `keys[:, slots]` ([kv_heads, B, C, head_dim]) would need."""
    index_type = mx.uint32 if pool.num_kv_heads * pool.num_slots <= 2**32 else mx.int64
    heads = mx.arange(pool.num_kv_heads, dtype=index_type) * pool.num_slots
    return slots.astype(index_type)[:, None, :] + heads[None, :, None]


def _mask(starts: list[int], q_len: int, context: int) -> mx.array | str | None:
    """Key c is visible to query l of row b iff c <= starts[b] + l. That implies c < starts[b] + L,
    the row's context length, so the same comparison hides the padding of shorter rows."""
    if len(set(starts)) == 1:  # every row's context is exactly C = start + L
        return None if q_len == 1 else "causal"
    last_visible = mx.array(starts)[:, None, None, None] + mx.arange(q_len)[None, None, :, None]
    return mx.arange(context)[None, None, None, :] <= last_visible


def _gather(pool: mx.array, rows: mx.array, dtype: mx.Dtype) -> mx.array:
    """The rows' keys or values, [B, kv_heads, C, head_dim], in `dtype`."""
    gathered = pool.reshape(-1, pool.shape[-1])[rows]
    return gathered if gathered.dtype == dtype else gathered.astype(dtype)
