"""The read of the pool each device gets: the GPU gather on a GPU, the fused kernel on a CPU where
it is built and on, else the pure-MLX tiles; and the plan of one forward shared by its layers."""

import mlx.core as mx
import pytest

from engine import attention_reads, cpu_kernels
from engine.attention_plan import AttentionPlan
from engine.fused_attention import FusedPlan
from engine.gather_attention import GatherPlan
from engine.kv_pool import KVPool
from engine.paged_cache import build_layout, make_caches


def small_pool(dtype=mx.float32) -> KVPool:
    return KVPool(num_layers=3, num_kv_heads=2, head_dim=64, num_blocks=8, block_size=4, dtype=dtype)


def test_a_gpu_reads_by_gathering(monkeypatch):
    monkeypatch.setattr(attention_reads, "on_gpu", lambda: True)
    assert attention_reads.read_for(small_pool()) == "gather"


def test_a_cpu_reads_by_the_kernel_when_built_else_by_tiles():
    expected = "fused" if cpu_kernels.kernels() is not None else "tiles"
    assert attention_reads.read_for(small_pool()) == expected
    with cpu_kernels.disabled():
        assert attention_reads.read_for(small_pool()) == "tiles"


def test_the_kernel_leaves_pools_it_does_not_read_to_the_tiles():
    assert attention_reads.read_for(small_pool(mx.bfloat16)) == "tiles"


@pytest.mark.parametrize("read, plan_type", [("fused", FusedPlan), ("gather", GatherPlan), ("tiles", AttentionPlan)])
def test_one_plan_per_forward_shared_by_every_layer(read, plan_type):
    attention_reads.force_read(read)
    try:
        caches = make_caches(small_pool(), build_layout([[0, 1], [2]], [5, 2], 1, 4))
    finally:
        attention_reads.force_read(None)
    assert isinstance(caches[0].plan, plan_type)
    assert all(cache.plan is caches[0].plan for cache in caches)


def test_an_unknown_read_is_refused():
    with pytest.raises(ValueError, match="unknown attention read"):
        attention_reads.force_read("flash")
