"""Serving benchmark: pagedmlx beside mlx-lm's own server (same model folder, dtype, BLAS and machine) and
any peers, one server at a time, through the same load generator.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python -m benchmarks.serving_bench [--quick] [--servers pagedmlx,mlx_lm] [--peer URL ...]
        [--sessions S] [--turns T] [--prompt-scale X]

Each server started here runs alone on a free loopback port; after one warm-up request come the
workloads: the concurrency sweep and Poisson arrivals of short chat prompts (benchmarks/workloads.py),
Claude Code sessions (benchmarks/claude_code_sessions.py; servers without /v1/messages get the same
token sequences as text on /v1/completions) and streams decoding while a cold long prompt prefills
(benchmarks/prefill_interference.py). A peer (`--peer URL`, an OpenAI-compatible server already
running) gets the same. Writes benchmarks/results/serving_bench.json after each workload.
"""

import argparse
import asyncio
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import orjson

from benchmarks.claude_code_sessions import SessionsWorkload, Turn, completion_payload, run_sessions, workload_turns
from benchmarks.load_generator import client_session
from benchmarks.prefill_interference import InterferenceWorkload, run_interference
from benchmarks.servers import MLX_LM, PAGEDMLX, ServerKind, ServerProcess, peer, served_model_name
from benchmarks.sse_clients import chat_sender
from benchmarks.workloads import PoissonWorkload, SweepPoint, chat_payload, run_poisson, run_sweep_point
from engine.blas import active_blas, ensure_blas_preloaded

RESULTS = Path(__file__).parent / "results" / "serving_bench.json"
SERVERS = {kind.name: kind for kind in (PAGEDMLX, MLX_LM)}


@dataclass(frozen=True)
class Plan:
    sweep: tuple[SweepPoint, ...]
    poisson: PoissonWorkload
    sessions: SessionsWorkload
    interference: InterferenceWorkload


# Sized for `make bench` (and bench-quick) on a 2-core machine; --sessions, --turns and --prompt-scale
# (1.0: the CLI's ~12k-token first request) size the Claude Code sessions for a bigger one.
FULL = Plan(
    sweep=(SweepPoint(1, 2), SweepPoint(4, 8), SweepPoint(16, 32), SweepPoint(32, 32)),
    poisson=PoissonWorkload(request_rate=1.0, num_requests=16),
    sessions=SessionsWorkload(sessions=3, turns=3, prompt_scale=0.1, max_tokens=24),
    interference=InterferenceWorkload(streams=8, long_prompt_words=1200),
)
QUICK = Plan(
    sweep=(SweepPoint(1, 1, 16), SweepPoint(4, 4, 16), SweepPoint(16, 16, 16)),
    poisson=PoissonWorkload(request_rate=2.0, num_requests=6, max_tokens=16),
    sessions=SessionsWorkload(sessions=1, turns=2, prompt_scale=0.1, max_tokens=8),
    interference=InterferenceWorkload(streams=4, long_prompt_words=300, baseline_s=1.5, after_s=0.5),
)


async def warm_up(base_url: str, model: str, extra_fields: dict) -> None:
    """One short request, so that first-call costs (allocations, compiled graphs) stay out of the figures."""
    async with client_session(1) as session:
        record = await chat_sender(base_url)(session, chat_payload(model, "Say hello.", 8, extra_fields))
    if not record.ok:
        raise RuntimeError(f"warm-up request failed: {record.error}")


def rendered_sessions(conversations: list[list[Turn]]) -> tuple[dict[tuple[int, int], dict], dict]:
    """Every turn rendered by pagedmlx's renderer into a /v1/completions payload (model name left to fill
    in), and what the renderer made of them: prompt tokens per turn, whether the text re-encodes exactly."""
    from engine.model_loader import load_model

    tokenizer = load_model().tokenizer
    payloads, tokens, exact = {}, {}, True
    for turns in conversations:
        for turn in turns:
            payload, same = completion_payload(tokenizer, turn, "")
            payloads[turn.conversation, turn.index] = payload
            tokens.setdefault(str(turn.index), []).append(len(tokenizer.encode(payload["prompt"],
                                                                               add_special_tokens=False)))
            exact &= same
    return payloads, {"rendered_prompt_tokens_by_turn": tokens, "text_encodes_to_same_tokens": exact}


async def run_workloads(server: ServerProcess, plan: Plan, conversations: list[list[Turn]],
                        payloads: dict[tuple[int, int], dict], result: dict, save: Callable[[], None]) -> None:
    """Fill `result` workload by workload, calling `save` after each (a run stopped at its time limit
    keeps what it measured)."""
    kind, base_url = server.kind, server.base_url
    model = served_model_name(base_url)
    await warm_up(base_url, model, kind.extra_fields)
    result.update(model=model, sweep=[])
    for point in plan.sweep:
        result["sweep"].append(await run_sweep_point(base_url, model, point, kind.extra_fields, kind.name))
        _print_run(kind.name, f"c={point.concurrency}", result["sweep"][-1])
        save()
    result["poisson"] = await run_poisson(base_url, model, plan.poisson, kind.extra_fields, kind.name)
    _print_run(kind.name, f"poisson {plan.poisson.request_rate:g} req/s", result["poisson"])
    save()
    completions = None if kind.speaks_anthropic else {key: {**p, "model": model} for key, p in payloads.items()}
    result["claude_code_sessions"] = {
        "endpoint": "/v1/messages" if completions is None else "/v1/completions (pre-rendered)",
        **await run_sessions(base_url, conversations, completions, f"{kind.name} sessions")}
    _print_run(kind.name, "Claude Code sessions", result["claude_code_sessions"])
    save()
    result["prefill_interference"] = await run_interference(base_url, model, plan.interference,
                                                            kind.extra_fields, kind.name)
    gaps = result["prefill_interference"]
    print(f"  {kind.name} gaps p99 before {gaps['gaps_before']['p99_ms']:.0f} ms, during the long prefill "
          f"{gaps['gaps_during']['p99_ms']:.0f} ms", flush=True)
    save()


def _print_run(server: str, what: str, summary: dict) -> None:
    print(f"  {server} {what}: {summary['output_throughput']:.1f} tok/s, median TTFT "
          f"{summary['median_ttft_ms']:.0f} ms, {summary['completed']} done, {summary['failed']} failed, "
          f"prefix-cache hit rate {summary['prefix_cache_hit_rate']}", flush=True)


def bench_server(kind: ServerKind, plan: Plan, conversations: list[list[Turn]],
                 payloads: dict[tuple[int, int], dict], result: dict, save: Callable[[], None]) -> None:
    print(f"{kind.name}: starting", flush=True)
    started = time.perf_counter()
    try:
        with ServerProcess(kind) as server:
            print(f"{kind.name}: ready on {server.base_url} after {time.perf_counter() - started:.1f} s", flush=True)
            asyncio.run(run_workloads(server, plan, conversations, payloads, result, save))
    except Exception as error:  # a server that fails is reported, and the others still run
        print(f"{kind.name}: FAILED: {error}", flush=True)
        result["error"] = f"{type(error).__name__}: {error}"
        save()


def chosen_plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    sessions = {name: value for name, value in (("sessions", args.sessions), ("turns", args.turns),
                                                ("prompt_scale", args.prompt_scale)) if value is not None}
    return replace(plan, sessions=replace(plan.sessions, **sessions))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter requests: a minute or two")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated, from {', '.join(SERVERS)} (default: all); '' for none")
    parser.add_argument("--peer", action="append", default=[], metavar="URL",
                        help="also drive this running OpenAI-compatible server (repeatable)")
    parser.add_argument("--sessions", type=int, help="Claude Code conversations at once")
    parser.add_argument("--turns", type=int, help="turns per conversation")
    parser.add_argument("--prompt-scale", type=float,
                        help="size of the Claude Code prompts' text parts; 1.0 is the CLI's (~12k tokens)")
    args = parser.parse_args(argv)
    names = [name for name in args.servers.split(",") if name]
    unknown = set(names) - set(SERVERS)
    if unknown:
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    ensure_blas_preloaded()  # the servers inherit LD_PRELOAD from this process
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # unwind: stop the server

    plan = chosen_plan(args)
    conversations = workload_turns(plan.sessions)
    payloads, rendering = rendered_sessions(conversations)
    report = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "blas": active_blas(), "quick": args.quick, "plan": asdict(plan),
              "claude_code_rendering": rendering, "servers": {}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        RESULTS.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))

    for kind in [SERVERS[name] for name in names] + [peer(url) for url in args.peer]:
        bench_server(kind, plan, conversations, payloads, report["servers"].setdefault(kind.name, {}), save)
    print(f"wrote {RESULTS}")
    return report


if __name__ == "__main__":
    main()
