import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.blas import NO_REEXEC_ENV, openblas_path

REPO = Path(__file__).resolve().parents[2]
PROBE = (
    "from engine.blas import ensure_blas_preloaded, active_blas\n"
    "ensure_blas_preloaded()\n"
    "import mlx.core\n"
    "print(active_blas())\n"
)


def run_probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", NO_REEXEC_ENV)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env={**clean, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(openblas_path() is None, reason="needs Debian's libopenblas0-pthread on Linux")
def test_reexec_preloads_openblas():
    assert run_probe().startswith("OpenBLAS (/usr/lib/")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux-only")
def test_opt_out_keeps_the_bundled_blas():
    assert run_probe(**{NO_REEXEC_ENV: "1"}) == "MLX bundled reference BLAS"
