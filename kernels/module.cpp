// The Python module engine._kernels: CPU kernels as MLX primitives (engine/cpu_kernels.py loads it).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "cpu_features.h"
#include "kernels.h"
#include "thread_pool.h"

namespace nb = nanobind;

NB_MODULE(_kernels, m) {
  m.doc() = "pagedmlx's CPU kernels: fused paged attention, quantized matmul, swiglu, rms_norm and rope";
  m.def("isa", &pagedmlx::best_isa, "The widest instruction set the kernels use on this CPU.");
  m.def("num_threads", &pagedmlx::num_threads, "Threads the kernels split their work over.");
  pagedmlx::register_paged_attention(m);
  pagedmlx::register_dequant_matmul(m);
  pagedmlx::register_quantized_matmul(m);
  pagedmlx::register_activations(m);
}
