"""Quality of the CPU kernels on the default model: perplexity and greedy output of each dtype against
float32 on the pure-MLX path (MLX's own layers and attention read).

  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
    .venv/bin/python -m benchmarks.quality_check
The text is the first --tokens tokens of docs/architecture.md (in the repo: no download).
"""

import argparse
import math
from pathlib import Path

import mlx.core as mx
import numpy as np

from engine import cpu_kernels
from engine.model_loader import LoadedModel, load_model

TEXT = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics are",
]
NEAR_TIE = 0.1  # nats between the top two candidates where the streams may differ
DTYPES = ("auto", "float32", "q8", "q4", "q8-int8", "q4-int8")  # on the CPU kernels


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
    with cpu_kernels.disabled():
        reference = load_model(dtype="float32")
        reference_ppl, references = _pure_mlx_reference(reference, TEXT.read_text(), args)
    models = {dtype: load_model(dtype=dtype) for dtype in DTYPES}
    tokens = reference.tokenizer.encode(TEXT.read_text())[: args.tokens]
    print(f"# perplexity over {len(tokens)} tokens of {TEXT.name}")
    print("| dtype | perplexity | vs float32 on pure MLX |\n|---|---|---|")
    print(f"| float32, pure MLX | {reference_ppl:.3f} | |")
    for name, loaded in models.items():
        ppl = perplexity(loaded, tokens)
        print(f"| {name} ({loaded.dtype}) | {ppl:.3f} | {100 * (ppl / reference_ppl - 1):+.2f}% |")
    print(f"\n# greedy, {args.steps} tokens, vs float32 on pure MLX")
    for prompt in PROMPTS:
        verdicts = [f"{name}: {compare_streams(references[prompt], greedy(loaded, prompt, args.steps)[0])}"
                    for name, loaded in models.items()]
        print(f"- {prompt!r}: " + "; ".join(verdicts))


def _pure_mlx_reference(loaded: LoadedModel, text: str, args: argparse.Namespace) -> tuple[float, dict]:
    tokens = loaded.tokenizer.encode(text)[: args.tokens]
    return perplexity(loaded, tokens), {prompt: greedy(loaded, prompt, args.steps) for prompt in PROMPTS}

if __name__ == "__main__":
    main()
