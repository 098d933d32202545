// Weight-only quantized matmul for the CPU: y[M, N] = x[M, K] @ W^T (+ bias), with W kept 8- or
// 4-bit in MLX's affine scheme (per group of group_size along K: w = scale * q + bias) and x float32.
// Each thread takes panels of 32 output columns; a panel's weights are dequantized a chunk of K at a
// time into an L1 scratch (scale * q, then + bias: the same float32 weights mx.dequantize gives) and
// multiplied by float32 FMA tiles of up to 12 rows x 32 columns. Activations are never rounded, so
// the result equals a float32 matmul against the dequantized weights up to summation order.
//
// Packed layout (pack_dequant): per panel, K rows of 32 columns; 8-bit: one byte per column;
// 4-bit: 16 bytes, byte j holding column j (low nibble) and column j + 16 (high nibble). Scales and
// biases: float32 [panels][K / group][32]. Columns past N are zero.
#include "kernel_common.h"
#include "quantized_packing.h"

#include <array>
#include <optional>
#include <tuple>
#include <utility>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/tuple.h>

namespace pagedmlx {
namespace {

constexpr const char* kOp = "dequant_matmul";

constexpr int kCols = 32;     // output columns per panel: two 512-bit vectors of float32
constexpr int kChunk = 256;   // K per scratch chunk: 256 x 32 floats = 32 KiB
constexpr int kMaxRows = 12;  // rows per tile: 24 accumulators

enum class Isa { generic, avx2, avx512 };

struct Shape {
  int m, n, k, bits, group;
  int panels() const { return (n + kCols - 1) / kCols; }
  int groups() const { return k / group; }
  int row_bytes() const { return kCols * bits / 8; }  // one k of a panel
  size_t panel_bytes() const { return static_cast<size_t>(k) * row_bytes(); }
};

struct Operands {
  const float* x;  // [M][K]
  const uint8_t* w;
  const float* scales;
  const float* biases;
  const float* bias;  // [N] or null
  float* y;           // [M][N]
};

inline int quant(const uint8_t* row, int column, int bits) {
  if (bits == 8) return row[column];
  return column < 16 ? row[column] & 15 : row[column - 16] >> 4;
}

// Portable parts, inlined into each ISA's entry point so the compiler vectorizes them for it.
__attribute__((always_inline)) inline void dequantize_chunk_impl(const Operands& o, const Shape& s, int p, int k0,
                                                                 int k1, float* scratch) {
  const uint8_t* wp = o.w + static_cast<size_t>(p) * s.panel_bytes();
  for (int k = k0; k < k1; ++k) {
    const size_t at = (static_cast<size_t>(p) * s.groups() + k / s.group) * kCols;
    const uint8_t* row = wp + static_cast<size_t>(k) * s.row_bytes();
    float* out = scratch + (k - k0) * kCols;
    for (int c = 0; c < kCols; ++c) {
      const float scaled = o.scales[at + c] * static_cast<float>(quant(row, c, s.bits));
      out[c] = scaled + o.biases[at + c];
    }
  }
}

__attribute__((always_inline)) inline void tile_impl(const Operands& o, const Shape& s, int p, int r0, int rows,
                                                     int k0, int kc, const float* scratch) {
  const int cols = std::min(kCols, s.n - p * kCols);
  for (int r = r0; r < r0 + rows; ++r) {
    float acc[kCols];
    float* y = o.y + static_cast<size_t>(r) * s.n + p * kCols;
    for (int c = 0; c < kCols; ++c) acc[c] = c < cols ? y[c] : 0.0f;
    const float* x = o.x + static_cast<size_t>(r) * s.k + k0;
    for (int k = 0; k < kc; ++k)
      for (int c = 0; c < kCols; ++c) acc[c] += x[k] * scratch[k * kCols + c];
    for (int c = 0; c < cols; ++c) y[c] = acc[c];
  }
}

// y starts as the bias (or zero); each chunk's tiles accumulate into it.
void init_output(const Operands& o, const Shape& s, int p) {
  const int c0 = p * kCols, cols = std::min(kCols, s.n - c0);
  for (int r = 0; r < s.m; ++r) {
    float* y = o.y + static_cast<size_t>(r) * s.n + c0;
    for (int c = 0; c < cols; ++c) y[c] = o.bias ? o.bias[c0 + c] : 0.0f;
  }
}

using DequantizeFn = void (*)(const Operands&, const Shape&, int, int, int, float*);
using TileRowsFn = void (*)(const Operands&, const Shape&, int, int, int, int, int, const float*);

template <DequantizeFn dequantize, TileRowsFn tile>
__attribute__((always_inline)) inline void panels_impl(const Operands& o, const Shape& s, int p0, int p1) {
  alignas(64) float scratch[kChunk * kCols];
  for (int p = p0; p < p1; ++p) {
    init_output(o, s, p);
    for (int k0 = 0; k0 < s.k; k0 += kChunk) {
      const int kc = std::min(kChunk, s.k - k0);
      dequantize(o, s, p, k0, k0 + kc, scratch);
      for (int r0 = 0; r0 < s.m; r0 += kMaxRows) tile(o, s, p, r0, std::min(kMaxRows, s.m - r0), k0, kc, scratch);
    }
  }
}

void dequantize_chunk_generic(const Operands& o, const Shape& s, int p, int k0, int k1, float* scratch) {
  dequantize_chunk_impl(o, s, p, k0, k1, scratch);
}

void tile_generic(const Operands& o, const Shape& s, int p, int r0, int rows, int k0, int kc, const float* scratch) {
  tile_impl(o, s, p, r0, rows, k0, kc, scratch);
}

void panels_generic(const Operands& o, const Shape& s, int p0, int p1) {
  panels_impl<dequantize_chunk_generic, tile_generic>(o, s, p0, p1);
}

#if defined(__x86_64__)
#define AVX2 __attribute__((target("avx2,fma")))

AVX2 void dequantize_chunk_avx2(const Operands& o, const Shape& s, int p, int k0, int k1, float* scratch) {
  dequantize_chunk_impl(o, s, p, k0, k1, scratch);
}

AVX2 void tile_avx2(const Operands& o, const Shape& s, int p, int r0, int rows, int k0, int kc, const float* scratch) {
  tile_impl(o, s, p, r0, rows, k0, kc, scratch);
}

AVX2 void panels_avx2(const Operands& o, const Shape& s, int p0, int p1) {
  panels_impl<dequantize_chunk_avx2, tile_avx2>(o, s, p0, p1);
}

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))

AVX512 void dequantize_chunk_avx512(const Operands& o, const Shape& s, int p, int k0, int k1, float* scratch) {
  const uint8_t* wp = o.w + static_cast<size_t>(p) * s.panel_bytes();
  const __m512i low = _mm512_set1_epi32(15);
  for (int g0 = k0; g0 < k1; g0 += s.group) {
    const size_t at = (static_cast<size_t>(p) * s.groups() + g0 / s.group) * kCols;
    const __m512 sc0 = _mm512_loadu_ps(o.scales + at), sc1 = _mm512_loadu_ps(o.scales + at + 16);
    const __m512 bi0 = _mm512_loadu_ps(o.biases + at), bi1 = _mm512_loadu_ps(o.biases + at + 16);
    for (int k = g0; k < std::min(g0 + s.group, k1); ++k) {
      const uint8_t* row = wp + static_cast<size_t>(k) * s.row_bytes();
      __m512i q0, q1;
      if (s.bits == 8) {
        q0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
        q1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16)));
      } else {
        const __m512i both = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
        q0 = _mm512_and_si512(both, low);
        q1 = _mm512_srli_epi32(both, 4);
      }
      float* out = scratch + (k - k0) * kCols;
      // Multiply, then add (no FMA): the same rounding as mx.dequantize, so the weights are float32's.
      _mm512_store_ps(out, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(q0), sc0), bi0));
      _mm512_store_ps(out + 16, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(q1), sc1), bi1));
    }
  }
}

// Few rows leave too few accumulators to hide the FMA latency: those tiles also split K into
// `streams` interleaved partial sums.
template <int R>
AVX512 void tile_avx512(const Operands& o, const Shape& s, int p, int r0, int k0, int kc, const float* scratch) {
  constexpr int streams = R >= 4 ? 1 : R >= 2 ? 2 : 4;  // kc is a multiple of the group, so of 4
  const int cols = std::min(kCols, s.n - p * kCols);
  const __mmask16 m0 = cols >= 16 ? 0xFFFF : (1u << cols) - 1;
  const __mmask16 m1 = cols >= 32 ? 0xFFFF : cols > 16 ? (1u << (cols - 16)) - 1 : 0;
  __m512 acc0[streams][R], acc1[streams][R];
  const float* x[R];
  float* y[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    y[r] = o.y + static_cast<size_t>(r0 + r) * s.n + p * kCols;
    x[r] = o.x + static_cast<size_t>(r0 + r) * s.k + k0;
    acc0[0][r] = _mm512_maskz_loadu_ps(m0, y[r]);
    acc1[0][r] = _mm512_maskz_loadu_ps(m1, y[r] + 16);
#pragma GCC unroll 4
    for (int u = 1; u < streams; ++u) acc0[u][r] = acc1[u][r] = _mm512_setzero_ps();
  }
  for (int k = 0; k < kc; k += streams) {
#pragma GCC unroll 4
    for (int u = 0; u < streams; ++u) {
      const float* w = scratch + (k + u) * kCols;
      const __m512 w0 = _mm512_load_ps(w), w1 = _mm512_load_ps(w + 16);
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) {
        const __m512 xv = _mm512_set1_ps(x[r][k + u]);
        acc0[u][r] = _mm512_fmadd_ps(xv, w0, acc0[u][r]);
        acc1[u][r] = _mm512_fmadd_ps(xv, w1, acc1[u][r]);
      }
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int u = 1; u < streams; ++u) {
      acc0[0][r] = _mm512_add_ps(acc0[0][r], acc0[u][r]);
      acc1[0][r] = _mm512_add_ps(acc1[0][r], acc1[u][r]);
    }
    _mm512_mask_storeu_ps(y[r], m0, acc0[0][r]);
    _mm512_mask_storeu_ps(y[r] + 16, m1, acc1[0][r]);
  }
}

using TileFn = void (*)(const Operands&, const Shape&, int, int, int, int, const float*);

template <int... R>
constexpr auto make_tiles(std::integer_sequence<int, R...>) {
  return std::array<TileFn, sizeof...(R)>{&tile_avx512<R + 1>...};
}

constexpr auto kTilesAvx512 = make_tiles(std::make_integer_sequence<int, kMaxRows>{});

AVX512 void tile_rows_avx512(const Operands& o, const Shape& s, int p, int r0, int rows, int k0, int kc,
                             const float* scratch) {
  kTilesAvx512[rows - 1](o, s, p, r0, k0, kc, scratch);
}

AVX512 void panels_avx512(const Operands& o, const Shape& s, int p0, int p1) {
  panels_impl<dequantize_chunk_avx512, tile_rows_avx512>(o, s, p0, p1);
}
#endif

void run_matmul(Isa isa, const Operands& o, const Shape& s) {
  // Blocks of panels per task: enough tasks for both cores, few enough that each streams its weights.
  parallel_for(s.panels(), [&](int p0, int p1) {
#if defined(__x86_64__)
    if (isa == Isa::avx512) return panels_avx512(o, s, p0, p1);
    if (isa == Isa::avx2) return panels_avx2(o, s, p0, p1);
#endif
    panels_generic(o, s, p0, p1);
  });
}

class DequantMatmul : public mx::Primitive {
 public:
  DequantMatmul(mx::Stream stream, Shape shape, Isa isa, bool has_bias)
      : mx::Primitive(stream), shape_(shape), isa_(isa), has_bias_(has_bias) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& out = outputs[0];
    auto& encoder = cpu_encoder_for(stream(), inputs, out);
    Shape shape = shape_;
    shape.m = static_cast<int>(inputs[0].shape(0));
    encoder.dispatch([inputs, out, shape, isa = isa_, has_bias = has_bias_]() mutable {
      const Operands o{inputs[0].data<float>(), inputs[1].data<uint8_t>(), inputs[2].data<float>(),
                       inputs[3].data<float>(), has_bias ? inputs[4].data<float>() : nullptr, out.data<float>()};
      run_matmul(isa, o, shape);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("dequant_matmul runs on the CPU only");
  }

  const char* name() const override { return "PagedmlxDequantMatmul"; }

 private:
  Shape shape_;
  Isa isa_;
  bool has_bias_;
};

Isa choose_isa(const std::string& requested) {
  const auto& f = cpu_features();
  if (requested.empty()) return f.avx512 ? Isa::avx512 : f.avx2 ? Isa::avx2 : Isa::generic;
  if (requested == "generic") return Isa::generic;
  if (requested == "avx2" && f.avx2) return Isa::avx2;
  if (requested == "avx512" && f.avx512) return Isa::avx512;
  throw std::invalid_argument("dequant_matmul: isa '" + requested + "' is not available here");
}

void check_packed(const Shape& s, const mx::array& packed, const mx::array& scales, const mx::array& biases) {
  pagedmlx::check_packed(kOp, "pack_dequant", packed, scales, biases, s.panels() * s.panel_bytes(),
                         static_cast<size_t>(s.panels()) * s.groups() * kCols);
}

mx::array dequant_matmul(const mx::array& x, const mx::array& packed, const mx::array& scales,
                         const mx::array& biases, int bits, int group_size, int n, int k,
                         const std::optional<mx::array>& bias, const std::string& isa) {
  check_quantized_shape(kOp, bits, group_size, n, k);
  const Shape shape{0, n, k, bits, group_size};
  check_packed(shape, packed, scales, biases);
  auto in = packed_matmul_inputs(kOp, x, packed, scales, biases, n, k, bias);
  auto cpu = mx::default_stream(mx::Device::cpu);
  auto y = mx::array({in.m, n}, mx::float32,
                     std::make_shared<DequantMatmul>(cpu, shape, choose_isa(isa), bias.has_value()),
                     std::move(in.arrays));
  return mx::reshape(y, in.y_shape, cpu);
}

// Repacks MLX's quantize output for dequant_matmul (layout at the top of this file).
std::tuple<mx::array, mx::array, mx::array> pack_dequant(const mx::array& wq, const mx::array& scales,
                                                         const mx::array& biases, int bits, int group_size) {
  const int row_bytes = kCols * bits / 8;
  return pack_panels(kOp, wq, scales, biases, bits, group_size, kCols, [&](uint8_t* panel, int c, int kk, int q) {
    uint8_t* at = panel + static_cast<size_t>(kk) * row_bytes;
    if (bits == 8)
      at[c] = static_cast<uint8_t>(q);
    else
      at[c % 16] |= static_cast<uint8_t>(q << (c < 16 ? 0 : 4));
  });
}

mx::array dequant_rows(const mx::array& packed, const mx::array& scales, const mx::array& biases,
                       const mx::array& ids, int bits, int group_size, int n, int k) {
  check_quantized_shape(kOp, bits, group_size, n, k);
  check_packed(Shape{0, n, k, bits, group_size}, packed, scales, biases);
  const int row_bytes = kCols * bits / 8;
  return packed_rows("dequant_rows", packed, scales, biases, ids, bits, group_size, n, k, kCols,
                     [row_bytes, bits](const uint8_t* panel, int c, int kk) {
                       return quant(panel + static_cast<size_t>(kk) * row_bytes, c, bits);
                     });
}

}  // namespace

void register_dequant_matmul(nb::module_& m) {
  m.def("pack_dequant", &pack_dequant, nb::arg("wq"), nb::arg("scales"), nb::arg("biases"), nb::arg("bits"),
        nb::arg("group_size"),
        "Repack MLX's mx.quantize output (wq uint32 [N, K*bits/32], scales, biases [N, K/group]) for "
        "dequant_matmul: returns (packed uint8, scales, biases) in panels of 32 output columns.");
  m.def("dequant_matmul", &dequant_matmul, nb::arg("x"), nb::arg("packed"), nb::arg("scales"), nb::arg("biases"),
        nb::arg("bits"), nb::arg("group_size"), nb::arg("n"), nb::arg("k"), nb::arg("bias") = nb::none(),
        nb::arg("isa") = "",
        "x [..., K] @ W^T (+ bias) for W [N, K] packed by pack_dequant; float32 out [..., N]. The weights "
        "are dequantized in cache, x stays float32. isa: '' (best here), 'generic', 'avx2', 'avx512'.");
  m.def("dequant_rows", &dequant_rows, nb::arg("packed"), nb::arg("scales"), nb::arg("biases"), nb::arg("ids"),
        nb::arg("bits"), nb::arg("group_size"), nb::arg("n"), nb::arg("k"),
        "Rows ids of the packed W [N, K], dequantized to float32 [*ids.shape, K] (embedding lookups).");
}

}  // namespace pagedmlx
