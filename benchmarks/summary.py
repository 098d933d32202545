"""benchmarks/results/summary.md (and summary.json: ratios and targets) from the results of one run."""

import json
import math
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import claude_code_traffic as cc
from benchmarks import comparisons
from benchmarks.prefix_cache_bench import format_table as prefix_cache_rows

RESULTS_DIR = Path(__file__).parent / "results"
SUMMARY_MD = RESULTS_DIR / "summary.md"
SUMMARY_JSON = RESULTS_DIR / "summary.json"
LATENCIES = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E"))


def load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(row) + " |" for row in rows]


VLLM_HEADER = ["completed / failed", "duration (s)", "req/s", "output tok/s"] + \
    [f"{label} mean / p50 / p99 (ms)" for _, label in LATENCIES] + ["prefix-cache hit rate"]


def vllm_cells(run: dict) -> list[str]:
    """vLLM bench's keys of one run, as table cells."""
    cells = [f"{run['completed']} / {run['failed']}", fmt(run["duration_s"]), fmt(run["request_throughput"], 2),
             fmt(run["output_throughput"])]
    cells += [" / ".join(fmt(run[f"{stat}_{key}_ms"], 0) for stat in ("mean", "median", "p99"))
              for key, _ in LATENCIES]
    return cells + [rate(run.get("prefix_cache_hit_rate"))]


def sweep_table(servers: dict, engine: dict | None) -> list[str]:
    rows = []
    for name, server in servers.items():
        rows += [[name, str(run["concurrency"])] + vllm_cells(run) for run in server.get("sweep", ())]
    concurrencies = sorted({run["concurrency"] for server in servers.values() for run in server.get("sweep", ())})
    for batch in concurrencies:
        raw = comparisons.raw_forward_tok_s(engine, batch)
        if raw is not None:
            rows.append([f"raw forward ({comparisons.RAW_CONTEXT} ctx, no server)", str(batch), "-", "-", "-",
                         fmt(raw)] + ["-"] * (len(VLLM_HEADER) - 4))
    return table(["server", "concurrency"] + VLLM_HEADER, rows)


def poisson_table(servers: dict) -> list[str]:
    rows = [[name, f"{run['request_rate']:g} (seed {run['seed']})"] + vllm_cells(run)
            for name, server in servers.items() if (run := server.get("poisson"))]
    return table(["server", "request rate (req/s)"] + VLLM_HEADER, rows)


def sessions_table(servers: dict) -> list[str]:
    runs = {name: run for name, server in servers.items() if (run := server.get("claude_code_sessions"))}
    turns = sorted({int(turn) for run in runs.values() for turn in run["ttft_by_turn"]})
    rows = []
    for name, run in runs.items():
        by_turn = run["ttft_by_turn"]
        rows.append([name, run["endpoint"], f"{run['completed']} / {run['failed']}", fmt(run["duration_s"]),
                     fmt(run["output_throughput"]), f"{run['total_input_tokens']:,}",
                     f"{run['total_cached_tokens']:,}", rate(run.get("prefix_cache_hit_rate"))]
                    + [fmt((by_turn.get(str(turn)) or {}).get("median_ttft_ms"), 0) for turn in turns]
                    + [fmt(run.get("later_over_first_turn_ttft_p50"), 2)])
    return table(["server", "endpoint", "completed / failed", "wall (s)", "output tok/s",
                  "prompt tokens processed", "cached (reported)", "prefix-cache hit rate"]
                 + [f"turn {turn} TTFT p50 (ms)" for turn in turns] + ["turn >= 2 / turn 1 TTFT p50"], rows)


def interference_table(servers: dict) -> list[str]:
    rows = []
    for name, server in servers.items():
        run = server.get("prefill_interference")
        if not run:
            continue
        before, during = run["gaps_before"], run["gaps_during"]
        rows.append([name, str(run["streams"]), str(run["long_prompt_tokens"]), fmt(run["long_prompt_ttft_s"]),
                     f"{fmt(before['p50_ms'], 0)} / {fmt(before['p99_ms'], 0)}",
                     f"{fmt(during['p50_ms'], 0)} / {fmt(during['p99_ms'], 0)} / {fmt(during['max_ms'], 0)}",
                     fmt(run["p99_during_over_before"], 2)])
    return table(["server", "streams", "long prompt tokens", "its TTFT (s)", "gap before p50 / p99 (ms)",
                  "gap during prefill p50 / p99 / max (ms)", "p99 during / before"], rows)


def versus_table(rows: list[dict]) -> list[str]:
    return table(["workload", "metric", "pagedmlx", "mlx_lm", "pagedmlx / mlx_lm", "pagedmlx ahead"],
                 [[row["workload"], row["metric"], fmt(row["pagedmlx"]), fmt(row["mlx_lm"]), fmt(row["ratio"], 2),
                   {True: "yes", False: "no", None: "-"}[row["ahead"]]] for row in rows])


def raw_table(rows: list[dict]) -> list[str]:
    return table(["server", "concurrency", "output tok/s", "raw forward tok/s", "server / raw"],
                 [[row["server"], str(row["concurrency"]), fmt(row["output_tok_s"]), fmt(row["raw_forward_tok_s"]),
                   fmt(row["ratio"], 2)] for row in rows])


def targets_table(rows: list[dict]) -> list[str]:
    return table(["target", "measured", "goal", "met"],
                 [[row["target"], fmt(row["value"], 2), row["goal"],
                   {True: "yes", False: "**no**", None: "not measured"}[row["met"]]] for row in rows])


def serving_section(serving: dict, engine: dict | None, derived: dict) -> list[str]:
    servers = {name: result for name, result in serving["servers"].items() if "error" not in result}
    plan = serving["plan"]
    sessions, interference = plan["sessions"], plan["interference"]
    rendering = serving["claude_code_rendering"]
    lines = [f"## Serving ({serving['machine']}, {serving['cpu_count']} CPUs; same load generator, one server "
             "at a time)", "",
             "### Targets", ""] + targets_table(derived["targets"])
    lines += ["", "### Concurrency sweep: distinct short chat prompts, "
              f"{plan['sweep'][0]['max_tokens']} output tokens each", ""] + sweep_table(servers, engine)
    lines += ["", "### Poisson arrivals (exponential gaps, open loop)", ""] + poisson_table(servers)
    lines += ["", f"### Claude Code sessions: {sessions['sessions']} conversations x {sessions['turns']} turns, "
              f"prompt scale {sessions['prompt_scale']:g}, {sessions['max_tokens']} output tokens a turn", "",
              f"Each turn resends the whole history ({len(cc.CORE_TOOLS)} tools with nested schemas, a per-directory "
              "system block, a mid-conversation system message, tool calls and results, a deferred tool loaded from "
              "turn 3 on). Servers without /v1/messages get "
              "each turn pre-rendered by pagedmlx's renderer as text; renderer's prompt tokens by turn: "
              f"{rendering['rendered_prompt_tokens_by_turn']}, text re-encodes to the same tokens: "
              f"{rendering['text_encodes_to_same_tokens']}.", ""] + sessions_table(servers)
    lines += ["", f"### Streams decoding while a cold long prompt arrives ({interference['streams']} streams)", ""]
    lines += interference_table(servers)
    lines += ["", "### pagedmlx beside mlx-lm's server (same run)", ""] + versus_table(derived["versus_mlx_lm"])
    lines += ["", "### Servers beside the raw batched forward (same run)", ""] + raw_table(derived["versus_raw"])
    lines += [f"- {name} failed: {result['error']}" for name, result in serving["servers"].items()
              if "error" in result]
    return lines + [""]


def engine_section(engine: dict) -> list[str]:
    header = ["batch", "context", "shared prefix", "paged", "pure MLX", "kernels / pure MLX",
              "dense KVCache", "dense BatchKVCache", "paged / KVCache"]
    rows = [[str(case["batch"]), str(case["context"]), "yes" if case["shared_prefix"] else "no",
             fmt(case["paged_tok_s"]), fmt(case.get("pure_mlx_tok_s")), fmt(case.get("kernel_speedup"), 2),
             fmt(case["dense_kv_tok_s"]), fmt(case["dense_batch_tok_s"]),
             fmt(case["ratio_vs_dense_kv"], 2)] for case in engine["results"]]
    lines = ["## Engine: paged runner, its pure-MLX path and mlx-lm's dense batched forward", "",
             f"{engine['model']} ({engine['dtype']}, {engine.get('kernels', 'pure MLX')}), {engine['blas']}, "
             f"{engine['decode_steps']} decode steps x {engine['repeats']} repeats (median), tok/s:", ""]
    lines += table(header, rows) + [""]
    if prefill := engine.get("prefill"):
        lines += [f"A {prefill['chunk']}-token prefill chunk ending at {prefill['context']} tokens of "
                  f"context: {prefill['kernels_s']:.2f} s with the kernels, {prefill['pure_mlx_s']:.2f} s "
                  f"pure MLX ({prefill['kernel_speedup']:.2f}x).", ""]
    return lines


def scheduler_section(scheduler: dict) -> list[str]:
    lines = ["## Scheduler (no HTTP)", "",
             f"Through the scheduler, target step time {scheduler['max_step_ms']:.0f} ms:", ""]
    lines += table(["concurrent requests", "scheduler tok/s", "raw runner.step tok/s", "ratio"],
                   [[str(case["concurrency"]), fmt(case["scheduler_tok_s"]), fmt(case["raw_tok_s"]),
                     fmt(case["ratio"], 2)] for case in scheduler.get("decode", ())])
    lines.append("")
    ttft = scheduler.get("ttft")
    if ttft:
        lines.append(f"- TTFT with a {ttft['prefix_tokens']}-token prefix cached: {ttft['cached_s']:.2f} s vs "
                     f"{ttft['cold_s']:.2f} s cold ({ttft['ratio']:.1%})")
    fair = scheduler.get("fairness")
    if fair:
        lines.append(
            f"- a cold {fair['long_prompt_tokens']}-token prompt's TTFT while three sessions keep sending "
            f"cached turns and short prompts: {fair['long_busy_s']:.0f} s vs {fair['long_alone_s']:.0f} s "
            f"alone ({fair['long_ratio']:.2f}x); their cached turns' TTFT p50 "
            f"{fair['cached_turn']['p50_s']:.1f} s, p99 {fair['cached_turn']['p99_s']:.1f} s")
    return lines + [""]


def prefix_cache_section(prefix_cache: dict) -> list[str]:
    workload = prefix_cache["workload"]
    return ["## Prefix cache: hit rate vs runs", "",
            f"Simulated block manager (no model): {workload['concurrent_sessions']} concurrent agent sessions "
            f"({workload['total_sessions']} in all) sharing a {workload['shared_prefix_tokens']:,}-token prefix; "
            "runs = contiguous block runs per running sequence, per step:", ""] + \
        prefix_cache_rows(prefix_cache["cases"]) + [""]


def write_summary(notes: list[str], quick: bool, blas: str) -> None:
    serving, engine = load("serving_bench"), load("engine_bench")
    scheduler, prefix_cache = load("scheduler_bench"), load("prefix_cache_bench")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# pagedmlx benchmarks ({'quick' if quick else 'full'} run, {when}, {blas})", ""]
    if serving:
        servers = {name: result for name, result in serving["servers"].items() if "error" not in result}
        derived = {"targets": comparisons.targets(servers, engine),
                   "versus_mlx_lm": comparisons.versus_mlx_lm(servers),
                   "versus_raw": comparisons.versus_raw_forward(servers, engine)}
        SUMMARY_JSON.write_text(json.dumps(derived, indent=2))
        lines += serving_section(serving, engine, derived)
    if engine:
        lines += engine_section(engine)
    if scheduler:
        lines += scheduler_section(scheduler)
    if prefix_cache:
        lines += prefix_cache_section(prefix_cache)
    lines += ["## Runs", ""] + [f"- {note}" for note in notes] + [""]
    SUMMARY_MD.write_text("\n".join(lines))
