// Quantized matmul for the CPU: y[M, N] = x[M, K] @ W^T with W in MLX's affine scheme (per group of
// group_size along K: w = scale * q + bias, q unsigned of 8 or 4 bits). The weights are repacked once
// (pack_quantized) into panels of 16 output columns laid out for VNNI's vpdpbusd: [N/16][K/4][16][4]
// bytes (4-bit: [N/16][K/8][16][4], low nibbles k..k+3, high nibbles k+4..k+7). Activations are
// quantized per row and group to int8 (absmax) on the fly; each group adds
//   float(sum_k q_w q_x) * scale_w * scale_x + bias_w * sum_k x
// to the float accumulator. Work is split over blocks of panels, so a block's weights stay in cache
// across all row tiles.
#include "kernel_common.h"
#include "quantized_packing.h"

#include <cmath>
#include <cstring>
#include <optional>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/tuple.h>

namespace pagedmlx {
namespace {

constexpr const char* kOp = "quantized_matmul";

constexpr int kPanel = 16;     // output columns per panel: one 512-bit vector of int32
constexpr int kRowTile = 4;    // rows per microkernel call
constexpr int kMaxBlock = 4;   // panels per task

enum class Isa { generic, avx2, avx512_vnni };

struct Shape2 {
  int m, n, k, bits, group;
  int panels() const { return (n + kPanel - 1) / kPanel; }
  int groups() const { return k / group; }
  // Bytes of one panel's weights.
  int panel_bytes() const { return k * kPanel * bits / 8; }
};

// Activations of one call, quantized per row and group.
struct QuantizedRows {
  std::vector<int8_t> q;       // [M][K]
  std::vector<float> scale;    // [M][groups]
  std::vector<float> sum;      // [M][groups]: float sum of the group's x, for the bias term
};

// Inlined into each ISA's entry point, so the compiler vectorizes it for that ISA.
__attribute__((always_inline)) inline void quantize_rows_impl(const float* x, const Shape2& s, int r0, int r1,
                                                              QuantizedRows& a) {
  const int groups = s.groups();
  for (int r = r0; r < r1; ++r) {
    for (int g = 0; g < groups; ++g) {
      const float* xs = x + static_cast<size_t>(r) * s.k + g * s.group;
      int8_t* qs = a.q.data() + static_cast<size_t>(r) * s.k + g * s.group;
      float top = 0, sum = 0;
      for (int i = 0; i < s.group; ++i) {
        top = std::max(top, std::fabs(xs[i]));
        sum += xs[i];
      }
      const float inv = top > 0 ? 127.0f / top : 0.0f;
      for (int i = 0; i < s.group; ++i) {
        float t = xs[i] * inv;
        qs[i] = static_cast<int8_t>(static_cast<int>(t + (t >= 0 ? 0.5f : -0.5f)));
      }
      a.scale[r * groups + g] = top / 127.0f;
      a.sum[r * groups + g] = sum;
    }
  }
}

// The portable kernel: one row at a time against panels [p0, p1).
__attribute__((always_inline)) inline void matmul_rows_impl(const QuantizedRows& a, const uint8_t* w,
                                                            const float* scales, const float* biases,
                                                            const float* bias, const Shape2& s, int p0, int p1,
                                                            float* y) {
  const int groups = s.groups();
  for (int r = 0; r < s.m; ++r) {
    const int8_t* xq = a.q.data() + static_cast<size_t>(r) * s.k;
    for (int p = p0; p < p1; ++p) {
      const uint8_t* wp = w + static_cast<size_t>(p) * s.panel_bytes();
      float acc[kPanel] = {};
      for (int g = 0; g < groups; ++g) {
        int32_t dot[kPanel] = {};
        for (int k = g * s.group; k < (g + 1) * s.group; k += 4) {
          const uint8_t* wk;
          int shift = 0;
          if (s.bits == 8) {
            wk = wp + (k / 4) * kPanel * 4;
          } else {
            wk = wp + (k / 8) * kPanel * 4;
            shift = (k % 8) ? 4 : 0;
          }
          for (int c = 0; c < kPanel; ++c)
            for (int j = 0; j < 4; ++j) {
              int q = s.bits == 8 ? wk[c * 4 + j] : (wk[c * 4 + j] >> shift) & 15;
              dot[c] += q * xq[k + j];
            }
        }
        const float* sc = scales + (static_cast<size_t>(p) * groups + g) * kPanel;
        const float* bi = biases + (static_cast<size_t>(p) * groups + g) * kPanel;
        const float xs = a.scale[r * groups + g], xsum = a.sum[r * groups + g];
        for (int c = 0; c < kPanel; ++c) acc[c] += static_cast<float>(dot[c]) * (sc[c] * xs) + bi[c] * xsum;
      }
      const int cols = std::min(kPanel, s.n - p * kPanel);
      for (int c = 0; c < cols; ++c)
        y[static_cast<size_t>(r) * s.n + p * kPanel + c] = acc[c] + (bias ? bias[p * kPanel + c] : 0.0f);
    }
  }
}

void quantize_rows_generic(const float* x, const Shape2& s, int r0, int r1, QuantizedRows& a) {
  quantize_rows_impl(x, s, r0, r1, a);
}
void matmul_generic(const QuantizedRows& a, const uint8_t* w, const float* sc, const float* bi, const float* bias,
                    const Shape2& s, int p0, int p1, float* y) {
  matmul_rows_impl(a, w, sc, bi, bias, s, p0, p1, y);
}

#if defined(__x86_64__)
#define AVX2 __attribute__((target("avx2,fma")))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")))

AVX2 void quantize_rows_avx2(const float* x, const Shape2& s, int r0, int r1, QuantizedRows& a) {
  quantize_rows_impl(x, s, r0, r1, a);
}
AVX2 void matmul_avx2(const QuantizedRows& a, const uint8_t* w, const float* sc, const float* bi, const float* bias,
                      const Shape2& s, int p0, int p1, float* y) {
  matmul_rows_impl(a, w, sc, bi, bias, s, p0, p1, y);
}
AVX512 void quantize_rows_avx512(const float* x, const Shape2& s, int r0, int r1, QuantizedRows& a) {
  quantize_rows_impl(x, s, r0, r1, a);
}

// MR rows x NB panels: int32 dot products per group in registers, folded into float accumulators.
template <int MR, int NB, int BITS>
AVX512 void tile_vnni(const QuantizedRows& a, const uint8_t* w, const float* scales, const float* biases,
                      const float* bias, const Shape2& s, int r0, int p0, float* y) {
  const int groups = s.groups();
  const size_t panel_bytes = s.panel_bytes();
  const int8_t* xq[MR];
  #pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) xq[r] = a.q.data() + static_cast<size_t>(r0 + r) * s.k;
  __m512 acc[MR][NB];
  #pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
    #pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  const __m512i low_nibbles = _mm512_set1_epi8(15);
  for (int g = 0; g < groups; ++g) {
    __m512i dot[MR][NB];
    #pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
      #pragma GCC unroll 8
      for (int b = 0; b < NB; ++b) dot[r][b] = _mm512_setzero_si512();
    const int k_end = (g + 1) * s.group;
    if constexpr (BITS == 8) {
      for (int k = g * s.group; k < k_end; k += 4) {
        __m512i wv[NB];
        #pragma GCC unroll 8
        for (int b = 0; b < NB; ++b)
          wv[b] = _mm512_loadu_si512(w + (p0 + b) * panel_bytes + static_cast<size_t>(k) * kPanel);
        #pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
          int32_t x4;
          std::memcpy(&x4, xq[r] + k, 4);
          const __m512i xv = _mm512_set1_epi32(x4);
          #pragma GCC unroll 8
          for (int b = 0; b < NB; ++b) dot[r][b] = _mm512_dpbusd_epi32(dot[r][b], wv[b], xv);
        }
      }
    } else {
      for (int k = g * s.group; k < k_end; k += 8) {
        __m512i lo[NB], hi[NB];
        #pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) {
          __m512i v = _mm512_loadu_si512(w + (p0 + b) * panel_bytes + static_cast<size_t>(k / 2) * kPanel);
          lo[b] = _mm512_and_si512(v, low_nibbles);
          hi[b] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low_nibbles);
        }
        #pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
          int32_t x_lo, x_hi;
          std::memcpy(&x_lo, xq[r] + k, 4);
          std::memcpy(&x_hi, xq[r] + k + 4, 4);
          const __m512i xl = _mm512_set1_epi32(x_lo), xh = _mm512_set1_epi32(x_hi);
          #pragma GCC unroll 8
          for (int b = 0; b < NB; ++b) {
            dot[r][b] = _mm512_dpbusd_epi32(dot[r][b], lo[b], xl);
            dot[r][b] = _mm512_dpbusd_epi32(dot[r][b], hi[b], xh);
          }
        }
      }
    }
    #pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      const size_t at = (static_cast<size_t>(p0 + b) * groups + g) * kPanel;
      const __m512 ws = _mm512_loadu_ps(scales + at), wb = _mm512_loadu_ps(biases + at);
      #pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const int row_group = (r0 + r) * groups + g;
        __m512 with_bias = _mm512_fmadd_ps(wb, _mm512_set1_ps(a.sum[row_group]), acc[r][b]);
        acc[r][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r][b]),
                                    _mm512_mul_ps(ws, _mm512_set1_ps(a.scale[row_group])), with_bias);
      }
    }
  }
  #pragma GCC unroll 8
  for (int b = 0; b < NB; ++b) {
    const int col = (p0 + b) * kPanel;
    const int cols = std::min(kPanel, s.n - col);
    const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1);
    const __m512 add = bias ? _mm512_maskz_loadu_ps(mask, bias + col) : _mm512_setzero_ps();
    #pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
      _mm512_mask_storeu_ps(y + static_cast<size_t>(r0 + r) * s.n + col, mask, _mm512_add_ps(acc[r][b], add));
  }
}

template <int BITS, int MR>
AVX512 void tile_rows(const QuantizedRows& a, const uint8_t* w, const float* sc, const float* bi, const float* bias,
                      const Shape2& s, int r0, int p0, int nb, float* y) {
  switch (nb) {
    case 4: return tile_vnni<MR, 4, BITS>(a, w, sc, bi, bias, s, r0, p0, y);
    case 3: return tile_vnni<MR, 3, BITS>(a, w, sc, bi, bias, s, r0, p0, y);
    case 2: return tile_vnni<MR, 2, BITS>(a, w, sc, bi, bias, s, r0, p0, y);
    default: return tile_vnni<MR, 1, BITS>(a, w, sc, bi, bias, s, r0, p0, y);
  }
}

// Full row tiles take two panels at a time (24 registers of accumulators); the last 1-3 rows take
// the block's panels at once, so a GEMV still has several independent dot-product chains.
template <int BITS>
AVX512 void matmul_vnni_bits(const QuantizedRows& a, const uint8_t* w, const float* sc, const float* bi,
                             const float* bias, const Shape2& s, int p0, int p1, float* y) {
  int r0 = 0;
  for (; r0 + kRowTile <= s.m; r0 += kRowTile)
    for (int p = p0; p < p1; p += 2) tile_rows<BITS, kRowTile>(a, w, sc, bi, bias, s, r0, p, std::min(2, p1 - p), y);
  switch (s.m - r0) {
    case 3: return tile_rows<BITS, 3>(a, w, sc, bi, bias, s, r0, p0, p1 - p0, y);
    case 2: return tile_rows<BITS, 2>(a, w, sc, bi, bias, s, r0, p0, p1 - p0, y);
    case 1: return tile_rows<BITS, 1>(a, w, sc, bi, bias, s, r0, p0, p1 - p0, y);
    default: return;
  }
}

void matmul_vnni(const QuantizedRows& a, const uint8_t* w, const float* sc, const float* bi, const float* bias,
                 const Shape2& s, int p0, int p1, float* y) {
  if (s.bits == 8) return matmul_vnni_bits<8>(a, w, sc, bi, bias, s, p0, p1, y);
  matmul_vnni_bits<4>(a, w, sc, bi, bias, s, p0, p1, y);
}
#endif

void run_matmul(Isa isa, const float* x, const uint8_t* w, const float* sc, const float* bi, const float* bias,
                const Shape2& s, float* y) {
  QuantizedRows a{std::vector<int8_t>(static_cast<size_t>(s.m) * s.k),
                  std::vector<float>(static_cast<size_t>(s.m) * s.groups()),
                  std::vector<float>(static_cast<size_t>(s.m) * s.groups())};
  auto quantize = [&](int r0, int r1) {
#if defined(__x86_64__)
    if (isa == Isa::avx512_vnni) return quantize_rows_avx512(x, s, r0, r1, a);
    if (isa == Isa::avx2) return quantize_rows_avx2(x, s, r0, r1, a);
#endif
    quantize_rows_generic(x, s, r0, r1, a);
  };
  if (s.m >= 64)
    parallel_for(s.m, quantize);
  else
    quantize(0, s.m);

  const int panels = s.panels();
  int block = kMaxBlock;
  while (block > 1 && (panels + block - 1) / block < 4 * num_threads()) block /= 2;
  const int tasks = (panels + block - 1) / block;
  parallel_for(tasks, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) {
      const int p0 = t * block, p1 = std::min(panels, p0 + block);
#if defined(__x86_64__)
      if (isa == Isa::avx512_vnni) { matmul_vnni(a, w, sc, bi, bias, s, p0, p1, y); continue; }
      if (isa == Isa::avx2) { matmul_avx2(a, w, sc, bi, bias, s, p0, p1, y); continue; }
#endif
      matmul_generic(a, w, sc, bi, bias, s, p0, p1, y);
    }
  });
}

class QuantizedMatmul : public mx::Primitive {
 public:
  QuantizedMatmul(mx::Stream stream, Shape2 shape, Isa isa, bool has_bias)
      : mx::Primitive(stream), shape_(shape), isa_(isa), has_bias_(has_bias) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& out = outputs[0];
    auto& encoder = cpu_encoder_for(stream(), inputs, out);
    Shape2 shape = shape_;
    shape.m = static_cast<int>(inputs[0].shape(0));
    encoder.dispatch([inputs, out, shape, isa = isa_, has_bias = has_bias_]() mutable {
      const float* bias = has_bias ? inputs[4].data<float>() : nullptr;
      run_matmul(isa, inputs[0].data<float>(), inputs[1].data<uint8_t>(), inputs[2].data<float>(),
                 inputs[3].data<float>(), bias, shape, out.data<float>());
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("quantized_matmul runs on the CPU only");
  }

  const char* name() const override { return "PagedmlxQuantizedMatmul"; }

 private:
  Shape2 shape_;
  Isa isa_;
  bool has_bias_;
};

Isa choose_isa(const std::string& requested) {
  const auto& f = cpu_features();
  const bool vnni = f.avx512 && f.avx512_vnni, avx2 = f.avx2;
  if (requested.empty()) return vnni ? Isa::avx512_vnni : avx2 ? Isa::avx2 : Isa::generic;
  if (requested == "generic") return Isa::generic;
  if (requested == "avx2" && avx2) return Isa::avx2;
  if (requested == "avx512-vnni" && vnni) return Isa::avx512_vnni;
  throw std::invalid_argument("quantized_matmul: isa '" + requested + "' is not available here");
}

mx::array quantized_matmul(const mx::array& x, const mx::array& packed, const mx::array& scales,
                           const mx::array& biases, int bits, int group_size, int n, int k,
                           const std::optional<mx::array>& bias, const std::string& isa) {
  check_quantized_shape(kOp, bits, group_size, n, k);
  const Shape2 shape{0, n, k, bits, group_size};
  check_packed(kOp, "pack_quantized", packed, scales, biases, static_cast<size_t>(shape.panels()) * shape.panel_bytes(),
               static_cast<size_t>(shape.panels()) * shape.groups() * kPanel);
  auto in = packed_matmul_inputs(kOp, x, packed, scales, biases, n, k, bias);
  auto cpu = mx::default_stream(mx::Device::cpu);
  auto y = mx::array({in.m, n}, mx::float32,
                     std::make_shared<QuantizedMatmul>(cpu, shape, choose_isa(isa), bias.has_value()),
                     std::move(in.arrays));
  return mx::reshape(y, in.y_shape, cpu);
}

// Repacks MLX's quantize output for quantized_matmul (layout at the top of this file).
std::tuple<mx::array, mx::array, mx::array> pack_quantized(const mx::array& wq, const mx::array& scales,
                                                           const mx::array& biases, int bits, int group_size) {
  return pack_panels(kOp, wq, scales, biases, bits, group_size, kPanel, [&](uint8_t* panel, int c, int kk, int q) {
    if (bits == 8)
      panel[(kk / 4) * kPanel * 4 + c * 4 + kk % 4] = static_cast<uint8_t>(q);
    else
      panel[(kk / 8) * kPanel * 4 + c * 4 + kk % 4] |= static_cast<uint8_t>(q << (kk % 8 >= 4 ? 4 : 0));
  });
}

mx::array dequantize_rows(const mx::array& packed, const mx::array& scales, const mx::array& biases,
                          const mx::array& ids, int bits, int group_size, int n, int k) {
  check_quantized_shape(kOp, bits, group_size, n, k);
  return packed_rows("dequantize_rows", packed, scales, biases, ids, bits, group_size, n, k, kPanel,
                     [bits](const uint8_t* panel, int c, int kk) {
                       return bits == 8 ? panel[(kk / 4) * kPanel * 4 + c * 4 + kk % 4]
                                        : (panel[(kk / 8) * kPanel * 4 + c * 4 + kk % 4] >> (kk % 8 >= 4 ? 4 : 0)) & 15;
                     });
}

}  // namespace

void register_quantized_matmul(nb::module_& m) {
  m.def("pack_quantized", &pack_quantized, nb::arg("wq"), nb::arg("scales"), nb::arg("biases"), nb::arg("bits"),
        nb::arg("group_size"),
        "Repack MLX's mx.quantize output (wq uint32 [N, K*bits/32], scales, biases [N, K/group]) for "
        "quantized_matmul: returns (packed uint8, scales, biases) in panels of 16 output columns.");
  m.def("quantized_matmul", &quantized_matmul, nb::arg("x"), nb::arg("packed"), nb::arg("scales"),
        nb::arg("biases"), nb::arg("bits"), nb::arg("group_size"), nb::arg("n"), nb::arg("k"),
        nb::arg("bias") = nb::none(), nb::arg("isa") = "",
        "x [..., K] @ W^T (+ bias) for W [N, K] packed by pack_quantized; float32 out [..., N]. "
        "Activations are quantized to int8 per row and group. isa: '' (best here), 'generic', 'avx2', "
        "'avx512-vnni'.");
  m.def("dequantize_rows", &dequantize_rows, nb::arg("packed"), nb::arg("scales"), nb::arg("biases"), nb::arg("ids"),
        nb::arg("bits"), nb::arg("group_size"), nb::arg("n"), nb::arg("k"),
        "Rows ids of the packed W [N, K], dequantized to float32 [*ids.shape, K] (embedding lookups).");
}

}  // namespace pagedmlx
