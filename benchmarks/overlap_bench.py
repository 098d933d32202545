"""What overlapping the host's work for step N+1 with step N's compute would buy (vLLM V1's async
scheduling), measured raw, without the scheduler: greedy decode of a batch, serial (runner.step,
which syncs its tokens at the end of every step) beside overlapped (step N+1's graph is built and
dispatched from step N's lazy argmax before step N's tokens come back to the host).

    python -m benchmarks.overlap_bench [--steps 32] [--repeats 3]   -> stdout

The overlapped loop is an upper bound: it does no scheduling, stop checks or delivery at all.
"""

import argparse
import random
import statistics
import time

from engine.blas import ensure_blas_preloaded

BLOCK = 16
PROMPT_LEN = 64


def overlapped_decode_tok_s(runner, prompts: list[list[int]], steps: int) -> float:
    import mlx.core as mx

    from engine.paged_cache import build_layout, make_caches
    from engine.sampling_params import SamplingParams
    from engine.step_types import SeqStep

    batch = len(prompts)
    per_seq = -(-(PROMPT_LEN + steps + 4) // BLOCK)
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(batch)]
    greedy = SamplingParams(max_tokens=steps + 4, temperature=0.0)
    lengths = []
    first = []
    for i, prompt in enumerate(prompts):
        table = tables[i][: -(-len(prompt) // BLOCK)]
        first.append(runner.step([SeqStep(i, prompt, 0, table, greedy, True, len(prompt), prompt)])[0].token_id)
        lengths.append(len(prompt) + 1)

    def launch(tokens: mx.array) -> mx.array:
        layout = build_layout([tables[i][: -(-lengths[i] // BLOCK)] for i in range(batch)],
                              [length - 1 for length in lengths], 1, BLOCK)
        hidden = runner._body(tokens[:, None], cache=make_caches(runner.pool, layout))
        sampled = mx.argmax(runner._head(hidden[:, -1, :]).astype(mx.float32), axis=-1)
        mx.async_eval(sampled, runner.pool.keys, runner.pool.values)
        for i in range(batch):
            lengths[i] += 1
        return sampled

    in_flight = launch(launch(mx.array(first)))  # warm-up
    in_flight.tolist()
    start = time.perf_counter()
    for _ in range(steps):
        following = launch(in_flight)  # built while in_flight still computes
        in_flight.tolist()  # its tokens reach the host now
        in_flight = following
    in_flight.tolist()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ensure_blas_preloaded()

    from benchmarks.scheduler_bench import blocks_per_sequence, raw_decode_tok_s, random_prompt
    from engine.model_loader import load_model
    from engine.runner import ModelRunner

    loaded = load_model()
    vocab = len(loaded.tokenizer)
    rng = random.Random(0)
    for batch in (1, 16, 32):
        prompts = [random_prompt(rng, PROMPT_LEN, vocab) for _ in range(batch)]
        serial, overlapped = [], []
        for _ in range(args.repeats):
            num_blocks = batch * blocks_per_sequence(args.steps + 4)
            serial.append(raw_decode_tok_s(ModelRunner(loaded, num_blocks, BLOCK), prompts, args.steps))
            overlapped.append(overlapped_decode_tok_s(ModelRunner(loaded, num_blocks, BLOCK), prompts,
                                                      args.steps))
        ratio = statistics.median(o / s for o, s in zip(overlapped, serial))
        print(f"batch {batch}: serial {statistics.median(serial):.1f} tok/s, overlapped "
              f"{statistics.median(overlapped):.1f} tok/s, ratio {ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
