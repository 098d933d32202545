"""Linear and embedding layers on the CPU quantized-matmul kernel (kernels/quantized_matmul.cpp).

Weights are held in MLX's affine scheme (w = scale * q + bias per group along K), repacked once
into the kernel's panel layout; activations are quantized to int8 per row and group on the fly.
`quantize_for_cpu` swaps these layers into a model, from float weights or from layers MLX already
quantized (their q/scales/biases are repacked as they are, not requantized).
"""

from types import ModuleType

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map_with_path

from engine.cpu_kernels import kernels

_SWAPPED = (nn.Linear, nn.QuantizedLinear, nn.Embedding, nn.QuantizedEmbedding)


class CpuPackedWeight(nn.Module):
    """A [N, K] weight packed for the kernel."""

    def __init__(self, wq: mx.array, scales: mx.array, biases: mx.array, bits: int, group_size: int):
        super().__init__()
        self.packed, self.scales, self.biases = _require_kernels().pack_quantized(wq, scales, biases, bits, group_size)
        self.bits, self.group_size = bits, group_size
        self.n, self.k = wq.shape[0], wq.shape[1] * 32 // bits

    def matmul(self, x: mx.array, bias: mx.array | None = None) -> mx.array:
        y = _require_kernels().quantized_matmul(
            x, self.packed, self.scales, self.biases, self.bits, self.group_size, self.n, self.k, bias=bias
        )
        return y.astype(x.dtype) if x.dtype != mx.float32 else y


class CpuQuantizedLinear(CpuPackedWeight):
    """nn.Linear / nn.QuantizedLinear on the CPU kernel, with the optional bias fused."""

    def __init__(self, wq, scales, biases, bits, group_size, bias: mx.array | None = None):
        super().__init__(wq, scales, biases, bits, group_size)
        if bias is not None:
            self.bias = bias.astype(mx.float32)

    def __call__(self, x: mx.array) -> mx.array:
        return self.matmul(x, self.get("bias"))


class CpuQuantizedEmbedding(CpuPackedWeight):
    """nn.Embedding / nn.QuantizedEmbedding: lookups dequantize rows; as_linear is the tied head."""

    def __call__(self, ids: mx.array) -> mx.array:
        return _require_kernels().dequantize_rows(
            self.packed, self.scales, self.biases, ids, self.bits, self.group_size, self.n, self.k
        )

    def as_linear(self, x: mx.array) -> mx.array:
        return self.matmul(x)


def quantize_for_cpu(model: nn.Module, bits: int, group_size: int = 64) -> None:
    """Swap every Linear/Embedding whose K fits group_size for the CPU layers.

    MLX-quantized layers keep their group size; stored with at most `bits` bits, their
    q/scales/biases are repacked as they are (no requantization); wider ones are requantized."""

    def swap(_path: str, module):
        if isinstance(module, _SWAPPED) and _fits(module, group_size):
            return _cpu_layer(module, bits, group_size)
        return module

    model.update_modules(tree_map_with_path(swap, model.leaf_modules(), is_leaf=nn.Module.is_module))


def _cpu_layer(module: nn.Module, bits: int, group_size: int) -> nn.Module:
    if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        if module.bits <= bits:  # more bits than stored would add rounding and gain nothing
            wq, scales, biases, bits = module.weight, module.scales, module.biases, module.bits
        else:
            weight = mx.dequantize(module.weight, module.scales.astype(mx.float32), module.biases.astype(mx.float32),
                                   module.group_size, module.bits)
            wq, scales, biases = mx.quantize(weight, module.group_size, bits)
        group_size = module.group_size
    else:
        wq, scales, biases = mx.quantize(module.weight.astype(mx.float32), group_size, bits)
    if isinstance(module, (nn.Embedding, nn.QuantizedEmbedding)):
        return CpuQuantizedEmbedding(wq, scales, biases, bits, group_size)
    return CpuQuantizedLinear(wq, scales, biases, bits, group_size, bias=module.get("bias"))


def _fits(module: nn.Module, group_size: int) -> bool:
    if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        return module.mode == "affine" and module.bits in (4, 8) and module.group_size in (32, 64, 128)
    return module.weight.shape[-1] % group_size == 0


def _require_kernels() -> ModuleType:
    module = kernels()
    if module is None:
        raise RuntimeError("the CPU quantized kernels are not available (not built, turned off, or on a GPU)")
    return module
