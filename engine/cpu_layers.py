"""The model's norms, rotary embeddings and SwiGLU MLPs on the CPU kernels (kernels/activations.cpp).

MLX's CPU runs these elementwise ops one scalar at a time, on one core: in a decode step at batch 16
of the default model, silu(gate) * up alone cost more than the attention. `install_cpu_layers` swaps
in layers that call the vectorized kernels, and fuses each SwiGLU MLP's gate and up projections into
one matmul. Each layer falls back to MLX's own ops when the kernels are off (`cpu_kernels.disabled()`).
"""

import functools
import importlib

import mlx.core as mx
import mlx.nn as nn

from engine.cpu_kernels import kernels
from engine.quantized_linear import CpuQuantizedLinear

# mlx-lm families whose MLP is down(silu(gate(x)) * up(x)) (gemma's gelu MLP, for one, is not).
_SWIGLU_FAMILIES = ("llama", "qwen2", "qwen3")


class CpuRMSNorm(nn.RMSNorm):
    def __call__(self, x: mx.array) -> mx.array:
        module = kernels()
        if module is None or x.dtype != mx.float32:
            return super().__call__(x)
        return module.rms_norm(x, self["weight"], self.eps)


class CpuRoPE(nn.RoPE):
    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        module = kernels()
        if module is None or x.dtype != mx.float32:
            return super().__call__(x, offset)
        return module.rope(x, self.dims, self.traditional, self.base, self.scale, offset)


class CpuSwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up as one [2F, D] projection."""

    def __init__(self, gate_up: nn.Module, down: nn.Module):
        super().__init__()
        self.gate_up, self.down_proj = gate_up, down

    def __call__(self, x: mx.array) -> mx.array:
        h = self.gate_up(x)
        module = kernels()
        if module is None or h.dtype != mx.float32:
            gate, up = mx.split(h, 2, axis=-1)
            return self.down_proj(nn.silu(gate) * up)
        return self.down_proj(module.swiglu(h))


def install_cpu_layers(model: nn.Module) -> None:
    """Swap the model's RMSNorm, RoPE and SwiGLU MLP modules for the kernel-backed ones (a no-op without
    the kernels). Weights are shared or concatenated, not converted."""
    if kernels() is None:
        return
    for _, parent in model.named_modules():
        for name, child in list(parent.children().items()):
            holder = parent[name] if isinstance(child, list) else parent  # children() copies lists
            slots = enumerate(holder) if isinstance(child, list) else [(name, child)]
            for key, module in list(slots):
                replacement = _replacement(module) if isinstance(module, nn.Module) else None
                if replacement is not None:
                    holder[key] = replacement


def _replacement(module: nn.Module) -> nn.Module | None:
    if type(module) is nn.RMSNorm:
        norm = CpuRMSNorm(module.weight.shape[0], module.eps)
        norm.weight = module.weight
        return norm
    if type(module) is nn.RoPE:
        return CpuRoPE(module.dims, module.traditional, module.base, module.scale)
    return _fused_mlp(module)


@functools.cache
def _swiglu_classes() -> tuple[type, ...]:
    classes = []
    for family in _SWIGLU_FAMILIES:
        try:
            classes.append(importlib.import_module(f"mlx_lm.models.{family}").MLP)
        except (ImportError, AttributeError):
            continue
    return tuple(classes)


def _fused_mlp(module: nn.Module) -> CpuSwiGLU | None:
    if not isinstance(module, _swiglu_classes()):
        return None
    gate, up, down = module.gate_proj, module.up_proj, module.down_proj
    gate_up = _concatenated(gate, up)
    return CpuSwiGLU(gate_up, down) if gate_up is not None else None


def _concatenated(first: nn.Module, second: nn.Module) -> nn.Module | None:
    """One layer computing [first(x), second(x)], or None when the two cannot be joined."""
    if type(first) is nn.Linear and type(second) is nn.Linear:
        joined = nn.Linear(first.weight.shape[1], first.weight.shape[0] * 2, bias="bias" in first)
        joined.weight = mx.concatenate([first.weight, second.weight])
        if "bias" in first:
            joined.bias = mx.concatenate([first.bias, second.bias])
        return joined
    if isinstance(first, CpuQuantizedLinear) and isinstance(second, CpuQuantizedLinear):
        return first.concatenate(second)
    return None
