"""Ratios and targets from one run's results: pagedmlx beside mlx-lm's server and the raw batched forward.

The raw forward is engine_bench's dense mlx-lm decode (KVCache, no server) at the same batch, 256 tokens
of context (the closest case to short prompts plus 64 tokens). Each comparison says which way is better;
a figure a run did not produce is None and its target is "not measured".
"""

from collections.abc import Callable

RAW_CONTEXT = 256
HEADLINE_CONCURRENCY = 16
OURS, MLX_LM = "pagedmlx", "mlx_lm"


def raw_forward_tok_s(engine: dict | None, batch: int) -> float | None:
    for case in (engine or {}).get("results", ()):
        if case["batch"] == batch and case["context"] == RAW_CONTEXT and not case["shared_prefix"]:
            return case["dense_kv_tok_s"]
    return None


def sweep_point(server: dict, concurrency: int) -> dict | None:
    return next((run for run in server.get("sweep", ()) if run["concurrency"] == concurrency), None)


def _get(run: dict | None, *keys: str) -> float | None:
    value = run
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, int | float) else None


# (workload, metric, how to read it from a server's results, True if higher is better)
Metric = tuple[str, str, Callable[[dict], float | None], bool]


def workload_metrics(concurrencies: list[int]) -> list[Metric]:
    metrics: list[Metric] = [
        (f"sweep c={c}", "output tok/s", lambda s, c=c: _get(sweep_point(s, c), "output_throughput"), True)
        for c in concurrencies
    ]
    metrics += [
        ("Poisson arrivals", "median E2E (ms)", lambda s: _get(s.get("poisson"), "median_e2el_ms"), False),
        ("Claude Code sessions", "wall time (s)", lambda s: _get(s.get("claude_code_sessions"), "duration_s"),
         False),
        ("Claude Code sessions", "turn 1 TTFT p50 (ms)",
         lambda s: _get(s.get("claude_code_sessions"), "ttft_by_turn", "1", "median_ttft_ms"), False),
        ("Claude Code sessions", "turn >= 2 TTFT p50 (ms)",
         lambda s: _get(s.get("claude_code_sessions"), "later_turns_median_ttft_ms"), False),
        ("long prompt arriving", "stream gap p99 during prefill (ms)",
         lambda s: _get(s.get("prefill_interference"), "gaps_during", "p99_ms"), False),
    ]
    return metrics


def versus_mlx_lm(servers: dict) -> list[dict]:
    """Each workload's figure for pagedmlx and mlx-lm, the ratio ours / theirs and whether ours is ahead."""
    ours, theirs = servers.get(OURS, {}), servers.get(MLX_LM, {})
    concurrencies = [run["concurrency"] for run in ours.get("sweep", ())]
    rows = []
    for workload, metric, read, higher_is_better in workload_metrics(concurrencies):
        a, b = read(ours), read(theirs)
        ahead = None if a is None or b is None else (a > b if higher_is_better else a < b)
        rows.append({"workload": workload, "metric": metric, "pagedmlx": a, "mlx_lm": b,
                     "ratio": a / b if a is not None and b else None, "ahead": ahead})
    return rows


def versus_raw_forward(servers: dict, engine: dict | None) -> list[dict]:
    """Output tok/s of each server at each concurrency over the raw forward at that batch."""
    rows = []
    for name, server in servers.items():
        for run in server.get("sweep", ()):
            raw = raw_forward_tok_s(engine, run["concurrency"])
            rows.append({"server": name, "concurrency": run["concurrency"], "raw_forward_tok_s": raw,
                         "output_tok_s": run["output_throughput"],
                         "ratio": run["output_throughput"] / raw if raw else None})
    return rows


def _target(name: str, value: float | None, goal: str, met: bool | None) -> dict:
    return {"target": name, "value": value, "goal": goal, "met": met}


def targets(servers: dict, engine: dict | None) -> list[dict]:
    ours = servers.get(OURS, {})
    at_16 = _get(sweep_point(ours, HEADLINE_CONCURRENCY), "output_throughput")
    raw_16 = raw_forward_tok_s(engine, HEADLINE_CONCURRENCY)
    vs_raw = at_16 / raw_16 if at_16 is not None and raw_16 else None
    comparisons = versus_mlx_lm(servers)
    ahead = [row["ahead"] for row in comparisons]
    turns = _get(ours.get("claude_code_sessions"), "later_over_first_turn_ttft_p50")
    gaps = _get(ours.get("prefill_interference"), "p99_during_over_before")
    return [
        _target("output tok/s at c=16 / raw forward at batch 16", vs_raw, ">= 1.0",
                None if vs_raw is None else vs_raw >= 1.0),
        _target("workloads where pagedmlx is ahead of mlx-lm's server",
                sum(1 for a in ahead if a), f"all {len(ahead)}",
                None if None in ahead or not ahead else all(ahead)),
        _target("Claude Code sessions: turn >= 2 TTFT p50 / turn 1 TTFT p50", turns, "<= 0.10",
                None if turns is None else turns <= 0.10),
        _target("stream gap p99 while a cold long prompt prefills / before", gaps, "<= 10",
                None if gaps is None else gaps <= 10),
    ]
