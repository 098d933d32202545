"""Ratios, targets and the markdown summary from synthetic results (no benchmark runs)."""

import json

import pytest

from benchmarks import comparisons, summary


def _run(output_tok_s: float, **extra) -> dict:
    keys = {f"{stat}_{metric}_ms": 100.0 for stat in ("mean", "median", "p99")
            for metric in ("ttft", "tpot", "itl", "e2el")}
    return {"completed": 4, "failed": 0, "duration_s": 2.0, "request_throughput": 2.0,
            "output_throughput": output_tok_s, "total_input_tokens": 400, "total_cached_tokens": 100,
            "prefix_cache_hit_rate": 0.25, **keys, **extra}


def _sessions(turn_1_ms: float, later_ms: float, wall_s: float) -> dict:
    return {**_run(5.0, duration_s=wall_s), "endpoint": "/v1/messages",
            "ttft_by_turn": {"1": {"median_ttft_ms": turn_1_ms}, "2": {"median_ttft_ms": later_ms}},
            "later_turns_median_ttft_ms": later_ms, "later_over_first_turn_ttft_p50": later_ms / turn_1_ms}


def _interference(before_ms: float, during_ms: float) -> dict:
    return {"streams": 8, "long_prompt_tokens": 1500, "long_prompt_ttft_s": 9.0, "long_sent_s": 5.0,
            "long_first_token_s": 14.0, "timeline": [[4.0, 4.1, 6.0, 14.5]],
            "gaps_before": {"p50_ms": before_ms, "p99_ms": before_ms}, "gaps_during":
            {"p50_ms": during_ms, "p99_ms": during_ms, "max_ms": during_ms},
            "p99_during_over_before": during_ms / before_ms}


SERVERS = {
    "pagedmlx": {"sweep": [_run(20.0, concurrency=1), _run(150.0, concurrency=16)],
                 "poisson": _run(30.0, request_rate=1.0, seed=0, median_e2el_ms=900.0),
                 "claude_code_sessions": _sessions(10_000.0, 500.0, 40.0),
                 "prefill_interference": _interference(100.0, 300.0)},
    "mlx_lm": {"sweep": [_run(22.0, concurrency=1), _run(100.0, concurrency=16)],
               "poisson": _run(30.0, request_rate=1.0, seed=0, median_e2el_ms=1200.0),
               "claude_code_sessions": _sessions(20_000.0, 4000.0, 80.0),
               "prefill_interference": _interference(100.0, 5000.0)},
}


def _engine_case(batch: int, context: int, dense_kv_tok_s: float) -> dict:
    return {"batch": batch, "context": context, "shared_prefix": False, "dense_kv_tok_s": dense_kv_tok_s,
            "paged_tok_s": dense_kv_tok_s, "dense_batch_tok_s": dense_kv_tok_s, "ratio_vs_dense_kv": 1.0}


ENGINE = {"results": [_engine_case(16, 256, 120.0), _engine_case(16, 2048, 60.0), _engine_case(1, 256, 25.0)]}


def test_versus_mlx_lm_says_who_is_ahead_in_each_direction():
    rows = {(row["workload"], row["metric"]): row for row in comparisons.versus_mlx_lm(SERVERS)}
    assert rows["sweep c=1", "output tok/s"]["ahead"] is False
    assert rows["sweep c=16", "output tok/s"]["ratio"] == pytest.approx(1.5)
    assert rows["Poisson arrivals", "median E2E (ms)"]["ahead"] is True
    assert rows["Claude Code sessions", "wall time (s)"]["ahead"] is True
    assert rows["long prompt arriving", "stream gap p99 during prefill (ms)"]["ahead"] is True


def test_versus_raw_forward_uses_the_short_context_at_the_same_batch():
    rows = {(row["server"], row["concurrency"]): row for row in comparisons.versus_raw_forward(SERVERS, ENGINE)}
    assert rows["pagedmlx", 16]["ratio"] == pytest.approx(150 / 120)
    assert rows["mlx_lm", 1]["raw_forward_tok_s"] == 25.0


def test_targets_report_values_and_whether_they_were_met():
    targets = {row["target"]: row for row in comparisons.targets(SERVERS, ENGINE)}
    raw = targets["output tok/s at c=16 / raw forward at batch 16"]
    assert raw["value"] == pytest.approx(1.25) and raw["met"] is True
    ahead = targets["workloads where pagedmlx is ahead of mlx-lm's server"]
    assert ahead["met"] is False and ahead["value"] == 6
    assert targets["Claude Code sessions: turn >= 2 TTFT p50 / turn 1 TTFT p50"]["met"] is True
    assert targets["stream gap p99 while a cold long prompt prefills / before"]["value"] == pytest.approx(3.0)
    assert all(row["met"] is None for row in comparisons.targets({}, None))


def test_summary_markdown_and_json(tmp_path, monkeypatch):
    serving = {"machine": "x86_64", "cpu_count": 2, "blas": "OpenBLAS", "servers": SERVERS,
               "claude_code_rendering": {"rendered_prompt_tokens_by_turn": {"1": [900]},
                                         "text_encodes_to_same_tokens": True},
               "plan": {"sweep": [{"max_tokens": 64}], "sessions": {"sessions": 2, "turns": 2, "prompt_scale": 0.2,
                                                                    "max_tokens": 16},
                        "interference": {"streams": 8}}}
    (tmp_path / "serving_bench.json").write_text(json.dumps(serving))
    (tmp_path / "engine_bench.json").write_text(json.dumps({**ENGINE, "model": "m", "dtype": "float32",
                                                            "blas": "OpenBLAS", "decode_steps": 2, "repeats": 3}))
    for name, path in (("RESULTS_DIR", tmp_path), ("SUMMARY_MD", tmp_path / "summary.md"),
                       ("SUMMARY_JSON", tmp_path / "summary.json")):
        monkeypatch.setattr(summary, name, path)
    summary.write_summary(["benchmarks.serving_bench: ran in 1 s"], quick=True, blas="OpenBLAS")
    text = (tmp_path / "summary.md").read_text()
    assert "| pagedmlx | 16 | 4 / 0 | 2.0 | 2.00 | 150.0 | 100 / 100 / 100 |" in text
    assert "| raw forward (256 ctx, no server) | 16 |" in text
    assert "| Claude Code sessions: turn >= 2 TTFT p50 / turn 1 TTFT p50 | 0.05 | <= 0.10 | yes |" in text
    assert "| pagedmlx | /v1/messages | 4 / 0 | 40.0 |" in text
    assert "## Engine" in text and "- benchmarks.serving_bench: ran in 1 s" in text
    derived = json.loads((tmp_path / "summary.json").read_text())
    assert set(derived) == {"targets", "versus_mlx_lm", "versus_raw"}
    for line in text.splitlines():
        if line.startswith("|"):
            assert line.endswith("|"), line


def test_plot_series_from_results():
    from benchmarks import plot

    series = plot.sweep_series(SERVERS, ENGINE, "output_throughput")
    assert series["raw forward"] == [(1, 25.0), (16, 120.0)]
    assert plot.turn_series(SERVERS)["mlx_lm"] == [(1, 20.0), (2, 4.0)]
    times, gaps = zip(*plot.gap_points(SERVERS["pagedmlx"]["prefill_interference"]))
    assert times == pytest.approx((-0.9, 1.0, 9.5)) and gaps == pytest.approx((100.0, 1900.0, 8500.0))
