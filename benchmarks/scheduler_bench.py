"""What the scheduler and engine loop cost, and what the prefix cache and the step budget buy (no HTTP).

- decode: aggregate decode tok/s through EngineLoop at 1, 4, 16, 32 concurrent requests, beside the raw
  batched forward (runner.step on the same batch, no scheduler) in the same run, in --repeats pairs
  (medians), with the engine loop's host time per step (its step minus runner.step); target >= 1.0x.
- ttft: time to first token of a request whose long prefix is cached vs the same request cold;
  target <= 10%.
- fairness: 4 sessions: one sends a cold long prompt, three keep sending cached turns (a cached prefix
  plus a few new tokens) and short cold prompts until it has its first token. Each session's TTFT
  p50/p99, and the long prompt's TTFT beside its TTFT alone; targets <= 2.5x alone, cached turns <= 4 s.
- disk_writer: decode tok/s at 16 streams with the disk tier's write-behind on vs off (a fresh engine
  each, in --repeats pairs, new prompts each run so every block is new to disk), and the engine
  thread's time in write_behind (copying blocks out, queueing) per step of the tier-on runs, beside
  the tier-off step time: the pairs' tok/s move by more than the tier costs on a shared machine.
  Target: the tier adds <= 5% to the step time.

The gaps of decoding streams while a cold long prompt prefills are measured through the server, by
benchmarks/serving_bench.py.

    python -m benchmarks.scheduler_bench [--quick]     -> benchmarks/results/scheduler_bench.json
"""

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from engine.blas import active_blas, ensure_blas_preloaded
from engine.sampling_params import SamplingParams
from engine.step_types import SeqStep
from scheduler.config import SchedulerConfig
from scheduler.disk_tier import DiskTier
from scheduler.engine_loop import EngineLoop

if TYPE_CHECKING:  # imported in main(), after OpenBLAS is preloaded
    from engine.runner import ModelRunner

RESULTS = Path(__file__).parent / "results" / "scheduler_bench.json"
BLOCK = 16
PROMPT_LEN = 64
GREEDY_DECODE = {"temperature": 0.0}


def random_prompt(rng: random.Random, length: int, vocab: int) -> list[int]:
    return [rng.randrange(100, vocab) for _ in range(length)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def blocks_per_sequence(decode_steps: int) -> int:
    return -(-(PROMPT_LEN + decode_steps + 2) // BLOCK)


def raw_decode_tok_s(runner: "ModelRunner", prompts: list[list[int]], steps: int) -> float:
    """runner.step over the same batch with no scheduler: prefill each prompt, then time `steps` decodes.

    It gets a runner (a KV pool) of its own, so it never overwrites blocks the engine's prefix cache holds.
    """
    greedy = SamplingParams(max_tokens=steps + 1, **GREEDY_DECODE)
    per_seq = blocks_per_sequence(steps)
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(len(prompts))]
    histories = [list(p) for p in prompts]

    def step(rows: list[int], prefill: bool) -> None:
        seqs = []
        for i in rows:
            history = histories[i]
            start = 0 if prefill else len(history) - 1
            seqs.append(SeqStep(i, history[start:], start, tables[i][: -(-len(history) // BLOCK)],
                                greedy, True, len(prompts[i]), history))
        for i, output in zip(rows, runner.step(seqs)):
            histories[i].append(output.token_id)

    for i in range(len(prompts)):
        step([i], prefill=True)
    step(list(range(len(prompts))), prefill=False)  # warm-up at this batch size
    start = time.perf_counter()
    for _ in range(steps):
        step(list(range(len(prompts))), prefill=False)
    elapsed = time.perf_counter() - start
    for i in range(len(prompts)):
        runner.release(i)
    return len(prompts) * steps / elapsed


async def scheduler_decode_tok_s(engine: EngineLoop, prompts: list[list[int]], steps: int) -> float:
    """Tokens per second while every request is decoding (from the last first token to the first finish).

    Prompts are admitted over a few steps (the step budget), so each request runs 3x `steps` tokens to
    leave a window of about `steps` where all of them decode together.
    """
    sampling = SamplingParams(max_tokens=3 * steps, **GREEDY_DECODE)
    arrivals: list[list[float]] = []

    async def consume(prompt: list[int]) -> None:
        times = []
        arrivals.append(times)
        async for event in engine.submit(prompt, sampling):
            if event.token_id is not None:
                times.append(time.perf_counter())

    await asyncio.gather(*(consume(p) for p in prompts))
    window_start = max(times[0] for times in arrivals)
    window_end = min(times[-1] for times in arrivals)
    # Each request gets one token per step, so the mean gap inside the window is the step time.
    gaps = [b - a for times in arrivals for a, b in zip(times, times[1:])
            if window_start <= a and b <= window_end]
    return len(prompts) * len(gaps) / sum(gaps)


async def time_to_first_token(engine: EngineLoop, prompt: list[int], cache_salt: str, session: str = "",
                              max_tokens: int = 1) -> tuple[float, int]:
    async for event in engine.submit(prompt, SamplingParams(max_tokens=max_tokens, **GREEDY_DECODE),
                                     cache_salt=cache_salt, session=session):
        if event.finish_reason is not None:
            return event.timings.first_token - event.timings.arrival, event.cached_tokens
    raise RuntimeError("the stream ended without a final event")


async def fairness(engine: EngineLoop, rng: random.Random, vocab: int, long_len: int,
                   prefix_len: int) -> dict:
    """The long prompt's TTFT alone, then beside three sessions' unending cached turns and short prompts."""
    prefixes = [random_prompt(rng, prefix_len, vocab) for _ in range(3)]
    for i, prefix in enumerate(prefixes):  # warm each session's prefix
        await time_to_first_token(engine, prefix + random_prompt(rng, 8, vocab), f"s{i}")
    alone, _ = await time_to_first_token(engine, random_prompt(rng, long_len, vocab), "long-alone")
    long_done = asyncio.Event()
    ttfts: dict[str, list[float]] = {"cached_turn": [], "short_prompt": []}

    async def session(index: int) -> None:
        while not long_done.is_set():
            turn = prefixes[index] + random_prompt(rng, 48, vocab)
            elapsed, _ = await time_to_first_token(engine, turn, f"s{index}", session=f"s{index}", max_tokens=8)
            ttfts["cached_turn"].append(elapsed)
            if long_done.is_set():
                return
            elapsed, _ = await time_to_first_token(engine, random_prompt(rng, 200, vocab), f"s{index}",
                                                   session=f"s{index}", max_tokens=8)
            ttfts["short_prompt"].append(elapsed)

    async def long_session() -> float:
        await asyncio.sleep(0.5)  # the others are busy first
        elapsed, _ = await time_to_first_token(engine, random_prompt(rng, long_len, vocab), "long-busy",
                                               session="long")
        long_done.set()
        return elapsed

    busy, *_ = await asyncio.gather(long_session(), *(session(i) for i in range(3)))
    summary = {"long_prompt_tokens": long_len, "prefix_tokens": prefix_len,
               "long_alone_s": alone, "long_busy_s": busy, "long_ratio": busy / alone}
    for kind, values in ttfts.items():
        summary[kind] = {"n": len(values), "p50_s": percentile(values, 50), "p99_s": percentile(values, 99)}
    return summary


class HostTime:
    """Per-step host time of the engine loop: its step minus the runner's (schedule, update, delivery)."""

    def __init__(self, engine: EngineLoop) -> None:
        self.step_s: list[float] = []
        self.runner_s: list[float] = []
        engine._step = self._timed(engine._step, self.step_s)
        engine.runner.step = self._timed(engine.runner.step, self.runner_s)

    @staticmethod
    def _timed(fn, times: list[float]):
        def timed(*args):
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                times.append(time.perf_counter() - start)
        return timed

    def take_ms(self) -> tuple[float, float]:
        """Median host ms and runner.step ms per step since the last call."""
        host = [a - b for a, b in zip(self.step_s, self.runner_s)]
        runner = list(self.runner_s)
        self.step_s.clear()
        self.runner_s.clear()
        return ((percentile(host, 50) * 1000, percentile(runner, 50) * 1000) if host else (0.0, 0.0))


PHASES = ("decode", "ttft", "fairness", "disk_writer")
DISK_WRITER_STREAMS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and shorter long prompts")
    parser.add_argument("--only", choices=PHASES, help="run one phase (the results file keeps the others)")
    parser.add_argument("--repeats", type=int, default=2, help="decode: raw/scheduler pairs per batch size")
    args = parser.parse_args()
    ensure_blas_preloaded()

    from engine.device import device_description
    from engine.model_loader import load_model
    from engine.runner import ModelRunner

    # Sized so that the full run fits `make bench`'s budget on a 2-core machine.
    decode_steps = 6 if args.quick else 8
    prefix_len = 500 if args.quick else 1000
    long_len = 1000 if args.quick else 1500
    loaded = load_model()
    vocab = len(loaded.tokenizer)
    rng = random.Random(0)
    num_blocks = (long_len + 8192) // BLOCK  # the long prompt, and room for the streams beside it
    runner = ModelRunner(loaded, num_blocks=num_blocks, block_size=BLOCK)
    config = SchedulerConfig(num_blocks=num_blocks, block_size=BLOCK, max_model_len=loaded.max_context,
                             cache_key=loaded.model_id)
    result = json.loads(RESULTS.read_text()) if args.only and RESULTS.exists() else {}
    result.update({"device": device_description(), "blas": active_blas(), "model": loaded.model_id,
                   "quick": args.quick, "max_step_ms": config.max_step_ms})

    async def decode(engine: EngineLoop) -> list[dict]:
        raw_runner = ModelRunner(loaded, num_blocks=32 * blocks_per_sequence(decode_steps), block_size=BLOCK)
        host = HostTime(engine)
        rows = []
        for concurrency in (1, 4, 16, 32):
            prompts = [random_prompt(rng, PROMPT_LEN, vocab) for _ in range(concurrency)]
            # Side by side, so both see the same machine. The raw run blocks this thread while the
            # engine thread is idle (its requests have all finished): the two never run MLX at once.
            # Repeated in pairs: the machine's noise is larger than the difference measured.
            raws, ours, hosts = [], [], []
            for _ in range(args.repeats):
                raws.append(raw_decode_tok_s(raw_runner, prompts, decode_steps))
                host.take_ms()
                ours.append(await scheduler_decode_tok_s(engine, prompts, decode_steps))
                hosts.append(host.take_ms())
                print(f"  raw step {concurrency / raws[-1] * 1000:.1f} ms, engine runner.step "
                      f"{hosts[-1][1]:.1f} ms, host {hosts[-1][0]:.2f} ms", flush=True)
            row = {"concurrency": concurrency, "scheduler_tok_s": percentile(ours, 50),
                   "raw_tok_s": percentile(raws, 50),
                   "ratio": percentile([a / b for a, b in zip(ours, raws)], 50),
                   "host_ms_per_step": percentile([h for h, _ in hosts], 50), "repeats": args.repeats}
            rows.append(row)
            print(json.dumps(row), flush=True)
        return rows

    async def ttft(engine: EngineLoop) -> dict:
        prefix = random_prompt(rng, prefix_len, vocab)
        cold, _ = await time_to_first_token(engine, prefix + random_prompt(rng, 16, vocab), "cold")
        await time_to_first_token(engine, prefix + random_prompt(rng, 16, vocab), "warm")
        cached, hit = await time_to_first_token(engine, prefix + random_prompt(rng, 16, vocab), "warm")
        return {"prefix_tokens": prefix_len, "cold_s": cold, "cached_s": cached, "cached_tokens": hit,
                "ratio": cached / cold}

    async def fair(engine: EngineLoop) -> dict:
        return await fairness(engine, rng, vocab, long_len, prefix_len // 2)

    async def disk_writer() -> dict:
        """Fresh engines on the shared runner, the tier off and on in turn; each with new prompts."""
        steps = 4 * decode_steps  # each stream fills a few blocks while all decode
        runs: dict[str, list[float]] = {"off": [], "on": []}
        written, write_behind_s, engine_steps = [], [], []
        with tempfile.TemporaryDirectory() as directory:
            for _ in range(args.repeats):
                for tier in runs:
                    disk = DiskTier(Path(directory), "bench", 4 * 2**30, "float16") if tier == "on" else None
                    engine = EngineLoop(runner, config, loaded.model_id, disk=disk)
                    if disk is not None:
                        disk.write_behind = HostTime._timed(disk.write_behind, write_behind_s)
                    engine.start()
                    prompts = [random_prompt(rng, PROMPT_LEN, vocab) for _ in range(DISK_WRITER_STREAMS)]
                    runs[tier].append(await scheduler_decode_tok_s(engine, prompts, steps))
                    await engine.stop(grace_s=0)
                    if disk is not None:
                        written.append(engine.stats.disk.bytes_written)
                        engine_steps.append(engine.num_steps)
                    print(f"  disk tier {tier}: {runs[tier][-1]:.1f} tok/s", flush=True)
        step_ms = {tier: DISK_WRITER_STREAMS / percentile(values, 50) * 1000 for tier, values in runs.items()}
        write_behind_ms = sum(write_behind_s) * 1000 / sum(engine_steps)
        return {"streams": DISK_WRITER_STREAMS, "off_tok_s": percentile(runs["off"], 50),
                "pair_ratio_on_over_off": percentile([b / a for a, b in zip(runs["off"], runs["on"])], 50),
                "write_behind_ms_per_step": write_behind_ms,
                "write_behind_share_of_step": write_behind_ms / step_ms["off"],
                "on_tok_s": percentile(runs["on"], 50), "off_step_ms": step_ms["off"],
                "on_step_ms": step_ms["on"], "step_time_ratio": step_ms["on"] / step_ms["off"],
                "bytes_written_per_run": percentile(written, 50), "repeats": args.repeats}

    phases = {"decode": decode, "ttft": ttft, "fairness": fair}

    async def run_engine_phases() -> None:
        engine = EngineLoop(runner, config, loaded.model_id)
        engine.start()
        try:
            for name in [args.only] if args.only else PHASES:
                if name in phases:
                    result[name] = await phases[name](engine)
                    print(json.dumps({name: result[name]}), flush=True)
        finally:
            await engine.stop(grace_s=0)
        if args.only in (None, "disk_writer"):
            result["disk_writer"] = await disk_writer()
            print(json.dumps({"disk_writer": result["disk_writer"]}), flush=True)

    asyncio.run(run_engine_phases())
    targets = {
        "decode_ratio_at_16": ("decode", lambda r: r[2]["ratio"], ">= 1.0"),
        "decode_ratio_at_32": ("decode", lambda r: r[3]["ratio"], ">= 1.0"),
        "ttft_cached_over_cold": ("ttft", lambda r: r["ratio"], "<= 0.10"),
        "long_prompt_busy_over_alone": ("fairness", lambda r: r["long_ratio"], "<= 2.5"),
        "cached_turn_ttft_p99_s": ("fairness", lambda r: r["cached_turn"]["p99_s"], "<= 4"),
        "disk_writer_share_of_step": ("disk_writer", lambda r: r["write_behind_share_of_step"], "<= 0.05"),
    }
    result["targets"] = {name: {"value": value(result[phase]), "target": target}
                         for name, (phase, value, target) in targets.items() if phase in result}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
