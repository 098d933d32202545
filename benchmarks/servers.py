"""The servers the serving benchmark drives: pagedmlx and mlx-lm's server started here, one at a time, on
a free loopback port; or a peer already running at a URL.

mlx-lm cannot read our GGUF, so the default model, as pagedmlx loads it (float32 on the CPU), is written
once into benchmarks/.cache/ as an mlx-lm folder: same weights, dtype, tokenizer and chat template.
"""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

CACHE_DIR = Path(__file__).parent / ".cache"
MLX_LM_MODEL_DIR = CACHE_DIR / "SmolLM2-135M-Instruct-float32"
LOG_DIR = CACHE_DIR / "logs"
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 15.0
PAGEDMLX_KV_CACHE_GB = 2.0


@dataclass(frozen=True)
class ServerKind:
    name: str
    command: Callable[[int], list[str]] | None  # None: a peer already running at `url`
    extra_fields: dict = field(default_factory=dict)  # request keys only this server understands
    speaks_anthropic: bool = False  # whether it gets the Claude Code bodies on /v1/messages
    url: str = ""


def pagedmlx_command(port: int) -> list[str]:
    # The workloads hold under 40k tokens of KV; a bounded pool leaves memory to others on a shared machine.
    return [str(Path(sys.executable).with_name("pagedmlx")), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--kv-cache-gb", str(PAGEDMLX_KV_CACHE_GB),
            # No disk tier of the prefix cache: a cache left on disk by an earlier run would turn the cold
            # prefills these benchmarks measure into disk reads (disk_tier_bench turns it on, after this).
            "--disk-cache-gb", "0"]


def mlx_lm_command(port: int) -> list[str]:
    return [sys.executable, "-m", "mlx_lm", "server", "--model", str(write_mlx_lm_model()),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]


PAGEDMLX = ServerKind("pagedmlx", pagedmlx_command, {"ignore_eos": True}, speaks_anthropic=True)
MLX_LM = ServerKind("mlx_lm", mlx_lm_command)


def pagedmlx_kind(name: str, flags: Sequence[str]) -> ServerKind:
    """pagedmlx serve as the other benchmarks start it, with `flags` after (a repeated flag: the last wins)."""
    return ServerKind(name, lambda port: [*pagedmlx_command(port), *flags], PAGEDMLX.extra_fields,
                      speaks_anthropic=True)


def peer(url: str) -> ServerKind:
    """Any running OpenAI-compatible server (llama.cpp's, vllm-mlx), named by its address."""
    url = url.rstrip("/")
    return ServerKind(url.split("://", 1)[-1], None, url=url)


def write_mlx_lm_model() -> Path:
    """Write the default model, float32, as an mlx-lm folder (once; later runs reuse it)."""
    if (MLX_LM_MODEL_DIR / "config.json").exists():
        return MLX_LM_MODEL_DIR
    from mlx_lm.utils import save_config, save_model

    from engine import cpu_kernels
    from engine.model_loader import load_model

    with cpu_kernels.disabled():  # MLX's own layers, which mlx-lm can load back
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
    """A server subprocess on a loopback port, its output in a log file; a context manager. For a peer it
    only points at the peer's URL."""

    def __init__(self, kind: ServerKind):
        self.kind = kind
        self._process: subprocess.Popen | None = None
        self.log_path = LOG_DIR / f"{kind.name.replace('/', '_').replace(':', '_')}.log"
        if kind.command is None:
            self.base_url = kind.url
        else:
            self.port = free_port()
            self.base_url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerProcess":
        if self.kind.command is None:
            return self
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        command = self.kind.command(self.port)
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The subprocess's pid while it runs (None for a peer given by its URL)."""
        return None if self._process is None else self._process.pid

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
