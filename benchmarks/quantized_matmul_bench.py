"""Per-layer and whole-model timings of the CPU quantized matmul against float32 and MLX's own.

Run with OpenBLAS for the float32 baseline:
  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
    .venv/bin/python -m benchmarks.quantized_matmul_bench
"""

import argparse
import time
from collections.abc import Callable

import mlx.core as mx

from engine.cpu_kernels import kernels

# SmolLM2-135M: (name, K, N, layers per model)
SHAPES = [
    ("q/o_proj", 576, 576, 60),
    ("k/v_proj", 576, 192, 60),
    ("gate/up", 576, 1536, 60),
    ("down", 1536, 576, 30),
    ("lm_head", 576, 49152, 1),
]
ROWS = [1, 16, 32, 512]
GROUP = 64


def seconds_per_call(fn: Callable[[], mx.array], min_time: float = 0.2) -> float:
    mx.eval(fn())
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        mx.eval(fn())
        calls += 1
    return (time.perf_counter() - start) / calls


def layer_variants(k: int, n: int, m: int) -> dict[str, Callable[[], mx.array]]:
    w = mx.random.normal((n, k)) * 0.05
    x = mx.random.normal((m, k))
    variants = {"float32": lambda: x @ w.T}
    for bits in (8, 4):
        wq, s, b = mx.quantize(w, GROUP, bits)
        mx.eval(wq, s, b)
        variants[f"mlx q{bits}"] = lambda wq=wq, s=s, b=b, bits=bits: mx.quantized_matmul(
            x, wq, s, b, transpose=True, group_size=GROUP, bits=bits
        )
        packed = kernels().pack_quantized(wq, s, b, bits, GROUP)
        variants[f"ours q{bits}"] = lambda packed=packed, bits=bits: kernels().quantized_matmul(
            x, *packed, bits, GROUP, n, k
        )
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=ROWS)
    args = parser.parse_args()
    if kernels() is None:
        raise SystemExit("the CPU kernels are not built")
    names = list(layer_variants(64, 16, 1))
    print(f"# {kernels().isa()}, {kernels().num_threads()} threads; microseconds per call, group {GROUP}")
    print("| layer | M | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    totals: dict[int, dict[str, float]] = {m: dict.fromkeys(names, 0.0) for m in args.rows}
    for name, k, n, count in SHAPES:
        for m in args.rows:
            times = {v: seconds_per_call(fn) * 1e6 for v, fn in layer_variants(k, n, m).items()}
            for v, t in times.items():
                totals[m][v] += t * count
            print(f"| {name} {k}->{n} | {m} | " + " | ".join(f"{times[v]:.0f}" for v in names) + " |")
    print("\n# all linear layers of one forward (ms)")
    print("| M | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for m, by_variant in totals.items():
        print(f"| {m} | " + " | ".join(f"{by_variant[v] / 1e3:.1f}" for v in names) + " |")


if __name__ == "__main__":
    main()
