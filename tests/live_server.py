"""A real `pagedmlx serve` subprocess on a free loopback port, and helpers to read its /metrics."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# Small enough to start fast and keep tests quick; short keep-alive so tests can see comments.
TEST_PROFILE = [
    "--max-model-len", "1024",
    "--default-max-tokens", "16",
    "--keepalive-s", "0.5",
    "--kv-cache-gb", "0.2",
    "--disk-cache-gb", "0",  # the disk tier's tests give it a directory of their own
    "--max-num-seqs", "8",
    "--max-body-mb", "1",
    "--shutdown-grace-s", "3",
]
STARTUP_TIMEOUT_S = 180
SERVER_LABELS = ("model_name", "engine")  # the same on every sample of one server
PAGEDMLX = Path(sys.executable).with_name("pagedmlx")


def wait_for(condition: Callable[[], object], timeout_s: float = 60,
             what: str = "the condition") -> None:
    """Polls condition() until it holds; fails the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.base_url + path, timeout=30) as response:
            return json.loads(response.read())

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """{(sample name, sorted labels without model_name and engine): value}."""
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=30) as response:
            text = response.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in SERVER_LABELS))
                samples[(sample.name, labels)] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_until_idle(self, timeout_s: float = 60) -> dict:
        """Waits until no request runs or waits; returns /health then."""
        deadline = time.monotonic() + timeout_s
        while True:
            health = self.get_json("/health")
            if health["num_requests_running"] == 0 and health["num_requests_waiting"] == 0:
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"server still busy after {timeout_s} s: {health}")
            time.sleep(0.1)

    def stop(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_server(log_dir: Path, *extra_args: str, port: int | None = None,
                 env: dict[str, str] | None = None) -> LiveServer:
    """env: variables to set beside this process's."""
    port = port or free_port()
    log_path = log_dir / f"pagedmlx-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [str(PAGEDMLX), "serve", "--port", str(port), *TEST_PROFILE, *extra_args],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
    server = LiveServer(process, port, log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pagedmlx exited with {process.returncode}:\n{server.log()}")
        try:
            server.get_json("/health")
            return server
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"pagedmlx did not become healthy in {STARTUP_TIMEOUT_S} s:\n{server.log()}")
