"""The compiled CPU kernels (kernels/, built by `pip install` into engine._kernels), if any.

They replace MLX's own CPU path for the attention read and the quantized linear layers. Where the
extension could not be built, or `--cpu-kernels off` turns it off, the pure-MLX path runs; the
startup log says which (`describe()`). GPUs always keep MLX's own kernels.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from engine.device import on_gpu

try:
    from engine import _kernels as _module
except ImportError as error:  # not built on this machine
    _module, _IMPORT_ERROR = None, str(error)
else:
    _IMPORT_ERROR = ""

_enabled = True


def set_enabled(enabled: bool) -> None:
    """Turn the kernels off (`--cpu-kernels off`, tests of the fallback) or back on."""
    global _enabled
    _enabled = enabled


@contextmanager
def disabled() -> Iterator[None]:
    """The pure-MLX path inside the block: a model loaded there keeps MLX's own layers."""
    was = _enabled
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(was)


def kernels() -> ModuleType | None:
    """engine._kernels when the kernels run here: built, enabled, and the device is the CPU."""
    if _module is None or not _enabled or on_gpu():
        return None
    return _module


def describe() -> str:
    """One line for the startup log: which path runs, and why."""
    if on_gpu():
        return "MLX's GPU kernels"
    if _module is None:
        return f"pure MLX (CPU kernels not built: {_IMPORT_ERROR})"
    if not _enabled:
        return "pure MLX (CPU kernels turned off)"
    return f"CPU kernels ({_module.isa()}, {_module.num_threads()} threads)"
