"""What a grammar costs per token: Sampler.__call__ at batch 16, free rows beside JSON-schema rows.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python -m benchmarks.mask_bench [--steps 40] [--batch 16]

Both runs drive the default model greedily through the ModelRunner on the same 16 chat prompts;
the runner's sampler is wrapped to evaluate its logits first (so the forward is not counted) and
time the call alone. The constrained run also times llguidance's mask fill per row. Timing stops
at the first step some row ends, so every timed step has the full batch. The figure is an upper
bound: in serving the fill runs while the forward that makes the logits is still computing.
"""

import argparse
import json
import statistics
import time

import mlx.core as mx
import numpy as np

from engine.guided import GrammarCompiler, GrammarConstraint
from engine.model_loader import LoadedModel, load_model
from engine.runner import ModelRunner
from engine.sampler import Sampler
from engine.sampling_params import SamplingParams
from engine.step_types import SeqStep, TokenOutput

BLOCK_SIZE = 16
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "city": {"type": "string"},
        "role": {"enum": ["engineer", "artist", "teacher", "doctor"]},
        "skills": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "projects": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
                "required": ["title", "year"],
            },
        },
    },
    "required": ["name", "age", "city", "role", "skills", "projects"],
}
PEOPLE = ("a chef", "a pilot", "a poet", "a nurse", "a farmer", "a judge", "a coder", "a singer")


class TimedSampler(Sampler):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def __call__(self, logits: mx.array, seqs: list[SeqStep]) -> list[TokenOutput]:
        mx.eval(logits)
        start = time.perf_counter()
        outputs = super().__call__(logits, seqs)
        self.seconds.append(time.perf_counter() - start)
        return outputs


class TimedConstraint:
    """A GrammarConstraint whose mask fills are timed."""

    def __init__(self, inner: GrammarConstraint, seconds: list[float]) -> None:
        self.inner = inner
        self.seconds = seconds

    @property
    def finished(self) -> bool:
        return self.inner.finished

    def next_token_bitmask(self) -> np.ndarray:
        start = time.perf_counter()
        mask = self.inner.next_token_bitmask()
        self.seconds.append(time.perf_counter() - start)
        return mask

    def accept(self, token_id: int) -> None:
        self.inner.accept(token_id)


def prompts(loaded: LoadedModel, batch: int) -> list[list[int]]:
    questions = [f"Describe {PEOPLE[i % len(PEOPLE)]} number {i} as a JSON object." for i in range(batch)]
    return [
        loaded.tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             return_dict=False)
        for q in questions
    ]


def run(runner: ModelRunner, loaded: LoadedModel, batch_prompts: list[list[int]],
        samplings: list[SamplingParams], steps: int) -> list[float]:
    """Sampler seconds of each step that had the whole batch, after the first (the prefill's)."""
    sampler = runner.sampler = TimedSampler()
    blocks_per_seq = -(-(max(map(len, batch_prompts)) + steps) // BLOCK_SIZE)
    outputs: list[list[int]] = [[] for _ in batch_prompts]
    for _ in range(steps):
        seqs = []
        for i, (prompt, sampling) in enumerate(zip(batch_prompts, samplings)):
            history = prompt + outputs[i]
            start = 0 if not outputs[i] else len(history) - 1
            end = len(history)
            table = list(range(i * blocks_per_seq, i * blocks_per_seq + -(-end // BLOCK_SIZE)))
            seqs.append(SeqStep(i, history[start:], start, table, sampling, True, len(prompt), history))
        for out in runner.step(seqs):
            outputs[out.seq_id].append(out.token_id)
        if any(o[-1] in loaded.eos_token_ids for o in outputs):
            break
    return sampler.seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    loaded = load_model(None)
    batch_prompts = prompts(loaded, args.batch)
    blocks_per_seq = -(-(max(map(len, batch_prompts)) + args.steps) // BLOCK_SIZE)
    runner = ModelRunner(loaded, num_blocks=args.batch * blocks_per_seq, block_size=BLOCK_SIZE)
    compiler = GrammarCompiler(loaded.tokenizer, loaded.eos_token_ids)
    lark = "start: %json " + json.dumps(SCHEMA)
    compiler.compile(lark)  # builds the LLTokenizer outside the timing

    greedy = SamplingParams(max_tokens=args.steps, temperature=0.0)
    free = run(runner, loaded, batch_prompts, [greedy] * args.batch, args.steps)
    fills: list[float] = []
    constrained = [SamplingParams(max_tokens=args.steps, temperature=0.0,
                                  constraint=TimedConstraint(compiler.compile(lark), fills))
                   for _ in range(args.batch)]
    masked = run(runner, loaded, batch_prompts, constrained, args.steps)

    free_ms, masked_ms = statistics.median(free) * 1e3, statistics.median(masked) * 1e3
    print(f"batch {args.batch}, default model, medians over {len(free)} free and {len(masked)} "
          "constrained steps")
    print(f"  Sampler.__call__, free rows:        {free_ms:.2f} ms")
    print(f"  Sampler.__call__, JSON-schema rows: {masked_ms:.2f} ms")
    print(f"  overhead per token (whole batch):   {masked_ms - free_ms:.2f} ms")
    print(f"  mask fill per row: median {statistics.median(fills) * 1e3:.3f} ms, "
          f"p90 {np.percentile(fills, 90) * 1e3:.3f} ms, max {max(fills) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
