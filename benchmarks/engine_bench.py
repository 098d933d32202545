"""Decode throughput of the paged runner with its CPU kernels, beside the same runner on the pure-MLX
path (float32 weights, MLX's attention read) and mlx-lm's dense batched forward (float32, same model).

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python -m benchmarks.engine_bench [--quick]

For each case (batch x context, and 16 rows sharing one prefix) the contexts are filled with random K/V
(decode timing does not depend on the values), then a few greedy decode steps are timed, all at the same
context length, in repeats that alternate between the runners and the dense baselines; each reports
the median of its repeats. The dense baselines run up to 2,048 tokens of context (beyond, their caches
and ours would not fit in memory together). Then a 512-token prefill chunk at the end of an 8k
context, kernels vs pure MLX. Prints tables and writes benchmarks/results/engine_bench.json.
"""

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx

from benchmarks.dense_baseline import CACHE_KINDS, make_filled_caches, time_dense_decode
from engine import cpu_kernels
from engine.blas import active_blas
from engine.model_loader import LoadedModel, load_model
from engine.runner import ModelRunner, activation_dtype
from engine.sampling_params import SamplingParams
from engine.step_types import SeqStep

RESULTS = Path(__file__).parent / "results" / "engine_bench.json"
BLOCK_SIZE = 16
GREEDY = SamplingParams(temperature=0.0)
DENSE_MAX_CONTEXT = 2048
PREFILL_CHUNK, PREFILL_CONTEXT = 512, 8192


@dataclass(frozen=True)
class Case:
    batch: int
    context: int
    shared_prefix: bool = False


@dataclass
class Result:
    batch: int
    context: int
    shared_prefix: bool
    paged_tok_s: float  # our defaults: the CPU kernels where they are built
    pure_mlx_tok_s: float  # the same runner on float32 weights and MLX's attention read
    kernel_speedup: float
    dense_kv_tok_s: float | None
    dense_batch_tok_s: float | None
    ratio_vs_dense_kv: float | None
    ratio_vs_dense_batch: float | None
    runs_per_seq: float


@dataclass
class PrefillResult:
    chunk: int
    context: int
    kernels_s: float
    pure_mlx_s: float
    kernel_speedup: float


@dataclass(frozen=True)
class Engines:
    """The model as served by default (the CPU kernels where built) and on the pure-MLX path."""

    kernels: LoadedModel
    pure_mlx: LoadedModel

    def runners(self, num_blocks: int) -> tuple[ModelRunner, ModelRunner]:
        """A runner of each, both reading one pool (they compute in the same dtype)."""
        ours = ModelRunner(self.kernels, num_blocks=num_blocks, block_size=BLOCK_SIZE)
        pure = ModelRunner(self.pure_mlx, num_blocks=num_blocks, block_size=BLOCK_SIZE, on_demand=True)
        pure.pool = ours.pool
        return ours, pure


def pure_mlx(run: Callable[[int], float]) -> Callable[[int], float]:
    """`run` with the CPU kernels turned off."""
    def timer(n: int) -> float:
        with cpu_kernels.disabled():
            return run(n)
    return timer


def cases(quick: bool, sweep: bool) -> list[Case]:
    """The serving sweep's concurrencies at a short context (the raw ceiling the servers are compared with),
    then (unless `sweep`) batch 1 / 16 / 32 at 2k and 8k of context (32 x 8k would not fit here), and 16
    rows sharing a 2k prefix."""
    if quick:
        return [Case(batch, 256) for batch in (1, 4, 16)]
    short = [Case(batch, 256) for batch in (1, 4, 16, 32)]
    if sweep:
        return short
    return (short + [Case(batch, 2048) for batch in (1, 16, 32)] + [Case(16, 2048, shared_prefix=True)]
            + [Case(batch, 8192) for batch in (1, 16)])


def decode_steps(case: Case, vocab_size: int) -> list[SeqStep]:
    """One decode row per sequence at position `context`. Tables are contiguous (one run each, as the
    block manager tries to keep them); shared rows alias the prefix blocks and own their last block."""
    context_blocks = case.context // BLOCK_SIZE
    blocks_per_seq = context_blocks + 1
    steps = []
    for row in range(case.batch):
        if case.shared_prefix:
            table = list(range(context_blocks)) + [context_blocks + row]
        else:
            table = list(range(row * blocks_per_seq, (row + 1) * blocks_per_seq))
        steps.append(
            SeqStep(
                seq_id=row,
                token_ids=[(row * 7919) % vocab_size],
                start_pos=case.context,
                block_table=table,
                sampling=GREEDY,
                sample=True,
                prompt_len=case.context,
                history=[],
            )
        )
    return steps


def fill_pool_randomly(runner: ModelRunner, num_blocks: int) -> None:
    pool = runner.pool
    slots = mx.arange(num_blocks * BLOCK_SIZE).astype(mx.uint32)
    draw = mx.random.normal((1, pool.num_kv_heads, num_blocks * BLOCK_SIZE, pool.head_dim))
    for layer in range(pool.num_layers):
        pool.write(layer, slots, draw, draw)
        mx.eval(pool.keys[layer], pool.values[layer])


def time_paged_decode(runner: ModelRunner, steps: list[SeqStep], num_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(num_steps):
        runner.step(steps)
    return time.perf_counter() - start


def interleaved_median_tok_s(timers: dict, batch: int, num_steps: int, repeats: int) -> dict[str, float]:
    """Median tok/s per timer over `repeats` timings of `num_steps` steps. The repeats of the timers
    alternate, so that load from other processes on this shared machine weighs on all of them alike."""
    for run in timers.values():
        run(2)  # warm-up: first calls allocate buffers
    samples = {name: [] for name in timers}
    for _ in range(repeats):
        for name, run in timers.items():
            samples[name].append(batch * num_steps / run(num_steps))
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_case(engines: Engines, case: Case, num_steps: int, repeats: int) -> Result:
    loaded = engines.pure_mlx
    vocab_size = loaded.tokenizer.vocab_size
    steps = decode_steps(case, vocab_size)
    num_blocks = max(max(step.block_table) for step in steps) + 1
    ours, pure = engines.runners(num_blocks)
    fill_pool_randomly(ours, num_blocks)
    timers = {"paged": lambda n: time_paged_decode(ours, steps, n),
              "pure": pure_mlx(lambda n: time_paged_decode(pure, steps, n))}
    if case.context <= DENSE_MAX_CONTEXT:
        for kind in CACHE_KINDS:
            caches = make_filled_caches(
                loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, case.batch, case.context,
                activation_dtype(loaded), kind,
            )
            timers[kind] = lambda n, caches=caches: time_dense_decode(
                loaded.model, caches, case.batch, n, vocab_size
            )
    tok_s = interleaved_median_tok_s(timers, case.batch, num_steps, repeats)
    dense_kv, dense_batch = tok_s.get("kv"), tok_s.get("batch")
    return Result(
        case.batch, case.context, case.shared_prefix, tok_s["paged"], tok_s["pure"],
        tok_s["paged"] / tok_s["pure"], dense_kv, dense_batch,
        dense_kv and tok_s["paged"] / dense_kv, dense_batch and tok_s["paged"] / dense_batch,
        statistics.fmean(ours.last_step_runs),
    )


def bench_prefill(engines: Engines, repeats: int) -> PrefillResult:
    """Seconds of one 512-token chunk whose context ends at 8k, on each path."""
    start = PREFILL_CONTEXT - PREFILL_CHUNK
    num_blocks = PREFILL_CONTEXT // BLOCK_SIZE
    ours, pure = engines.runners(num_blocks)
    fill_pool_randomly(ours, num_blocks)
    vocab_size = engines.pure_mlx.tokenizer.vocab_size
    chunk = [SeqStep(seq_id=0, token_ids=[t % vocab_size for t in range(PREFILL_CHUNK)], start_pos=start,
                     block_table=list(range(num_blocks)), sampling=GREEDY, sample=True,
                     prompt_len=PREFILL_CONTEXT, history=[])]
    timers = {"kernels": lambda n: time_paged_decode(ours, chunk, n),
              "pure": pure_mlx(lambda n: time_paged_decode(pure, chunk, n))}
    seconds = {name: PREFILL_CHUNK / tok_s
               for name, tok_s in interleaved_median_tok_s(timers, PREFILL_CHUNK, 1, repeats).items()}
    return PrefillResult(PREFILL_CHUNK, PREFILL_CONTEXT, seconds["kernels"], seconds["pure"],
                         seconds["pure"] / seconds["kernels"])


def print_row(result: Result) -> None:
    label = f"{result.batch:>3} x {result.context:>5}{' shared' if result.shared_prefix else '       '}"
    dense = ""
    if result.dense_kv_tok_s is not None:
        dense = (f"  dense KVCache {result.dense_kv_tok_s:7.1f}  BatchKVCache {result.dense_batch_tok_s:7.1f}"
                 f"  ratio {result.ratio_vs_dense_kv:5.2f}x / {result.ratio_vs_dense_batch:5.2f}x")
    print(f"{label}  paged {result.paged_tok_s:7.1f}  pure MLX {result.pure_mlx_tok_s:7.1f} "
          f"({result.kernel_speedup:4.2f}x){dense}  runs/seq {result.runs_per_seq:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and timed steps")
    parser.add_argument("--sweep", action="store_true",
                        help="only the serving sweep's batches at 256 tokens, no prefill (make bench's run)")
    parser.add_argument("--model", default=None, help="model spec (default: the bundled SmolLM2)")
    args = parser.parse_args()
    # Many short repeats: their median shrugs off the other processes' bursts on this shared machine.
    num_steps, repeats = (2, 3) if args.quick else (2, 5)

    with cpu_kernels.disabled():
        pure = load_model(args.model, "float32")
    engines = Engines(load_model(args.model), pure)
    print(f"{engines.kernels.model_id}: ours {engines.kernels.dtype} with {cpu_kernels.describe()}, "
          f"pure MLX and dense float32; {active_blas()}, MLX {mx.__version__}, "
          f"{num_steps} decode steps x {repeats} repeats (median), tok/s:", flush=True)
    results = []
    for case in cases(args.quick, args.sweep):
        results.append(bench_case(engines, case, num_steps, repeats))
        print_row(results[-1])
    prefill = bench_prefill(engines, repeats) if not (args.quick or args.sweep) else None
    if prefill:
        print(f"prefill chunk of {prefill.chunk} ending at {prefill.context}: kernels {prefill.kernels_s:.2f} s,"
              f" pure MLX {prefill.pure_mlx_s:.2f} s ({prefill.kernel_speedup:.2f}x)", flush=True)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "model": engines.kernels.model_id,
        "dtype": engines.kernels.dtype,
        "kernels": cpu_kernels.describe(),
        "blas": active_blas(),
        "mlx": mx.__version__,
        "machine": platform.processor() or platform.machine(),
        "decode_steps": num_steps,
        "repeats": repeats,
        "results": [asdict(result) for result in results],
        "prefill": prefill and asdict(prefill),
    }, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
