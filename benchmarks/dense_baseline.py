"""mlx-lm's own dense batched decode: the baseline engine_bench sets our paged runner beside.

Each layer gets a dense cache holding `batch` rows of `context` random K/V (timing does not depend on the
values), then a fixed number of `[batch, 1]` decode steps run with mlx-lm's model and attention, each
sampling greedily and bringing the tokens to the host as a server step must. After every step the caches
are trimmed back, so all steps read the same context length.

- "kv": one `KVCache` with all rows at the same length (no padding, no mask): the fastest dense case.
- "batch": `BatchKVCache`, what mlx-lm's `BatchGenerator` uses (per-row offsets and a padding mask).
"""

import time

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import BatchKVCache, KVCache

CACHE_KINDS = ("kv", "batch")


def make_filled_caches(
    num_layers: int, num_kv_heads: int, head_dim: int, batch: int, context: int, dtype: mx.Dtype, kind: str
) -> list:
    capacity = context + 1  # room for the one token each step adds before trim() takes it back
    # One random draw (drawing normals is slow on this CPU), copied into distinct per-layer buffers
    # since every cache writes its own in place.
    draw = mx.random.normal((batch, num_kv_heads, capacity, head_dim)).astype(dtype)
    caches = []
    for _ in range(num_layers):
        keys, values = mx.array(draw), mx.array(draw)
        if kind == "kv":
            cache = KVCache()
            cache.offset = context
        else:
            cache = BatchKVCache(left_padding=[0] * batch)
            cache.offset = mx.array([context] * batch)
            cache._idx = context
        cache.keys, cache.values = keys, values
        caches.append(cache)
    mx.eval([(c.keys, c.values) for c in caches])
    return caches


def time_dense_decode(model: nn.Module, caches: list, batch: int, steps: int, vocab_size: int) -> float:
    """Seconds for `steps` greedy decode steps of all rows at a fixed context length."""
    tokens = mx.random.randint(0, vocab_size, (batch, 1))
    mx.eval(tokens)
    start = time.perf_counter()
    for _ in range(steps):
        logits = model(tokens, cache=caches)
        tokens = mx.argmax(logits[:, -1, :], axis=-1, keepdims=True)
        tokens.tolist()
        for cache in caches:
            cache.trim(1)
    return time.perf_counter() - start
