"""The gather read of the pool (the GPU's, run here on MLX's CPU backend): logits equal mlx-lm's
dense KVCache forward on tiny models for ragged and equal decode rows, prefill chunks continuing a
cached prefix, rows sharing a prefix's blocks and a row holding the pool's last block; one layer's
read is one SDPA call and a number of ops independent of batch and context; the plan is made once
per forward and shared by every layer."""

import io
import random
import types
from collections import Counter

import mlx.core as mx
import numpy as np
import pytest

from engine import attention_dispatch
from engine import gather_attention as gather_module
from engine.attention_dispatch import install_paged_attention
from engine.gather_attention import GatherPlan, context_slots, gather_attention, plan_gather
from engine.kv_pool import KVPool
from engine.paged_cache import build_layout, make_caches
from tests.engine.test_paged_attention import (
    BLOCK,
    MODELS,
    assert_close,
    block_tables,
    chunks_over_a_shared_prefix,
    dense_logits,
    new_pool,
    prefill,
    prefill_all_but_last,
    ragged_decode_rows,
    random_tokens,
)

SDPA = "fast.scaled_dot_product_attention"


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    model = MODELS[request.param]()
    install_paged_attention(model)
    return model


def gather_forward(model, pool, tables, starts, tokens):
    """Logits [B, L, vocab] of `tokens` at `starts` with every layer reading by plan_gather, the
    layout, and the cache of each read, in order."""
    layout = build_layout(tables, starts, len(tokens[0]), BLOCK)
    layout.plan = plan_gather(layout, pool)  # make_caches plans only when there is no plan
    caches = make_caches(pool, layout)
    reads = []

    def read(queries, cache, scale):
        reads.append(cache)
        return gather_attention(queries, cache, scale)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention_dispatch, "paged_attention", read, raising=False)
        patch.setattr(gather_module, "gather_attention", read)  # for a dispatch by the plan's type
        logits = model(mx.array(tokens), cache=caches)
        mx.eval(logits, pool.keys, pool.values)
    assert [cache.layer for cache in reads] == list(range(pool.num_layers))
    return logits, layout


def assert_rows_match_dense(model, logits, sequences, new: int) -> None:
    """Each row's logits of its last `new` tokens equal the dense forward's."""
    for row, tokens in enumerate(sequences):
        assert_close(logits[row], dense_logits(model, tokens, new))


@pytest.mark.parametrize("shuffled", [False, True], ids=["contiguous", "shuffled"])
def test_ragged_decode_rows_match_dense(model, shuffled):
    sequences, tables, pool, starts = ragged_decode_rows(model, shuffled)

    logits, layout = gather_forward(model, pool, tables, starts, [s[-1:] for s in sequences])

    assert layout.plan.slots.shape == (4, 41)
    assert layout.plan.mask.dtype == mx.bool_ and layout.plan.mask.shape == (4, 1, 1, 41)
    assert not mx.isnan(logits).any().item()
    assert_rows_match_dense(model, logits, sequences, 1)


def test_decode_rows_of_equal_length_need_no_mask(model):
    rng = random.Random(2)
    sequences = [random_tokens(19, rng) for _ in range(3)]
    tables = block_tables([19] * 3, shuffled=True, seed=2)
    pool = new_pool(model)
    prefill_all_but_last(model, pool, tables, sequences)

    logits, layout = gather_forward(model, pool, tables, [18] * 3, [s[-1:] for s in sequences])

    assert layout.plan.mask is None
    assert_rows_match_dense(model, logits, sequences, 1)


def test_prefill_chunk_continuing_a_cached_prefix_matches_dense(model):
    rng = random.Random(3)
    tokens = random_tokens(23, rng)
    prefix = 13  # not block-aligned: the chunk starts inside a block
    (table,) = block_tables([len(tokens)], shuffled=True, seed=3)
    pool = new_pool(model)
    prefill(model, pool, table, tokens[:prefix])

    logits, layout = gather_forward(model, pool, [table], [prefix], [tokens[prefix:]])

    assert layout.plan.slots.shape == (1, 23)  # C = start + L
    assert layout.plan.mask == "causal"  # lower-right aligned: query l sees keys up to start + l
    assert_close(logits[0], dense_logits(model, tokens, len(tokens) - prefix))


def test_batched_prefill_chunks_over_a_shared_prefix_match_dense(model):
    """Rows at different starts with several new tokens each: the boolean mask is causal per row."""
    chunk = 6
    sequences, tables, pool, starts = chunks_over_a_shared_prefix(model, seed=6, table_seed=6, chunk=chunk)

    logits, layout = gather_forward(model, pool, tables, starts, [s[-chunk:] for s in sequences])

    assert layout.plan.mask.shape == (2, 1, chunk, 25)
    assert_rows_match_dense(model, logits, sequences, chunk)


def test_rows_holding_the_pools_last_block_match_dense(model):
    rng = random.Random(8)
    sequences = [random_tokens(7, rng), random_tokens(3, rng)]
    pool = new_pool(model, num_blocks=8)
    tables = [[7, 6], [1]]  # the pool's last block first
    prefill_all_but_last(model, pool, tables, sequences)

    logits, layout = gather_forward(model, pool, tables, [6, 2], [s[-1:] for s in sequences])

    assert layout.plan.slots.max().item() == pool.num_slots - 1
    assert_rows_match_dense(model, logits, sequences, 1)


def test_queries_dtype_is_kept_over_a_float32_pool():
    pool, layout = synthetic_read(batch=3, context=40, q_len=1)
    cache = make_caches(pool, layout)[0]
    queries = mx.random.normal((3, 9, 1, 64), key=mx.random.key(0))

    exact = gather_attention(queries, cache, 0.125)
    half = gather_attention(queries.astype(mx.bfloat16), cache, 0.125)

    assert half.dtype == mx.bfloat16
    assert mx.abs(half.astype(mx.float32) - exact).max().item() < 0.05


def test_context_slots_follow_the_block_tables():
    slots = context_slots([[5, 2, 9, 7], [3]], context=10, block_size=4)  # row 1 has 2 positions

    table = [5, 2, 9]  # the 4th block is past the context
    assert slots[0].tolist() == [table[p // 4] * 4 + p % 4 for p in range(10)]
    assert slots[1, :4].tolist() == [12, 13, 14, 15]
    assert slots[1, 4:].tolist() == [0, 1, 2, 3, 0, 1]  # padding: block 0, any valid slot


def test_mask_is_causal_per_row_and_hides_padding():
    pool = KVPool(1, 3, 64, num_blocks=16, block_size=4)
    layout = build_layout([[0, 1, 2], [3, 4]], [7, 2], 3, block_size=4)

    mask = np.array(plan_gather(layout, pool).mask)

    key, query_pos = np.arange(10), np.array([7, 2])[:, None] + np.arange(3)
    np.testing.assert_array_equal(mask[:, 0], key[None, None, :] <= query_pos[:, :, None])


# One layer's read, counted: MLX calls from the module, and the nodes of the graph it builds.


def synthetic_read(batch: int, context: int, q_len: int, ragged: bool = True, block_size: int = 16):
    """A 1-layer pool (SmolLM2's 3 kv heads of 64) and the planned layout of `batch` rows whose
    longest context is `context` (the others shorter when ragged), with `q_len` new tokens each."""
    lengths = [context - (row * 7 % max(context // 2, 1) if ragged else 0) for row in range(batch)]
    blocks = [-(-n // block_size) for n in lengths]
    pool = KVPool(1, 3, 64, num_blocks=sum(blocks), block_size=block_size)
    first = np.cumsum([0, *blocks])
    tables = [list(range(first[row], first[row + 1])) for row in range(batch)]
    layout = build_layout(tables, [n - q_len for n in lengths], q_len, block_size)
    layout.plan = plan_gather(layout, pool)
    return pool, layout


class CountingMX(types.SimpleNamespace):
    """mlx.core as gather_attention's module sees it, counting calls of its functions by name."""

    def __init__(self, module, calls: Counter, prefix: str = ""):
        super().__init__(_module=module, _calls=calls, _prefix=prefix)

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if isinstance(attr, types.ModuleType):
            return CountingMX(attr, self._calls, f"{self._prefix}{name}.")
        if not callable(attr) or isinstance(attr, type):
            return attr

        def counted(*args, **kwargs):
            self._calls[self._prefix + name] += 1
            return attr(*args, **kwargs)

        return counted


def read_one_layer(pool, layout, monkeypatch) -> tuple[Counter, int]:
    """MLX calls made by gather_attention's module for one layer's read, and the primitives of the
    graph that read builds (the queries, pool and plan evaluated before)."""
    cache = make_caches(pool, layout)[0]
    batch, q_len = len(layout.start_positions), layout.q_len
    queries = mx.random.normal((batch, 9, q_len, 64), key=mx.random.key(1))
    plan = layout.plan
    mx.eval(queries, plan.slots, plan.rows, *[m for m in [plan.mask] if isinstance(m, mx.array)])
    calls = Counter()
    with monkeypatch.context() as patch:
        patch.setattr(gather_module, "mx", CountingMX(mx, calls))
        out = gather_attention(queries, cache, 0.125)
    graph = io.StringIO()
    mx.export_to_dot(graph, out)
    return calls, graph.getvalue().count("shape=rectangle")


@pytest.mark.parametrize(
    "batch, context, q_len",
    [(1, 2048, 1), (16, 2048, 1), (1, 2048, 512)],
    ids=["decode 1", "decode 16", "prefill"],
)
def test_one_layer_reads_with_one_sdpa_call(monkeypatch, batch, context, q_len):
    calls, _ = read_one_layer(*synthetic_read(batch, context, q_len), monkeypatch)

    assert calls[SDPA] == 1
    assert not {"arange", "array"} & set(calls)  # masks and slots are the plan's, not the layer's


@pytest.mark.parametrize(
    "small, large",
    [((2, 24, 1), (16, 2048, 1)), ((1, 24, 8), (1, 2048, 512)), ((2, 24, 4), (8, 1024, 64))],
    ids=["ragged decode", "prefill chunk", "batched prefill"],
)
def test_ops_of_one_layer_do_not_grow_with_batch_or_context(monkeypatch, small, large):
    small_calls, small_nodes = read_one_layer(*synthetic_read(*small), monkeypatch)
    large_calls, large_nodes = read_one_layer(*synthetic_read(*large), monkeypatch)

    assert small_calls == large_calls
    assert small_nodes == large_nodes
    assert small_nodes < 40  # a handful of gathers and SDPA's CPU fallback, no loop over pieces


def test_plan_is_made_once_per_forward_and_shared_by_every_layer(model, monkeypatch):
    rng = random.Random(9)
    sequences = [random_tokens(n, rng) for n in (5, 12)]
    tables = block_tables([len(s) for s in sequences], shuffled=True, seed=9)
    pool = new_pool(model)
    prefill_all_but_last(model, pool, tables, sequences)
    layout = build_layout(tables, [4, 11], 1, BLOCK)
    layout.plan = plan_gather(layout, pool)
    caches = make_caches(pool, layout)
    seen, calls = [], Counter()

    def read(queries, cache, scale):
        seen.append((cache.plan, cache.plan.slots, cache.plan.rows, cache.plan.mask))
        return gather_attention(queries, cache, scale)

    monkeypatch.setattr(attention_dispatch, "paged_attention", read, raising=False)
    monkeypatch.setattr(gather_module, "gather_attention", read)
    monkeypatch.setattr(gather_module, "mx", CountingMX(mx, calls))
    mx.eval(model(mx.array([s[-1:] for s in sequences]), cache=caches))

    assert len(seen) == len(model.layers) == 2
    assert isinstance(layout.plan, GatherPlan)
    for parts in seen:
        assert all(part is shared for part, shared in zip(parts, seen[0]))
    assert seen[0][0] is layout.plan
    assert calls[SDPA] == len(model.layers)
    assert not {"arange", "array"} & set(calls)  # nothing of the plan is remade by a layer
