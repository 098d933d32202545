"""A server's prefix-cache counters from its Prometheus /metrics, and the hit rate between two scrapes.

vLLM's counters `vllm:prefix_cache_hits_total` and `vllm:prefix_cache_queries_total` count prompt tokens;
they carry labels (model_name, engine), so every sample of a name is summed. A server without them (or
without /metrics) has no figures: None.
"""

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"


def sample_sum(exposition: str, name: str) -> float | None:
    """The sum of the samples named `name` over all label sets in Prometheus text format; None if none."""
    values = [sample.value for family in text_string_to_metric_families(exposition)
              for sample in family.samples if sample.name == name]
    return sum(values) if values else None


def counters_from_exposition(exposition: str) -> dict[str, float] | None:
    hits, queries = sample_sum(exposition, HITS), sample_sum(exposition, QUERIES)
    if hits is None or queries is None:
        return None
    return {"hits": hits, "queries": queries}


async def prefix_cache_counters(session: aiohttp.ClientSession, base_url: str) -> dict[str, float] | None:
    try:
        async with session.get(f"{base_url}/metrics") as response:
            if response.status != 200:
                return None
            return counters_from_exposition(await response.text())
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None


def prefix_cache_hit_rate(before: dict[str, float] | None, after: dict[str, float] | None) -> float | None:
    """Hits over queries between two scrapes; None without counters or without queries in between."""
    if before is None or after is None:
        return None
    queries = after["queries"] - before["queries"]
    return (after["hits"] - before["hits"]) / queries if queries > 0 else None
