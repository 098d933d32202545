"""Paged attention on tiny random-weight models, through each read of the pool (the fused CPU
kernel, the GPU gather, the pure-MLX tiles): logits equal mlx-lm's dense KVCache forward for
ragged decode rows, prefill chunks continuing a cached prefix, fragmented block tables, cascades
over shared prefixes, one and several tiles per row; plus the pool write and the fast exp."""

import random

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import make_prompt_cache

from engine import cpu_kernels, paged_attention
from engine.attention_dispatch import install_paged_attention
from engine.attention_reads import READS, force_read
from engine.attention_plan import context_runs, count_runs
from engine.kv_pool import KVPool
from engine.paged_attention import fast_exp
from engine.paged_cache import build_layout, make_caches
from tests.engine.tiny_models import VOCAB, tiny_llama, tiny_qwen3

BLOCK = 4
NUM_BLOCKS = 64
MODELS = {"llama": tiny_llama, "qwen3": tiny_qwen3}
# Tile widths: chosen by the cost model; 4 (several tiles per row, merged by log-sum-exp); 64
# (one tile per contiguous run, its padding masked).
WIDTHS = [None, 4, 64]


@pytest.fixture(params=READS)
def read(request):
    """Each read of the pool (engine/attention_reads.py), whatever this machine would choose."""
    if request.param == "fused" and cpu_kernels.kernels() is None:
        pytest.skip("the CPU kernels are not built here")
    force_read(request.param)
    yield request.param
    force_read(None)


@pytest.fixture(params=["one piece", "pieces"])
def pieces(request, monkeypatch):
    """Prefill scores in one piece, or in pieces of a few query positions."""
    if request.param == "pieces":
        monkeypatch.setattr(paged_attention, "PIECE_SCORES", 200)
    return request.param


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    model = MODELS[request.param]()
    install_paged_attention(model)
    return model


def new_pool(model, num_blocks: int = NUM_BLOCKS) -> KVPool:
    args = model.args
    return KVPool(len(model.layers), args.num_key_value_heads, args.head_dim, num_blocks, BLOCK, mx.float32)


def paged_forward(model, pool, tables, starts, tokens, **layout_options):
    """Logits [B, L, vocab] of `tokens` (B rows of L) at `starts`, and the layout used."""
    layout = build_layout(tables, starts, len(tokens[0]), BLOCK, **layout_options)
    logits = model(mx.array(tokens), cache=make_caches(pool, layout))
    mx.eval(logits, pool.keys, pool.values)
    return logits, layout


def prefill(model, pool, table, tokens, start: int = 0, chunk: int = 5) -> None:
    """Write the K/V of tokens[start:] into the pool, in prefill chunks."""
    for begin in range(start, len(tokens), chunk):
        paged_forward(model, pool, [table], [begin], [tokens[begin : begin + chunk]])


def prefill_all_but_last(model, pool, tables, sequences) -> None:
    """Each sequence's tokens but its last into the pool: the state before a decode row."""
    for table, tokens in zip(tables, sequences):
        prefill(model, pool, table, tokens[:-1])


def ragged_decode_rows(model, shuffled: bool):
    """Four sequences of 6 to 41 tokens prefilled but for their last token: (sequences, tables, pool, starts)."""
    rng = random.Random(1)
    sequences = [random_tokens(n, rng) for n in (6, 17, 33, 41)]
    tables = block_tables([len(s) for s in sequences], shuffled)
    pool = new_pool(model)
    prefill_all_but_last(model, pool, tables, sequences)
    return sequences, tables, pool, [len(s) - 1 for s in sequences]


def chunks_over_a_shared_prefix(model, seed: int, table_seed: int, chunk: int = 6):
    """Two sequences sharing a 2-block prefix (blocks 0 and 1), prefilled but for their last `chunk`
    tokens: (sequences, tables, pool, starts)."""
    rng = random.Random(seed)
    shared = random_tokens(2 * BLOCK, rng)
    sequences = [shared + random_tokens(n, rng) for n in (7, 17)]
    own_tables = block_tables([len(s) - len(shared) for s in sequences], shuffled=True, seed=table_seed, taken=(0, 1))
    tables = [[0, 1] + own for own in own_tables]
    pool = new_pool(model)
    prefill(model, pool, tables[0], shared)
    for table, tokens in zip(tables, sequences):
        prefill(model, pool, table, tokens[:-chunk], start=len(shared))
    return sequences, tables, pool, [len(s) - chunk for s in sequences]


def dense_logits(model, tokens, new: int) -> mx.array:
    """mlx-lm's KVCache forward: the prefix, then the last `new` tokens; their logits [new, vocab]."""
    cache = make_prompt_cache(model)
    if len(tokens) > new:
        model(mx.array([tokens[:-new]]), cache=cache)
    return model(mx.array([tokens[-new:]]), cache=cache)[0]


def assert_close(paged: mx.array, dense: mx.array) -> None:
    error = mx.abs(paged - dense).max().item()
    assert error <= 1e-4 * mx.abs(dense).max().item(), error


def block_tables(lengths: list[int], shuffled: bool, seed: int = 0, taken: tuple = (), block_size: int = BLOCK,
                 num_blocks: int = NUM_BLOCKS) -> list[list[int]]:
    """Tables for sequences of these lengths, from the blocks not `taken`: consecutive blocks, or
    shuffled (runs of one block, mostly)."""
    blocks = [b for b in range(num_blocks) if b not in taken]
    if shuffled:
        random.Random(seed).shuffle(blocks)
    tables = []
    for n in lengths:
        count = -(-n // block_size)
        tables.append(blocks[:count])
        blocks = blocks[count:]
    return tables


def random_tokens(n: int, rng: random.Random) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("shuffled", [False, True], ids=["contiguous", "shuffled"])
def test_ragged_decode_rows_match_dense(model, read, shuffled, width):
    sequences, tables, pool, starts = ragged_decode_rows(model, shuffled)

    logits, layout = paged_forward(model, pool, tables, starts, [s[-1:] for s in sequences], tile_width=width)

    if read == "tiles" and width == 64 and not shuffled:
        assert layout.plan.destinations is None  # one tile per row, nothing to merge
    elif read == "tiles" and width == 4:
        assert layout.plan.rows.windows.shape[0] == sum(-(-(n + 1) // 4) for n in starts)
    assert isinstance(layout.rope_offset, mx.array)
    for row, tokens in enumerate(sequences):
        assert_close(logits[row, 0], dense_logits(model, tokens, 1)[0])


@pytest.mark.parametrize("width", WIDTHS)
def test_prefill_chunk_continuing_a_cached_prefix_matches_dense(model, read, pieces, width):
    rng = random.Random(2)
    tokens = random_tokens(23, rng)
    prefix = 13  # not block-aligned: the chunk starts inside a block
    (table,) = block_tables([len(tokens)], shuffled=True, seed=3)
    pool = new_pool(model)
    prefill(model, pool, table, tokens[:prefix])

    logits, layout = paged_forward(model, pool, [table], [prefix], [tokens[prefix:]], tile_width=width)

    assert layout.rope_offset == prefix
    if read == "tiles":
        assert layout.plan.rows.bias is not None  # causal within the chunk
    assert_close(logits[0], dense_logits(model, tokens, len(tokens) - prefix))


def test_batched_prefill_chunks_over_a_shared_prefix_match_dense(model, read, pieces):
    chunk = 6
    sequences, tables, pool, starts = chunks_over_a_shared_prefix(model, seed=4, table_seed=5, chunk=chunk)

    chunks = [s[-chunk:] for s in sequences]
    logits, layout = paged_forward(model, pool, tables, starts, chunks, tile_width=4, cascade_min_saved=1)

    if read == "tiles":
        assert len(layout.plan.cascades) == 1
    for row, tokens in enumerate(sequences):
        assert_close(logits[row], dense_logits(model, tokens, chunk))


@pytest.mark.parametrize("width", [None, 4])
def test_rows_sharing_a_prefix_read_it_once_and_match_dense(model, read, width):
    rng = random.Random(6)
    shared = random_tokens(6 * BLOCK, rng)
    own_lengths = [1, 3, 9, 14]
    sequences = [shared + random_tokens(n, rng) for n in own_lengths]
    loner = random_tokens(30, rng)  # a row that shares nothing
    sequences.append(loner)
    pool = new_pool(model)
    shared_blocks = list(range(40, 46))  # not at the pool's start, so slots are not positions
    prefill(model, pool, shared_blocks, shared)
    own_tables = block_tables([*own_lengths, len(loner)], shuffled=True, seed=7, taken=tuple(shared_blocks))
    tables = [shared_blocks + own for own in own_tables[:-1]] + own_tables[-1:]
    for table, tokens in zip(tables, sequences):
        prefill(model, pool, table, tokens[:-1], start=len(shared) if tokens is not loner else 0, chunk=4)

    starts = [len(s) - 1 for s in sequences]
    last = [s[-1:] for s in sequences]
    logits, layout = paged_forward(model, pool, tables, starts, last, tile_width=width, cascade_min_saved=1)

    if read == "tiles":
        (cascade,) = layout.plan.cascades
        assert cascade.rows.tolist() == [0, 1, 2, 3]
    for row, tokens in enumerate(sequences):
        assert_close(logits[row, 0], dense_logits(model, tokens, 1)[0])
    # By default sharing 24 tokens 4 times saves too little to be worth a cascade.
    plain, plain_layout = paged_forward(model, pool, tables, starts, last, tile_width=width)
    if read == "tiles":
        assert not plain_layout.plan.cascades
    assert_close(logits, plain)


def test_window_slides_back_at_the_end_of_the_pool(model, read):
    rng = random.Random(8)
    tokens = random_tokens(7, rng)
    pool = new_pool(model, num_blocks=8)
    table = [7, 6]  # the pool's last block first: a 16-wide window from slot 28 would overrun
    prefill(model, pool, table, tokens[:-1])

    logits, layout = paged_forward(model, pool, [table], [6], [tokens[-1:]], tile_width=16)

    if read == "tiles":
        assert layout.plan.rows.windows[:, 0].max().item() <= pool.num_slots - 16  # head 0: the first slot
    assert_close(logits[0, 0], dense_logits(model, tokens, 1)[0])


def test_pool_write_sets_exactly_the_requested_slots():
    pool = KVPool(num_layers=2, num_kv_heads=3, head_dim=4, num_blocks=5, block_size=4, dtype=mx.float32)
    slots = [17, 2, 9, 10]  # rows of a [2, 2] batch, row-major
    keys = mx.random.normal((2, 3, 2, 4))
    values = mx.random.normal((2, 3, 2, 4))
    pool.write(1, mx.array(slots, dtype=mx.uint32), keys, values)
    mx.eval(pool.keys, pool.values)

    for written, new in ((pool.keys[1], keys), (pool.values[1], values)):
        expected = np.zeros((3, pool.num_slots, 4), np.float32)
        expected[:, slots] = np.array(new).transpose(1, 0, 2, 3).reshape(3, 4, 4)
        np.testing.assert_array_equal(np.array(written), expected)
    assert not np.array(pool.keys[0]).any() and not np.array(pool.values[0]).any()


def test_bytes_per_block():
    assert KVPool.bytes_per_block(30, 3, 64, 16, mx.float32) == 2 * 30 * 3 * 64 * 16 * 4
    assert KVPool.bytes_per_block(2, 8, 128, 16, mx.bfloat16) == 2 * 2 * 8 * 128 * 16 * 2


def test_fast_exp_matches_exp():
    x = mx.concatenate([-mx.random.uniform(0, 80, (10000,)), mx.array([0.0, -1e-7, -87.0])])
    expected = mx.exp(x)
    assert (mx.abs(fast_exp(x) - expected) / expected).max().item() < 1e-6
    assert fast_exp(mx.array([-mx.inf, -1e30])).max().item() < 1e-37


def test_build_layout_slots_and_runs():
    layout = build_layout([[5, 6, 2, 3, 9]], [6], 8, block_size=4)
    positions = range(6, 14)
    table = [5, 6, 2, 3, 9]
    assert layout.slot_ids.tolist() == [table[p // 4] * 4 + p % 4 for p in positions]
    assert layout.rope_offset == 6
    assert [tuple(r) for r in layout.runs[0]] == [(20, 0, 8), (8, 8, 6)]
    assert [tuple(r) for r in context_runs(table, 9, 4)] == [(20, 0, 8), (8, 8, 1)]
    assert count_runs(table) == 3 and count_runs([]) == 0 and count_runs([4]) == 1


def test_interleaved_blocks_share_windows_and_match_dense(model, read):
    """Two sequences whose blocks alternate (as when one prefills while the other decodes) are read
    through a few masked windows each, not one tile per block, and still give the dense logits."""
    rng = random.Random(7)
    sequences = [random_tokens(n, rng) for n in (30, 27)]
    tables = [list(range(0, 16, 2)), list(range(1, 16, 2))]
    pool = new_pool(model)
    prefill_all_but_last(model, pool, tables, sequences)

    starts = [len(s) - 1 for s in sequences]
    logits, layout = paged_forward(model, pool, tables, starts, [s[-1:] for s in sequences], tile_width=16)

    if read == "tiles":
        runs = sum(count_runs(table[: -(-(n + 1) // BLOCK)]) for table, n in zip(tables, starts))
        assert layout.plan.rows.windows.shape[0] < runs
    for row, tokens in enumerate(sequences):
        assert_close(logits[row, 0], dense_logits(model, tokens, 1)[0])
