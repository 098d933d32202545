// The small float32 ops of a decoder layer that MLX's CPU backend runs one scalar at a time:
//   swiglu(h)        h [..., 2F] (gate | up) -> silu(gate) * up, [..., F]
//   rms_norm(x, w)   as mx.fast.rms_norm: x * rsqrt(mean(x^2) + eps) * w
//   rope(x, ...)     as mx.fast.rope on [B, H, L, D] (often a transposed view, read through its strides)
// Each has a portable variant and an AVX-512 one. Ops of more than kParallelElements elements are
// split over the thread pool; smaller ones run on the calling thread (MLX's CPU stream).
//
// rope follows MLX's own fallback arithmetic (mlx/fast.cpp) so greedy decoding does not move: the
// inverse frequencies are computed once per (dims, base) by MLX itself (exp of arange times
// log(base) / (dims / 2)), positions are float(l) + float(offset) times scale, theta = position *
// inv_freq in float32, sin/cos by the Cephes polynomials MLX's CPU backend uses
// (mlx/backend/cpu/simd/math.h), then x1 * cos - x2 * sin and x1 * sin + x2 * cos.
#include "kernel_common.h"

#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>
#include <variant>
#include "simd_math.h"
#include <nanobind/stl/variant.h>

namespace pagedmlx {
namespace {

constexpr int64_t kParallelElements = 32768;  // below this a thread hand-off costs more than it saves
constexpr int kChunk = 4096;                  // swiglu columns per task

enum class Isa { generic, avx512 };

Isa choose_isa(const char* op, const std::string& requested) {
  const bool avx512 = cpu_features().avx512;  // never true off x86-64
  if (requested.empty()) return avx512 ? Isa::avx512 : Isa::generic;
  if (requested == "generic") return Isa::generic;
  if (requested == "avx512" && avx512) return Isa::avx512;
  throw std::invalid_argument(std::string(op) + ": isa '" + requested + "' is not available here ('', 'generic'" +
                              (avx512 ? ", 'avx512')" : ")"));
}

// Runs fn(begin, end) over [0, count): on the pool when the op has more than kParallelElements.
template <typename Fn>
void split(int count, int64_t elements, Fn&& fn) {
  if (elements > kParallelElements && count > 1)
    parallel_for(count, fn);
  else
    fn(0, count);
}

// The array's elements in row-major order: its own data when row-contiguous, else a copy in scratch.
const float* row_major(const mx::array& a, std::vector<float>& scratch) {
  if (a.flags().row_contiguous) return a.data<float>();
  scratch.resize(a.size());
  const float* src = a.data<float>();
  const int nd = static_cast<int>(a.ndim());
  std::vector<int> index(nd, 0);
  int64_t at = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    scratch[i] = src[at];
    for (int d = nd - 1; d >= 0; --d) {
      at += a.strides()[d];
      if (++index[d] < a.shape(d)) break;
      at -= a.strides()[d] * a.shape(d);
      index[d] = 0;
    }
  }
  return scratch.data();
}

// ---------------------------------------------------------------------------------------------
// Portable variants (loops the compiler may vectorize for the baseline ISA).

// silu(a) * u with sigmoid from t = exp(-|a|) <= 1: 1 / (1 + t) for a >= 0, t / (1 + t) below, so
// exp never overflows and large |a| give the right limits. exp_poly stops at 2**-126, so below -88
// the sigmoid is 0 outright (as MLX's, whose exp(|a|) is inf there).
constexpr float kSigmoidZero = -88.0f;

inline float silu_times(float a, float u) {
  const float t = exp_poly(-std::fabs(a));
  // a >= 0 ? 1 : a < -88 ? 0 : t, on a's bits (see exp_poly): sign bit, then magnitude.
  const uint32_t a_bits = float_bits(a);
  uint32_t numerator = a_bits > float_bits(kSigmoidZero) ? 0u : float_bits(t);
  numerator = a_bits >> 31 ? numerator : float_bits(1.0f);
  return a * (bits_float(numerator) / (1.0f + t)) * u;
}

void swiglu_generic(const float* __restrict gate, const float* __restrict up, float* __restrict out, int n) {
  for (int j = 0; j < n; ++j) out[j] = silu_times(gate[j], up[j]);
}

// 1 / sqrt(mean + eps) as MLX: the mean is the sum times float(1 / D).
inline float inv_rms(float sum_squares, int d, float eps) {
  const float mean = sum_squares * static_cast<float>(1.0 / d);
  return 1.0f / std::sqrt(mean + eps);
}

void rms_norm_generic(const float* x, const float* w, float* y, int d, float eps) {
  float part[8] = {};
  int i = 0;
  for (; i + 8 <= d; i += 8)
    for (int k = 0; k < 8; ++k) part[k] += x[i + k] * x[i + k];
  float sum = 0.0f;
  for (; i < d; ++i) sum += x[i] * x[i];
  for (int k = 0; k < 8; ++k) sum += part[k];
  const float r = inv_rms(sum, d, eps);
  for (int j = 0; j < d; ++j) y[j] = (x[j] * r) * w[j];
}

// MLX's CPU sin and cos (Cephes): x reduced by multiples of pi/4 in three parts, then one of two
// polynomials on [0, pi/4]. Arguments past 2^23 go to libm, as MLX does.
void sincos_cephes(float in, float& sin_out, float& cos_out) {
  if (std::fabs(in) > 8388608.0f) {
    sin_out = std::sin(in);
    cos_out = std::cos(in);
    return;
  }
  bool sign_sin = in < 0;
  float x = std::fabs(in);
  uint32_t j = static_cast<uint32_t>(x * 1.27323954473516f);
  j = (j + 1) & ~1u;
  const float y = static_cast<float>(j);
  const bool poly_swap = (j & 2) != 0;
  x = std::fma(y, -0.78515625f, x);
  x = std::fma(y, -2.4187564849853515625e-4f, x);
  x = std::fma(y, -3.77489497744594108e-8f, x);
  sign_sin = sign_sin ^ ((j & 4) != 0);
  const bool sign_cos = ((j - 2) & 4) != 0;
  const float z = x * x;
  float y1 = std::fma(z, 2.443315711809948e-5f, -1.388731625493765e-3f);
  float y2 = std::fma(z, -1.9515295891e-4f, 8.3321608736e-3f);
  y1 = std::fma(y1, z, 4.166664568298827e-2f);
  y2 = std::fma(y2, z, -1.6666654611e-1f);
  y1 = y1 * z;
  y2 = y2 * z;
  y1 = y1 * z;
  y2 = std::fma(x, y2, x);
  y1 = std::fma(z, -0.5f, y1);
  y1 = y1 + 1.0f;
  const float ys = poly_swap ? y1 : y2, yc = poly_swap ? y2 : y1;
  sin_out = sign_sin ? -ys : ys;
  cos_out = sign_cos ? yc : -yc;
}

// One (batch, position) of rope: its angles' cos/sin once, then every head's row.
struct RopeRow {
  const float* x;       // the first head's row
  int64_t head_stride;  // elements between heads in x
  float* out;           // the first head's output row
  int64_t out_head_stride;
  int heads, dim, dims;
  bool traditional;
};

void rope_generic(const RopeRow& r, float position, const float* inv_freq, float* cs) {
  const int half = r.dims / 2;
  float* cos_t = cs;
  float* sin_t = cs + half;
  for (int i = 0; i < half; ++i) sincos_cephes(position * inv_freq[i], sin_t[i], cos_t[i]);
  for (int h = 0; h < r.heads; ++h) {
    const float* x = r.x + h * r.head_stride;
    float* y = r.out + h * r.out_head_stride;
    if (r.traditional) {
      for (int i = 0; i < half; ++i) {
        const float x1 = x[2 * i], x2 = x[2 * i + 1];
        y[2 * i] = x1 * cos_t[i] - x2 * sin_t[i];
        y[2 * i + 1] = x1 * sin_t[i] + x2 * cos_t[i];
      }
    } else {
      for (int i = 0; i < half; ++i) {
        const float x1 = x[i], x2 = x[i + half];
        y[i] = x1 * cos_t[i] - x2 * sin_t[i];
        y[i + half] = x1 * sin_t[i] + x2 * cos_t[i];
      }
    }
    if (r.dims < r.dim) std::memcpy(y + r.dims, x + r.dims, sizeof(float) * (r.dim - r.dims));
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 variants.
#if defined(__x86_64__)
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

AVX512 inline __mmask16 tail_mask(int n) { return static_cast<__mmask16>((1u << n) - 1); }

AVX512 inline __m512 silu_times16(__m512 a, __m512 u) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 t = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(a)));
  const __mmask16 negative = _mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __mmask16 zero = _mm512_cmp_ps_mask(a, _mm512_set1_ps(kSigmoidZero), _CMP_LT_OQ);
  const __m512 numerator = _mm512_maskz_mov_ps(~zero, _mm512_mask_blend_ps(negative, one, t));
  const __m512 sigmoid = _mm512_div_ps(numerator, _mm512_add_ps(one, t));
  return _mm512_mul_ps(_mm512_mul_ps(a, sigmoid), u);
}

AVX512 void swiglu_avx512(const float* gate, const float* up, float* out, int n) {
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    __m512 y0 = silu_times16(_mm512_loadu_ps(gate + j), _mm512_loadu_ps(up + j));
    __m512 y1 = silu_times16(_mm512_loadu_ps(gate + j + 16), _mm512_loadu_ps(up + j + 16));
    _mm512_storeu_ps(out + j, y0);
    _mm512_storeu_ps(out + j + 16, y1);
  }
  for (; j < n; j += 16) {
    const __mmask16 m = tail_mask(std::min(16, n - j));
    _mm512_mask_storeu_ps(out + j, m, silu_times16(_mm512_maskz_loadu_ps(m, gate + j), _mm512_maskz_loadu_ps(m, up + j)));
  }
}

AVX512 void rms_norm_avx512(const float* x, const float* w, float* y, int d, float eps) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  int i = 0;
  for (; i + 64 <= d; i += 64)
    for (int k = 0; k < 4; ++k) {
      const __m512 v = _mm512_loadu_ps(x + i + 16 * k);
      acc[k] = _mm512_fmadd_ps(v, v, acc[k]);
    }
  for (; i < d; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask(std::min(16, d - i)), x + i);
    acc[0] = _mm512_fmadd_ps(v, v, acc[0]);
  }
  const float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
  const __m512 r = _mm512_set1_ps(inv_rms(sum, d, eps));
  for (int j = 0; j < d; j += 16) {
    const __mmask16 m = tail_mask(std::min(16, d - j));
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + j), r);
    _mm512_mask_storeu_ps(y + j, m, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + j)));
  }
}

// sincos_cephes on 16 lanes (lanes past 2^23 fall back to it, and so to libm).
AVX512 void sincos16(__m512 in, __m512& sin_out, __m512& cos_out) {
  const __m512 x0 = _mm512_abs_ps(in);
  if (_mm512_cmp_ps_mask(x0, _mm512_set1_ps(8388608.0f), _CMP_GT_OQ)) {
    alignas(64) float v[16], s[16], c[16];
    _mm512_store_ps(v, in);
    for (int k = 0; k < 16; ++k) sincos_cephes(v[k], s[k], c[k]);
    sin_out = _mm512_load_ps(s);
    cos_out = _mm512_load_ps(c);
    return;
  }
  const __m512i one_i = _mm512_set1_epi32(1), two = _mm512_set1_epi32(2), four = _mm512_set1_epi32(4);
  __mmask16 sign_sin = _mm512_cmp_ps_mask(in, _mm512_setzero_ps(), _CMP_LT_OQ);
  __m512i j = _mm512_cvttps_epu32(_mm512_mul_ps(x0, _mm512_set1_ps(1.27323954473516f)));
  j = _mm512_andnot_si512(one_i, _mm512_add_epi32(j, one_i));
  const __m512 y = _mm512_cvtepu32_ps(j);
  const __mmask16 poly_swap = _mm512_test_epi32_mask(j, two);
  __m512 x = _mm512_fmadd_ps(y, _mm512_set1_ps(-0.78515625f), x0);
  x = _mm512_fmadd_ps(y, _mm512_set1_ps(-2.4187564849853515625e-4f), x);
  x = _mm512_fmadd_ps(y, _mm512_set1_ps(-3.77489497744594108e-8f), x);
  sign_sin = sign_sin ^ _mm512_test_epi32_mask(j, four);
  const __mmask16 sign_cos = _mm512_test_epi32_mask(_mm512_sub_epi32(j, two), four);
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 y1 = _mm512_fmadd_ps(z, _mm512_set1_ps(2.443315711809948e-5f), _mm512_set1_ps(-1.388731625493765e-3f));
  __m512 y2 = _mm512_fmadd_ps(z, _mm512_set1_ps(-1.9515295891e-4f), _mm512_set1_ps(8.3321608736e-3f));
  y1 = _mm512_fmadd_ps(y1, z, _mm512_set1_ps(4.166664568298827e-2f));
  y2 = _mm512_fmadd_ps(y2, z, _mm512_set1_ps(-1.6666654611e-1f));
  y1 = _mm512_mul_ps(y1, z);
  y2 = _mm512_mul_ps(y2, z);
  y1 = _mm512_mul_ps(y1, z);
  y2 = _mm512_fmadd_ps(x, y2, x);
  y1 = _mm512_fmadd_ps(z, _mm512_set1_ps(-0.5f), y1);
  y1 = _mm512_add_ps(y1, _mm512_set1_ps(1.0f));
  const __m512 ys = _mm512_mask_blend_ps(poly_swap, y2, y1), yc = _mm512_mask_blend_ps(poly_swap, y1, y2);
  const __m512 zero = _mm512_setzero_ps();
  sin_out = _mm512_mask_sub_ps(ys, sign_sin, zero, ys);
  cos_out = _mm512_mask_sub_ps(yc, ~sign_cos, zero, yc);
}

// cs holds the cos then the sin of each angle (traditional: each repeated for its pair, sin
// negated on the even lane, so a row is x * cos + swap_pairs(x) * sin).
// fp-contract off: x1 * cos - x2 * sin rounds each product as MLX's separate ops do (bit-equal).
AVX512 __attribute__((optimize("fp-contract=off"))) void rope_avx512(const RopeRow& r, float position, const float* inv_freq, float* cs) {
  const int half = r.dims / 2;
  const __m512 p = _mm512_set1_ps(position);
  if (!r.traditional) {
    float* cos_t = cs;
    float* sin_t = cs + half;
    for (int i = 0; i < half; i += 16) {
      const __mmask16 m = tail_mask(std::min(16, half - i));
      __m512 s, c;
      sincos16(_mm512_mul_ps(p, _mm512_maskz_loadu_ps(m, inv_freq + i)), s, c);
      _mm512_mask_storeu_ps(cos_t + i, m, c);
      _mm512_mask_storeu_ps(sin_t + i, m, s);
    }
    for (int h = 0; h < r.heads; ++h) {
      const float* x = r.x + h * r.head_stride;
      float* y = r.out + h * r.out_head_stride;
      for (int i = 0; i < half; i += 16) {
        const __mmask16 m = tail_mask(std::min(16, half - i));
        const __m512 x1 = _mm512_maskz_loadu_ps(m, x + i), x2 = _mm512_maskz_loadu_ps(m, x + half + i);
        const __m512 c = _mm512_maskz_loadu_ps(m, cos_t + i), s = _mm512_maskz_loadu_ps(m, sin_t + i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_sub_ps(_mm512_mul_ps(x1, c), _mm512_mul_ps(x2, s)));
        _mm512_mask_storeu_ps(y + half + i, m, _mm512_add_ps(_mm512_mul_ps(x1, s), _mm512_mul_ps(x2, c)));
      }
      if (r.dims < r.dim) std::memcpy(y + r.dims, x + r.dims, sizeof(float) * (r.dim - r.dims));
    }
    return;
  }
  float* cos_t = cs;             // [dims]: c0 c0 c1 c1 ...
  float* sin_t = cs + r.dims;    // [dims]: -s0 s0 -s1 s1 ...
  const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  for (int i = 0; i < r.dims; i += 16) {
    const int lanes = std::min(16, r.dims - i);
    const __mmask16 m = tail_mask(lanes / 2);
    __m512 s, c;
    sincos16(_mm512_mul_ps(p, _mm512_maskz_loadu_ps(m, inv_freq + i / 2)), s, c);
    const __m512 s2 = _mm512_permutexvar_ps(dup, s);
    _mm512_mask_storeu_ps(cos_t + i, tail_mask(lanes), _mm512_permutexvar_ps(dup, c));
    _mm512_mask_storeu_ps(sin_t + i, tail_mask(lanes), _mm512_mask_sub_ps(s2, 0x5555, _mm512_setzero_ps(), s2));
  }
  for (int h = 0; h < r.heads; ++h) {
    const float* x = r.x + h * r.head_stride;
    float* y = r.out + h * r.out_head_stride;
    for (int i = 0; i < r.dims; i += 16) {
      const __mmask16 m = tail_mask(std::min(16, r.dims - i));
      const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
      const __m512 swapped = _mm512_permute_ps(v, 0xB1);
      const __m512 out = _mm512_add_ps(_mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, cos_t + i)),
                                       _mm512_mul_ps(swapped, _mm512_maskz_loadu_ps(m, sin_t + i)));
      _mm512_mask_storeu_ps(y + i, m, out);
    }
    if (r.dims < r.dim) std::memcpy(y + r.dims, x + r.dims, sizeof(float) * (r.dim - r.dims));
  }
}
#endif

// ---------------------------------------------------------------------------------------------
// The primitives.

class Swiglu : public mx::Primitive {
 public:
  Swiglu(mx::Stream stream, Isa isa) : mx::Primitive(stream), isa_(isa) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& out = outputs[0];
    auto& encoder = cpu_encoder_for(stream(), inputs, out);
    encoder.dispatch([h = inputs[0], out, isa = isa_]() mutable {
      std::vector<float> scratch;
      const float* src = row_major(h, scratch);
      const int f = static_cast<int>(out.shape(-1));
      const int rows = f > 0 ? static_cast<int>(out.size() / f) : 0;
      const int chunks = (f + kChunk - 1) / kChunk;
      float* dst = out.data<float>();
      split(rows * chunks, static_cast<int64_t>(out.size()), [&](int t0, int t1) {
        for (int t = t0; t < t1; ++t) {
          const int row = t / chunks, c0 = (t % chunks) * kChunk, n = std::min(kChunk, f - c0);
          const float* gate = src + static_cast<int64_t>(row) * 2 * f + c0;
          float* y = dst + static_cast<int64_t>(row) * f + c0;
#if defined(__x86_64__)
          if (isa == Isa::avx512) { swiglu_avx512(gate, gate + f, y, n); continue; }
#endif
          swiglu_generic(gate, gate + f, y, n);
        }
      });
    });
  }
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("swiglu runs on the CPU only");
  }
  const char* name() const override { return "PagedmlxSwiglu"; }

 private:
  Isa isa_;
};

class RmsNorm : public mx::Primitive {
 public:
  RmsNorm(mx::Stream stream, float eps, Isa isa) : mx::Primitive(stream), eps_(eps), isa_(isa) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& out = outputs[0];
    auto& encoder = cpu_encoder_for(stream(), inputs, out);
    encoder.dispatch([x = inputs[0], w = inputs[1], out, eps = eps_, isa = isa_]() mutable {
      std::vector<float> x_scratch, w_scratch;
      const float* xs = row_major(x, x_scratch);
      const float* ws = row_major(w, w_scratch);
      const int d = static_cast<int>(out.shape(-1));
      const int rows = d > 0 ? static_cast<int>(out.size() / d) : 0;
      float* dst = out.data<float>();
      split(rows, static_cast<int64_t>(out.size()), [&](int r0, int r1) {
        for (int r = r0; r < r1; ++r) {
          const int64_t at = static_cast<int64_t>(r) * d;
#if defined(__x86_64__)
          if (isa == Isa::avx512) { rms_norm_avx512(xs + at, ws, dst + at, d, eps); continue; }
#endif
          rms_norm_generic(xs + at, ws, dst + at, d, eps);
        }
      });
    });
  }
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("rms_norm runs on the CPU only");
  }
  const char* name() const override { return "PagedmlxRmsNorm"; }

 private:
  float eps_;
  Isa isa_;
};

struct RopeParams {
  int dims;
  bool traditional;
  float scale;
  int offset;        // when there is no offset array
  bool has_offsets;  // inputs[2]: int32 [B] or [1]
};

class Rope : public mx::Primitive {
 public:
  Rope(mx::Stream stream, RopeParams params, Isa isa) : mx::Primitive(stream), p_(params), isa_(isa) {}

  // inputs: x [B, H, L, D] (any strides), inv_freq [dims / 2], offsets (optional).
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& out = outputs[0];
    auto& encoder = cpu_encoder_for(stream(), inputs, out);
    encoder.dispatch([inputs, out, p = p_, isa = isa_]() mutable {
      const mx::array& x = inputs[0];
      std::vector<float> x_scratch;
      const float* xs = x.data<float>();
      int64_t sb = x.strides()[0], sh = x.strides()[1], sl = x.strides()[2];
      const int B = x.shape(0), H = x.shape(1), L = x.shape(2), D = x.shape(3);
      if (x.strides()[3] != 1 && D > 1) {
        xs = row_major(x, x_scratch);
        sb = static_cast<int64_t>(H) * L * D, sh = static_cast<int64_t>(L) * D, sl = D;
      }
      const float* inv_freq = inputs[1].data<float>();
      std::vector<int32_t> offsets(B, p.offset);
      if (p.has_offsets) {
        const mx::array& o = inputs[2];
        const int32_t* od = o.data<int32_t>();
        const int64_t stride = o.ndim() == 1 ? o.strides()[0] : 0;
        for (int b = 0; b < B; ++b) offsets[b] = od[o.size() == 1 ? 0 : b * stride];
      }
      float* dst = out.data<float>();
      split(B * L, static_cast<int64_t>(out.size()), [&](int t0, int t1) {
        std::vector<float> cs(2 * p.dims);
        for (int t = t0; t < t1; ++t) {
          const int b = t / L, l = t % L;
          // MLX: (arange(L) + offset) * scale, in float32.
          const float position = (static_cast<float>(l) + static_cast<float>(offsets[b])) * p.scale;
          RopeRow row{xs + b * sb + l * sl, sh, dst + (static_cast<int64_t>(b) * H * L + l) * D,
                      static_cast<int64_t>(L) * D, H, D, p.dims, p.traditional};
#if defined(__x86_64__)
          if (isa == Isa::avx512) { rope_avx512(row, position, inv_freq, cs.data()); continue; }
#endif
          rope_generic(row, position, inv_freq, cs.data());
        }
      });
    });
  }
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("rope runs on the CPU only");
  }
  const char* name() const override { return "PagedmlxRope"; }

 private:
  RopeParams p_;
  Isa isa_;
};

// ---------------------------------------------------------------------------------------------
// The Python functions.

mx::Stream cpu_stream() { return mx::default_stream(mx::Device::cpu); }

mx::array swiglu(const mx::array& h, const std::string& isa) {
  require(h.dtype() == mx::float32, "swiglu", "h must be float32");
  require(h.ndim() >= 1 && h.shape(-1) % 2 == 0, "swiglu", "h's last axis must be even (gate | up)");
  const Isa chosen = choose_isa("swiglu", isa);
  mx::Shape shape = h.shape();
  shape.back() /= 2;
  return mx::array(shape, mx::float32, std::make_shared<Swiglu>(cpu_stream(), chosen), {h});
}

mx::array rms_norm(const mx::array& x, const mx::array& weight, float eps, const std::string& isa) {
  require(x.dtype() == mx::float32 && weight.dtype() == mx::float32, "rms_norm", "x and weight must be float32");
  require(x.ndim() >= 1 && weight.ndim() == 1 && weight.shape(0) == x.shape(-1), "rms_norm",
          "weight must be [D] for x [..., D]");
  const Isa chosen = choose_isa("rms_norm", isa);
  return mx::array(x.shape(), mx::float32, std::make_shared<RmsNorm>(cpu_stream(), eps, chosen), {x, weight});
}

// MLX's default inverse frequencies, computed by MLX once per (dims, base) and kept.
mx::array inverse_frequencies(int dims, float base) {
  static std::mutex lock;
  // Never freed: MLX's allocator may be gone by the time static destructors run.
  static auto& cache = *new std::map<std::pair<int, uint32_t>, mx::array>();
  uint32_t base_bits;
  std::memcpy(&base_bits, &base, sizeof base_bits);
  std::lock_guard<std::mutex> guard(lock);
  auto found = cache.find({dims, base_bits});
  if (found != cache.end()) return found->second;
  const int half = dims / 2;
  auto s = cpu_stream();
  mx::array inv = mx::exp(mx::multiply(mx::arange(0.0, static_cast<double>(-half), -1.0, mx::float32, s),
                                       mx::array(std::log(base) / half, mx::float32), s),
                          s);
  inv = mx::contiguous(inv, false, s);
  mx::eval(inv);
  cache.emplace(std::make_pair(dims, base_bits), inv);
  return inv;
}

mx::array rope(const mx::array& x, int dims, bool traditional, float base, float scale,
               const std::variant<int, mx::array>& offset, const std::string& isa) {
  require(x.dtype() == mx::float32, "rope", "x must be float32");
  require(x.ndim() == 3 || x.ndim() == 4, "rope", "x must be [B, H, L, D] (or [B, L, D])");
  require(dims > 0 && dims % 2 == 0 && dims <= x.shape(-1), "rope", "dims must be even, positive and at most D");
  const Isa chosen = choose_isa("rope", isa);
  auto s = cpu_stream();
  mx::array x4 = x.ndim() == 3 ? mx::expand_dims(x, 1, s) : x;
  RopeParams params{dims, traditional, scale, 0, false};
  std::vector<mx::array> inputs = {x4, inverse_frequencies(dims, base)};
  if (const int* value = std::get_if<int>(&offset)) {
    params.offset = *value;
  } else {
    mx::array o = std::get<mx::array>(offset);
    require(o.ndim() <= 1 && (o.size() == 1 || o.size() == static_cast<size_t>(x4.shape(0))), "rope",
            "offset must be an int or an integer array of shape [B]");
    require(mx::issubdtype(o.dtype(), mx::integer), "rope", "offset must be an integer array");
    if (o.dtype() != mx::int32) o = mx::astype(o, mx::int32, s);
    params.has_offsets = true;
    inputs.push_back(o);
  }
  auto y = mx::array(x4.shape(), mx::float32, std::make_shared<Rope>(s, params, chosen), std::move(inputs));
  return x.ndim() == 3 ? mx::reshape(y, x.shape(), s) : y;
}

}  // namespace

void register_activations(nb::module_& m) {
  m.def("swiglu", &swiglu, nb::arg("h"), nb::arg("isa") = "",
        "silu(h[..., :F]) * h[..., F:] for float32 h [..., 2F] (gate | up): [..., F]. "
        "isa: '' (best here), 'generic', 'avx512'.");
  m.def("rms_norm", &rms_norm, nb::arg("x"), nb::arg("weight"), nb::arg("eps"), nb::arg("isa") = "",
        "As mx.fast.rms_norm(x, weight, eps) for float32 x [..., D], weight [D]. "
        "isa: '' (best here), 'generic', 'avx512'.");
  m.def("rope", &rope, nb::arg("x"), nb::arg("dims"), nb::arg("traditional"), nb::arg("base"), nb::arg("scale"),
        nb::arg("offset"), nb::arg("isa") = "",
        "As mx.fast.rope for float32 x [B, H, L, D] (read through its strides): offset an int or an int32 "
        "array [B] of each row's first position. Returns a row-contiguous [B, H, L, D]. "
        "isa: '' (best here), 'generic', 'avx512'.");
}

}  // namespace pagedmlx
