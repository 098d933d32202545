"""Through a running server: a cold long prompt's time to first token alone, then while three clients
keep sending short cold prompts back to back and a fourth keeps sending cached turns (a ~1k-token prefix it sent
before plus a few new tokens); each client names itself in x-session-id.

    pagedmlx serve &   # default settings
    python -m benchmarks.sessions_bench [--port 8081] [--long-tokens 4900]
        -> benchmarks/results/sessions_bench.json

Prompts are token ids on /v1/completions, so their lengths are exact; max_tokens 1 makes a
request's latency its time to first token.
"""

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

import aiohttp

RESULTS = Path(__file__).parent / "results" / "sessions_bench.json"
VOCAB = (100, 49_000)


def tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(*VOCAB) for _ in range(n)]


async def latency(http: aiohttp.ClientSession, url: str, prompt: list[int], session: str) -> float:
    body = {"model": "m", "prompt": prompt, "max_tokens": 1, "temperature": 0}
    start = time.perf_counter()
    async with http.post(url, json=body, headers={"x-session-id": session}) as reply:
        assert reply.status == 200, await reply.text()
        await reply.read()
    return time.perf_counter() - start


def quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(values), "p50_s": quantile(ordered, 0.5), "p99_s": quantile(ordered, 0.99),
            "max_s": ordered[-1]}


async def run(port: int, long_tokens: int, prefix_tokens: int, short_tokens: int,
              give_up_s: float) -> dict:
    url = f"http://127.0.0.1:{port}/v1/completions"
    rng = random.Random()  # fresh tokens every run: nothing of an earlier run may hit the cache
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        prefix = tokens(rng, prefix_tokens)
        await latency(http, url, prefix + tokens(rng, 8), "cached")  # the cached client's first turn
        alone = await latency(http, url, tokens(rng, long_tokens), "long")
        print(f"long prompt alone: {alone:.1f} s", flush=True)
        done = asyncio.Event()
        short, cached = [], []

        async def short_client(index: int) -> None:
            while not done.is_set():
                short.append(await latency(http, url, tokens(rng, short_tokens), f"short-{index}"))

        async def cached_client() -> None:
            while not done.is_set():
                cached.append(await latency(http, url, prefix + tokens(rng, 40), "cached"))

        async def long_client() -> float | None:
            await asyncio.sleep(2.0)  # the others are busy first
            try:
                return await asyncio.wait_for(latency(http, url, tokens(rng, long_tokens), "long"),
                                              give_up_s)
            except asyncio.TimeoutError:
                return None  # starved
            finally:
                done.set()

        busy, *_ = await asyncio.gather(long_client(), cached_client(),
                                        *(short_client(i) for i in range(3)))
    if busy is None:
        print(f"long prompt busy: no first token within {give_up_s:.0f} s", flush=True)
    else:
        print(f"long prompt busy: {busy:.1f} s ({busy / alone:.2f}x)", flush=True)
    return {"long_tokens": long_tokens, "prefix_tokens": prefix_tokens, "short_tokens": short_tokens,
            "long_alone_s": alone, "long_busy_s": busy, "gave_up_after_s": give_up_s,
            "long_ratio": None if busy is None else busy / alone,
            "cached_turn_ttft": summary(cached), "short_prompt_ttft": summary(short)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--long-tokens", type=int, default=4900)
    parser.add_argument("--prefix-tokens", type=int, default=1000)
    parser.add_argument("--short-tokens", type=int, default=200)
    parser.add_argument("--give-up-s", type=float, default=900,
                        help="how long the long prompt waits beside the others before it counts as starved")
    parser.add_argument("--label", default="", help="stored with the result (e.g. the commit)")
    args = parser.parse_args()
    result = asyncio.run(run(args.port, args.long_tokens, args.prefix_tokens, args.short_tokens,
                             args.give_up_s))
    result["label"] = args.label
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
