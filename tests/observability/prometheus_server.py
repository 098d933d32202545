"""A real Prometheus (Debian's `prometheus` package) on loopback, scraping one target every second,
and its HTTP query API."""

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from live_server import free_port

PROMETHEUS = shutil.which("prometheus")
READY_TIMEOUT_S = 60
CONFIG = """\
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: pagedmlx
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


class Prometheus:
    def __init__(self, work_dir: Path, target_port: int) -> None:
        if PROMETHEUS is None:
            raise FileNotFoundError("prometheus is not installed (Debian: apt-get install prometheus)")
        config = work_dir / "prometheus.yml"
        config.write_text(CONFIG.format(port=target_port))
        self.port = free_port()
        self.log_path = work_dir / "prometheus.log"
        with open(self.log_path, "wb") as log_file:
            self._process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work_dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log_file, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5):
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready in {READY_TIMEOUT_S} s:\n{self.log_path.read_text()}")

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant query (at: Unix seconds; now if None). Raises on a PromQL error."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        url = f"http://127.0.0.1:{self.port}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{expr!r}: {error.read().decode()}") from None
        assert reply["status"] == "success", reply
        result = reply["data"]["result"]
        if reply["data"]["resultType"] == "scalar":
            return [Sample({}, float(result[1]))]
        return [Sample(item["metric"], float(item["value"][1])) for item in result]

    def value(self, expr: str, at: float | None = None) -> float:
        """The one value of an expression that yields one series."""
        samples = self.query(expr, at)
        assert len(samples) == 1, f"{expr!r} gave {samples}"
        return samples[0].value

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
