"""The short-prompt workloads of `make bench`, over OpenAI chat completions.

1. Concurrency sweep: distinct one-line prompts at a fixed concurrency (1, 4, 16, 32), each generating
   `max_tokens` tokens (servers that honour `ignore_eos` are asked to; the others may stop early and are
   counted as they went).
2. Poisson arrivals: the same prompts sent at exponential intervals (vLLM's `--request-rate`, seeded),
   whatever is still in flight.
"""

from dataclasses import dataclass

from benchmarks.load_generator import measured_run, poisson_arrival_times, run_at_concurrency, run_at_times
from benchmarks.sse_clients import chat_sender


@dataclass(frozen=True)
class SweepPoint:
    concurrency: int
    num_requests: int
    max_tokens: int = 64


@dataclass(frozen=True)
class PoissonWorkload:
    request_rate: float
    num_requests: int
    seed: int = 0
    max_tokens: int = 64


_TOPICS = (
    "the ocean", "volcanoes", "honey bees", "the moon", "trains", "chess", "rain forests", "glaciers",
    "bread baking", "comets", "owls", "the printing press", "deserts", "lighthouses", "coral reefs", "kites",
)
_TASKS = ("Write a short poem about {}.", "Explain {} to a ten-year-old.", "List three facts about {}.",
          "Tell a short story about {}.")


def short_prompt(index: int) -> str:
    """A distinct one-line prompt for each index (64 before they repeat)."""
    task = _TASKS[index // len(_TOPICS) % len(_TASKS)]
    return task.format(_TOPICS[index % len(_TOPICS)])


def chat_payload(model: str, prompt: str, max_tokens: int, extra_fields: dict) -> dict:
    """A greedy one-message chat request; `extra_fields` carries server-specific keys such as ignore_eos."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, **extra_fields}


def short_payloads(model: str, count: int, max_tokens: int, extra_fields: dict) -> list[dict]:
    return [chat_payload(model, short_prompt(i), max_tokens, extra_fields) for i in range(count)]


async def run_sweep_point(base_url: str, model: str, point: SweepPoint, extra_fields: dict, label: str) -> dict:
    payloads = short_payloads(model, point.num_requests, point.max_tokens, extra_fields)
    _, summary = await measured_run(base_url, run_at_concurrency(
        chat_sender(base_url), payloads, point.concurrency, f"{label} c={point.concurrency}"))
    return {"concurrency": point.concurrency, "num_requests": point.num_requests,
            "max_tokens": point.max_tokens, **summary}


async def run_poisson(base_url: str, model: str, workload: PoissonWorkload, extra_fields: dict,
                      label: str) -> dict:
    payloads = short_payloads(model, workload.num_requests, workload.max_tokens, extra_fields)
    times = poisson_arrival_times(workload.request_rate, workload.num_requests, workload.seed)
    _, summary = await measured_run(base_url, run_at_times(
        chat_sender(base_url), payloads, times, f"{label} {workload.request_rate:g} req/s"))
    return {"request_rate": workload.request_rate, "num_requests": workload.num_requests,
            "seed": workload.seed, "max_tokens": workload.max_tokens, **summary}
