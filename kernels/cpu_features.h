// The instruction sets the CPU kernels may use, detected once at run time: the extension is
// built for a baseline x86-64 (or arm64) and each kernel variant is compiled for its own ISA.
#pragma once

#include <string>

namespace pagedmlx {

struct CpuFeatures {
  bool avx2 = false;     // with FMA
  bool avx512 = false;   // F, BW, VL, DQ
  bool avx512_vnni = false;
  bool avx512_bf16 = false;
  bool avx_vnni = false;  // VNNI on 256-bit vectors (Alder Lake and later)
};

const CpuFeatures& cpu_features();

// The widest ISA the kernels dispatch to here, e.g. "avx512-vnni", "avx2", "generic".
std::string best_isa();

}  // namespace pagedmlx
