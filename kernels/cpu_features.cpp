#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace pagedmlx {
namespace {

// PAGEDMLX_ISA=avx2 (or generic) caps the dispatch below what the CPU has: tests of each variant.
bool allowed(const char* isa) {
  const char* cap = std::getenv("PAGEDMLX_ISA");
  if (cap == nullptr || *cap == '\0') return true;
  const char* order[] = {"generic", "avx2", "avx512", "avx512-vnni"};
  int cap_rank = -1, isa_rank = -1;
  for (int i = 0; i < 4; ++i) {
    if (std::strcmp(cap, order[i]) == 0) cap_rank = i;
    if (std::strcmp(isa, order[i]) == 0) isa_rank = i;
  }
  return cap_rank < 0 || isa_rank <= cap_rank;
}

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && allowed("avx2");
  f.avx512 = f.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             allowed("avx512");
  f.avx512_vnni = f.avx512 && __builtin_cpu_supports("avx512vnni") && allowed("avx512-vnni");
  f.avx512_bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16") && allowed("avx512-vnni");
  f.avx_vnni = f.avx2 && __builtin_cpu_supports("avxvnni") && allowed("avx512-vnni");
#endif
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

std::string best_isa() {
  const CpuFeatures& f = cpu_features();
  if (f.avx512_vnni) return "avx512-vnni";
  if (f.avx512) return "avx512";
  if (f.avx2) return "avx2";
  return "generic";
}

}  // namespace pagedmlx
