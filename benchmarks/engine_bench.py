"""Decode throughput of the paged runner beside mlx-lm's dense batched forward (same model and dtype).

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python -m benchmarks.engine_bench [--quick]

For each case (batch x context, and 16 rows sharing one prefix) the contexts are filled with random K/V
(decode timing does not depend on the values), then a few greedy decode steps are timed, all at the same
context length, in repeats that alternate between the paged runner and the dense baselines; each
reports the median of its repeats. Prints a table and writes benchmarks/results/engine_bench.json.
"""

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx

from benchmarks.dense_baseline import CACHE_KINDS, make_filled_caches, time_dense_decode
from engine.blas import active_blas
from engine.model_loader import LoadedModel, load_model
from engine.runner import ModelRunner, activation_dtype
from engine.sampling_params import SamplingParams
from engine.step_types import SeqStep

RESULTS = Path(__file__).parent / "results" / "engine_bench.json"
BLOCK_SIZE = 16
GREEDY = SamplingParams(temperature=0.0)


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
    paged_tok_s: float
    dense_kv_tok_s: float
    dense_batch_tok_s: float
    ratio_vs_dense_kv: float
    ratio_vs_dense_batch: float
    runs_per_seq: float


def cases(quick: bool) -> list[Case]:
    """The serving sweep's concurrencies at a short context (the raw ceiling the servers are compared with);
    in the full run also batch 16 at a long context, alone and sharing a prefix."""
    if quick:
        return [Case(batch, 256) for batch in (1, 4, 16)]
    return [Case(batch, 256) for batch in (1, 4, 16, 32)] + [Case(16, 2048), Case(16, 2048, shared_prefix=True)]


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


def bench_case(loaded: LoadedModel, case: Case, num_steps: int, repeats: int) -> Result:
    vocab_size = loaded.tokenizer.vocab_size
    steps = decode_steps(case, vocab_size)
    num_blocks = max(max(step.block_table) for step in steps) + 1
    runner = ModelRunner(loaded, num_blocks=num_blocks, block_size=BLOCK_SIZE)
    fill_pool_randomly(runner, num_blocks)
    timers = {"paged": lambda n: time_paged_decode(runner, steps, n)}
    for kind in CACHE_KINDS:
        caches = make_filled_caches(
            loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, case.batch, case.context,
            activation_dtype(loaded), kind,
        )
        timers[kind] = lambda n, caches=caches: time_dense_decode(
            loaded.model, caches, case.batch, n, vocab_size
        )
    tok_s = interleaved_median_tok_s(timers, case.batch, num_steps, repeats)
    return Result(
        case.batch, case.context, case.shared_prefix, tok_s["paged"], tok_s["kv"], tok_s["batch"],
        tok_s["paged"] / tok_s["kv"], tok_s["paged"] / tok_s["batch"],
        statistics.fmean(runner.last_step_runs),
    )


def print_row(result: Result) -> None:
    label = f"{result.batch:>3} x {result.context:>5}{' shared' if result.shared_prefix else '       '}"
    print(
        f"{label}  paged {result.paged_tok_s:7.1f}  dense KVCache {result.dense_kv_tok_s:7.1f}"
        f"  BatchKVCache {result.dense_batch_tok_s:7.1f}  ratio {result.ratio_vs_dense_kv:5.2f}x"
        f" / {result.ratio_vs_dense_batch:5.2f}x  runs/seq {result.runs_per_seq:.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and timed steps")
    parser.add_argument("--model", default=None, help="model spec (default: the bundled SmolLM2)")
    args = parser.parse_args()
    # Many short repeats: their median shrugs off the other processes' bursts on this shared machine.
    num_steps, repeats = (2, 3) if args.quick else (2, 5)

    loaded = load_model(args.model)
    print(f"{loaded.model_id} ({loaded.dtype}), {active_blas()}, MLX {mx.__version__}, "
          f"{num_steps} decode steps x {repeats} repeats (median), tok/s:", flush=True)
    results = []
    for case in cases(args.quick):
        results.append(bench_case(loaded, case, num_steps, repeats))
        print_row(results[-1])

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "model": loaded.model_id,
        "dtype": loaded.dtype,
        "blas": active_blas(),
        "mlx": mx.__version__,
        "machine": platform.processor() or platform.machine(),
        "decode_steps": num_steps,
        "repeats": repeats,
        "results": [asdict(result) for result in results],
    }, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
