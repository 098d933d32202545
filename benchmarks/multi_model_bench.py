"""Two models in one server (issue 20): load times, the first token of a request that triggers a
load, and throughput of both models at once beside each alone, all in one run.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python -m benchmarks.multi_model_bench [--streams 4] [--tokens 64]

Both models are the default model under two names (a and b), so each alone is the same work. A
first server holds both (--memory-gb 4); a second's budget (0.6 GB) holds one at a time, so every
switch unloads one and loads the other. Writes benchmarks/results/multi_model.json.
"""

import argparse
import concurrent.futures
import json
import statistics
import time
import urllib.request

import openai

from benchmarks.servers import ServerProcess, pagedmlx_kind
from benchmarks.summary import RESULTS_DIR

TWO_MODELS = ["--model", "a=default", "--model", "b=default", "--max-model-len", "2048",
              "--kv-cache-gb", "0.25", "--disk-cache-gb", "0"]
PROMPT = "Write a short story about a lighthouse keeper and a storm."


def stream_tokens(base_url: str, model: str, tokens: int) -> tuple[float, int]:
    """(seconds to the first token, tokens) of one streamed greedy completion."""
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=600)
    started, first, count = time.monotonic(), None, 0
    for chunk in client.chat.completions.create(
            model=model, max_tokens=tokens, temperature=0, stream=True,
            extra_body={"ignore_eos": True}, messages=[{"role": "user", "content": PROMPT}]):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.monotonic() - started
            count += 1
    return first or 0.0, count


def throughput(base_url: str, models: list[str], streams: int, tokens: int) -> float:
    """Generated tokens per second of `streams` concurrent streams on each of `models`."""
    jobs = [model for model in models for _ in range(streams)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        counts = [count for _, count in pool.map(lambda m: stream_tokens(base_url, m, tokens), jobs)]
    return sum(counts) / (time.monotonic() - started)


def load_seconds(base_url: str) -> dict[str, list[float]]:
    """Each model's load times so far, from the log-free /metrics sums and counts."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("pagedmlx:model_load_seconds_sum"):
            name = line.split('model_name="')[1].split('"')[0]
            sums[name] = float(line.split()[-1])
    return {name: [value] for name, value in sums.items()}


def state_of(base_url: str, model: str) -> str:
    with urllib.request.urlopen(base_url + "/v1/models", timeout=30) as response:
        cards = json.loads(response.read())["data"]
    return next(card["state"] for card in cards if card["id"] == model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams per model")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement")
    args = parser.parse_args()
    results: dict = {"streams_per_model": args.streams, "tokens": args.tokens}
    both = pagedmlx_kind("pagedmlx-two-models", [*TWO_MODELS, "--memory-gb", "4"])
    with ServerProcess(both) as server:
        url = server.base_url
        results["start_load_s_a"] = load_seconds(url)["a"][0]  # the first load in the process
        ttft_loading, _ = stream_tokens(url, "b", 8)              # b loads on this request
        results["ttft_triggering_load_s"] = ttft_loading
        results["first_load_s_b"] = load_seconds(url)["b"][0]
        results["ttft_loaded_s"] = statistics.median(stream_tokens(url, "b", 8)[0]
                                                     for _ in range(args.rounds))
        rows = {"a alone": ["a"], "b alone": ["b"], "a and b at once": ["a", "b"]}
        figures = {label: [] for label in rows}
        for _ in range(args.rounds):  # interleaved, so noise hits every row alike
            for label, models in rows.items():
                figures[label].append(throughput(url, models, args.streams, args.tokens))
        results["throughput_tok_s"] = {label: statistics.median(v) for label, v in figures.items()}
    one_at_a_time = pagedmlx_kind("pagedmlx-one-at-a-time", [*TWO_MODELS, "--memory-gb", "0.6"])
    with ServerProcess(one_at_a_time) as server:
        url = server.base_url
        swaps = []
        for model in ("b", "a") * args.rounds:
            ttft, _ = stream_tokens(url, model, 8)
            swaps.append(ttft)
        assert state_of(url, "a") == "loaded" and state_of(url, "b") == "unloaded"
        results["ttft_after_swap_s"] = statistics.median(swaps)
        sums = load_seconds(url)
        results["reload_mean_s"] = (sums["a"][0] + sums["b"][0]) / (2 * args.rounds + 1)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "multi_model.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
