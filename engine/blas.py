"""Use a real BLAS on Linux CPUs.

The mlx-cpu wheel bundles the netlib reference BLAS; Debian's OpenBLAS, preloaded, makes
float32 matmuls ~56x faster here. The dynamic loader only honours LD_PRELOAD at process
start, so the process re-executes itself with it set. This module must not import mlx:
`ensure_blas_preloaded()` runs before mlx is loaded.
"""

import os
import platform
import sys

NO_REEXEC_ENV = "PAGEDMLX_NO_BLAS_REEXEC"


def openblas_path() -> str | None:
    """Debian's pthread OpenBLAS (package libopenblas0-pthread) if installed, else None."""
    if not sys.platform.startswith("linux"):
        return None
    path = f"/usr/lib/{platform.machine()}-linux-gnu/openblas-pthread/libopenblas.so.0"
    return path if os.path.exists(path) else None


def ensure_blas_preloaded() -> None:
    """Re-execute this process with OpenBLAS in LD_PRELOAD, unless it is there already,
    OpenBLAS is missing, or PAGEDMLX_NO_BLAS_REEXEC is set. Returns only when no re-exec happens."""
    path = openblas_path()
    if path is None or os.environ.get(NO_REEXEC_ENV):
        return
    preload = os.environ.get("LD_PRELOAD", "")
    # ld.so splits LD_PRELOAD on spaces and colons.
    if path in preload.replace(":", " ").split():
        return
    env = dict(os.environ, LD_PRELOAD=f"{path} {preload}".strip())
    # orig_argv keeps interpreter options such as `-m pkg.module` or `-c code`, which argv loses.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def active_blas() -> str:
    """The BLAS this process computes with, for the startup log."""
    if sys.platform == "darwin":
        return "Accelerate"
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if "libopenblas" in line:
                    return f"OpenBLAS ({line.split()[-1]})"
    except OSError:
        pass
    return "MLX bundled reference BLAS"
