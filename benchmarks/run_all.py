"""`make bench`: every benchmark in turn, then benchmarks/results/summary.md and docs/bench.png.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python -m benchmarks.run_all [--quick]

engine_bench (the raw batched forward beside our paged runner), scheduler_bench and serve_bench (ours
beside mlx-lm's server) each run as a subprocess with a time limit, in that order so that serve_bench can
read the raw figure engine_bench wrote in this same run; prefix_cache_bench (pure Python, seconds) comes
last. A benchmark whose module is absent or that fails is noted in the summary and the rest still run.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import plot
from benchmarks.prefix_cache_bench import format_table as prefix_cache_rows
from engine.blas import active_blas, ensure_blas_preloaded

RESULTS_DIR = Path(__file__).parent / "results"
SUMMARY = RESULTS_DIR / "summary.md"
# (module, time limit in seconds of the full run, of the --quick run)
BENCHMARKS = (
    ("benchmarks.engine_bench", 600, 240),
    ("benchmarks.scheduler_bench", 1500, 480),
    ("benchmarks.serve_bench", 600, 420),
    ("benchmarks.prefix_cache_bench", 180, 60),
)
STOP_GRACE_S = 20


def run_benchmark(module: str, limit_s: float, quick: bool) -> str:
    """Run one benchmark module as a subprocess; returns a one-line note of how it went."""
    if importlib.util.find_spec(module) is None:
        return f"{module}: skipped (module not present)"
    print(f"== {module}", flush=True)
    start = time.perf_counter()
    # Its own process group, so that a benchmark stopped at its limit takes its servers down with it.
    process = subprocess.Popen([sys.executable, "-m", module, *(["--quick"] if quick else [])],
                               start_new_session=True)
    try:
        status = process.wait(limit_s)
    except subprocess.TimeoutExpired:
        stop_process_group(process)
        return f"{module}: stopped after its {limit_s:.0f} s limit"
    except BaseException:  # Ctrl-C or SIGTERM: the group is not in our terminal's, so pass the stop on
        stop_process_group(process)
        raise
    elapsed = time.perf_counter() - start
    if status != 0:
        return f"{module}: failed with status {status} after {elapsed:.0f} s"
    return f"{module}: ran in {elapsed:.0f} s"


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the benchmark and every process it started, SIGKILL to what outlives the grace period."""
    _signal_group(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_GRACE_S)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _signal_group(group_id: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(group_id, signum)


def _load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def throughput_table(servers: dict) -> list[str]:
    lines = [
        "| server | concurrency | requests | req/s | output tok/s | TTFT mean / median / p99 (ms) "
        "| TPOT mean / median / p99 (ms) | ITL mean / median / p99 (ms) | E2E mean / median / p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in servers.items():
        for run in result.get("throughput", ()):
            cells = [name, str(run["concurrency"]), f"{run['completed']}/{run['num_requests']}",
                     _fmt(run["request_throughput"], 2), _fmt(run["output_throughput"])]
            for metric in ("ttft", "tpot", "itl", "e2el"):
                cells.append(" / ".join(_fmt(run[f"{stat}_{metric}_ms"], 0) for stat in ("mean", "median", "p99")))
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def sessions_table(servers: dict) -> list[str]:
    lines = [
        "| server | sessions x turns | wall (s) | first-turn TTFT mean / max (s) | later-turn TTFT mean / max (s) "
        "| output tokens | cached prompt tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in servers.items():
        sessions = result.get("agent_sessions")
        if not sessions:
            continue
        first, later = sessions["first_turn_ttft"], sessions["later_turn_ttft"]
        lines.append(
            f"| {name} | {sessions['num_sessions']} x {sessions['num_turns']} | {_fmt(sessions['sessions_wall_s'])} "
            f"| {_fmt(first['mean_s'], 2)} / {_fmt(first['max_s'], 2)} "
            f"| {_fmt(later['mean_s'], 2)} / {_fmt(later['max_s'], 2)} "
            f"| {sessions['total_output_tokens']} | {sessions['total_cached_tokens']} |"
        )
    return lines


def ratio_lines(ratios: dict) -> list[str]:
    labels = (
        ("output_throughput_ours_vs_mlx_lm", "pagedmlx / mlx-lm, output tok/s at concurrency 16"),
        ("output_throughput_ours_vs_raw_forward", "pagedmlx / raw batched forward, output tok/s at 16"),
        ("mlx_lm_vs_raw_forward", "mlx-lm / raw batched forward, output tok/s at 16"),
        ("sessions_speedup_vs_mlx_lm", "agent sessions wall time, mlx-lm / pagedmlx"),
        ("first_turn_ttft_speedup_vs_mlx_lm", "agent first-turn TTFT, mlx-lm / pagedmlx"),
    )
    lines = [f"- {label}: {'-' if ratios.get(key) is None else f'{ratios[key]:.2f}x'}" for key, label in labels]
    lines.append(f"- raw batched forward: {_fmt(ratios.get('raw_forward_tok_s'))} tok/s "
                 f"({ratios.get('raw_forward_case')})")
    return lines


def engine_table(engine: dict) -> list[str]:
    lines = [
        f"{engine['model']} ({engine['dtype']}), {engine['blas']}, {engine['decode_steps']} decode steps "
        f"x {engine['repeats']} repeats (median), tok/s:",
        "",
        "| batch | context | shared prefix | paged | dense KVCache | dense BatchKVCache | paged / KVCache |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in engine["results"]:
        lines.append(
            f"| {case['batch']} | {case['context']} | {'yes' if case['shared_prefix'] else 'no'} "
            f"| {_fmt(case['paged_tok_s'])} | {_fmt(case['dense_kv_tok_s'])} | {_fmt(case['dense_batch_tok_s'])} "
            f"| {_fmt(case['ratio_vs_dense_kv'], 2)} |"
        )
    return lines


def scheduler_table(scheduler: dict) -> list[str]:
    ttft, itl = scheduler["ttft"], scheduler["itl"]
    busy = itl["while_prefilling"]
    lines = [
        f"Through the scheduler (no HTTP), target step time {scheduler['max_step_ms']:.0f} ms:",
        "",
        "| concurrent requests | scheduler tok/s | raw runner.step tok/s | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {case['concurrency']} | {_fmt(case['scheduler_tok_s'])} | {_fmt(case['raw_tok_s'])} "
              f"| {_fmt(case['ratio'], 2)} |" for case in scheduler["decode"]]
    lines += [
        "",
        f"- TTFT with a {ttft['prefix_tokens']}-token prefix cached: {ttft['cached_s']:.2f} s vs "
        f"{ttft['cold_s']:.2f} s cold ({ttft['ratio']:.1%})",
        f"- inter-token gap of 8 streams, alone: p50 {itl['alone']['p50_ms']:.0f} ms, p99 "
        f"{itl['alone']['p99_ms']:.0f} ms; while a cold {itl['long_prompt_tokens']}-token prompt is "
        f"prefilled: p50 {busy['p50_ms']:.0f} ms, p99 {busy['p99_ms']:.0f} ms, max {busy['max_ms']:.0f} ms "
        f"(p99 = {itl['p99_over_target']:.2f}x the step target, "
        f"{busy['p99_ms'] / itl['alone']['p99_ms']:.1f}x the gap alone; the long prompt's TTFT "
        f"{busy['long_prompt_ttft_s']:.0f} s)",
    ]
    fair = scheduler.get("fairness")
    if fair:
        lines.append(
            f"- a cold {fair['long_prompt_tokens']}-token prompt's TTFT while three sessions keep sending "
            f"cached turns and short prompts: {fair['long_busy_s']:.0f} s vs {fair['long_alone_s']:.0f} s "
            f"alone ({fair['long_ratio']:.2f}x); their cached turns' TTFT p50 "
            f"{fair['cached_turn']['p50_s']:.1f} s, p99 {fair['cached_turn']['p99_s']:.1f} s")
    return lines


def prefix_cache_table(prefix_cache: dict) -> list[str]:
    workload = prefix_cache["workload"]
    return [
        f"Simulated block manager (no model): {workload['concurrent_sessions']} concurrent agent sessions "
        f"({workload['total_sessions']} in all) sharing a {workload['shared_prefix_tokens']:,}-token prefix; "
        "runs = contiguous block runs per running sequence, per step:",
        "",
    ] + prefix_cache_rows(prefix_cache["cases"])


def write_summary(notes: list[str], quick: bool) -> None:
    serve, engine, scheduler = _load("serve_bench"), _load("engine_bench"), _load("scheduler_bench")
    prefix_cache = _load("prefix_cache_bench")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# pagedmlx benchmarks ({'quick' if quick else 'full'} run, {when}, {active_blas()})", ""]
    if serve:
        servers = serve["servers"]
        lines += [f"## Serving ({serve['machine']}, {serve['cpu_count']} CPUs; same load generator, "
                  "one server at a time)", "", "Short prompts, 64 output tokens each:", ""]
        lines += throughput_table(servers)
        lines += ["", "Agent sessions sharing a ~1k-token system prompt with 8 tools, history resent every turn:",
                  ""]
        lines += sessions_table(servers)
        lines += ["", "Ratios (same run):", ""] + ratio_lines(serve["ratios"])
        lines += [f"- {name} failed: {result['error']}" for name, result in servers.items() if "error" in result]
        lines.append("")
    if engine:
        lines += ["## Engine: paged runner beside mlx-lm's dense batched forward", ""] + engine_table(engine) + [""]
    if scheduler:
        lines += ["## Scheduler", ""] + scheduler_table(scheduler) + [""]
    if prefix_cache:
        lines += ["## Prefix cache: hit rate vs runs", ""] + prefix_cache_table(prefix_cache) + [""]
    lines += ["## Runs", ""] + [f"- {note}" for note in notes] + [""]
    SUMMARY.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and requests: a few minutes")
    args = parser.parse_args(argv)
    ensure_blas_preloaded()  # the benchmarks and the servers inherit LD_PRELOAD from this process
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # unwind: stop the running one

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for stale in RESULTS_DIR.glob("*.json"):
        stale.unlink()  # a benchmark that fails this time must not leave last run's figures in the summary
    start = time.perf_counter()
    notes = [run_benchmark(module, quick_limit_s if args.quick else limit_s, args.quick)
             for module, limit_s, quick_limit_s in BENCHMARKS]
    notes.append(f"total {time.perf_counter() - start:.0f} s")
    for note in notes:
        print(note, flush=True)
    write_summary(notes, args.quick)
    print(f"wrote {SUMMARY}")
    plot.main()


if __name__ == "__main__":
    main()
