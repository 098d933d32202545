"""An async client that streams OpenAI chat completions and measures them as vLLM's serving bench does.

Each request records the arrival time of every content chunk; from those come TTFT (first chunk), ITL (the
gaps between chunks), TPOT ((E2E - TTFT) / (output tokens - 1)) and E2E. Output tokens are the server's
`usage.completion_tokens` (asked for with `stream_options.include_usage`); a server that sends no usage is
counted one token per chunk. `summarize` turns records into vLLM's result keys.
"""

import asyncio
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson

REQUEST_TIMEOUT_S = 600.0
PERCENTILES = (90, 99)


@dataclass
class RequestRecord:
    """One streamed request, seen from the client. Times are seconds from sending the request."""

    ok: bool
    chunk_times_s: list[float] = field(default_factory=list)
    e2e_s: float = 0.0
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


def summarize(records: Sequence[RequestRecord], duration_s: float) -> dict[str, float | int]:
    """vLLM bench's result keys over the successful requests of a run that took `duration_s`."""
    done = [record for record in records if record.ok]
    output_tokens = sum(record.output_tokens for record in done)
    input_tokens = sum(record.prompt_tokens for record in done)
    summary: dict[str, float | int] = {
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
    return summary


def apply_chunk(record: RequestRecord, chunk: dict, elapsed_s: float) -> None:
    """Fold one streamed chat.completion.chunk into the record."""
    usage = chunk.get("usage")
    if usage:
        record.prompt_tokens = usage.get("prompt_tokens", 0)
        record.output_tokens = usage.get("completion_tokens", 0)
        details = usage.get("prompt_tokens_details") or {}
        record.cached_tokens = details.get("cached_tokens") or 0
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        content = delta.get("content") or ""
        if content or delta.get("reasoning") or delta.get("tool_calls"):  # mlx-lm's name for thinking text
            record.chunk_times_s.append(elapsed_s)
            record.text += content
        record.finish_reason = choice.get("finish_reason") or record.finish_reason


async def stream_chat(session: aiohttp.ClientSession, base_url: str, payload: dict) -> RequestRecord:
    """POST one streaming chat completion and time its chunks; failures become a record with ok=False."""
    body = {**payload, "stream": True, "stream_options": {"include_usage": True}}
    record = RequestRecord(ok=False)
    start = time.perf_counter()
    try:
        async with session.post(f"{base_url}/v1/chat/completions", data=orjson.dumps(body),
                                headers={"Content-Type": "application/json"}) as response:
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:300]}"
                return record
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                apply_chunk(record, orjson.loads(data), time.perf_counter() - start)
    except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as error:
        record.error = f"{type(error).__name__}: {error}"
        return record
    record.e2e_s = time.perf_counter() - start
    if not record.chunk_times_s:
        record.error = "the stream carried no content"
        return record
    if not record.output_tokens:
        record.output_tokens = len(record.chunk_times_s)
    record.ok = True
    return record


def client_session(concurrency: int) -> aiohttp.ClientSession:
    """A session with one connection per concurrent request and a bound on each request's time."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    )


async def run_at_concurrency(
    base_url: str, payloads: Sequence[dict], concurrency: int
) -> tuple[list[RequestRecord], float]:
    """Send every payload with at most `concurrency` in flight; returns the records (in payload order)
    and the wall time of the whole run."""
    slots = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, payload: dict) -> RequestRecord:
        async with slots:
            return await stream_chat(session, base_url, payload)

    async with client_session(concurrency) as session:
        start = time.perf_counter()
        records = await asyncio.gather(*(one(session, payload) for payload in payloads))
        return list(records), time.perf_counter() - start
