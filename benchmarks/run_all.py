"""`make bench` (`make bench-quick` passes --quick): every benchmark in turn, then
benchmarks/results/summary.md (+ summary.json) and the plots docs/bench*.png.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python -m benchmarks.run_all [--quick] [--peer URL ...]

engine_bench (the raw batched forward beside our paged runner), serving_bench (pagedmlx beside mlx-lm's
server and any --peer, through the load generator), scheduler_bench (full run only) and prefix_cache_bench
(pure Python, seconds) each run as a subprocess with a time limit; the summary compares the servers with
the raw forward engine_bench measured in this same run. A benchmark whose module is absent or that fails
is noted in the summary and the rest still run.
"""

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time

from benchmarks import plot
from benchmarks.summary import RESULTS_DIR, SUMMARY_MD, write_summary
from engine.blas import active_blas, ensure_blas_preloaded

# (module, time limit in seconds of the full run, of the --quick run: None skips it there, arguments of the
# full run). The limits add up to under 19 minutes (full) and 3 minutes (quick). The engine bench's long
# contexts take minutes of their own: `python -m benchmarks.engine_bench` runs them (README, CPU kernels);
# so does the disk tier's ~11k-token restart (`python -m benchmarks.disk_tier_bench`; --quick here).
BENCHMARKS = (
    ("benchmarks.engine_bench", 120, 25, ["--sweep"]),
    ("benchmarks.serving_bench", 560, 140, []),
    ("benchmarks.scheduler_bench", 210, None, []),
    ("benchmarks.prefix_cache_bench", 40, 10, []),
    ("benchmarks.disk_tier_bench", 180, None, ["--quick"]),
)
STOP_GRACE_S = 20


def run_benchmark(module: str, limit_s: float | None, arguments: list[str]) -> str:
    """Run one benchmark module as a subprocess; returns a one-line note of how it went."""
    if limit_s is None:
        return f"{module}: skipped in this run"
    if importlib.util.find_spec(module) is None:
        return f"{module}: skipped (module not present)"
    print(f"== {module}", flush=True)
    start = time.perf_counter()
    # Its own process group, so that a benchmark stopped at its limit takes its servers down with it.
    process = subprocess.Popen([sys.executable, "-m", module, *arguments], start_new_session=True)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and requests: a few minutes")
    parser.add_argument("--peer", action="append", default=[], metavar="URL",
                        help="also drive this running OpenAI-compatible server in the serving benchmark")
    args = parser.parse_args(argv)
    ensure_blas_preloaded()  # the benchmarks and the servers inherit LD_PRELOAD from this process
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # unwind: stop the running one

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for stale in RESULTS_DIR.glob("*.json"):
        stale.unlink()  # a benchmark that fails this time must not leave last run's figures in the summary
    start = time.perf_counter()
    quick = ["--quick"] if args.quick else []
    peers = [argument for url in args.peer for argument in ("--peer", url)]
    notes = [run_benchmark(module, quick_limit_s if args.quick else limit_s,
                           (quick or full_arguments) + (peers if module == "benchmarks.serving_bench" else []))
             for module, limit_s, quick_limit_s, full_arguments in BENCHMARKS]
    notes.append(f"total {time.perf_counter() - start:.0f} s")
    for note in notes:
        print(note, flush=True)
    write_summary(notes, args.quick, active_blas())
    print(f"wrote {SUMMARY_MD}")
    plot.main()


if __name__ == "__main__":
    main()
