"""Quality of the CPU-quantized default model: perplexity and greedy output of float32 vs q8 vs q4.

  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
    .venv/bin/python -m benchmarks.quality_check
The text is the first --tokens tokens of docs/architecture.md (in the repo: no download).
"""

import argparse
import math
from pathlib import Path

import mlx.core as mx
import numpy as np

from engine.model_loader import LoadedModel, load_model

TEXT = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics are",
]
NEAR_TIE = 0.1  # nats between the top two candidates where the streams may differ
DTYPES = ("float32", "q8", "q4")


def perplexity(loaded: LoadedModel, tokens: list[int]) -> float:
    logits = loaded.model(mx.array([tokens[:-1]]))[0].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logprobs, mx.array(tokens[1:])[:, None], axis=-1)
    return math.exp(-float(picked.mean()))


def greedy(loaded: LoadedModel, prompt: str, steps: int) -> tuple[list[int], list[float]]:
    """Greedy tokens and the top-2 logprob gap at each step."""
    tokens = loaded.tokenizer.encode(prompt)
    out, gaps = [], []
    for _ in range(steps):
        logits = np.asarray(loaded.model(mx.array([tokens + out]))[0, -1].astype(mx.float32))
        top2 = np.sort(logits)[-2:]
        out.append(int(logits.argmax()))
        gaps.append(float(top2[1] - top2[0]))
    return out, gaps


def compare_streams(reference: tuple[list[int], list[float]], other: list[int]) -> str:
    tokens, gaps = reference
    for i, (a, b) in enumerate(zip(tokens, other)):
        if a != b:
            verdict = "near-tie" if gaps[i] < NEAR_TIE else "MISMATCH"
            return f"diverges at {i} ({verdict}: float32 top-2 gap {gaps[i]:.3f})"
    return "equal"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()
    models = {dtype: load_model(dtype=dtype) for dtype in DTYPES}
    tokens = models["float32"].tokenizer.encode(TEXT.read_text())[: args.tokens]
    base = perplexity(models["float32"], tokens)
    print(f"# perplexity over {len(tokens)} tokens of {TEXT.name}")
    print("| dtype | perplexity | vs float32 |\n|---|---|---|")
    for dtype, loaded in models.items():
        ppl = perplexity(loaded, tokens)
        print(f"| {loaded.dtype} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f}% |")
    print(f"\n# greedy, {args.steps} tokens, vs float32")
    for prompt in PROMPTS:
        reference = greedy(models["float32"], prompt, args.steps)
        verdicts = [f"{d}: {compare_streams(reference, greedy(models[d], prompt, args.steps)[0])}" for d in DTYPES[1:]]
        print(f"- {prompt!r}: " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
