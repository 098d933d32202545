"""Which device MLX computes on: the dtype policy and the startup log read it."""

import mlx.core as mx


def on_gpu() -> bool:
    """True when MLX's default device is a GPU (Metal on Apple silicon, CUDA on NVIDIA)."""
    return mx.default_device().type == mx.gpu


def device_description() -> str:
    """A short name of the device for logs, e.g. "CPU (AMD EPYC)" or "GPU (Apple M2 Max)"."""
    kind = "GPU" if on_gpu() else "CPU"
    name = mx.device_info().get("device_name")
    return f"{kind} ({name})" if name else kind
