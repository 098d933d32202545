"""The pure-MLX attention read over the paged KV pool for the CPU, where the compiled kernel
(engine/fused_attention.py) is not built; GPUs read by engine/gather_attention.py. Everything it
needs is in the cache's plan (engine/attention_plan.py).

Queries are grouped per kv head (`[kv_heads, group * q_len, head_dim]`), so GQA reads each key
once. On the CPU, tiles are read through a strided window view of the pool with `gather_mm`,
without copying K/V; each tile gives softmax partials, merged per row by log-sum-exp, and the
output is normalized once at the end. The CPU's exp (scalar libm) is the bottleneck of attention
there, so a vectorized polynomial replaces it, and prefill chunks go in cache-sized pieces.
"""

import math

import mlx.core as mx

from engine.attention_plan import TileRead

_LN2 = math.log(2.0)
_EXP2_TAYLOR = [_LN2**k / math.factorial(k) for k in range(7)]  # 2**f for |f| <= 1/2, error 1.2e-7
_ROUND = 1.5 * 2**23  # adding and subtracting it rounds a float32 below 2**22 to the nearest integer
# Scores of a prefill chunk computed at once. Larger pieces fall out of the CPU's cache and the
# elementwise passes over them become memory-bound (a 512-token chunk over 2,048 tokens of
# context: 167 ms a layer in one piece, 58 ms in pieces of 147k scores).
PIECE_SCORES = 1 << 18


def paged_attention(queries: mx.array, cache, scale: float) -> mx.array:
    """Attention of `queries` [B, n_heads, L, head_dim] (after RoPE) over each row's context in the
    pool, the new tokens included (the cache wrote them first). Returns [B, n_heads, L, head_dim]."""
    plan = cache.plan
    keys = cache.pool.keys[cache.layer]
    values = cache.pool.values[cache.layer]
    batch, heads, q_len, dim = queries.shape
    kv_heads = keys.shape[0]
    grouped = (queries * scale).reshape(batch, kv_heads, -1, dim)
    out, tile_max, total = _read_tiles(grouped, keys, values, plan.rows, q_len)
    if plan.destinations is not None:
        partials = [(out, tile_max, total)]
        for cascade in plan.cascades:
            rows = cascade.rows.size
            stacked = grouped[cascade.rows].transpose(1, 0, 2, 3).reshape(1, kv_heads, -1, dim)
            shared = _read_tiles(stacked, keys, values, cascade.tiles, q_len)
            partials.append([_per_row(p, rows) for p in shared])
        out, total = _merge(partials, plan.destinations, batch)
    return (out / total).reshape(batch, heads, q_len, dim).astype(queries.dtype)


def _read_tiles(queries: mx.array, keys: mx.array, values: mx.array, tiles: TileRead, q_len: int):
    """Softmax partials of each tile for its query row (queries [Q, kv_heads, M, D], M a multiple of
    q_len with the query position innermost): the unnormalized output [N, kv_heads, M, D], the
    score max and the sum of exp(score - max), both [N, kv_heads, M, 1].

    Prefill chunks go in pieces of at most PIECE_SCORES scores, a range of query positions of a
    few tiles each (tile-major, so that a tile's keys and values stay cached across its pieces):
    a piece's scores stay in the CPU's cache through the elementwise passes over them."""
    key_tiles, index = _tiles(keys, tiles)
    value_tiles, _ = _tiles(values, tiles)
    count, groups = tiles.windows.shape[0], queries.shape[2] // q_len
    per_position = queries.shape[1] * groups * tiles.width  # scores of one tile and query position
    position_step = min(q_len, max(1, PIECE_SCORES // per_position))
    # Rows with their own queries (decode) are not split by tiles: it measured no faster.
    tile_step = max(1, PIECE_SCORES // (per_position * position_step)) if queries.shape[0] == 1 else count
    if position_step == q_len and tile_step >= count:
        return _read_piece(queries, key_tiles, value_tiles, index, tiles.query_rows, tiles.bias)
    by_tiles = []
    for first in range(0, count, tile_step):
        n = slice(first, first + tile_step)
        index_n = index[n]
        bias_n = None if tiles.bias is None else tiles.bias[n]
        by_positions = []
        for start in range(0, q_len, position_step):
            positions = slice(start, start + position_step)
            bias = bias_n if bias_n is None or bias_n.shape[-2] == 1 else bias_n[..., positions, :]
            piece_queries = _positions(queries, q_len, positions)
            by_positions.append(_read_piece(piece_queries, key_tiles, value_tiles, index_n, tiles.query_rows, bias))
        by_tiles.append([_join_positions([part[i] for part in by_positions], groups) for i in range(3)])
    return [mx.concatenate([part[i] for part in by_tiles]) for i in range(3)]


def _positions(queries: mx.array, q_len: int, positions: slice) -> mx.array:
    """The queries [Q, kv_heads, groups * q_len, D] at a range of positions."""
    rows, kv_heads, m, dim = queries.shape
    grouped = queries.reshape(rows, kv_heads, m // q_len, q_len, dim)
    return grouped[:, :, :, positions].reshape(rows, kv_heads, -1, dim)


def _join_positions(parts: list[mx.array], groups: int) -> mx.array:
    """Partials of consecutive query position ranges, [N, kv_heads, groups * positions, X] each,
    joined into one with all positions."""
    count, kv_heads, _, last = parts[0].shape
    joined = mx.concatenate([p.reshape(count, kv_heads, groups, -1, last) for p in parts], axis=3)
    return joined.reshape(count, kv_heads, -1, last)


def _read_piece(queries, key_tiles, value_tiles, index, query_rows, bias):
    """_read_tiles for the given queries, tile keys/values (and window index) and bias."""
    key_tiles = key_tiles.swapaxes(-1, -2)
    scores = mx.gather_mm(queries, key_tiles, lhs_indices=query_rows, rhs_indices=index)
    scores = scores.astype(mx.float32)  # [N, kv_heads, M, width]
    if bias is not None:
        shape = scores.shape
        per_query = scores.reshape(shape[0], shape[1], -1, bias.shape[-2], shape[-1])
        scores = (per_query + bias).reshape(shape)
    tile_max = scores.max(axis=-1, keepdims=True)
    weights = fast_exp(scores - tile_max)
    total = weights.sum(axis=-1, keepdims=True)
    out = mx.gather_mm(weights.astype(value_tiles.dtype), value_tiles, rhs_indices=index)
    return out.astype(mx.float32), tile_max, total


def _tiles(pool: mx.array, tiles: TileRead) -> tuple[mx.array, mx.array]:
    """The tiles' keys or values for gather_mm: every window of `width` consecutive slots as a view
    of the pool, [kv_heads, slots - width + 1, width, head_dim] (overlapping rows, no copy), with
    the tiles' window indices."""
    heads, slots, dim = pool.shape
    width = tiles.width
    windows = mx.as_strided(pool, (heads, slots - width + 1, width, dim), (slots * dim, dim, dim, 1))
    return windows, tiles.windows


def _per_row(partial: mx.array, rows: int) -> mx.array:
    """[N, kv_heads, rows * M, X] partials of stacked rows -> [N * rows, kv_heads, M, X], tile-major."""
    tiles, kv_heads, stacked, last = partial.shape
    per_row = partial.reshape(tiles, kv_heads, rows, stacked // rows, last).transpose(0, 2, 1, 3, 4)
    return per_row.reshape(tiles * rows, kv_heads, stacked // rows, last)


def _merge(partials: list, destinations: mx.array, batch: int) -> tuple[mx.array, mx.array]:
    """Log-sum-exp merge of the partials into their batch rows: unnormalized output and sum."""
    out, tile_max, total = (mx.concatenate([p[i] for p in partials]) for i in range(3))
    shape = (batch, *tile_max.shape[1:])
    row_max = mx.full(shape, -mx.inf).at[destinations].maximum(tile_max)
    weight = mx.exp(tile_max - row_max[destinations])
    merged_out = mx.zeros((batch, *out.shape[1:])).at[destinations].add(out * weight)
    merged_total = mx.zeros(shape).at[destinations].add(total * weight)
    return merged_out, merged_total


def fast_exp(x: mx.array) -> mx.array:
    """exp(x) for float32 x <= 0 (exp(-inf) gives 1.2e-38, not 0), relative error 3e-7.

    The CPU's exp kernel is scalar libm, ~90M/s here, and it dominates attention; this polynomial
    compiles to vectorized kernels ~5x faster: exp(x) = 2**n * 2**f with n = round(x / ln 2)."""
    poly, exponent_bits = _exp2_parts(x)
    return poly * exponent_bits.view(mx.float32)


def _exp2_parts_impl(x: mx.array) -> tuple[mx.array, mx.array]:
    y = mx.maximum(x * (1.0 / _LN2), -126.0)
    n = (y + _ROUND) - _ROUND
    f = y - n
    poly = _EXP2_TAYLOR[-1]
    for coefficient in reversed(_EXP2_TAYLOR[:-1]):
        poly = poly * f + coefficient
    return poly, mx.left_shift(n.astype(mx.int32) + 127, 23)


# Shapeless: shapes change every step. The float32 view of the exponent bits stays outside, as
# MLX cannot infer a view's shape in a shapeless graph.
_exp2_parts = mx.compile(_exp2_parts_impl, shapeless=True)
