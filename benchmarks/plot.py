"""The benchmark plots in docs/ from benchmarks/results/*.json:

- bench.png: output throughput and median TTFT against concurrency (each server, and the raw batched
  forward without a server);
- bench_turns.png: TTFT by turn of the Claude Code sessions;
- bench_prefill_itl.png: the inter-token gaps of running streams over time, before and while a cold long
  prompt prefills.

    .venv/bin/python -m benchmarks.plot
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from benchmarks.comparisons import RAW_CONTEXT, raw_forward_tok_s  # noqa: E402
from benchmarks.summary import load  # noqa: E402

DOCS = Path(__file__).parent.parent / "docs"
THROUGHPUT_PNG = DOCS / "bench.png"
TURNS_PNG = DOCS / "bench_turns.png"
PREFILL_PNG = DOCS / "bench_prefill_itl.png"
RAW = "raw forward"
COLORS = {"pagedmlx": "tab:blue", "mlx_lm": "tab:orange", RAW: "tab:gray"}
LABELS = {"pagedmlx": "pagedmlx", "mlx_lm": "mlx-lm server", RAW: f"raw forward ({RAW_CONTEXT} ctx, no server)"}


def _style(name: str) -> dict:
    return {"color": COLORS.get(name), "label": LABELS.get(name, name)}


def sweep_series(servers: dict, engine: dict | None, key: str) -> dict[str, list[tuple[int, float]]]:
    """Server -> [(concurrency, run[key])], and for output throughput the raw forward at those batches."""
    series = {name: [(run["concurrency"], run[key]) for run in server.get("sweep", ())]
              for name, server in servers.items() if server.get("sweep")}
    if key == "output_throughput":
        batches = sorted({c for points in series.values() for c, _ in points})
        raw = [(b, tok_s) for b in batches if (tok_s := raw_forward_tok_s(engine, b)) is not None]
        if raw:
            series[RAW] = raw
    return series


def draw_throughput(servers: dict, engine: dict | None, output: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, key, ylabel, title in (
            (left, "output_throughput", "output tokens / s", "Output throughput, short prompts"),
            (right, "median_ttft_ms", "median TTFT (ms)", "Time to first token (lower is better)")):
        series = sweep_series(servers, engine, key)
        for name, points in series.items():
            xs, ys = zip(*points)
            axis.plot(xs, ys, marker="o", linestyle="--" if name == RAW else "-", **_style(name))
        ticks = sorted({x for points in series.values() for x, _ in points})
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks, [str(tick) for tick in ticks])
        axis.set_xlabel("concurrent requests (batch for the raw forward)")
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend()
    right.set_yscale("log")
    _save(figure, output)


def turn_series(servers: dict) -> dict[str, list[tuple[int, float]]]:
    """Server -> [(turn, median TTFT in seconds)] of the Claude Code sessions."""
    series = {}
    for name, server in servers.items():
        by_turn = (server.get("claude_code_sessions") or {}).get("ttft_by_turn") or {}
        points = sorted((int(turn), stats["median_ttft_ms"] / 1000) for turn, stats in by_turn.items()
                        if stats["median_ttft_ms"] == stats["median_ttft_ms"])  # NaN: no turn succeeded
        if points:
            series[name] = points
    return series


def draw_turns(servers: dict, output: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    series = turn_series(servers)
    for name, points in series.items():
        xs, ys = zip(*points)
        axis.plot(xs, ys, marker="o", **_style(name))
    axis.set_xticks(sorted({x for points in series.values() for x, _ in points}))
    axis.set_xlabel("conversation turn")
    axis.set_ylabel("median TTFT (s)")
    axis.set_title("Claude Code sessions: TTFT by turn")
    axis.grid(True, alpha=0.3)
    axis.legend()
    _save(figure, output)


def gap_points(run: dict) -> list[tuple[float, float]]:
    """(arrival time from the long prompt's arrival in s, gap in ms) of every stream token after its first."""
    zero = run["long_sent_s"]
    return [(later - zero, (later - earlier) * 1000) for times in run["timeline"]
            for earlier, later in zip(times, times[1:])]


def draw_prefill(servers: dict, output: Path) -> None:
    runs = {name: server["prefill_interference"] for name, server in servers.items()
            if server.get("prefill_interference")}
    figure, axes = plt.subplots(len(runs), 1, figsize=(10, 3.2 * len(runs)), squeeze=False, sharex=True)
    for axis, (name, run) in zip(axes[:, 0], runs.items()):
        points = gap_points(run)
        if points:
            axis.scatter(*zip(*points), s=6, **_style(name))
        axis.axvspan(0, run["long_first_token_s"] - run["long_sent_s"], color="tab:red", alpha=0.12,
                     label=f"cold {run['long_prompt_tokens']}-token prompt prefilling")
        axis.set_yscale("log")
        axis.set_ylabel("inter-token gap (ms)")
        axis.set_title(f"{LABELS.get(name, name)}: {run['streams']} streams; gap p99 "
                       f"{run['gaps_before']['p99_ms']:.0f} ms before, {run['gaps_during']['p99_ms']:.0f} ms during")
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper left")
    axes[-1, 0].set_xlabel("time from the long prompt's arrival (s)")
    _save(figure, output)


def _save(figure, output: Path) -> None:
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    print(f"wrote {output}")


def main() -> None:
    serving, engine = load("serving_bench"), load("engine_bench")
    servers = {name: result for name, result in ((serving or {}).get("servers") or {}).items()
               if "error" not in result}
    if not servers:
        print("no serving results to plot")
        return
    draw_throughput(servers, engine, THROUGHPUT_PNG)
    draw_turns(servers, TURNS_PNG)
    draw_prefill(servers, PREFILL_PNG)


if __name__ == "__main__":
    main()
