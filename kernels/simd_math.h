// Math shared by the kernels: exp(x) for x <= 0 as engine/paged_attention.py's fast_exp,
// 2**n * 2**f with n = round(x / ln 2) and 2**f by its Taylor polynomial (|f| <= 1/2, relative
// error ~1e-7). Inputs below -126 ln 2 (about -87.3) give 2**-126 (1.2e-38), not less.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace pagedmlx {

inline uint32_t float_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}
inline float bits_float(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// One lane at a time, so loops that call it vectorize: selects on float compares are not
// if-converted (they may trap), so the clamp to -126 compares bits (as unsigned, every float below
// -126 has larger bits), and n = round(y) comes from adding 1.5 * 2**23 (as fast_exp does), whose
// low mantissa bits then hold n.
inline float exp_poly(float x) {
  constexpr float kRound = 12582912.0f;
  constexpr uint32_t kMinus126 = 0xC2FC0000u;
  uint32_t y_bits = float_bits(x * 1.4426950408889634f);
  const float y = bits_float(y_bits > kMinus126 ? kMinus126 : y_bits);
  const float shifted = y + kRound;
  const float n = shifted - kRound;
  const float f = y - n;
  float poly = 0.00015403530393381606f;
  for (float c : {0.0013333558146428443f, 0.009618129107628477f, 0.05550410866482158f, 0.2402265069591007f,
                  0.6931471805599453f, 1.0f})
    poly = poly * f + c;
  const uint32_t bits = (float_bits(shifted) - float_bits(kRound) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return poly * scale;
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) inline __m512 exp512(__m512 x) {
  __m512 y = _mm512_max_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f)), _mm512_set1_ps(-126.0f));
  __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_sub_ps(y, n);
  const float c[7] = {1.0f, 0.6931471805599453f, 0.2402265069591007f, 0.05550410866482158f,
                      0.009618129107628477f, 0.0013333558146428443f, 0.00015403530393381606f};
  __m512 poly = _mm512_set1_ps(c[6]);
  for (int k = 5; k >= 0; --k) poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(c[k]));
  return _mm512_scalef_ps(poly, n);
}
#endif

}  // namespace pagedmlx
