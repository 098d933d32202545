"""The KV pool grown on demand: the KV written survives growing, slabs double, memory that is not
free stops the growth beyond the guaranteed blocks, and an allocator's refusal caps the pool; and
MLX's memory limits."""

import mlx.core as mx
import numpy as np
import pytest

from engine.kv_pool import KVPool
from engine.memory_limit import ACTIVATION_HEADROOM_BYTES, set_memory_limit
from engine.model_loader import LoadedModel
from engine.pool_growth import RESERVE_BYTES, SLAB_MIN_BYTES, PoolGrowth
from engine.runner import ModelRunner
from tests.engine.test_runner import (BLOCK_SIZE, GREEDY_TOP2, Blocks, assert_same_stream,
                                     generate_alone, new_stream, run_together)
from tests.prompts import chat_ids

GB = 2**30


def small_pool(num_blocks: int = 0) -> KVPool:
    return KVPool(num_layers=2, num_kv_heads=2, head_dim=8, num_blocks=num_blocks, block_size=4)


def test_growing_keeps_the_kv_written_and_zeroes_the_new_slots():
    pool = small_pool(3)
    slots = mx.array([0, 5, 11], dtype=mx.uint32)
    keys = mx.random.normal((1, 2, 3, 8))
    pool.write(1, slots, keys, -keys)
    mx.eval(pool.keys, pool.values)
    pool.grow(10)
    assert pool.num_blocks == 10 and pool.keys[1].shape == (2, 40, 8)
    np.testing.assert_array_equal(np.asarray(pool.keys[1][:, slots]), np.asarray(keys[0]))
    np.testing.assert_array_equal(np.asarray(pool.values[1][:, slots]), -np.asarray(keys[0]))
    assert not np.asarray(pool.keys[0][:, 12:]).any() and not np.asarray(pool.values[1][:, 12:]).any()


def test_growth_takes_a_first_slab_then_doubles_up_to_the_budget():
    pool = small_pool()
    slab = SLAB_MIN_BYTES // pool.block_bytes
    growth = PoolGrowth(pool, budget_blocks=3 * slab, free_memory=lambda: 100 * GB)
    assert growth(1) == slab == pool.num_blocks
    assert growth(slab) == slab  # enough already
    assert growth(slab + 1) == 2 * slab
    assert growth(2 * slab + 1) == 3 * slab  # doubling would pass the budget
    assert growth(3 * slab + 1) == 3 * slab  # beyond the budget: nothing
    assert growth.num_growths == 3


def test_memory_short_of_the_reserve_stops_growth_past_the_guaranteed_blocks():
    pool = small_pool()
    free = [RESERVE_BYTES + 5 * pool.block_bytes]
    growth = PoolGrowth(pool, budget_blocks=10_000, guaranteed_blocks=40, free_memory=lambda: free[0])
    assert growth(10) == 40  # the guaranteed blocks whatever memory is free
    assert growth(45) == 45  # 5 blocks fit within the free memory over the reserve
    free[0] = 0
    assert growth(46) == 45 == pool.num_blocks
    free[0] = 100 * GB
    assert growth(46) > 46


def test_an_allocator_that_refuses_caps_the_pool(monkeypatch: pytest.MonkeyPatch):
    pool = small_pool(4)
    growth = PoolGrowth(pool, budget_blocks=1000, guaranteed_blocks=2, free_memory=lambda: 100 * GB)

    def refuse(num_blocks: int) -> None:
        raise RuntimeError("[malloc] Unable to allocate")

    monkeypatch.setattr(pool, "grow", refuse)
    assert growth(8) == 4
    assert growth.budget_blocks == 4  # no further attempt past what the device gave


def test_streams_continue_unchanged_across_a_growth(loaded_model: LoadedModel):
    prompt = chat_ids(loaded_model, "Name three rivers in Europe.")
    reference = generate_alone(ModelRunner(loaded_model, num_blocks=64, block_size=BLOCK_SIZE), prompt)

    runner = ModelRunner(loaded_model, num_blocks=64, block_size=BLOCK_SIZE, on_demand=True)
    assert runner.pool.num_blocks == 0
    assert runner.pool_growth(8) >= 8
    stream = new_stream(Blocks(8), prompt)
    run_together(runner, [stream], max_steps=5)  # the prompt, then decodes
    size = runner.pool.num_blocks
    runner.pool.grow(2 * size)  # mid-stream: every layer's KV is copied into a larger array
    run_together(runner, [stream])
    assert runner.pool.num_blocks == 2 * size and len(stream.output) == GREEDY_TOP2.max_tokens
    assert_same_stream(stream, reference)


def test_the_memory_limit_covers_the_models_budgets_and_headroom():
    previous_limit, previous_cache = mx.get_memory_limit(), mx.set_cache_limit(0)
    try:
        limit = set_memory_limit(3 * GB)
        assert limit == mx.get_memory_limit() == 3 * GB + ACTIVATION_HEADROOM_BYTES
        held = mx.get_active_memory()
        assert set_memory_limit(held // 2) == held + ACTIVATION_HEADROOM_BYTES  # never below use
        assert mx.set_cache_limit(0) == ACTIVATION_HEADROOM_BYTES
    finally:
        mx.set_memory_limit(previous_limit)
        mx.set_cache_limit(previous_cache)
