"""Linear and embedding layers on the CPU quantized-matmul kernels.

Weights are held in MLX's affine scheme (w = scale * q + bias per group along K), repacked once for
one of two kernels:
- EXACT (kernels/dequant_matmul.cpp): weights dequantized in cache, float32 activations; the output
  equals float32's against the dequantized weights up to summation order.
- INT8 (kernels/quantized_matmul.cpp): activations quantized to int8 per row and group on the fly,
  for VNNI's int8 dot products; faster on long prefill chunks, but it rounds the activations.
`quantize_for_cpu` swaps these layers into a model, from float weights or from layers MLX already
quantized (their q/scales/biases are repacked as they are, not requantized).
"""

import copy
from dataclasses import dataclass
from types import ModuleType

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map_with_path

from engine.cpu_kernels import kernels

_STORED = (nn.QuantizedLinear, nn.QuantizedEmbedding)
_SWAPPED = (nn.Linear, nn.Embedding, *_STORED)


@dataclass(frozen=True)
class CpuKernel:
    """The extension's three functions for one packed layout."""

    pack: str
    matmul: str
    rows: str
    panel: int  # output columns per packed panel


EXACT = CpuKernel("pack_dequant", "dequant_matmul", "dequant_rows", 32)
INT8 = CpuKernel("pack_quantized", "quantized_matmul", "dequantize_rows", 16)


class CpuPackedWeight(nn.Module):
    """A [N, K] weight packed for one of the kernels."""

    def __init__(self, wq: mx.array, scales: mx.array, biases: mx.array, bits: int, group_size: int,
                 kernel: CpuKernel = EXACT):
        super().__init__()
        self.kernel = kernel
        self.packed, self.scales, self.biases = self._call("pack", wq, scales, biases, bits, group_size)
        self.bits, self.group_size = bits, group_size
        self.n, self.k = wq.shape[0], wq.shape[1] * 32 // bits

    def joins(self, other: "CpuPackedWeight") -> bool:
        """Whether [self; other] is the concatenation of the packed arrays (same format, whole panels)."""
        same = (self.kernel, self.bits, self.group_size, self.k) == (other.kernel, other.bits, other.group_size, other.k)
        return same and self.n % self.kernel.panel == 0

    def matmul(self, x: mx.array, bias: mx.array | None = None) -> mx.array:
        y = self._call("matmul", x, self.packed, self.scales, self.biases, self.bits, self.group_size, self.n,
                       self.k, bias=bias)
        return y.astype(x.dtype) if x.dtype != mx.float32 else y

    def _call(self, function: str, *args, **kwargs):
        return getattr(_require_kernels(), getattr(self.kernel, function))(*args, **kwargs)


class CpuQuantizedLinear(CpuPackedWeight):
    """nn.Linear / nn.QuantizedLinear on the CPU kernel, with the optional bias fused."""

    def __init__(self, wq, scales, biases, bits, group_size, kernel: CpuKernel = EXACT,
                 bias: mx.array | None = None):
        super().__init__(wq, scales, biases, bits, group_size, kernel)
        if bias is not None:
            self.bias = bias.astype(mx.float32)

    def __call__(self, x: mx.array) -> mx.array:
        return self.matmul(x, self.get("bias"))

    def concatenate(self, other: "CpuQuantizedLinear") -> "CpuQuantizedLinear | None":
        """One layer computing [self(x), other(x)], or None when the two are not packed alike."""
        if not self.joins(other) or ("bias" in self) != ("bias" in other):
            return None
        joined = copy.copy(self)
        for key in ("packed", "scales", "biases", "bias"):
            if key in self:
                joined[key] = mx.concatenate([self[key], other[key]])
        joined.n = self.n + other.n
        return joined


class CpuQuantizedEmbedding(CpuPackedWeight):
    """nn.Embedding / nn.QuantizedEmbedding: lookups dequantize rows; as_linear is the tied head."""

    def __call__(self, ids: mx.array) -> mx.array:
        return self._call("rows", self.packed, self.scales, self.biases, ids, self.bits, self.group_size, self.n,
                          self.k)

    def as_linear(self, x: mx.array) -> mx.array:
        return self.matmul(x)


def quantize_for_cpu(model: nn.Module, bits: int, group_size: int = 64, kernel: CpuKernel = EXACT,
                     stored_only: bool = False) -> None:
    """Swap every Linear/Embedding whose K fits group_size (stored_only: every MLX-quantized one) for the
    CPU layers.

    MLX-quantized layers keep their group size; stored with at most `bits` bits, their
    q/scales/biases are repacked as they are (no requantization); wider ones are requantized."""
    kinds = _STORED if stored_only else _SWAPPED

    def swap(_path: str, module):
        if isinstance(module, kinds) and _fits(module, group_size):
            return _cpu_layer(module, bits, group_size, kernel)
        return module

    model.update_modules(tree_map_with_path(swap, model.leaf_modules(), is_leaf=nn.Module.is_module))


def _cpu_layer(module: nn.Module, bits: int, group_size: int, kernel: CpuKernel) -> nn.Module:
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
        return CpuQuantizedEmbedding(wq, scales, biases, bits, group_size, kernel)
    return CpuQuantizedLinear(wq, scales, biases, bits, group_size, kernel, bias=module.get("bias"))


def _fits(module: nn.Module, group_size: int) -> bool:
    if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        return module.mode == "affine" and module.bits in (4, 8) and module.group_size in (32, 64, 128)
    return module.weight.shape[-1] % group_size == 0


def _require_kernels() -> ModuleType:
    module = kernels()
    if module is None:
        raise RuntimeError("the CPU quantized kernels are not available (not built, turned off, or on a GPU)")
    return module
