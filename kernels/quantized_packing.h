// Repacking MLX's quantize output (wq uint32 [N, K * bits / 32], scales/biases [N, K / group]) into
// panels of `cols` output columns, the layout both quantized kernels read: each panel's K * cols
// quantized values in K * cols * bits / 8 bytes (the kernel places each value), then its scales
// and biases as float32 [panels][K / group][cols]. Columns past N stay zero.
#pragma once

#include <optional>
#include <tuple>

#include "kernel_common.h"

namespace pagedmlx {

// q of weight row `row`, column k, from MLX's uint32 words (element k at bit k * bits).
inline int mlx_q(const uint32_t* words, int words_per_row, int row, int k, int bits) {
  const int bit = k * bits;
  return (words[static_cast<size_t>(row) * words_per_row + bit / 32] >> (bit % 32)) & ((1 << bits) - 1);
}

// place(panel, column, k, q) writes value q of (column, k) into its panel's bytes.
template <class Place>
std::tuple<mx::array, mx::array, mx::array> pack_panels(const char* op, const mx::array& wq, const mx::array& scales,
                                                        const mx::array& biases, int bits, int group_size, int cols,
                                                        Place place) {
  require(wq.ndim() == 2 && wq.dtype() == mx::uint32, op, "wq must be MLX's uint32 [N, K * bits / 32]");
  const int n = static_cast<int>(wq.shape(0)), k = static_cast<int>(wq.shape(1)) * 32 / bits;
  check_quantized_shape(op, bits, group_size, n, k);
  require(scales.ndim() == 2 && scales.shape(0) == n && scales.shape(1) == k / group_size &&
              biases.shape() == scales.shape(), op, "scales/biases must be [N, K / group_size]");
  auto cpu = mx::default_stream(mx::Device::cpu);
  mx::array words = mx::contiguous(wq, false, cpu), sc = cpu_float32(scales), bi = cpu_float32(biases);
  mx::eval({words, sc, bi});
  const int panels = (n + cols - 1) / cols, groups = k / group_size, words_per_row = k * bits / 32;
  const size_t panel_bytes = static_cast<size_t>(k) * cols * bits / 8;
  std::vector<uint8_t> packed(panels * panel_bytes, 0);
  std::vector<float> packed_scales(static_cast<size_t>(panels) * groups * cols, 0.0f);
  std::vector<float> packed_biases(packed_scales.size(), 0.0f);
  const uint32_t* w = words.data<uint32_t>();
  for (int row = 0; row < n; ++row) {
    const int p = row / cols, c = row % cols;
    uint8_t* panel = packed.data() + p * panel_bytes;
    for (int kk = 0; kk < k; ++kk) place(panel, c, kk, mlx_q(w, words_per_row, row, kk, bits));
    for (int g = 0; g < groups; ++g) {
      const size_t at = (static_cast<size_t>(p) * groups + g) * cols + c;
      packed_scales[at] = sc.data<float>()[static_cast<size_t>(row) * groups + g];
      packed_biases[at] = bi.data<float>()[static_cast<size_t>(row) * groups + g];
    }
  }
  return {mx::array(packed.data(), {static_cast<int>(packed.size())}, mx::uint8),
          mx::array(packed_scales.data(), {panels * groups, cols}, mx::float32),
          mx::array(packed_biases.data(), {panels * groups, cols}, mx::float32)};
}

// Raises unless the packed arrays have the sizes their packer gives for this N, K and bits.
inline void check_packed(const char* op, const char* packer, const mx::array& packed, const mx::array& scales,
                         const mx::array& biases, size_t bytes, size_t scale_count) {
  require(packed.dtype() == mx::uint8 && packed.size() == bytes, op,
          std::string("packed must be ") + packer + "'s uint8 array for this N, K and bits");
  require(scales.size() == scale_count && biases.size() == scale_count, op,
          std::string("scales/biases must come from ") + packer);
}

// A matmul's inputs against packed weights: x as float32 [M, K], the packed arrays and the optional
// bias; y's shape is x's with N last.
struct PackedMatmulInputs {
  std::vector<mx::array> arrays;
  mx::Shape y_shape;
  int m;
};

inline PackedMatmulInputs packed_matmul_inputs(const char* op, const mx::array& x, const mx::array& packed,
                                               const mx::array& scales, const mx::array& biases, int n, int k,
                                               const std::optional<mx::array>& bias) {
  require(x.ndim() >= 1 && x.shape(-1) == k, op, "x's last axis must be K");
  auto cpu = mx::default_stream(mx::Device::cpu);
  mx::Shape y_shape = x.shape();
  y_shape.back() = n;
  std::vector<mx::array> arrays = {mx::reshape(cpu_float32(x), {-1, k}, cpu), packed, cpu_float32(scales),
                                   cpu_float32(biases)};
  if (bias) {
    require(bias->size() == static_cast<size_t>(n), op, "bias must have N entries");
    arrays.push_back(cpu_float32(*bias));
  }
  const int m = static_cast<int>(arrays[0].shape(0));
  return {std::move(arrays), std::move(y_shape), m};
}

// Rows `ids` of packed weights [N, K], dequantized to float32: the lookups of a quantized (tied)
// embedding. read(panel, column, k) is the layout's quantized value of (column, k).
template <class Read>
struct RowsLayout {
  int n, k, group, cols;
  size_t panel_bytes;
  Read read;
};

template <class Read>
class PackedRows : public mx::Primitive {
 public:
  PackedRows(mx::Stream stream, const char* op, RowsLayout<Read> layout)
      : mx::Primitive(stream), op_(op), layout_(layout) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& out = outputs[0];
    auto& encoder = cpu_encoder_for(stream(), inputs, out);
    encoder.dispatch([inputs, out, l = layout_]() mutable {
      const uint8_t* w = inputs[0].data<uint8_t>();
      const float* sc = inputs[1].data<float>();
      const float* bi = inputs[2].data<float>();
      const int32_t* ids = inputs[3].data<int32_t>();
      float* y = out.data<float>();
      const int groups = l.k / l.group;
      for (size_t i = 0; i < inputs[3].size(); ++i) {
        const int row = std::clamp(ids[i], 0, l.n - 1), p = row / l.cols, c = row % l.cols;
        const uint8_t* panel = w + p * l.panel_bytes;
        for (int k = 0; k < l.k; ++k) {
          const size_t at = (static_cast<size_t>(p) * groups + k / l.group) * l.cols + c;
          const float scaled = sc[at] * static_cast<float>(l.read(panel, c, k));
          y[i * l.k + k] = scaled + bi[at];  // rounded as mx.dequantize: multiply, then add
        }
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error(std::string(op_) + " runs on the CPU only");
  }

  const char* name() const override { return op_; }

 private:
  const char* op_;
  RowsLayout<Read> layout_;
};

template <class Read>
mx::array packed_rows(const char* op, const mx::array& packed, const mx::array& scales, const mx::array& biases,
                      const mx::array& ids, int bits, int group_size, int n, int k, int cols, Read read) {
  auto cpu = mx::default_stream(mx::Device::cpu);
  mx::Shape out_shape = ids.shape();
  out_shape.push_back(k);
  mx::array flat_ids = mx::contiguous(mx::reshape(mx::astype(ids, mx::int32, cpu), {-1}, cpu), false, cpu);
  const int count = static_cast<int>(flat_ids.size());
  const RowsLayout<Read> layout{n, k, group_size, cols, static_cast<size_t>(k) * cols * bits / 8, read};
  auto primitive = std::make_shared<PackedRows<Read>>(cpu, op, layout);
  auto rows = mx::array({count, k}, mx::float32, primitive, {packed, cpu_float32(scales), cpu_float32(biases), flat_ids});
  return mx::reshape(rows, out_shape, cpu);
}

}  // namespace pagedmlx
