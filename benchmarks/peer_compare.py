"""The CPU-kernels issue's two figures against any running OpenAI-compatible servers, side by side
in one run: decode throughput at concurrency 16 (48 distinct short prompts, 64 tokens each) and the
time to first token of one cold long prompt (by default ~12k tokens, Claude Code's first request).

    .venv/bin/python -m benchmarks.peer_compare --server pagedmlx=http://127.0.0.1:8081 \\
        --server llama.cpp=http://127.0.0.1:8090 [--prompt-words 11250] [--parts decode,prefill]

Start each server beforehand (the README's Benchmarks section has the flags used); they are measured
one after the other, the others idle. Prints a table.
"""

import argparse
import asyncio
import math
import random

from benchmarks.load_generator import client_session
from benchmarks.prefill_interference import cold_long_prompt
from benchmarks.sse_clients import completion_sender
from benchmarks.workloads import SweepPoint, run_sweep_point

DECODE = SweepPoint(concurrency=16, num_requests=48)
IGNORE_EOS = {"ignore_eos": True}


async def cold_prompt_ttft_s(base_url: str, model: str, words: int, seed: int) -> tuple[float, int]:
    """Seconds to the first token of a prompt no server has seen (seeded words), and its tokens."""
    prompt = cold_long_prompt(words, random.Random(seed))
    payload = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "stream": True}
    async with client_session(1) as session:
        record = await completion_sender(base_url)(session, payload)
    if not record.ok:
        raise RuntimeError(f"{base_url}: {record.error}")
    return record.chunk_times_s[0], record.prompt_tokens


async def measure(name: str, base_url: str, words: int, seed: int, parts: set[str]) -> dict:
    row = {"server": name, "output_tok_s": math.nan, "cold_ttft_s": math.nan, "prompt_tokens": 0}
    if "decode" in parts:
        row["output_tok_s"] = (await run_sweep_point(base_url, "default", DECODE, IGNORE_EOS, name))["output_throughput"]
    if "prefill" in parts:
        row["cold_ttft_s"], row["prompt_tokens"] = await cold_prompt_ttft_s(base_url, "default", words, seed)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="append", required=True, metavar="NAME=URL")
    parser.add_argument("--prompt-words", type=int, default=11250, help="words of the cold prompt (~12k tokens)")
    parser.add_argument("--parts", default="decode,prefill", help="which figures: decode, prefill or both")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| server | output tok/s at c=16 | cold prompt tokens | TTFT |")
    print("|---|---|---|---|")
    for spec in args.server:
        name, url = spec.split("=", 1)
        row = asyncio.run(measure(name, url.rstrip("/"), args.prompt_words, args.seed, set(args.parts.split(","))))
        print(f"| {row['server']} | {row['output_tok_s']:.1f} | {row['prompt_tokens']} | {row['cold_ttft_s']:.1f} s |",
              flush=True)


if __name__ == "__main__":
    main()
