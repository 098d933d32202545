// The start of every kernel primitive's eval_cpu: its output allocated, and its inputs and output
// registered with the stream's CPU encoder (which keeps them alive until the dispatched work ran).
#pragma once

#include <vector>

#include "mlx/backend/cpu/encoder.h"

namespace pagedmlx {

inline mlx::core::cpu::CommandEncoder& cpu_encoder_for(mlx::core::Stream stream,
                                                      const std::vector<mlx::core::array>& inputs,
                                                      mlx::core::array& out) {
  out.set_data(mlx::core::allocator::malloc(out.nbytes()));
  auto& encoder = mlx::core::cpu::get_command_encoder(stream);
  for (auto& in : inputs) encoder.set_input_array(in);
  encoder.set_output_array(out);
  return encoder;
}

}  // namespace pagedmlx
