"""The prefix cache's disk tier: a restarted server's first Claude Code request, and prefixes that return
after the KV pool evicted them.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python -m benchmarks.disk_tier_bench [--quick] [--scale S]

restart: `pagedmlx serve` with the disk tier on (a fresh temporary --disk-cache-dir) gets the Claude Code
first request (benchmarks/claude_code_sessions.py's turn 1 at --scale, default 1.0: ~11k tokens; --quick
0.25), streamed: its TTFT (first content event) is the cold one. Once /metrics shows the write-behind
queue empty and the written bytes no longer growing (figures that stay put for 5 s with writes queued are
recorded as stalled; the graceful stop still finishes queued writes), the server is stopped (SIGTERM)
and started again on the same directory; the same request then gives the restart TTFT (its prefix read
from disk), and a third one on that server the warm TTFT (a pool hit). Each server first answers a short
warm-up request, so one-time start-up costs stay out of the figures. Reported: the TTFTs, restart / cold
(target <= 0.10), disk hits (blocks), bytes read, prompt and cached tokens, each server's time to ready.

cycling: more distinct Claude Code-shaped prompts than the pool holds (each its own window of the tools,
so they differ from their first blocks, its own directory and question; --kv-cache-gb sized from the
rendered prompts so the pool holds `pool_prompts` of them) sent one at a time, round-robin, for R rounds,
max_tokens 1; every round ends each prompt with a new short user turn, so its last block is computed.
12 prompts of ~1.5k tokens, a pool of 4, 3 rounds (--quick: 6 of ~0.9k, a pool of 2, 2 rounds). Run
once with the tier off (--disk-cache-gb 0) and once on (a fresh directory). Reported for rounds 2..R: the
prefix-cache hit rate (delta hits / delta queries, in tokens; disk hits count as hits) and the TTFT p50
of the returning prefixes, off against on.

Writes benchmarks/results/disk_tier_bench.json after each part and prints a short table.
"""

import argparse
import asyncio
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks import claude_code_traffic as cc
from benchmarks.claude_code_sessions import FIRST_PROMPTS, SessionsWorkload, conversation_turns, rendered_prompt
from benchmarks.load_generator import RequestRecord, client_session
from benchmarks.server_metrics import HITS, QUERIES, sample_sum
from benchmarks.servers import (PAGEDMLX, STOP_TIMEOUT_S, ServerKind, ServerProcess, pagedmlx_command,
                                pagedmlx_kind, served_model_name)
from benchmarks.serving_bench import warm_up
from benchmarks.sse_clients import fold_messages_event, stream_request

RESULT_PATH = Path(__file__).parent / "results" / "disk_tier_bench.json"
BLOCK_SIZE = 16  # pagedmlx serve's default --block-size, which these servers keep
DISK_CACHE_GB = 4.0
LONG_CONTEXT_FLAGS = ("--max-model-len", "32768", "--allow-long-context")
RESTART_MAX_TOKENS = 8
TARGET_RESTART_OVER_COLD = 0.10
WRITES_TIMEOUT_S = 180.0
WRITES_POLL_S = 0.5
WRITES_STALL_S = 5.0
METRICS = {
    "prefix_hits": HITS,  # tokens
    "prefix_queries": QUERIES,  # tokens
    "disk_hits": "pagedmlx:disk_cache_hits_total",  # blocks read from disk into the pool
    "disk_misses": "pagedmlx:disk_cache_misses_total",  # prompt blocks looked up on disk, not found
    "disk_read_bytes": "pagedmlx:disk_cache_read_bytes_total",
    "disk_written_bytes": "pagedmlx:disk_cache_written_bytes_total",
    "disk_dropped_writes": "pagedmlx:disk_cache_dropped_writes_total",
    "disk_write_queue_depth": "pagedmlx:disk_cache_write_queue_depth",
    "disk_size_bytes": "pagedmlx:disk_cache_size_bytes",
    "disk_blocks": "pagedmlx:disk_cache_blocks",
    "kv_budget_bytes": "pagedmlx:kv_cache_budget_bytes",
    "kv_blocks": "pagedmlx:kv_cache_blocks",  # summed over its states: the pool's blocks
}
Metrics = dict[str, float | None]
ACKNOWLEDGEMENT = "I have read the notes. What should I look at first?"
NEXT_QUESTIONS = (
    "Start with the failing case and tell me what you find.",
    "Now check the callers of that function.",
    "Good. Summarise what you changed in two lines.",
    "Run the tests again and report the result.",
)


@dataclass(frozen=True)
class CyclingWorkload:
    prompts: int = 12  # distinct prefixes, sent round-robin
    rounds: int = 3
    pool_prompts: int = 4  # how many of the prompts the KV pool holds
    tools_per_prompt: int = 5  # each prompt's window of the core tools (~1.5k tokens in all at scale 0.1)
    scale: float = 0.1  # of the Claude Code text parts (benchmarks/claude_code_traffic.py)

    def __post_init__(self) -> None:
        if self.rounds < 2:
            raise ValueError("the returning prefixes are those of rounds 2..R: at least 2 rounds")
        if not 0 < self.tools_per_prompt <= len(cc.CORE_TOOLS):
            raise ValueError(f"tools_per_prompt must be 1..{len(cc.CORE_TOOLS)}")


FULL_CYCLING = CyclingWorkload()
QUICK_CYCLING = CyclingWorkload(prompts=6, rounds=2, pool_prompts=2, tools_per_prompt=3, scale=0.05)


class GracefulServer(ServerProcess):
    """A ServerProcess stopped by SIGTERM (graceful: the server lets its work finish and exits 0)."""

    exit_code: int | None = None

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self._process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self.exit_code = self._process.wait()


def disk_flags(directory: str | None) -> list[str]:
    """The disk tier on in `directory`, or off for None."""
    if directory is None:
        return ["--disk-cache-gb", "0"]
    return ["--disk-cache-gb", str(DISK_CACHE_GB), "--disk-cache-dir", directory]


# --- /metrics ------------------------------------------------------------------------------------------

def metrics_from_exposition(exposition: str) -> Metrics:
    """The figures of METRICS from a Prometheus exposition, each summed over its label sets; None if absent."""
    return {key: sample_sum(exposition, name) for key, name in METRICS.items()}


def scrape(base_url: str) -> Metrics:
    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
            return metrics_from_exposition(response.read().decode())
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"  warning: no figures from {base_url}/metrics: {error}", file=sys.stderr, flush=True)
        return dict.fromkeys(METRICS)


def delta(before: Metrics, after: Metrics, key: str) -> float | None:
    if before.get(key) is None or after.get(key) is None:
        return None
    return after[key] - before[key]


def hit_rate(before: Metrics, after: Metrics) -> float | None:
    """Prefix-cache hit tokens over queried tokens between two scrapes; None without counters or queries."""
    hits, queries = delta(before, after, "prefix_hits"), delta(before, after, "prefix_queries")
    if hits is None or not queries:
        return None
    return hits / queries


def pool_figures(metrics: Metrics) -> dict[str, float | None]:
    """The pool's blocks and the bytes per block, from its budget gauge and its blocks by state."""
    blocks, budget = metrics.get("kv_blocks"), metrics.get("kv_budget_bytes")
    return {"pool_blocks": blocks, "block_bytes": budget / blocks if blocks and budget is not None else None}


def writes_settled(previous: Metrics, current: Metrics) -> bool:
    """Whether the write-behind queue is empty and no bytes were written since the previous scrape."""
    depth, written = current.get("disk_write_queue_depth"), current.get("disk_written_bytes")
    return depth == 0 and written is not None and written == previous.get("disk_written_bytes")


def wait_for_writes(base_url: str, timeout_s: float = WRITES_TIMEOUT_S) -> dict[str, Any]:
    """Poll /metrics until the disk writes have settled, or nothing changed for WRITES_STALL_S (`stalled`:
    figures that stay put with writes queued), or `timeout_s`; what the tier holds then."""
    start = changed = time.perf_counter()
    previous = scrape(base_url)
    settled = stalled = False
    while previous.get("disk_write_queue_depth") is not None and time.perf_counter() - start < timeout_s:
        time.sleep(WRITES_POLL_S)
        current = scrape(base_url)
        if writes_settled(previous, current):
            settled, previous = True, current
            break
        if any(current.get(key) != previous.get(key) for key in ("disk_write_queue_depth", "disk_written_bytes")):
            changed = time.perf_counter()
        elif time.perf_counter() - changed >= WRITES_STALL_S:
            stalled, previous = True, current
            break
        previous = current
    return {"settled": settled, "stalled": stalled, "waited_s": time.perf_counter() - start,
            **{key: previous.get(key) for key in ("disk_write_queue_depth", "disk_written_bytes",
                                                  "disk_dropped_writes", "disk_size_bytes", "disk_blocks")}}


# --- requests ------------------------------------------------------------------------------------------

def fold_first_output(record: RequestRecord, event: dict, elapsed_s: float) -> None:
    """fold_messages_event; an answer whose only token carried no visible text (a tool-call opening held
    back) is timed at its message_delta instead, so a max_tokens 1 request always gets a TTFT."""
    fold_messages_event(record, event, elapsed_s)
    if event.get("type") == "message_delta" and not record.chunk_times_s:
        record.chunk_times_s.append(elapsed_s)


async def _stream_message(base_url: str, body: dict, session_id: str) -> RequestRecord:
    async with client_session(1) as session:
        return await stream_request(session, f"{base_url}{cc.MESSAGES_PATH}", body, fold_first_output,
                                    cc.headers(session_id))


def measured_request(base_url: str, body: dict, session_id: str) -> dict[str, Any]:
    """One streamed /v1/messages request: its TTFT, tokens, and the disk and prefix counters' deltas."""
    before = scrape(base_url)
    record = asyncio.run(_stream_message(base_url, body, session_id))
    after = scrape(base_url)
    if not record.ok:
        raise RuntimeError(f"request failed: {record.error}")
    return {"ttft_ms": record.ttft_s * 1000, "prompt_tokens": record.prompt_tokens,
            "cached_tokens": record.cached_tokens, "output_tokens": record.output_tokens,
            **{key: delta(before, after, key) for key in ("prefix_hits", "prefix_queries", "disk_hits",
                                                          "disk_misses", "disk_read_bytes")}}


def started(kind: ServerKind, directory: str | None) -> GracefulServer:
    print(f"{kind.name}: starting ({'disk tier in ' + directory if directory else 'disk tier off'})",
          flush=True)
    return GracefulServer(kind)


def warmed_up(server: ServerProcess) -> None:
    asyncio.run(warm_up(server.base_url, served_model_name(server.base_url), server.kind.extra_fields))


# --- restart -------------------------------------------------------------------------------------------

def restart_body(scale: float) -> dict:
    """The Claude Code first request (conversation 0's turn 1) at `scale`, a few output tokens."""
    workload = SessionsWorkload(sessions=1, turns=1, prompt_scale=scale, max_tokens=RESTART_MAX_TOKENS)
    return conversation_turns(0, workload)[0].body


def run_restart(body: dict, context_flags: Sequence[str], directory: str) -> dict[str, Any]:
    """Cold on a fresh disk tier, then restart on the same directory, then warm on that server."""
    flags = [*disk_flags(directory), *context_flags]
    result: dict[str, Any] = {}
    begun = time.perf_counter()
    with started(pagedmlx_kind("pagedmlx-disk-tier-cold", flags), directory) as server:
        result["cold_server_ready_s"] = time.perf_counter() - begun
        warmed_up(server)
        result["cold"] = measured_request(server.base_url, body, "disk-tier-restart")
        print(f"  cold TTFT {result['cold']['ttft_ms']:.0f} ms; waiting for the disk writes", flush=True)
        result["writes"] = writes = wait_for_writes(server.base_url)
        print(f"  writes {'settled' if writes['settled'] else 'stalled' if writes['stalled'] else 'not seen'} "
              f"after {writes['waited_s']:.1f} s: {_fmt(_mb(writes['disk_written_bytes']), '.1f', ' MB')} written, "
              f"queue depth {_fmt(writes['disk_write_queue_depth'])}", flush=True)
    result["cold_server_exit_code"] = server.exit_code
    begun = time.perf_counter()
    with started(pagedmlx_kind("pagedmlx-disk-tier-restart", flags), directory) as server:
        result["restart_server_ready_s"] = time.perf_counter() - begun  # with the tier's start-up scan
        warmed_up(server)
        result["restart"] = measured_request(server.base_url, body, "disk-tier-restart")
        result["warm"] = measured_request(server.base_url, body, "disk-tier-restart")
    result["restart_over_cold_ttft"] = result["restart"]["ttft_ms"] / result["cold"]["ttft_ms"]
    result["warm_over_cold_ttft"] = result["warm"]["ttft_ms"] / result["cold"]["ttft_ms"]
    result["target_restart_over_cold"] = TARGET_RESTART_OVER_COLD
    result["meets_target"] = result["restart_over_cold_ttft"] <= TARGET_RESTART_OVER_COLD
    return result


# --- cycling -------------------------------------------------------------------------------------------

def cycling_body(prompt: int, round_number: int, workload: CyclingWorkload) -> dict:
    """Prompt `prompt` (its own tools window, directory and question) in round `round_number` (1-based):
    the same prefix every round, then a short user turn of that round."""
    core = cc.tools(scale=workload.scale)[:len(cc.CORE_TOOLS)]
    tools = [core[(prompt + offset) % len(core)] for offset in range(workload.tools_per_prompt)]
    question = f"{FIRST_PROMPTS[prompt % len(FIRST_PROMPTS)]} (project {prompt})"
    messages = [cc.first_user_turn(question, workload.scale),
                {"role": "assistant", "content": [{"type": "text", "text": ACKNOWLEDGEMENT}]},
                {"role": "user", "content": [{"type": "text", "text": (
                    f"Round {round_number}: {NEXT_QUESTIONS[round_number % len(NEXT_QUESTIONS)]}")}]}]
    body = cc.request_body(messages, 1000 * prompt + round_number, f"/home/u/src/cycling-{prompt}",
                           scale=workload.scale)
    return {**body, "tools": tools, "max_tokens": 1, "temperature": 0}


def cycling_rounds(workload: CyclingWorkload) -> list[list[dict]]:
    """The bodies, by round then prompt."""
    return [[cycling_body(prompt, round_number, workload) for prompt in range(workload.prompts)]
            for round_number in range(1, workload.rounds + 1)]


def blocks_of(num_tokens: int, block_size: int = BLOCK_SIZE) -> int:
    return math.ceil(num_tokens / block_size)


def pool_gb(pool_prompts: int, prompt_tokens: Sequence[int], block_bytes: int) -> float:
    """A --kv-cache-gb (GiB) whose pool holds the `pool_prompts` longest prompts, and half a block more
    (the server rounds the budget down to whole blocks)."""
    longest = sorted((blocks_of(tokens) for tokens in prompt_tokens), reverse=True)[:pool_prompts]
    return (sum(longest) + 0.5) * block_bytes / 2**30


def p50_ms(values_ms: Sequence[float]) -> float | None:
    return statistics.median(values_ms) if values_ms else None


def returning_figures(ttft_ms_by_round: Sequence[Sequence[float]], before: Metrics,
                      after: Metrics) -> dict[str, Any]:
    """Rounds 2..R: the TTFT p50 of the returning prefixes and the hit rate between the two scrapes around
    them (`before`: after round 1; `after`: after the last round)."""
    returning = [ttft for round_ttfts in ttft_ms_by_round[1:] for ttft in round_ttfts]
    return {"returning_ttft_p50_ms": p50_ms(returning),
            "first_round_ttft_p50_ms": p50_ms(ttft_ms_by_round[0]) if ttft_ms_by_round else None,
            "returning_hit_rate": hit_rate(before, after),
            **{f"returning_{key}": delta(before, after, key)
               for key in ("prefix_hits", "prefix_queries", "disk_hits", "disk_misses", "disk_read_bytes")}}


def run_cycle(rounds: Sequence[Sequence[dict]], flags: Sequence[str], name: str,
              directory: str | None) -> dict[str, Any]:
    """Every round's bodies one at a time on one server; the figures of rounds 2..R."""
    with started(pagedmlx_kind(name, [*disk_flags(directory), *flags]), directory) as server:
        warmed_up(server)
        pool = pool_figures(scrape(server.base_url))
        ttft_ms = [_send_round(server.base_url, rounds[0], name, 1)]
        before = scrape(server.base_url)
        ttft_ms += [_send_round(server.base_url, bodies, name, index)
                    for index, bodies in enumerate(rounds[1:], start=2)]
        after = scrape(server.base_url)
    return {**pool, "ttft_ms_by_round": ttft_ms, **returning_figures(ttft_ms, before, after)}


def _send_round(base_url: str, bodies: Sequence[dict], name: str, round_number: int) -> list[float]:
    ttft_ms = [measured_request(base_url, body, f"disk-tier-cycling-{prompt}")["ttft_ms"]
               for prompt, body in enumerate(bodies)]
    print(f"  {name} round {round_number}: TTFT p50 {p50_ms(ttft_ms):.0f} ms", flush=True)
    return ttft_ms


def run_cycling(workload: CyclingWorkload, tokenizer: Any, block_bytes: int, directory: str) -> dict[str, Any]:
    rounds = cycling_rounds(workload)
    prompt_tokens = [len(rendered_prompt(tokenizer, body)) for body in rounds[0]]
    kv_cache_gb = pool_gb(workload.pool_prompts, prompt_tokens, block_bytes)
    flags = ["--kv-cache-gb", f"{kv_cache_gb:.9f}"]
    result: dict[str, Any] = {"workload": asdict(workload), "prompt_tokens": prompt_tokens,
                              "kv_cache_gb": kv_cache_gb}
    result["off"] = run_cycle(rounds, flags, "pagedmlx-disk-tier-off", None)
    result["on"] = run_cycle(rounds, flags, "pagedmlx-disk-tier-on", directory)
    off, on = result["off"]["returning_ttft_p50_ms"], result["on"]["returning_ttft_p50_ms"]
    result["on_over_off_returning_ttft_p50"] = on / off if on is not None and off else None
    return result


# --- report --------------------------------------------------------------------------------------------

def _fmt(value: float | None, spec: str = ".0f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def format_table(report: dict[str, Any]) -> list[str]:
    lines = ["| measurement | value |", "|---|---|"]
    restart = report.get("restart") or {}
    if "cold" in restart and "restart" in restart:
        cold, again, warm = restart["cold"], restart["restart"], restart["warm"]
        lines += [
            f"| restart: prompt tokens (cached on restart) | {cold['prompt_tokens']} ({again['cached_tokens']}) |",
            f"| restart: TTFT cold / restart / warm | {cold['ttft_ms']:.0f} / {again['ttft_ms']:.0f} "
            f"/ {warm['ttft_ms']:.0f} ms |",
            f"| restart: restart / cold (target <= {TARGET_RESTART_OVER_COLD:.2f}) "
            f"| {restart['restart_over_cold_ttft']:.3f} |",
            f"| restart: disk hits (blocks), bytes read | {_fmt(again['disk_hits'])}, "
            f"{_fmt(_mb(again['disk_read_bytes']), '.1f', ' MB')} |",
            f"| restart: server ready cold / restart | {restart['cold_server_ready_s']:.1f} / "
            f"{restart['restart_server_ready_s']:.1f} s |",
        ]
    elif "error" in restart:
        lines.append(f"| restart | FAILED: {restart['error']} |")
    cycling = report.get("cycling") or {}
    if "off" in cycling and "on" in cycling:
        off, on = cycling["off"], cycling["on"]
        lines += [
            f"| cycling: hit rate rounds 2.. off / on | {_fmt(off['returning_hit_rate'], '.1%')} / "
            f"{_fmt(on['returning_hit_rate'], '.1%')} |",
            f"| cycling: returning TTFT p50 off / on | {_fmt(off['returning_ttft_p50_ms'])} / "
            f"{_fmt(on['returning_ttft_p50_ms'])} ms |",
            f"| cycling: on / off TTFT p50 | {_fmt(cycling['on_over_off_returning_ttft_p50'], '.3f')} |",
            f"| cycling: disk hits (blocks), bytes read (on) | {_fmt(on['returning_disk_hits'])}, "
            f"{_fmt(_mb(on['returning_disk_read_bytes']), '.1f', ' MB')} |",
        ]
    elif "error" in cycling:
        lines.append(f"| cycling | FAILED: {cycling['error']} |")
    return lines


def _mb(num_bytes: float | None) -> float | None:
    return None if num_bytes is None else num_bytes / 1e6


def _part(report: dict[str, Any], name: str, run: Callable[[], dict], save: Callable[[], None]) -> None:
    """Run one part into report[name]; a part that fails is reported, and the other still runs."""
    print(f"== {name}", flush=True)
    try:
        report[name] = run()
    except Exception as error:
        print(f"{name}: FAILED: {error}", flush=True)
        report[name] = {"error": f"{type(error).__name__}: {error}"}
    save()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller prompts, fewer of them: a few minutes")
    parser.add_argument("--scale", type=float, help="the restart request's size; 1.0 is the CLI's first "
                        "request (default 1.0; 0.25 with --quick)")
    args = parser.parse_args(argv)
    scale = args.scale if args.scale is not None else (0.25 if args.quick else 1.0)
    workload = QUICK_CYCLING if args.quick else FULL_CYCLING

    from engine.blas import active_blas, ensure_blas_preloaded
    from engine.kv_pool import KVPool
    from engine.model_loader import load_model
    from engine.runner import activation_dtype

    ensure_blas_preloaded()  # the servers inherit LD_PRELOAD from this process
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # unwind: stop the server
    loaded = load_model()  # for the prompts' token counts and the KV bytes per block, as the server has them
    block_bytes = KVPool.bytes_per_block(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, BLOCK_SIZE,
                                         activation_dtype(loaded))
    body = restart_body(scale)
    restart_tokens = len(rendered_prompt(loaded.tokenizer, body))
    context_flags = LONG_CONTEXT_FLAGS if restart_tokens + RESTART_MAX_TOKENS > loaded.max_context else ()
    report: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                              "blas": active_blas(), "quick": args.quick, "scale": scale,
                              "restart_rendered_prompt_tokens": restart_tokens, "block_size": BLOCK_SIZE,
                              "block_bytes": block_bytes, "disk_cache_gb": DISK_CACHE_GB}
    RESULT_PATH.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        RESULT_PATH.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))

    directories = [tempfile.mkdtemp(prefix="pagedmlx-disk-tier-") for _ in range(2)]
    try:
        _part(report, "restart", lambda: run_restart(body, context_flags, directories[0]), save)
        _part(report, "cycling", lambda: run_cycling(workload, loaded.tokenizer, block_bytes, directories[1]),
              save)
    finally:
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)
    print("\n".join(format_table(report)))
    print(f"wrote {RESULT_PATH}")
    return report


if __name__ == "__main__":
    main()
