"""Whole blocks' K/V between the KV pool and numpy, for the disk tier: `[n, layers, 2 (K, V), kv_heads,
block_size, head_dim]` in the pool's dtype (bfloat16, which numpy lacks, as its raw bits: uint16).

On the CPU the pool's arrays are read and written through zero-copy numpy views: no MLX graph, one
strided copy per layer and run of consecutive blocks (~0.03 ms a block, where MLX's gathers and
scatters cost ~2 ms for one). Elsewhere (a GPU's memory, or bfloat16) MLX gathers and scatters do
it. Copying out keeps the pool's dtype (the disk tier's writer thread converts, off the engine loop);
copying in converts from the disk's, straight into the pool. Either way the pool must not be in a
step: the engine loop calls these between steps.
"""

from collections.abc import Sequence

import mlx.core as mx
import numpy as np

from engine.attention_plan import context_runs
from engine.device import on_gpu
from engine.kv_pool import KVPool

_HOST_DTYPES = (mx.float32, mx.float16)


def numpy_dtype(pool: KVPool) -> str:
    """The numpy name of the arrays copy_blocks_out returns."""
    return "uint16" if pool.dtype == mx.bfloat16 else str(pool.dtype).removeprefix("mlx.core.")


def copy_blocks_out(pool: KVPool, block_ids: list[int]) -> np.ndarray:
    """The blocks' K/V, a new array."""
    if _on_host(pool):
        return _copy_out_on_host(pool, block_ids)
    kv = _gather(pool, block_ids)
    return np.array(kv.view(mx.uint16) if pool.dtype == mx.bfloat16 else kv)


def copy_blocks_in(pool: KVPool, block_ids: list[int], blocks: Sequence[np.ndarray]) -> None:
    """Store blocks' K/V, each `[layers, 2, kv_heads, block_size, head_dim]` in the pool's dtype or
    the disk's (uint16: bfloat16), in the pool. On the host each goes straight to its place,
    converted there: a stacked or converted copy of a 12k-token prefix would take half a GB of fresh
    memory, slow to fault in on a CPU."""
    if _on_host(pool):
        _copy_in_on_host(pool, block_ids, blocks)
        return
    array = mx.array(np.stack(blocks))
    _scatter(pool, block_ids, array.view(mx.bfloat16) if array.dtype == mx.uint16 else array)


def _on_host(pool: KVPool) -> bool:
    return not on_gpu() and pool.dtype in _HOST_DTYPES


def _layer_views(pool: KVPool) -> list[tuple[np.ndarray, np.ndarray]]:
    mx.eval(pool.keys, pool.values)  # the last step's writes, which async_eval may still run
    return [(np.array(k, copy=False), np.array(v, copy=False)) for k, v in zip(pool.keys, pool.values)]


def _run_view(layer: np.ndarray, slot: int, num_slots: int, block_size: int) -> np.ndarray:
    """`[blocks, kv_heads, block_size, head_dim]` view of whole blocks' slots in one layer's array."""
    heads, _, head_dim = layer.shape
    rows = layer[:, slot:slot + num_slots]
    return rows.reshape(heads, num_slots // block_size, block_size, head_dim).transpose(1, 0, 2, 3)


def _copy_out_on_host(pool: KVPool, block_ids: list[int]) -> np.ndarray:
    out = np.empty((len(block_ids), pool.num_layers, 2, pool.num_kv_heads, pool.block_size,
                    pool.head_dim), numpy_dtype(pool))
    views, block_size = _layer_views(pool), pool.block_size
    # The block ids as one table: its runs are the runs of consecutive ids.
    for run in context_runs(block_ids, len(block_ids) * block_size, block_size):
        first, last = run.position // block_size, (run.position + run.length) // block_size
        for layer, kv in enumerate(views):
            for which in (0, 1):
                out[first:last, layer, which] = _run_view(kv[which], run.slot, run.length, block_size)
    return out


def _copy_in_on_host(pool: KVPool, block_ids: list[int], blocks: Sequence[np.ndarray]) -> None:
    views = _layer_views(pool)
    for block_id, kv in zip(block_ids, blocks):
        for layer, pair in enumerate(views):
            for which in (0, 1):
                slot = block_id * pool.block_size
                _run_view(pair[which], slot, pool.block_size, pool.block_size)[0] = kv[layer, which]


def _block_slots(pool: KVPool, block_ids: list[int]) -> mx.array:
    ids = mx.array(block_ids, dtype=mx.int32)[:, None]
    return (ids * pool.block_size + mx.arange(pool.block_size, dtype=mx.int32)).reshape(-1)


def _gather(pool: KVPool, block_ids: list[int]) -> mx.array:
    slots = _block_slots(pool, block_ids)
    per_layer = [mx.stack([pool.keys[layer][:, slots], pool.values[layer][:, slots]])
                 for layer in range(pool.num_layers)]
    kv = mx.stack(per_layer)  # [layers, 2, heads, n * block_size, head_dim]
    kv = kv.reshape(pool.num_layers, 2, pool.num_kv_heads, len(block_ids), pool.block_size, -1)
    return kv.transpose(3, 0, 1, 2, 4, 5)


def _scatter(pool: KVPool, block_ids: list[int], kv: mx.array) -> None:
    slots = _block_slots(pool, block_ids)
    kv = kv.transpose(1, 2, 3, 0, 4, 5).reshape(
        pool.num_layers, 2, pool.num_kv_heads, len(block_ids) * pool.block_size, pool.head_dim)
    kv = kv.astype(pool.dtype)
    for layer in range(pool.num_layers):
        pool.keys[layer][:, slots] = kv[layer, 0]
        pool.values[layer][:, slots] = kv[layer, 1]
    mx.eval(pool.keys, pool.values)
