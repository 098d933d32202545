"""MLX's memory limits, set from what the server budgets: the weights, the KV pools, activations."""

import mlx.core as mx

ACTIVATION_HEADROOM_BYTES = 2**30  # a prefill chunk's activations and attention tiles, with room


def set_memory_limit(models_bytes: int) -> int:
    """Limit MLX to the loaded models' weights and KV budgets (models_bytes), or the memory held now
    if more, plus headroom; returns the limit. On a GPU MLX frees its cache, then waits or raises,
    rather than pass it; on the CPU it is advisory, and the pool's growth checks free memory itself.
    The buffers MLX keeps for reuse stay within the headroom (by default they may reach the whole
    limit). Set again at every load and unload: the limit is one for the process."""
    limit = max(models_bytes, mx.get_active_memory()) + ACTIVATION_HEADROOM_BYTES
    mx.set_memory_limit(limit)
    mx.set_cache_limit(ACTIVATION_HEADROOM_BYTES)
    return limit
