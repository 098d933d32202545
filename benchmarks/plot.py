"""docs/bench.png from benchmarks/results/*.json: output throughput against concurrency (pagedmlx, mlx-lm's
server, and the raw batched forward without a server) and TTFT bars (pagedmlx beside mlx-lm).

    .venv/bin/python -m benchmarks.plot
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

RESULTS_DIR = Path(__file__).parent / "results"
OUTPUT = Path(__file__).parent.parent / "docs" / "bench.png"
RAW_CONTEXT = 256
COLORS = {"pagedmlx": "tab:blue", "mlx_lm": "tab:orange", "raw forward": "tab:gray"}
LABELS = {"pagedmlx": "pagedmlx", "mlx_lm": "mlx-lm server", "raw forward": f"raw forward ({RAW_CONTEXT} ctx)"}


def _load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def throughput_curves(serve: dict | None, engine: dict | None) -> dict[str, list[tuple[int, float]]]:
    """Series name -> [(concurrency or batch, output tok/s)]."""
    curves = {}
    for name, result in ((serve or {}).get("servers") or {}).items():
        points = [(run["concurrency"], run["output_throughput"]) for run in result.get("throughput", ())]
        if points:
            curves[name] = points
    raw = [(case["batch"], case["dense_kv_tok_s"]) for case in (engine or {}).get("results", ())
           if case["context"] == RAW_CONTEXT and not case["shared_prefix"]]
    if raw:
        curves["raw forward"] = sorted(raw)
    return curves


def ttft_bars(serve: dict | None) -> dict[str, dict[str, float]]:
    """Server -> {bar label: mean TTFT in seconds}."""
    bars = {}
    for name, result in ((serve or {}).get("servers") or {}).items():
        values = {}
        busiest = max(result.get("throughput", ()), key=lambda run: run["concurrency"], default=None)
        if busiest:
            values[f"short prompts\nc={busiest['concurrency']}"] = busiest["mean_ttft_ms"] / 1000
        sessions = result.get("agent_sessions") or {}
        for key, label in (("first_turn_ttft", "agent sessions\nfirst turn"),
                           ("later_turn_ttft", "agent sessions\nlater turns")):
            mean = (sessions.get(key) or {}).get("mean_s")
            if mean is not None:
                values[label] = mean
        if values:
            bars[name] = values
    return bars


def draw(curves: dict, bars: dict, output: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, points in curves.items():
        xs, ys = zip(*points)
        left.plot(xs, ys, marker="o", color=COLORS.get(name), label=LABELS.get(name, name),
                  linestyle="--" if name == "raw forward" else "-")
    left.set_xscale("log", base=2)
    ticks = sorted({x for points in curves.values() for x, _ in points})
    left.set_xticks(ticks, [str(tick) for tick in ticks])
    left.set_xlabel("concurrent requests (batch for the raw forward)")
    left.set_ylabel("output tokens / s")
    left.set_title("Decode throughput, short prompts, 64 tokens each")
    left.grid(True, alpha=0.3)
    left.legend()

    labels = list(dict.fromkeys(label for values in bars.values() for label in values))
    width = 0.8 / max(len(bars), 1)
    for index, (name, values) in enumerate(bars.items()):
        positions = [i + (index - (len(bars) - 1) / 2) * width for i in range(len(labels))]
        heights = [values.get(label, 0.0) for label in labels]
        drawn = right.bar(positions, heights, width, color=COLORS.get(name), label=LABELS.get(name, name))
        right.bar_label(drawn, fmt="%.1f", fontsize=8)
    right.set_xticks(range(len(labels)), labels)
    right.set_ylabel("mean time to first token (s)")
    right.set_title("TTFT (lower is better)")
    right.legend()

    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)


def main() -> None:
    serve, engine = _load("serve_bench"), _load("engine_bench")
    curves, bars = throughput_curves(serve, engine), ttft_bars(serve)
    if not curves and not bars:
        print("no results to plot")
        return
    draw(curves, bars, OUTPUT)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
