"""Which read of the paged pool a forward's attention uses, chosen per device:

- `fused`: the CPU kernel (engine/fused_attention.py), where it is built and the pool suits it;
- `gather`: GPUs (engine/gather_attention.py): each row's context gathered once, then MLX's fused
  scaled_dot_product_attention with a mask built on the device;
- `tiles`: the pure-MLX CPU read (engine/paged_attention.py), the fallback.

The read is planned once per forward call (make_caches) and every layer attends by that plan.
"""

import mlx.core as mx

from engine import fused_attention, gather_attention, paged_attention
from engine.attention_plan import MAX_TILE_BYTES, plan_attention
from engine.device import on_gpu

READS = ("fused", "gather", "tiles")
_forced: str | None = None


def force_read(read: str | None) -> None:
    """Use this read whatever the device (tests and benchmarks); None restores the choice."""
    if read not in (None, *READS):
        raise ValueError(f"unknown attention read {read!r}; choose one of {', '.join(READS)}")
    global _forced
    _forced = read


def read_for(pool) -> str:
    if _forced is not None:
        return _forced
    if on_gpu():
        return "gather"
    return "fused" if fused_attention.supports(pool) else "tiles"


def plan_read(layout, pool):
    """The plan every layer of this forward reads the pool by."""
    read = read_for(pool)
    if read == "fused":
        return fused_attention.plan_fused(layout, pool)
    if read == "gather":
        return gather_attention.plan_gather(layout, pool)
    return plan_attention(
        layout.block_tables,
        layout.start_positions,
        layout.q_len,
        layout.block_size,
        layout.runs,
        pool.num_slots,
        pool.num_kv_heads,
        max_width=MAX_TILE_BYTES // (pool.head_dim * pool.dtype.size),
        tile_width=layout.tile_width,
        cascade_min_saved=layout.cascade_min_saved,
    )


def attend(queries: mx.array, cache, scale: float) -> mx.array:
    """Attention of one layer's queries by the forward's plan."""
    plan = cache.plan
    if isinstance(plan, fused_attention.FusedPlan):
        return fused_attention.fused_attention(queries, cache, scale)
    if isinstance(plan, gather_attention.GatherPlan):
        return gather_attention.gather_attention(queries, cache, scale)
    return paged_attention.paged_attention(queries, cache, scale)
