"""Serving benchmark: pagedmlx beside mlx-lm's own server, same model, dtype, machine and load generator.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python -m benchmarks.serve_bench [--quick] [--servers pagedmlx,mlx_lm]

Each server runs alone as a subprocess on a free loopback port; once /health (or /v1/models) answers, one
warm-up request goes through, then the workloads of benchmarks/workloads.py, then the server is stopped.
mlx-lm cannot read our GGUF, so the default model, as pagedmlx loads it (float32 on the CPU), is written
once into benchmarks/.cache/ as an mlx-lm folder. Writes benchmarks/results/serve_bench.json with vLLM
bench's keys per server and workload, and the ratios ours / mlx-lm and ours / raw batched forward (the
raw figure comes from benchmarks/results/engine_bench.json when present).
"""

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.load_generator import client_session, stream_chat
from benchmarks.workloads import (
    agent_sessions_workload,
    chat_payload,
    run_agent_sessions,
    run_throughput,
    throughput_workloads,
)
from engine.blas import ensure_blas_preloaded

BENCH_DIR = Path(__file__).parent
CACHE_DIR = BENCH_DIR / ".cache"
MLX_LM_MODEL_DIR = CACHE_DIR / "SmolLM2-135M-Instruct-float32"
LOG_DIR = CACHE_DIR / "logs"
RESULTS_DIR = BENCH_DIR / "results"
RESULTS = RESULTS_DIR / "serve_bench.json"
ENGINE_RESULTS = RESULTS_DIR / "engine_bench.json"
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 15.0
HEADLINE_CONCURRENCY = 16
PAGEDMLX_KV_CACHE_GB = 2.0
RAW_CONTEXT = 256  # engine_bench's short context, the closest to these short prompts plus 64 tokens


@dataclass(frozen=True)
class ServerKind:
    name: str
    command: Callable[[int], list[str]]
    extra_fields: dict  # request keys only this server understands


def pagedmlx_command(port: int) -> list[str]:
    # The workloads hold under 10k tokens of KV; a bounded pool leaves memory to others on a shared machine.
    return [str(Path(sys.executable).with_name("pagedmlx")), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--kv-cache-gb", str(PAGEDMLX_KV_CACHE_GB)]


def mlx_lm_command(port: int) -> list[str]:
    return [sys.executable, "-m", "mlx_lm", "server", "--model", str(MLX_LM_MODEL_DIR),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]


SERVERS = {
    "pagedmlx": ServerKind("pagedmlx", pagedmlx_command, {"ignore_eos": True}),
    "mlx_lm": ServerKind("mlx_lm", mlx_lm_command, {}),
}


def write_mlx_lm_model() -> Path:
    """Write the default model, float32, as an mlx-lm folder (once; later runs reuse it)."""
    if (MLX_LM_MODEL_DIR / "config.json").exists():
        return MLX_LM_MODEL_DIR
    from mlx_lm.utils import save_config, save_model

    from engine.model_loader import load_model

    loaded = load_model(dtype="float32")
    staging = MLX_LM_MODEL_DIR.with_name(MLX_LM_MODEL_DIR.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
    save_model(staging, loaded.model)
    save_config(asdict(loaded.model.args), staging / "config.json")
    loaded.tokenizer.save_pretrained(staging)
    staging.rename(MLX_LM_MODEL_DIR)
    return MLX_LM_MODEL_DIR


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class ServerProcess:
    """A server subprocess on a loopback port, its output in a log file; a context manager."""

    def __init__(self, kind: ServerKind):
        self.kind = kind
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{kind.name}.log"
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "ServerProcess":
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(self.kind.command(self.port), stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.kind.name} exited with status {self._process.returncode}: "
                                   f"{self.log_tail()}")
            if _answers(f"{self.base_url}/health") or _answers(f"{self.base_url}/v1/models"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.kind.name} did not answer within {READY_TIMEOUT_S:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def log_tail(self, chars: int = 800) -> str:
        return self.log_path.read_text(errors="replace")[-chars:].strip()


def served_model_name(base_url: str) -> str:
    """The first model /v1/models lists; mlx-lm's lists only its Hugging Face cache (and fails without
    one), but takes "default_model" for the model it was started with."""
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models", timeout=10) as response:
            return json.loads(response.read())["data"][0]["id"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError):
        return "default_model"


async def warm_up(base_url: str, model: str, extra_fields: dict) -> None:
    """One short request, so that first-call costs (allocations, compiled graphs) stay out of the figures."""
    async with client_session(1) as session:
        record = await stream_chat(session, base_url, chat_payload(
            model, [{"role": "user", "content": "Say hello."}], 8, extra_fields))
    if not record.ok:
        raise RuntimeError(f"warm-up request failed: {record.error}")


async def run_workloads(base_url: str, kind: ServerKind, quick: bool) -> dict:
    model = served_model_name(base_url)
    await warm_up(base_url, model, kind.extra_fields)
    throughput = []
    for workload in throughput_workloads(quick):
        throughput.append(await run_throughput(base_url, model, workload, kind.extra_fields))
        print(f"  {kind.name} c={workload.concurrency:<2} {throughput[-1]['output_throughput']:6.1f} tok/s, "
              f"mean TTFT {throughput[-1]['mean_ttft_ms']:7.0f} ms, failed {throughput[-1]['failed']}", flush=True)
    sessions = await run_agent_sessions(base_url, model, agent_sessions_workload(quick), kind.extra_fields)
    print(f"  {kind.name} agent sessions {sessions['sessions_wall_s']:.1f} s, first-turn TTFT "
          f"{sessions['first_turn_ttft']['mean_s'] or 0:.2f} s, later-turn TTFT "
          f"{sessions['later_turn_ttft']['mean_s'] or 0:.2f} s", flush=True)
    return {"model": model, "throughput": throughput, "agent_sessions": sessions}


def bench_server(kind: ServerKind, quick: bool) -> dict:
    print(f"{kind.name}: starting", flush=True)
    started = time.perf_counter()
    try:
        if kind.name == "mlx_lm":
            write_mlx_lm_model()
        with ServerProcess(kind) as server:
            print(f"{kind.name}: ready on {server.base_url} after {time.perf_counter() - started:.1f} s", flush=True)
            return asyncio.run(run_workloads(server.base_url, kind, quick))
    except Exception as error:  # a server that fails is reported, and the other one still runs
        print(f"{kind.name}: FAILED: {error}", flush=True)
        return {"error": f"{type(error).__name__}: {error}"}


def headline(result: dict) -> dict | None:
    """The throughput run at the headline concurrency, if it completed."""
    return next((run for run in result.get("throughput", ()) if run["concurrency"] == HEADLINE_CONCURRENCY), None)


def raw_forward_tok_s(batch: int) -> float | None:
    """mlx-lm's dense batched forward (KVCache, no server) at `batch` rows, from engine_bench's JSON."""
    if not ENGINE_RESULTS.exists():
        return None
    for case in json.loads(ENGINE_RESULTS.read_text())["results"]:
        if case["batch"] == batch and case["context"] == RAW_CONTEXT and not case["shared_prefix"]:
            return case["dense_kv_tok_s"]
    return None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def ratios(servers: dict) -> dict:
    ours, theirs = servers.get("pagedmlx", {}), servers.get("mlx_lm", {})
    ours_tok_s = (headline(ours) or {}).get("output_throughput")
    theirs_tok_s = (headline(theirs) or {}).get("output_throughput")
    ours_sessions = ours.get("agent_sessions", {})
    theirs_sessions = theirs.get("agent_sessions", {})
    raw = raw_forward_tok_s(HEADLINE_CONCURRENCY)
    return {
        "raw_forward_tok_s": raw,
        "raw_forward_case": f"engine_bench dense KVCache, batch {HEADLINE_CONCURRENCY}, context {RAW_CONTEXT}",
        "output_throughput_ours_vs_mlx_lm": _ratio(ours_tok_s, theirs_tok_s),
        "output_throughput_ours_vs_raw_forward": _ratio(ours_tok_s, raw),
        "mlx_lm_vs_raw_forward": _ratio(theirs_tok_s, raw),
        # Wall time and TTFT: lower is better, so these are speedups (mlx-lm / ours).
        "sessions_speedup_vs_mlx_lm": _ratio(theirs_sessions.get("sessions_wall_s"),
                                             ours_sessions.get("sessions_wall_s")),
        "first_turn_ttft_speedup_vs_mlx_lm": _ratio(
            (theirs_sessions.get("first_turn_ttft") or {}).get("mean_s"),
            (ours_sessions.get("first_turn_ttft") or {}).get("mean_s")),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and turns")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated, from {', '.join(SERVERS)} (default: all)")
    args = parser.parse_args(argv)
    ensure_blas_preloaded()  # the servers inherit LD_PRELOAD from this process
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # unwind: stop the server
    unknown = set(args.servers.split(",")) - set(SERVERS)
    if unknown:
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")

    servers = {name: bench_server(SERVERS[name], args.quick) for name in args.servers.split(",")}
    report = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
        "servers": servers,
        "ratios": ratios(servers),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")
    return report


if __name__ == "__main__":
    main()
