"""The load generator: sends streamed requests at a fixed concurrency or at a Poisson rate and measures
them as vLLM's serving bench does.

Each request records the arrival time of every token-carrying chunk; from those come TTFT (first chunk),
ITL (the gaps between chunks), TPOT ((E2E - TTFT) / (output tokens - 1)) and E2E. `summarize` turns records
into vLLM's result keys; `measured_run` adds the server's prefix-cache hit rate during the run, from its
/metrics before and after. A progress bar (tqdm) counts finished requests.
"""

import asyncio
import math
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from tqdm import tqdm

from benchmarks.server_metrics import prefix_cache_counters, prefix_cache_hit_rate

REQUEST_TIMEOUT_S = 900.0
PERCENTILES = (90, 99)
MAX_ERRORS_KEPT = 3


@dataclass
class RequestRecord:
    """One streamed request, seen from the client. Times are seconds from sending the request;
    `sent_s` is when it was sent, in seconds from the start of its run."""

    ok: bool
    chunk_times_s: list[float] = field(default_factory=list)
    e2e_s: float = 0.0
    sent_s: float = 0.0
    text: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    error: str = ""

    @property
    def ttft_s(self) -> float:
        return self.chunk_times_s[0]

    @property
    def itl_s(self) -> list[float]:
        return itl_from_timestamps(self.chunk_times_s)

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first; None for a single-token answer."""
        if self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


SendOne = Callable[[aiohttp.ClientSession, dict], Awaitable[RequestRecord]]


def itl_from_timestamps(timestamps: Sequence[float]) -> list[float]:
    """Inter-token latencies: the gaps between consecutive chunk arrivals."""
    return [later - earlier for earlier, later in zip(timestamps, timestamps[1:])]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between ranks (numpy's default method)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_stats(name: str, values_s: Sequence[float]) -> dict[str, float]:
    """vLLM's keys for one latency in milliseconds: mean_, median_, std_ and p{90,99}_{name}_ms."""
    values_ms = [value * 1000 for value in values_s]
    stats = {
        f"mean_{name}_ms": statistics.fmean(values_ms) if values_ms else math.nan,
        f"median_{name}_ms": statistics.median(values_ms) if values_ms else math.nan,
        f"std_{name}_ms": statistics.pstdev(values_ms) if values_ms else math.nan,
    }
    stats.update({f"p{q}_{name}_ms": percentile(values_ms, q) for q in PERCENTILES})
    return stats


def summarize(records: Sequence[RequestRecord], duration_s: float) -> dict[str, float | int | list]:
    """vLLM bench's result keys over the successful requests of a run that took `duration_s`, and the first
    few errors."""
    done = [record for record in records if record.ok]
    output_tokens = sum(record.output_tokens for record in done)
    input_tokens = sum(record.prompt_tokens for record in done)
    summary: dict[str, float | int | list] = {
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration_s": duration_s,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "total_cached_tokens": sum(record.cached_tokens for record in done),
        "request_throughput": len(done) / duration_s,
        "output_throughput": output_tokens / duration_s,
        "total_token_throughput": (input_tokens + output_tokens) / duration_s,
    }
    summary.update(latency_stats("ttft", [record.ttft_s for record in done]))
    summary.update(latency_stats("tpot", [t for record in done if (t := record.tpot_s) is not None]))
    summary.update(latency_stats("itl", [gap for record in done for gap in record.itl_s]))
    summary.update(latency_stats("e2el", [record.e2e_s for record in done]))
    summary["errors"] = [record.error for record in records if not record.ok][:MAX_ERRORS_KEPT]
    return summary


def poisson_arrival_times(rate: float, count: int, seed: int) -> list[float]:
    """Send times (seconds from the start) of `count` requests arriving at `rate` per second on average:
    exponential gaps from a seeded generator, the first request at 0 (vLLM's --request-rate)."""
    rng = random.Random(seed)
    times, now = [], 0.0
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(rate)
    return times


def client_session(concurrency: int) -> aiohttp.ClientSession:
    """A session with one connection per concurrent request and a bound on each request's time."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    )


def progress_bar(total: int, label: str) -> tqdm:
    return tqdm(total=total, desc=label, unit="req", dynamic_ncols=True)


async def run_at_concurrency(
    send: SendOne, payloads: Sequence[dict], concurrency: int, label: str
) -> tuple[list[RequestRecord], float]:
    """Send every payload with at most `concurrency` in flight; returns the records (in payload order)
    and the wall time of the whole run."""
    slots = asyncio.Semaphore(concurrency)

    async with client_session(concurrency) as session:
        start = time.perf_counter()
        with progress_bar(len(payloads), label) as bar:
            async def one(payload: dict) -> RequestRecord:
                async with slots:
                    sent = time.perf_counter() - start
                    record = await send(session, payload)
                record.sent_s = sent
                bar.update()
                return record

            records = await asyncio.gather(*(one(payload) for payload in payloads))
        return list(records), time.perf_counter() - start


async def run_at_times(
    send: SendOne, payloads: Sequence[dict], send_times_s: Sequence[float], label: str
) -> tuple[list[RequestRecord], float]:
    """Send payload i at send_times_s[i] seconds from the start, whatever is still in flight (an open
    loop, as vLLM's bench at a request rate); returns the records and the wall time."""
    async with client_session(len(payloads)) as session:
        start = time.perf_counter()
        with progress_bar(len(payloads), label) as bar:
            async def one(payload: dict, at_s: float) -> RequestRecord:
                await asyncio.sleep(max(0.0, at_s - (time.perf_counter() - start)))
                sent = time.perf_counter() - start
                record = await send(session, payload)
                record.sent_s = sent
                bar.update()
                return record

            records = await asyncio.gather(*(one(p, t) for p, t in zip(payloads, send_times_s)))
        return list(records), time.perf_counter() - start


async def measured_run(
    base_url: str, run: Awaitable[tuple[list[RequestRecord], float]]
) -> tuple[list[RequestRecord], dict]:
    """Await `run`; returns its records and their summary with the server's prefix-cache hit rate during
    it (None from a server that exports no vLLM prefix-cache counters)."""
    async with client_session(1) as session:
        before = await prefix_cache_counters(session, base_url)
        records, duration_s = await run
        after = await prefix_cache_counters(session, base_url)
    summary = summarize(records, duration_s)
    summary["prefix_cache_hit_rate"] = prefix_cache_hit_rate(before, after)
    return records, summary
