"""The attention read by the compiled CPU kernel (kernels/paged_attention.cpp): one primitive per
layer reads each row's context from the pool by runs of consecutive slots with an online softmax.

The plan is a few int32 arrays built once per forward and shared by all layers: each row's own
segments (slot, position, length), and the cascade groups (engine/attention_plan.py): rows that
share a long prefix of physical blocks read it once for all their queries, then their own parts.
A row outside any cascade is a group of one with no shared prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from engine import cpu_kernels
from engine.attention_plan import Segment, cascade_groups, split_shared_prefixes

if TYPE_CHECKING:
    from engine.kv_pool import KVPool
    from engine.paged_cache import BatchLayout, PagedCache


@dataclass(frozen=True)
class FusedPlan:
    starts: mx.array  # [B] position of each row's first new token
    row_offsets: mx.array  # [B + 1] into row_segments
    row_segments: mx.array  # [n, 3] (slot, position, length): each row's context after its shared prefix
    group_offsets: mx.array  # [G + 1] into group_rows
    group_rows: mx.array  # batch rows of each group
    shared_offsets: mx.array  # [G + 1] into shared_segments
    shared_segments: mx.array  # [m, 3]: each group's shared prefix


def supports(pool: KVPool) -> bool:
    """The kernel runs here and reads this pool: built and enabled, float32 K/V (any head_dim:
    multiples of 16 take the AVX-512 variant where the CPU has it, others the generic one)."""
    return cpu_kernels.kernels() is not None and pool.dtype == mx.float32


def plan_fused(layout: BatchLayout, pool: KVPool) -> FusedPlan:
    """The kernel's plan for one forward of this layout."""
    batch = len(layout.start_positions)
    groups = cascade_groups(layout.block_tables, layout.start_positions, layout.block_size, layout.cascade_min_saved)
    grouped = {row for rows, _ in groups for row in rows}
    groups = groups + [([row], 0) for row in range(batch) if row not in grouped]
    own, prefixes = split_shared_prefixes(layout.runs, layout.start_positions, layout.q_len, groups)
    _check_inside(own + prefixes, pool.num_slots)
    row_offsets, row_segments = _flatten(own)
    shared_offsets, shared_segments = _flatten(prefixes)
    group_offsets, group_rows = _flatten([rows for rows, _ in groups], width=None)
    return FusedPlan(
        starts=_int32(layout.start_positions),
        row_offsets=row_offsets,
        row_segments=row_segments,
        group_offsets=group_offsets,
        group_rows=group_rows,
        shared_offsets=shared_offsets,
        shared_segments=shared_segments,
    )


def fused_attention(queries: mx.array, cache: PagedCache, scale: float) -> mx.array:
    """Attention of `queries` [B, n_heads, L, head_dim] (after RoPE) over each row's context in the
    pool, the new tokens included. Returns [B, n_heads, L, head_dim] in the queries' dtype."""
    plan: FusedPlan = cache.plan
    out = cpu_kernels.kernels().paged_attention(
        queries.astype(mx.float32),
        cache.pool.keys[cache.layer],
        cache.pool.values[cache.layer],
        plan.starts,
        plan.row_offsets,
        plan.row_segments,
        plan.group_offsets,
        plan.group_rows,
        plan.shared_offsets,
        plan.shared_segments,
        scale,
    )
    return out.astype(queries.dtype)


def _check_inside(rows: list[list[Segment]], num_slots: int) -> None:
    """The kernel reads the pool unchecked: a segment past its end must not get there."""
    end = max((slot + length for row in rows for slot, _, length in row), default=0)
    if end > num_slots:
        raise ValueError(f"attention plan reads slots up to {end}, outside the pool's {num_slots}")


def _flatten(lists: list[list], width: int | None = 3) -> tuple[mx.array, mx.array]:
    """Offsets [len + 1] and the concatenated items ([n, width], or [n] when width is None)."""
    offsets = np.cumsum([0, *map(len, lists)])
    shape = (-1,) if width is None else (-1, width)
    items = np.array([item for items in lists for item in items], dtype=np.int32).reshape(shape)
    return _int32(offsets), mx.array(items)


def _int32(values) -> mx.array:
    return mx.array(np.asarray(values, dtype=np.int32))
