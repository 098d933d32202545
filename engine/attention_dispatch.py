"""The seam into mlx-lm: its model modules import `scaled_dot_product_attention` from
`mlx_lm.models.base` by name and call it with `cache=cache`. Rebinding that name in the loaded
model's modules sends paged caches to the paged read (engine/attention_reads.py) and everything else to mlx-lm's function,
so mlx-lm's own KVCache path keeps working in the same process."""

import sys
from types import ModuleType

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import base
from mlx_lm.models.cache import KVCache, make_prompt_cache

from engine.kv_pool import KVPool
from engine.attention_reads import attend
from engine.paged_cache import PagedCache, build_layout, make_caches

_ORIGINAL = base.scaled_dot_product_attention


def scaled_dot_product_attention(
    queries, keys, values, cache=None, scale=1.0, mask=None, **kwargs
) -> mx.array:
    if not isinstance(cache, PagedCache):
        return _ORIGINAL(queries, keys, values, cache=cache, scale=scale, mask=mask, **kwargs)
    if kwargs.get("sinks") is not None:
        raise NotImplementedError("paged attention has no attention sinks")
    cache.reads += 1
    return attend(queries, cache, scale)


def install_paged_attention(model: nn.Module) -> None:
    """Rebind the attention name in every module that defines the model's layers (idempotent)."""
    for module in _model_modules(model):
        if getattr(module, "scaled_dot_product_attention", None) is _ORIGINAL:
            module.scaled_dot_product_attention = scaled_dot_product_attention


def check_paged_dispatch(model: nn.Module) -> None:
    """Raise if the model cannot run on paged caches: a layer whose cache is not a plain KVCache
    (sliding window, SSM...), or an attention layer that does not call the dispatcher (it would
    attend over the new tokens alone). Runs two tiny forwards: a 2-token prompt, then a batch of two
    decode rows at different positions (RoPE with per-row offsets)."""
    dense = make_prompt_cache(model)
    kinds = {type(c).__name__ for c in dense if type(c) is not KVCache}
    if kinds:
        raise ValueError(f"unsupported architecture for the paged KV cache: its layers use {sorted(kinds)}")
    model(mx.array([[0]]), cache=dense)
    _, kv_heads, _, head_dim = dense[0].keys.shape
    pool = KVPool(len(dense), kv_heads, head_dim, num_blocks=4, block_size=2, dtype=dense[0].keys.dtype)
    steps = [([[0]], [0], mx.array([[1, 2]])), ([[0, 1], [2]], [2, 0], mx.array([[3], [4]]))]
    for tables, starts, tokens in steps:
        caches = make_caches(pool, build_layout(tables, starts, tokens.shape[1], pool.block_size))
        mx.eval(model(tokens, cache=caches))
        bypassed = [layer for layer, cache in enumerate(caches) if cache.reads != 1]
        if bypassed:
            raise ValueError(
                f"attention of layers {bypassed} does not go through the paged attention dispatcher "
                f"(install_paged_attention not called, or the model computes attention its own way)"
            )


def _model_modules(model: nn.Module) -> set[ModuleType]:
    classes = {type(model)} | {type(child) for _, child in model.named_modules()}
    return {sys.modules[cls.__module__] for cls in classes if cls.__module__ in sys.modules}
