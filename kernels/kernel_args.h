// Argument checks and conversions shared by the kernels' Python functions. A failed check throws
// std::invalid_argument, which nanobind raises as ValueError.
#pragma once

#include <stdexcept>
#include <string>

#include "mlx/ops.h"

namespace pagedmlx {

inline void require(bool ok, const char* op, const std::string& message) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + message);
}

// `a` as a row-contiguous float32 array on the CPU stream (a no-op graph-wise when it already is one).
inline mlx::core::array cpu_float32(const mlx::core::array& a) {
  auto cpu = mlx::core::default_stream(mlx::core::Device::cpu);
  return mlx::core::contiguous(mlx::core::astype(a, mlx::core::float32, cpu), false, cpu);
}

// The shapes both quantized kernels take: MLX's affine groups along K.
inline void check_quantized_shape(const char* op, int bits, int group_size, int n, int k) {
  require(bits == 8 || bits == 4, op, "bits must be 8 or 4");
  require(group_size == 32 || group_size == 64 || group_size == 128, op, "group_size must be 32, 64 or 128");
  require(n > 0 && k > 0 && k % group_size == 0, op, "K must be a positive multiple of group_size");
}

}  // namespace pagedmlx
