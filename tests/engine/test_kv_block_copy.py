"""Whole blocks between the KV pool and numpy (engine/kv_block_copy.py), on both paths: the host's
zero-copy views and MLX's gathers and scatters (what a GPU runs; it runs on the CPU too)."""

import mlx.core as mx
import numpy as np
import pytest

from engine import kv_block_copy
from engine.kv_block_copy import copy_blocks_in, copy_blocks_out, numpy_dtype
from engine.kv_pool import KVPool

LAYERS, HEADS, BLOCK, HEAD_DIM = 3, 2, 4, 8


def random_pool(dtype: mx.Dtype, num_blocks: int = 12) -> KVPool:
    pool = KVPool(LAYERS, HEADS, HEAD_DIM, num_blocks, BLOCK, dtype)
    for layer in range(LAYERS):
        pool.keys[layer] = mx.random.normal(pool.keys[layer].shape).astype(dtype)
        pool.values[layer] = mx.random.normal(pool.values[layer].shape).astype(dtype)
    mx.eval(pool.keys, pool.values)
    return pool


def expected_block(pool: KVPool, block_id: int) -> np.ndarray:
    slots = slice(block_id * BLOCK, (block_id + 1) * BLOCK)
    return np.stack([np.stack([np.array(pool.keys[layer][:, slots].astype(mx.float32)),
                               np.array(pool.values[layer][:, slots].astype(mx.float32))])
                     for layer in range(LAYERS)])


@pytest.fixture(params=["host", "mlx"])
def path(request, monkeypatch):
    if request.param == "mlx":
        monkeypatch.setattr(kv_block_copy, "_on_host", lambda pool: False)
    return request.param


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_blocks_copy_out_and_back_in_exactly(path, dtype):
    pool = random_pool(dtype)
    ids = [7, 2, 3, 4, 10]  # runs of one and of three blocks, out of order
    kv = copy_blocks_out(pool, ids)
    assert kv.shape == (5, LAYERS, 2, HEADS, BLOCK, HEAD_DIM) and kv.dtype == np.dtype(numpy_dtype(pool))
    for i, block_id in enumerate(ids):
        stored = mx.array(kv[i]).view(mx.bfloat16) if dtype == mx.bfloat16 else mx.array(kv[i])
        assert np.array_equal(np.array(stored.astype(mx.float32)), expected_block(pool, block_id))

    target = random_pool(dtype)
    untouched = expected_block(target, 5)
    copy_blocks_in(target, [0, 1, 8, 9, 11], list(kv))
    for source, destination in zip(ids, [0, 1, 8, 9, 11]):
        assert np.array_equal(expected_block(target, destination), expected_block(pool, source))
    assert np.array_equal(expected_block(target, 5), untouched)


def test_float16_blocks_go_into_a_float32_pool_converted(path):
    pool = random_pool(mx.float32)
    halves = copy_blocks_out(pool, [3, 4]).astype(np.float16)  # what the disk holds
    target = random_pool(mx.float32)
    copy_blocks_in(target, [6, 7], list(halves))
    for source, destination in ((3, 6), (4, 7)):
        restored = expected_block(target, destination)
        assert np.array_equal(restored, expected_block(pool, source).astype(np.float16).astype(np.float32))
