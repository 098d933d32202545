// Each kernel adds its functions to the Python module in its own file.
#pragma once

#include <nanobind/nanobind.h>

namespace pagedmlx {

void register_activations(nanobind::module_& m);
void register_paged_attention(nanobind::module_& m);
void register_dequant_matmul(nanobind::module_& m);
void register_quantized_matmul(nanobind::module_& m);

}  // namespace pagedmlx
