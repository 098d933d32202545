"""Per-layer and whole-model timings of the CPU quantized matmuls (exact: float32 activations; int8)
against float32 and MLX's own quantized_matmul.

Run with OpenBLAS for the float32 baseline:
  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
    .venv/bin/python -m benchmarks.quantized_matmul_bench
"""

import argparse
import math
import time
from collections.abc import Callable

import mlx.core as mx

from engine.cpu_kernels import kernels
from engine.quantized_linear import EXACT, INT8, CpuQuantizedLinear

# SmolLM2-135M as served: (name, K, N, layers per model); gate and up run as one projection.
SHAPES = [
    ("q/o_proj", 576, 576, 60),
    ("k/v_proj", 576, 192, 60),
    ("gate+up", 576, 3072, 30),
    ("down", 1536, 576, 30),
    ("lm_head", 576, 49152, 1),
]
ROWS = [1, 16, 32, 512]
GROUP = 32  # the Q4_1 GGUF's
CALLS = 8  # independent calls per evaluation, as a forward issues them: no eval round trip each


def seconds_per_call(fn: Callable[[mx.array], mx.array], x: mx.array, calls: int, min_time: float = 0.2) -> float:
    inputs = [x + i for i in range(calls)]
    mx.eval(inputs, fn(inputs[0]))
    evaluations, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        mx.eval([fn(a) for a in inputs])
        evaluations += 1
    return (time.perf_counter() - start) / (evaluations * calls)


def layer_variants(k: int, n: int) -> dict[str, Callable[[mx.array], mx.array]]:
    w = mx.random.normal((n, k)) * 0.05
    variants = {"float32": lambda x: x @ w.T}
    for bits in (8, 4):
        wq, s, b = mx.quantize(w, GROUP, bits)
        mx.eval(wq, s, b)
        variants[f"mlx q{bits}"] = lambda x, wq=wq, s=s, b=b, bits=bits: mx.quantized_matmul(
            x, wq, s, b, transpose=True, group_size=GROUP, bits=bits
        )
        for kernel in (EXACT, INT8):
            layer = CpuQuantizedLinear(wq, s, b, bits, GROUP, kernel)
            variants[f"{'exact' if kernel is EXACT else 'int8'} q{bits}"] = layer
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=ROWS)
    args = parser.parse_args()
    if kernels() is None:
        raise SystemExit("the CPU kernels are not built")
    names = list(layer_variants(64, 16))
    print(f"# {kernels().isa()}, {kernels().num_threads()} threads; microseconds per call, group {GROUP}")
    print("| layer | M | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    totals: dict[int, dict[str, float]] = {m: dict.fromkeys(names, 0.0) for m in args.rows}
    for name, k, n, count in SHAPES:
        variants = layer_variants(k, n)
        for m in args.rows:
            x = mx.random.normal((m, k))
            times = {}
            for v, fn in variants.items():
                if v.startswith("mlx") and n * m > 2**22:  # seconds a call: left out
                    times[v] = math.nan
                else:
                    times[v] = seconds_per_call(fn, x, 1 if n * m > 2**22 else CALLS) * 1e6
                totals[m][v] += times[v] * count
            print(f"| {name} {k}->{n} | {m} | " + " | ".join(_cell(times[v]) for v in names) + " |", flush=True)
    print("\n# all linear layers of one forward (ms)")
    print("| M | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for m, by_variant in totals.items():
        print(f"| {m} | " + " | ".join(_cell(by_variant[v] / 1e3, ".1f") for v in names) + " |")


def _cell(value: float, spec: str = ".0f") -> str:
    return "-" if math.isnan(value) else format(value, spec)


if __name__ == "__main__":
    main()
