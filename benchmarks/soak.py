"""`make soak`: a bounded soak of a pagedmlx server on loopback, mixed load at a fixed concurrency.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python -m benchmarks.soak [--duration-s 600] [--concurrency 16] [--port P --pid PID]
        [--seed N] [--json PATH]

Starts a server on a free 127.0.0.1 port (or drives the one at --port, whose process --pid names), then
`concurrency` workers send requests back to back until the duration is up (benchmarks/soak_workload.py:
both APIs, streams and not, tools, aborts, shared prefixes, over-long prompts); the requests in flight then
finish, each bounded by its timeout. The server's RSS and its KV pool's size are sampled every second.
Once the server is idle come its used KV blocks (/health) and its counters over the run (/metrics); the
table is printed, and the exit status is 1 when a check failed (benchmarks/soak_report.py).
"""

import argparse
import asyncio
import contextlib
import itertools
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson

from benchmarks.load_generator import client_session
from benchmarks.servers import ServerKind, ServerProcess, pagedmlx_command
from benchmarks.soak_client import FAILED, Outcome, run_request
from benchmarks.soak_metrics import kv_pool_bytes, server_figures
from benchmarks.soak_report import SoakResult, format_report
from benchmarks.soak_rss import MemorySample, rss_bytes
from benchmarks.soak_workload import Plan

SOAK_MAX_MODEL_LEN = 2048
SOAK_SERVER = ServerKind("pagedmlx-soak", lambda port: [*pagedmlx_command(port),
                                                        "--max-model-len", str(SOAK_MAX_MODEL_LEN)])
IDLE_TIMEOUT_S = 60.0
SCRAPE_TIMEOUT_S = 10.0
PROGRESS_EVERY_S = 30.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")

async def _get(session: aiohttp.ClientSession, url: str, timeout_s: float = 60.0) -> bytes:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
        response.raise_for_status()
        return await response.read()


async def wait_until_idle(session: aiohttp.ClientSession, base_url: str) -> dict | None:
    """/health once nothing runs or waits; None if that does not happen within IDLE_TIMEOUT_S."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while time.monotonic() < deadline:
        health = orjson.loads(await _get(session, f"{base_url}/health"))
        if health["num_requests_running"] == 0 and health["num_requests_waiting"] == 0:
            return health
        await asyncio.sleep(0.2)
    return None


async def _worker(session: aiohttp.ClientSession, base_url: str, plan: Plan, numbers: itertools.count,
                  deadline: float, outcomes: list[Outcome]) -> None:
    while time.monotonic() < deadline:
        outcomes.append(await run_request(session, base_url, plan.request(next(numbers))))


async def _watch(session: aiohttp.ClientSession, base_url: str, pid: int, start: float,
                 samples: list[MemorySample], outcomes: list[Outcome]) -> None:
    """Sample the memory every second (until cancelled) and print progress now and then; a tick whose
    /metrics does not answer in time is skipped."""
    next_progress_s = PROGRESS_EVERY_S
    while True:
        at_s, rss = time.monotonic() - start, rss_bytes(pid)
        try:
            kv_pool = kv_pool_bytes((await _get(session, f"{base_url}/metrics", SCRAPE_TIMEOUT_S)).decode())
        except (aiohttp.ClientError, asyncio.TimeoutError):
            kv_pool = None
        if rss is not None and kv_pool is not None:
            samples.append(MemorySample(at_s, rss, kv_pool))
        if at_s >= next_progress_s and samples:
            failed = sum(1 for outcome in outcomes if outcome.status == FAILED)
            print(f"[{at_s:4.0f} s] {len(outcomes)} requests done, {failed} failed, RSS "
                  f"{samples[-1].rss / 2**20:.0f} MiB ({samples[-1].kv_pool / 2**20:.0f} MiB KV pool)", flush=True)
            next_progress_s += PROGRESS_EVERY_S
        await asyncio.sleep(1.0)


async def run_soak(base_url: str, pid: int, duration_s: float, concurrency: int, seed: int = 0) -> SoakResult:
    """Soak the server at `base_url` (a loopback address) whose process is `pid`."""
    if urlsplit(base_url).hostname not in LOOPBACK:
        raise ValueError(f"the soak only drives a server on loopback, not {base_url}")
    async with client_session(concurrency + 1) as session:  # one more for the watcher's scrapes
        models = orjson.loads(await _get(session, f"{base_url}/v1/models"))
        plan = Plan(models["data"][0]["max_model_len"], seed)
        before_text = (await _get(session, f"{base_url}/metrics")).decode()
        outcomes: list[Outcome] = []
        memory: list[MemorySample] = []
        start = time.monotonic()
        watcher = asyncio.create_task(_watch(session, base_url, pid, start, memory, outcomes))
        numbers = itertools.count()
        await asyncio.gather(*(_worker(session, base_url, plan, numbers, start + duration_s, outcomes)
                               for _ in range(concurrency)))
        wall_s = time.monotonic() - start
        health = await wait_until_idle(session, base_url)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        after_text = (await _get(session, f"{base_url}/metrics")).decode()
    used_blocks = None if health is None else health["kv_cache_blocks"] - health["kv_cache_free_blocks"]
    return SoakResult(duration_s, concurrency, wall_s, outcomes, memory, used_blocks,
                      server_figures(before_text, after_text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--port", type=int, help="soak the server already on 127.0.0.1:PORT")
    parser.add_argument("--pid", type=int, help="that server's process id, for its RSS (with --port)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request plan")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if (args.port is None) != (args.pid is None):
        parser.error("--port and --pid go together")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # unwind: stop our server

    def soak(base_url: str, pid: int) -> SoakResult:
        return asyncio.run(run_soak(base_url, pid, args.duration_s, args.concurrency, args.seed))

    if args.port is not None:
        result = soak(f"http://127.0.0.1:{args.port}", args.pid)
    else:
        with ServerProcess(SOAK_SERVER) as server:
            print(f"server on {server.base_url}, log {server.log_path}", flush=True)
            result = soak(server.base_url, server.pid)
    print(format_report(result))
    if args.json:
        args.json.write_text(orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2).decode())
    return 1 if result.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
