"""The fused CPU attention kernel (kernels/paged_attention.cpp via engine/fused_attention.py)
against a dense reference and the pure-MLX tile read: ragged decode rows over contiguous and
shuffled block tables, prefill chunks continuing a cached prefix from inside a block, cascades over
shared prefixes, GQA ratios, head dims of each path, each ISA variant; and a tiny model's logits
through the fused read against mlx-lm's dense KVCache forward."""

import random

import mlx.core as mx
import numpy as np
import pytest

from engine import attention_dispatch, cpu_kernels
from engine.attention_plan import MAX_TILE_BYTES, plan_attention
from engine.kv_pool import KVPool
from engine.paged_attention import paged_attention
from engine.paged_cache import PagedCache, build_layout, make_caches

if cpu_kernels.kernels() is None:
    pytest.skip("the CPU kernels are not built here", allow_module_level=True)

from engine.fused_attention import fused_attention, plan_fused, supports  # noqa: E402
from tests.engine.test_paged_attention import block_tables, dense_logits, random_tokens  # noqa: E402
from tests.engine.tiny_models import tiny_llama  # noqa: E402

NUM_BLOCKS = 96
_BEST = cpu_kernels.kernels().isa()
ISAS = ["generic"] + (["avx2"] if _BEST.startswith(("avx2", "avx512")) else []) + (["avx512"] if _BEST.startswith("avx512") else [])


def make_pool(kv_heads: int, dim: int, block_size: int, seed: int = 0) -> KVPool:
    pool = KVPool(1, kv_heads, dim, NUM_BLOCKS, block_size, mx.float32)
    shape = pool.keys[0].shape
    pool.keys[0] = mx.random.normal(shape, key=mx.random.key(seed))
    pool.values[0] = mx.random.normal(shape, key=mx.random.key(seed + 1))
    return pool


def tables_for(lengths: list[int], block_size: int, shuffled: bool, first: int = 0, seed: int = 0) -> list[list[int]]:
    return block_tables(lengths, shuffled, seed, taken=tuple(range(first)), block_size=block_size, num_blocks=NUM_BLOCKS)


def dense_reference(queries, pool: KVPool, tables, starts, scale: float) -> np.ndarray:
    """Attention of each row's queries over its positions [0, start + l], gathered densely (float64)."""
    q = np.array(queries, dtype=np.float64)
    keys, values = (np.array(a[0], dtype=np.float64) for a in (pool.keys, pool.values))
    batch, heads, q_len, dim = q.shape
    group = heads // keys.shape[0]
    out = np.zeros_like(q)
    for b, (table, start) in enumerate(zip(tables, starts)):
        positions = np.arange(start + q_len)
        slots = np.asarray(table)[positions // pool.block_size] * pool.block_size + positions % pool.block_size
        for h in range(heads):
            k, v = keys[h // group, slots], values[h // group, slots]
            scores = q[b, h] @ k.T * scale
            scores[positions[None, :] > start + np.arange(q_len)[:, None]] = -np.inf
            weights = np.exp(scores - scores.max(axis=1, keepdims=True))
            out[b, h] = (weights / weights.sum(axis=1, keepdims=True)) @ v
    return out


def tiles_read(queries, pool: KVPool, layout, scale: float) -> mx.array:
    layout.plan = plan_attention(
        layout.block_tables, layout.start_positions, layout.q_len, layout.block_size, layout.runs,
        pool.num_slots, pool.num_kv_heads, max_width=MAX_TILE_BYTES // (pool.head_dim * 4),
        cascade_min_saved=layout.cascade_min_saved,
    )
    return paged_attention(queries, PagedCache(pool, 0, layout), scale)


def fused_read(queries, pool: KVPool, layout, scale: float, isa: str = "") -> mx.array:
    plan = plan_fused(layout, pool)
    return cpu_kernels.kernels().paged_attention(
        queries, pool.keys[0], pool.values[0], plan.starts, plan.row_offsets, plan.row_segments,
        plan.group_offsets, plan.group_rows, plan.shared_offsets, plan.shared_segments, scale, isa=isa,
    )


def check(queries, pool, tables, starts, isa: str, cascade_min_saved=None) -> None:
    scale = queries.shape[-1] ** -0.5
    layout = build_layout(tables, starts, queries.shape[2], pool.block_size, cascade_min_saved=cascade_min_saved)
    fused = fused_read(queries, pool, layout, scale, isa)
    dense = dense_reference(queries, pool, tables, starts, scale)
    tiles = np.array(tiles_read(queries, pool, layout, scale))
    tolerance = 1e-4 * np.abs(dense).max()
    assert np.abs(np.array(fused) - dense).max() <= tolerance
    assert np.abs(np.array(fused) - tiles).max() <= tolerance


def random_queries(batch: int, heads: int, q_len: int, dim: int, seed: int = 7) -> mx.array:
    return mx.random.normal((batch, heads, q_len, dim), key=mx.random.key(seed))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dim", [16, 64, 128])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (8, 2)], ids=["1:1", "3:1", "4:1"])
@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("shuffled", [False, True], ids=["contiguous", "shuffled"])
def test_ragged_decode_rows(isa, dim, heads, block_size, shuffled):
    lengths = [1, 7, 33, 150]
    pool = make_pool(heads[1], dim, block_size)
    tables = tables_for(lengths, block_size, shuffled)
    check(random_queries(len(lengths), heads[0], 1, dim), pool, tables, [n - 1 for n in lengths], isa)


@pytest.mark.parametrize("isa", ["", *ISAS])
@pytest.mark.parametrize("dim", [16, 24, 64, 80, 256])
@pytest.mark.parametrize("block_size", [4, 16])
def test_prefill_chunk_continuing_a_cached_prefix(isa, dim, block_size):
    if isa == "avx512" and dim % 16:
        pytest.skip("the avx512 variant takes head_dims that are multiples of 16; '' picks avx2 or generic")
    start, chunk = 13, 150  # starts inside a block; several key chunks and query tasks
    pool = make_pool(2, dim, block_size)
    tables = tables_for([start + chunk], block_size, shuffled=True, seed=3)
    check(random_queries(1, 6, chunk, dim), pool, tables, [start], isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("q_len", [1, 3])
def test_one_row_over_a_long_context_splits_its_keys(isa, q_len):
    """Two tasks (one per kv head) for two threads or more: each is read in parts, then merged."""
    context, block_size = 1300, 16
    pool = make_pool(2, 64, block_size)
    tables = tables_for([context], block_size, shuffled=True, seed=9)
    check(random_queries(1, 6, q_len, 64), pool, tables, [context - q_len], isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("q_len", [1, 5])
def test_rows_sharing_a_prefix_cascade(isa, q_len):
    block_size, shared_blocks = 4, list(range(40, 60))  # not at the pool's start
    own = tables_for([3, 9, 70, 40], block_size, shuffled=True, seed=5, first=60)
    tables = [shared_blocks + t for t in own[:3]] + own[3:]  # the last row shares nothing
    lengths = [len(shared_blocks) * block_size + n for n in (3, 9, 70)] + [40]
    starts = [n - q_len for n in lengths]
    pool = make_pool(2, 64, block_size)
    layout = build_layout(tables, starts, q_len, block_size, cascade_min_saved=1)
    plan = plan_fused(layout, pool)
    assert plan.group_rows.tolist() == [0, 1, 2, 3] and plan.group_offsets.tolist() == [0, 3, 4]
    check(random_queries(4, 6, q_len, 64), pool, tables, starts, isa, cascade_min_saved=1)


def test_invalid_inputs_raise_clear_errors():
    pool = make_pool(2, 64, 4)
    layout = build_layout([[0, 1]], [3], 1, 4)
    with pytest.raises(ValueError, match="float32"):
        fused_read(random_queries(1, 6, 1, 64).astype(mx.float16), pool, layout, 1.0)
    with pytest.raises(ValueError, match="head_dim"):
        fused_read(random_queries(1, 6, 1, 32), pool, layout, 1.0)
    with pytest.raises(ValueError, match="isa"):
        fused_read(random_queries(1, 6, 1, 64), pool, layout, 1.0, isa="sse9")


def test_plan_rejects_segments_outside_the_pool():
    pool = make_pool(2, 64, 4)
    with pytest.raises(ValueError, match="outside the pool"):
        plan_fused(build_layout([[NUM_BLOCKS]], [0], 1, 4), pool)


def test_supports_float32_pools_only():
    assert supports(make_pool(2, 64, 4))
    assert not supports(KVPool(1, 2, 64, 4, 4, mx.float16))


def test_tiny_model_logits_through_the_fused_read_match_dense(monkeypatch):
    monkeypatch.setattr(attention_dispatch, "attend", fused_attention)
    model = tiny_llama()
    attention_dispatch.install_paged_attention(model)
    args = model.args
    block_size = 4
    pool = KVPool(len(model.layers), args.num_key_value_heads, args.head_dim, NUM_BLOCKS, block_size, mx.float32)
    rng = random.Random(1)
    sequences = [random_tokens(n, rng) for n in (6, 17, 30)]
    tables = tables_for([len(s) for s in sequences], block_size, shuffled=True)

    def forward(tables, starts, tokens):
        layout = build_layout(tables, starts, len(tokens[0]), block_size)
        layout.plan = plan_fused(layout, pool)
        logits = model(mx.array(tokens), cache=make_caches(pool, layout))
        mx.eval(logits, pool.keys, pool.values)
        return logits

    for table, tokens in zip(tables, sequences):  # prefill chunks of 5, the last token left
        for begin in range(0, len(tokens) - 1, 5):
            forward([table], [begin], [tokens[begin : min(begin + 5, len(tokens) - 1)]])
    logits = forward(tables, [len(s) - 1 for s in sequences], [s[-1:] for s in sequences])
    for row, tokens in enumerate(sequences):
        dense = dense_logits(model, tokens, 1)[0]
        assert mx.abs(logits[row, 0] - dense).max().item() <= 1e-4 * mx.abs(dense).max().item()
