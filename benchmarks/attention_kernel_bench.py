"""Per-layer attention read time: the fused CPU kernel (engine/fused_attention.py) against the
pure-MLX tile read (engine/paged_attention.py), for SmolLM2-135M's shapes (9 heads, 3 kv heads,
head_dim 64, float32). Decode batches at several contexts and a 512-token prefill chunk.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \
        .venv/bin/python -m benchmarks.attention_kernel_bench [--isa generic|avx2|avx512] [--repeats N]
"""

import argparse
import statistics
import time

import mlx.core as mx

from engine import cpu_kernels
from engine.attention_reads import force_read, plan_read
from engine.fused_attention import fused_attention, plan_fused
from engine.kv_pool import KVPool
from engine.paged_attention import paged_attention
from engine.paged_cache import PagedCache, build_layout

HEADS, KV_HEADS, DIM, BLOCK = 9, 3, 64, 16
CASES = [("decode", b, ctx) for b in (1, 16, 32) for ctx in (256, 2048, 8192)] + [("prefill 512", 1, 8192)]


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        mx.eval(fn())
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - begin)
    return 1000 * statistics.median(times)


def case_inputs(kind: str, batch: int, context: int):
    """A pool holding `batch` rows of `context` tokens (the chunk's included), their layout, queries."""
    q_len = 512 if kind.startswith("prefill") else 1
    blocks_per_row = -(-context // BLOCK)
    pool = KVPool(1, KV_HEADS, DIM, batch * blocks_per_row, BLOCK, mx.float32)
    shape = pool.keys[0].shape
    pool.keys[0], pool.values[0] = mx.random.normal(shape), mx.random.normal(shape)
    tables = [list(range(b * blocks_per_row, (b + 1) * blocks_per_row)) for b in range(batch)]
    layout = build_layout(tables, [context - q_len] * batch, q_len, BLOCK)
    queries = mx.random.normal((batch, HEADS, q_len, DIM))
    mx.eval(pool.keys, pool.values, queries)
    return pool, layout, queries


def run(repeats: int, isa: str) -> None:
    kernels = cpu_kernels.kernels()
    print(f"kernel isa {isa or kernels.isa()}, {kernels.num_threads()} threads; median of {repeats}, ms per layer")
    print(f"{'case':<12} {'B':>3} {'context':>7} {'tiles':>9} {'fused':>9} {'speedup':>8}")
    scale = DIM**-0.5
    for kind, batch, context in CASES:
        pool, layout, queries = case_inputs(kind, batch, context)
        force_read("tiles")
        layout.plan = plan_read(layout, pool)
        force_read(None)
        tiles = PagedCache(pool, 0, layout)
        tiles_ms = median_ms(lambda: paged_attention(queries, tiles, scale), repeats)
        fused_layout = build_layout(layout.block_tables, layout.start_positions, layout.q_len, BLOCK)
        fused_layout.plan = plan_fused(fused_layout, pool)
        fused = PagedCache(pool, 0, fused_layout)
        if isa:
            plan = fused_layout.plan
            call = lambda: kernels.paged_attention(  # noqa: E731
                queries, pool.keys[0], pool.values[0], plan.starts, plan.row_offsets, plan.row_segments,
                plan.group_offsets, plan.group_rows, plan.shared_offsets, plan.shared_segments, scale, isa=isa)
        else:
            call = lambda: fused_attention(queries, fused, scale)  # noqa: E731
        fused_ms = median_ms(call, repeats)
        print(f"{kind:<12} {batch:>3} {context:>7} {tiles_ms:>9.3f} {fused_ms:>9.3f} {tiles_ms / fused_ms:>7.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--isa", default="", choices=["", "generic", "avx2", "avx512"])
    args = parser.parse_args()
    if cpu_kernels.kernels() is None:
        raise SystemExit("the CPU kernels are not built here")
    run(args.repeats, args.isa)


if __name__ == "__main__":
    main()
