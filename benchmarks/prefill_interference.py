"""What a cold long prompt does to the streams already decoding, measured through the server.

N chat streams decode (each asked for more tokens than the run lasts); once all have their first token
and `baseline_s` more has passed, a cold long prompt (random words, fresh every run, so that no cache holds it)
arrives. The inter-token gaps of the streams are split by time: before it arrived, and while it was
prefilled (a gap that overlaps the interval from its arrival to its first token). The streams are cut
off shortly after its first token. The gap timeline is kept for the plot.
"""

import asyncio
import random
import time
from dataclasses import dataclass

import aiohttp

from benchmarks.load_generator import RequestRecord, client_session, percentile
from benchmarks.sse_clients import INCLUDE_USAGE, Fold, fold_chat_chunk, stream_request
from benchmarks.workloads import chat_payload

WORDS = ("river", "stone", "lamp", "garden", "engine", "window", "cloud", "paper", "signal", "forest",
         "copper", "harbor", "violet", "ladder", "orbit", "pencil", "meadow", "socket", "canyon", "ember",
         "falcon", "glacier", "hammer", "island", "jigsaw", "kernel", "lantern", "marble", "nectar", "oyster")
STORY = "Tell a long story about {}, with many chapters."
POLL_S = 0.05


@dataclass(frozen=True)
class InterferenceWorkload:
    streams: int = 8
    long_prompt_words: int = 1500
    baseline_s: float = 4.0
    after_s: float = 1.0
    max_tokens: int = 2000


def cold_long_prompt(words: int, rng: random.Random) -> str:
    return "Summarize these notes: " + " ".join(rng.choice(WORDS) for _ in range(words))


def timeline_fold(arrivals: list[float], offset_s: float) -> Fold:
    """Chat chunks folded as usual, each token-carrying one's arrival also kept in `arrivals` (seconds from
    the run's start)."""
    def fold(record: RequestRecord, chunk: dict, elapsed_s: float) -> None:
        before = len(record.chunk_times_s)
        fold_chat_chunk(record, chunk, elapsed_s)
        if len(record.chunk_times_s) > before:
            arrivals.append(offset_s + elapsed_s)
    return fold


def split_gaps(arrivals: list[list[float]], long_sent_s: float, long_first_token_s: float
               ) -> tuple[list[float], list[float]]:
    """Each stream's gaps between consecutive tokens: those after every stream had its first token that
    ended before the long prompt arrived (the streams' own prefills are over), and those that overlap the
    long prompt's prefill (from its arrival to its first token)."""
    all_decoding_s = max((times[0] for times in arrivals if times), default=0.0)
    before, during = [], []
    for times in arrivals:
        for earlier, later in zip(times, times[1:]):
            if later <= long_sent_s:
                if earlier >= all_decoding_s:
                    before.append(later - earlier)
            elif earlier < long_first_token_s:
                during.append(later - earlier)
    return before, during


def gap_stats(gaps: list[float]) -> dict:
    return {"count": len(gaps), "p50_ms": percentile(gaps, 50) * 1000, "p99_ms": percentile(gaps, 99) * 1000,
            "max_ms": max(gaps, default=float("nan")) * 1000}


async def run_interference(base_url: str, model: str, workload: InterferenceWorkload, extra_fields: dict,
                           label: str) -> dict:
    url = f"{base_url}/v1/chat/completions"
    arrivals: list[list[float]] = [[] for _ in range(workload.streams)]
    start = time.perf_counter()

    def now() -> float:
        return time.perf_counter() - start

    async def stream(session: aiohttp.ClientSession, index: int) -> RequestRecord:
        body = {**chat_payload(model, STORY.format(WORDS[index % len(WORDS)]), workload.max_tokens,
                               extra_fields), **INCLUDE_USAGE}
        return await stream_request(session, url, body, timeline_fold(arrivals[index], now()))

    async with client_session(workload.streams + 1) as session:
        print(f"  {label}: {workload.streams} streams, then a cold {workload.long_prompt_words}-word prompt",
              flush=True)
        streams = [asyncio.create_task(stream(session, i)) for i in range(workload.streams)]
        while not all(arrivals) and not all(task.done() for task in streams):
            await asyncio.sleep(POLL_S)
        await asyncio.sleep(workload.baseline_s)
        long_body = {**chat_payload(model, cold_long_prompt(workload.long_prompt_words, random.Random()), 1,
                                    {}), **INCLUDE_USAGE}
        long_sent = now()
        long_record = await stream_request(session, url, long_body, fold_chat_chunk)
        long_first_token = long_sent + (long_record.ttft_s if long_record.ok else long_record.e2e_s)
        await asyncio.sleep(workload.after_s)
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    before, during = split_gaps(arrivals, long_sent, long_first_token)
    stats_before, stats_during = gap_stats(before), gap_stats(during)
    return {
        "streams": workload.streams,
        "long_prompt_tokens": long_record.prompt_tokens,
        "long_prompt_ttft_s": long_record.ttft_s if long_record.ok else None,
        "long_prompt_error": long_record.error,
        "long_sent_s": long_sent,
        "long_first_token_s": long_first_token,
        "gaps_before": stats_before,
        "gaps_during": stats_during,
        "p99_during_over_before": stats_during["p99_ms"] / stats_before["p99_ms"],
        "timeline": [[round(t, 4) for t in times] for times in arrivals],
    }
