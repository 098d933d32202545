// Fused paged attention for the CPU: one MLX primitive reads each row's context from the KV pool
// by runs of consecutive slots (segments) with an online softmax, so no tile of scores, bias or
// partials is ever materialized. Work is split over (cascade group, kv head, block of query
// positions); a group's queries (all its rows x the kv head's query heads x the block's positions)
// share each key/value chunk read: first the group's shared prefix, then each row's own segments.
#include "kernel_common.h"

#include <cmath>
#include <cstring>
#include <limits>
#include "simd_math.h"

namespace pagedmlx {
namespace {

constexpr int kKeyBlock = 64;   // keys per chunk: scores of a query tile fill 4 AVX-512 vectors
constexpr int kQueryTile = 6;   // queries per microkernel call: 24 accumulators of 32 registers
constexpr int kTaskQueries = 96;  // target queries per task in prefill (bounds its state to L2)
constexpr int kMinPartKeys = 512;  // a task split over its keys reads at least this many per part

enum class Isa { generic, avx2, avx512 };

// The plan (engine/fused_attention.py): segments are (slot, position, length) int32 triples.
struct Plan {
  const int32_t* starts;          // [B] position of each row's first new token
  const int32_t* row_offsets;     // [B + 1] into row_segments: each row's own context
  const int32_t* row_segments;
  const int32_t* group_offsets;   // [G + 1] into group_rows
  const int32_t* group_rows;
  const int32_t* shared_offsets;  // [G + 1] into shared_segments: the group's shared prefix
  const int32_t* shared_segments;
  int groups;
};

struct Dims {
  int heads, kv_heads, q_len, dim, slots;
  float scale;
};

// Each variant's steps for a tile of nq queries and a chunk of n keys: transpose the chunk's keys;
// scores s[i][k] = q[i] . kt[:, k]; the online-softmax step of each query over its first valid[i]
// keys (s becomes the weights, acc rows are rescaled); then acc[i] += sum_k s[i][k] v[k].
// The generic variant is portable C++ whose inner loops (over keys, or dims) the compiler vectorizes;
// inlined into Avx2Kernels' entry points, the same loops are vectorized for AVX2.
#define INLINE __attribute__((always_inline)) inline
struct GenericKernels {
  INLINE static void scores(const float* q, int nq, const float* kt, int dim, float* s) {
    for (int i = 0; i < nq; ++i) {
      float* __restrict row = s + i * kKeyBlock;
      std::fill(row, row + kKeyBlock, 0.0f);
      for (int d = 0; d < dim; ++d) {
        const float w = q[i * dim + d];
        const float* __restrict col = kt + d * kKeyBlock;
        for (int k = 0; k < kKeyBlock; ++k) row[k] += w * col[k];
      }
    }
  }
  INLINE static void softmax_step(float* s, int nq, const int* valid, float* m, float* l, float* acc, int dim) {
    for (int i = 0; i < nq; ++i) {
      float* __restrict row = s + i * kKeyBlock;
      const int n = valid[i];
      float top = m[i];
      for (int k = 0; k < n; ++k) top = std::max(top, row[k]);
      float sum = 0;
      for (int k = 0; k < kKeyBlock; ++k) {
        row[k] = k < n ? exp_poly(row[k] - top) : 0.0f;
        sum += row[k];
      }
      if (n == 0) continue;
      float alpha = exp_poly(m[i] - top);
      l[i] = l[i] * alpha + sum;
      m[i] = top;
      for (int d = 0; d < dim; ++d) acc[i * dim + d] *= alpha;
    }
  }
  // kt[d][k] = k[k][d] for the chunk's n keys; columns past n keep stale values (masked).
  INLINE static void transpose(const float* k, int n, int dim, float* kt) {
    for (int j = 0; j < n; ++j)
      for (int d = 0; d < dim; ++d) kt[d * kKeyBlock + j] = k[j * dim + d];
  }
  INLINE static void pv(const float* p, int nq, const float* v, int n, int dim, float* acc) {
    for (int i = 0; i < nq; ++i) {
      float* __restrict out = acc + i * dim;
      for (int k = 0; k < n; ++k) {
        const float w = p[i * kKeyBlock + k];
        const float* __restrict vk = v + k * dim;
        for (int d = 0; d < dim; ++d) out[d] += w * vk[d];
      }
    }
  }
};

#if defined(__x86_64__)
#define AVX2 __attribute__((target("avx2,fma")))
struct Avx2Kernels {
  AVX2 static void scores(const float* q, int nq, const float* kt, int dim, float* s) {
    GenericKernels::scores(q, nq, kt, dim, s);
  }
  AVX2 static void softmax_step(float* s, int nq, const int* valid, float* m, float* l, float* acc, int dim) {
    GenericKernels::softmax_step(s, nq, valid, m, l, acc, dim);
  }
  AVX2 static void transpose(const float* k, int n, int dim, float* kt) { GenericKernels::transpose(k, n, dim, kt); }
  AVX2 static void pv(const float* p, int nq, const float* v, int n, int dim, float* acc) {
    GenericKernels::pv(p, nq, v, n, dim, acc);
  }
};

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

struct Avx512Kernels {
  // 16 keys x 16 dims transposed in registers: r[j] = k[j][d0 : d0 + 16] becomes column d0 + c.
  AVX512 static void transpose16(const float* k, int dim, float* kt) {
    __m512 r[16], t[16];
    for (int j = 0; j < 16; ++j) r[j] = _mm512_loadu_ps(k + j * dim);
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
      r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
      r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
      r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
      r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
      t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);
      t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
      t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
    }
    for (int i = 0; i < 8; ++i) {
      _mm512_storeu_ps(kt + i * kKeyBlock, _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88));
      _mm512_storeu_ps(kt + (8 + i) * kKeyBlock, _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd));
    }
  }

  AVX512 static void transpose(const float* k, int n, int dim, float* kt) {
    int j0 = 0;
    for (; j0 + 16 <= n; j0 += 16)
      for (int d0 = 0; d0 < dim; d0 += 16) transpose16(k + j0 * dim + d0, dim, kt + d0 * kKeyBlock + j0);
    GenericKernels::transpose(k + j0 * dim, n - j0, dim, kt + j0);
  }

  template <int NQ>
  AVX512 static void scores_tile(const float* q, const float* kt, int dim, float* s) {
    __m512 acc[NQ][4];
    for (int i = 0; i < NQ; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int d = 0; d < dim; ++d) {
      const float* col = kt + d * kKeyBlock;
      __m512 k0 = _mm512_loadu_ps(col), k1 = _mm512_loadu_ps(col + 16);
      __m512 k2 = _mm512_loadu_ps(col + 32), k3 = _mm512_loadu_ps(col + 48);
      for (int i = 0; i < NQ; ++i) {
        __m512 qd = _mm512_set1_ps(q[i * dim + d]);
        acc[i][0] = _mm512_fmadd_ps(qd, k0, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(qd, k1, acc[i][1]);
        acc[i][2] = _mm512_fmadd_ps(qd, k2, acc[i][2]);
        acc[i][3] = _mm512_fmadd_ps(qd, k3, acc[i][3]);
      }
    }
    for (int i = 0; i < NQ; ++i)
      for (int j = 0; j < 4; ++j) _mm512_storeu_ps(s + i * kKeyBlock + 16 * j, acc[i][j]);
  }

  AVX512 static void scores(const float* q, int nq, const float* kt, int dim, float* s) {
    switch (nq) {
      case 6: return scores_tile<6>(q, kt, dim, s);
      case 5: return scores_tile<5>(q, kt, dim, s);
      case 4: return scores_tile<4>(q, kt, dim, s);
      case 3: return scores_tile<3>(q, kt, dim, s);
      case 2: return scores_tile<2>(q, kt, dim, s);
      default: return scores_tile<1>(q, kt, dim, s);
    }
  }

  AVX512 static void softmax_step(float* s, int nq, const int* valid, float* m, float* l, float* acc, int dim) {
    const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int i = 0; i < nq; ++i) {
      float* row = s + i * kKeyBlock;
      __m512 v[4];
      __mmask16 keep[4];
      __m512 top = _mm512_set1_ps(m[i]);
      for (int j = 0; j < 4; ++j) {
        int left = std::clamp(valid[i] - 16 * j, 0, 16);
        keep[j] = static_cast<__mmask16>((1u << left) - 1u);
        v[j] = _mm512_mask_loadu_ps(neg_inf, keep[j], row + 16 * j);
        top = _mm512_max_ps(top, v[j]);
      }
      if (valid[i] == 0) {
        for (int j = 0; j < 4; ++j) _mm512_storeu_ps(row + 16 * j, _mm512_setzero_ps());
        continue;
      }
      float new_max = _mm512_reduce_max_ps(top);
      __m512 shift = _mm512_set1_ps(new_max);
      __m512 sum = _mm512_setzero_ps();
      for (int j = 0; j < 4; ++j) {
        __m512 p = _mm512_maskz_mov_ps(keep[j], exp512(_mm512_sub_ps(v[j], shift)));
        _mm512_storeu_ps(row + 16 * j, p);
        sum = _mm512_add_ps(sum, p);
      }
      if (new_max > m[i]) {
        float alpha = _mm512_cvtss_f32(exp512(_mm512_set1_ps(m[i] - new_max)));
        l[i] *= alpha;
        __m512 a = _mm512_set1_ps(alpha);
        for (int d = 0; d < dim; d += 16)
          _mm512_storeu_ps(acc + i * dim + d, _mm512_mul_ps(a, _mm512_loadu_ps(acc + i * dim + d)));
        m[i] = new_max;
      }
      l[i] += _mm512_reduce_add_ps(sum);
    }
  }

  // acc[i][d0 : d0 + 16 NV] += sum_k p[i][k] v[k][d0 : ...]
  template <int NQ, int NV>
  AVX512 static void pv_tile(const float* p, const float* v, int n, int dim, int d0, float* acc) {
    __m512 o[NQ][NV];
    for (int i = 0; i < NQ; ++i)
      for (int j = 0; j < NV; ++j) o[i][j] = _mm512_loadu_ps(acc + i * dim + d0 + 16 * j);
    for (int k = 0; k < n; ++k) {
      const float* vk = v + k * dim + d0;
      __m512 vv[NV];
      for (int j = 0; j < NV; ++j) vv[j] = _mm512_loadu_ps(vk + 16 * j);
      for (int i = 0; i < NQ; ++i) {
        __m512 w = _mm512_set1_ps(p[i * kKeyBlock + k]);
        for (int j = 0; j < NV; ++j) o[i][j] = _mm512_fmadd_ps(w, vv[j], o[i][j]);
      }
    }
    for (int i = 0; i < NQ; ++i)
      for (int j = 0; j < NV; ++j) _mm512_storeu_ps(acc + i * dim + d0 + 16 * j, o[i][j]);
  }

  template <int NQ>
  AVX512 static void pv_rows(const float* p, const float* v, int n, int dim, float* acc) {
    int d0 = 0;
    for (; d0 + 64 <= dim; d0 += 64) pv_tile<NQ, 4>(p, v, n, dim, d0, acc);
    switch ((dim - d0) / 16) {
      case 3: return pv_tile<NQ, 3>(p, v, n, dim, d0, acc);
      case 2: return pv_tile<NQ, 2>(p, v, n, dim, d0, acc);
      case 1: return pv_tile<NQ, 1>(p, v, n, dim, d0, acc);
      default: return;
    }
  }

  AVX512 static void pv(const float* p, int nq, const float* v, int n, int dim, float* acc) {
    switch (nq) {
      case 6: return pv_rows<6>(p, v, n, dim, acc);
      case 5: return pv_rows<5>(p, v, n, dim, acc);
      case 4: return pv_rows<4>(p, v, n, dim, acc);
      case 3: return pv_rows<3>(p, v, n, dim, acc);
      case 2: return pv_rows<2>(p, v, n, dim, acc);
      default: return pv_rows<1>(p, v, n, dim, acc);
    }
  }
};
#endif

// One task's queries: `count` query vectors (rows x query heads x positions, position-major in
// a row so a query tile's causal limits are close), their online-softmax state and output.
struct TaskQueries {
  std::vector<float> q, acc, m, l;
  std::vector<int> limit;        // last visible position of each query (causal)
  std::vector<int> row_begin;    // per row of the group: its first query in the task
  int count = 0;
};

// Its keys [key_begin, key_end) count in reading order: the shared prefix, then each row's own.
// Too few tasks to keep every thread busy (a decode step of one row) are split over their keys:
// the parts' states merge by log-sum-exp.
struct Task {
  int group, kv_head, first_position, positions;
  int key_begin = 0, key_end = std::numeric_limits<int>::max();
  int parts = 1;  // this task and the parts - 1 after it are one task's key ranges
};

template <class K>
class Reader {
 public:
  Reader(const mx::array& queries, const float* keys, const float* values, const Plan& plan, const Dims& dims)
      : queries_(queries.data<float>()), keys_(keys), values_(values), plan_(plan), dims_(dims),
        kt_(static_cast<size_t>(dims.dim) * kKeyBlock, 0.0f), s_(kQueryTile * kKeyBlock) {}

  TaskQueries run(const Task& task) {
    TaskQueries tq = gather(task);
    range_ = {task.key_begin, task.key_end};
    seen_ = 0;
    const int* rows = plan_.group_rows + plan_.group_offsets[task.group];
    int nrows = plan_.group_offsets[task.group + 1] - plan_.group_offsets[task.group];
    read_segments(task.kv_head, plan_.shared_segments, plan_.shared_offsets[task.group],
                  plan_.shared_offsets[task.group + 1], tq, 0, tq.count, false);
    for (int r = 0; r < nrows; ++r)
      read_segments(task.kv_head, plan_.row_segments, plan_.row_offsets[rows[r]], plan_.row_offsets[rows[r] + 1],
                    tq, tq.row_begin[r], tq.row_begin[r + 1], true);
    return tq;
  }

  // Output = each query's accumulator over its softmax sum, the parts' states merged first.
  void scatter(const Task& task, TaskQueries* parts, float* out) const {
    TaskQueries& tq = parts[0];
    for (int p = 1; p < task.parts; ++p) merge(tq, parts[p]);
    for_each_query(task, [&](int i, int, int, int, size_t offset) {
      float inv = tq.l[i] > 0 ? 1.0f / tq.l[i] : 0.0f;
      for (int d = 0; d < dims_.dim; ++d) out[offset + d] = tq.acc[static_cast<size_t>(i) * dims_.dim + d] * inv;
    });
  }

 private:
  void merge(TaskQueries& into, const TaskQueries& part) const {
    for (int i = 0; i < into.count; ++i) {
      float top = std::max(into.m[i], part.m[i]);
      if (top == -std::numeric_limits<float>::infinity()) continue;
      float a = std::exp(into.m[i] - top), b = std::exp(part.m[i] - top);
      into.l[i] = into.l[i] * a + part.l[i] * b;
      into.m[i] = top;
      float* acc = into.acc.data() + static_cast<size_t>(i) * dims_.dim;
      const float* other = part.acc.data() + static_cast<size_t>(i) * dims_.dim;
      for (int d = 0; d < dims_.dim; ++d) acc[d] = acc[d] * a + other[d] * b;
    }
  }

  int group_size() const { return dims_.heads / dims_.kv_heads; }

  template <class F>
  void for_each_query(const Task& task, F&& f) const {
    const int* rows = plan_.group_rows + plan_.group_offsets[task.group];
    int nrows = plan_.group_offsets[task.group + 1] - plan_.group_offsets[task.group];
    int index = 0;
    for (int r = 0; r < nrows; ++r)
      for (int p = task.first_position; p < task.first_position + task.positions; ++p)
        for (int h = 0; h < group_size(); ++h) {
          int head = task.kv_head * group_size() + h;
          size_t offset = ((static_cast<size_t>(rows[r]) * dims_.heads + head) * dims_.q_len + p) * dims_.dim;
          f(index++, r, rows[r], p, offset);
        }
  }

  TaskQueries gather(const Task& task) const {
    int nrows = plan_.group_offsets[task.group + 1] - plan_.group_offsets[task.group];
    TaskQueries tq;
    tq.count = nrows * task.positions * group_size();
    tq.q.resize(static_cast<size_t>(tq.count) * dims_.dim);
    tq.acc.assign(tq.q.size(), 0.0f);
    tq.m.assign(tq.count, -std::numeric_limits<float>::infinity());
    tq.l.assign(tq.count, 0.0f);
    tq.limit.resize(tq.count);
    tq.row_begin.resize(nrows + 1, tq.count);
    for_each_query(task, [&](int i, int r, int row, int p, size_t offset) {
      if (i % (task.positions * group_size()) == 0) tq.row_begin[r] = i;
      tq.limit[i] = plan_.starts[row] + p;
      for (int d = 0; d < dims_.dim; ++d) tq.q[static_cast<size_t>(i) * dims_.dim + d] = queries_[offset + d] * dims_.scale;
    });
    return tq;
  }

  void read_segments(int kv_head, const int32_t* segments, int begin, int end, TaskQueries& tq, int q_begin,
                     int q_end, bool causal) {
    const size_t head_base = static_cast<size_t>(kv_head) * dims_.slots;
    for (int s = begin; s < end; ++s) {
      int slot = segments[3 * s], position = segments[3 * s + 1], length = segments[3 * s + 2];
      // The part of the segment inside the task's key range.
      int skip = std::clamp(range_.first - seen_, 0, length);
      int take = std::clamp(range_.second - seen_, 0, length);
      seen_ += length;
      slot += skip, position += skip, length = take - skip;
      for (int off = 0; off < length; off += kKeyBlock) {
        int n = std::min(kKeyBlock, length - off);
        size_t first = (head_base + slot + off) * dims_.dim;
        read_chunk(keys_ + first, values_ + first, n, position + off, tq, q_begin, q_end, causal);
      }
    }
  }

  void read_chunk(const float* k, const float* v, int n, int position, TaskQueries& tq, int q_begin, int q_end,
                  bool causal) {
    const int dim = dims_.dim;
    if (causal && q_begin < q_end) {
      int latest = *std::max_element(tq.limit.begin() + q_begin, tq.limit.begin() + q_end);
      if (latest < position) return;  // every query of the row precedes the chunk
    }
    K::transpose(k, n, dim, kt_.data());
    int valid[kQueryTile];
    for (int i0 = q_begin; i0 < q_end; i0 += kQueryTile) {
      int nq = std::min(kQueryTile, q_end - i0);
      bool any = false;
      for (int i = 0; i < nq; ++i) {
        valid[i] = causal ? std::clamp(tq.limit[i0 + i] - position + 1, 0, n) : n;
        any |= valid[i] > 0;
      }
      if (!any) continue;
      float* acc = tq.acc.data() + static_cast<size_t>(i0) * dim;
      K::scores(tq.q.data() + static_cast<size_t>(i0) * dim, nq, kt_.data(), dim, s_.data());
      K::softmax_step(s_.data(), nq, valid, tq.m.data() + i0, tq.l.data() + i0, acc, dim);
      K::pv(s_.data(), nq, v, n, dim, acc);
    }
  }

  const float* queries_;
  const float* keys_;
  const float* values_;
  Plan plan_;
  Dims dims_;
  std::vector<float> kt_, s_;
  std::pair<int, int> range_;
  int seen_ = 0;  // keys of the task passed so far in reading order
};

// Tasks: each (group, kv head) with its positions cut into blocks of about kTaskQueries queries,
// so a 512-token prefill chunk keeps both cores busy and each task's state stays in cache.
std::vector<Task> make_tasks(const Plan& plan, const Dims& dims) {
  std::vector<Task> tasks;
  int group_size = dims.heads / dims.kv_heads;
  for (int g = 0; g < plan.groups; ++g) {
    int nrows = plan.group_offsets[g + 1] - plan.group_offsets[g];
    int block = std::max(1, kTaskQueries / (nrows * group_size));
    for (int h = 0; h < dims.kv_heads; ++h)
      for (int p = 0; p < dims.q_len; p += block) tasks.push_back({g, h, p, std::min(block, dims.q_len - p)});
  }
  return tasks;
}

int group_keys(const Plan& plan, int group) {
  auto lengths = [](const int32_t* segments, int begin, int end) {
    int total = 0;
    for (int s = begin; s < end; ++s) total += segments[3 * s + 2];
    return total;
  };
  int total = lengths(plan.shared_segments, plan.shared_offsets[group], plan.shared_offsets[group + 1]);
  for (int r = plan.group_offsets[group]; r < plan.group_offsets[group + 1]; ++r)
    total += lengths(plan.row_segments, plan.row_offsets[plan.group_rows[r]], plan.row_offsets[plan.group_rows[r] + 1]);
  return total;
}

// Each task cut into key ranges when there are fewer tasks than twice the threads.
std::vector<Task> split_over_keys(const std::vector<Task>& tasks, const Plan& plan) {
  int wanted = 2 * num_threads();
  if (static_cast<int>(tasks.size()) >= wanted) return tasks;
  std::vector<Task> split;
  for (const Task& task : tasks) {
    int keys = group_keys(plan, task.group);
    int parts = std::clamp(std::min(-(-wanted / static_cast<int>(tasks.size())), keys / kMinPartKeys), 1, wanted);
    for (int p = 0; p < parts; ++p) {
      Task part = task;
      part.key_begin = static_cast<int>(static_cast<int64_t>(keys) * p / parts);
      part.key_end = static_cast<int>(static_cast<int64_t>(keys) * (p + 1) / parts);
      part.parts = p == 0 ? parts : 0;
      split.push_back(part);
    }
  }
  return split;
}

template <class K>
void run_tasks(const mx::array& queries, const float* keys, const float* values, const Plan& plan,
               const Dims& dims, float* out) {
  std::vector<Task> tasks = split_over_keys(make_tasks(plan, dims), plan);
  std::vector<TaskQueries> states(tasks.size());  // of split tasks, merged once all are read
  parallel_for(static_cast<int>(tasks.size()), [&](int begin, int end) {
    Reader<K> reader(queries, keys, values, plan, dims);
    for (int t = begin; t < end; ++t) {
      TaskQueries state = reader.run(tasks[t]);
      if (tasks[t].parts == 1) {
        reader.scatter(tasks[t], &state, out);
      } else {
        states[t] = std::move(state);
      }
    }
  });
  Reader<K> reader(queries, keys, values, plan, dims);
  for (size_t t = 0; t < tasks.size(); ++t)
    if (tasks[t].parts > 1) reader.scatter(tasks[t], &states[t], out);
}

Isa choose_isa(const std::string& requested, int dim) {
  const bool avx512_ok = cpu_features().avx512 && dim % 16 == 0, avx2_ok = cpu_features().avx2;  // false off x86-64
  if (requested == "generic") return Isa::generic;
  if (requested == "avx2" || requested == "avx512") {
    if (!(requested == "avx2" ? avx2_ok : avx512_ok))
      throw std::invalid_argument("paged_attention: the " + requested + " variant is not available here");
    return requested == "avx2" ? Isa::avx2 : Isa::avx512;
  }
  if (!requested.empty()) throw std::invalid_argument("paged_attention: isa must be '', 'generic', 'avx2' or 'avx512'");
  return avx512_ok ? Isa::avx512 : avx2_ok ? Isa::avx2 : Isa::generic;
}

class PagedAttention : public mx::Primitive {
 public:
  PagedAttention(mx::Stream s, float scale, Isa isa) : mx::Primitive(s), scale_(scale), isa_(isa) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& out = outputs[0];
    auto& encoder = cpu_encoder_for(stream(), inputs, out);
    const auto& q = inputs[0];
    Dims dims{static_cast<int>(q.shape(1)), static_cast<int>(inputs[1].shape(0)), static_cast<int>(q.shape(2)),
              static_cast<int>(q.shape(3)), static_cast<int>(inputs[1].shape(1)), scale_};
    encoder.dispatch([inputs, out, dims, isa = isa_]() mutable {
      auto ints = [&](int i) { return inputs[i].data<int32_t>(); };
      Plan plan{ints(3), ints(4), ints(5), ints(6), ints(7), ints(8), ints(9),
                static_cast<int>(inputs[6].size()) - 1};
      const float* keys = inputs[1].data<float>();
      const float* values = inputs[2].data<float>();
      float* o = out.data<float>();
#if defined(__x86_64__)
      if (isa == Isa::avx512) return run_tasks<Avx512Kernels>(inputs[0], keys, values, plan, dims, o);
      if (isa == Isa::avx2) return run_tasks<Avx2Kernels>(inputs[0], keys, values, plan, dims, o);
#endif
      run_tasks<GenericKernels>(inputs[0], keys, values, plan, dims, o);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("paged_attention runs on the CPU only");
  }

  const char* name() const override { return "PagedAttention"; }

 private:
  float scale_;
  Isa isa_;
};

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument("paged_attention: " + message);
}

mx::array int_plan(const mx::array& a, const char* what) {
  require(a.ndim() == 1 || (a.ndim() == 2 && a.shape(1) == 3), std::string(what) + " must be 1-D or [n, 3]");
  require(a.dtype() == mx::int32, std::string(what) + " must be int32");
  return mx::contiguous(a, false, mx::default_stream(mx::Device::cpu));
}

mx::array paged_attention(const mx::array& queries, const mx::array& keys, const mx::array& values,
                          const mx::array& starts, const mx::array& row_offsets, const mx::array& row_segments,
                          const mx::array& group_offsets, const mx::array& group_rows,
                          const mx::array& shared_offsets, const mx::array& shared_segments, float scale,
                          const std::string& isa) {
  require(queries.dtype() == mx::float32 && keys.dtype() == mx::float32 && values.dtype() == mx::float32,
          "queries, keys and values must be float32");
  require(queries.ndim() == 4, "queries must be [B, n_heads, L, head_dim]");
  require(keys.ndim() == 3 && keys.shape() == values.shape(), "keys and values must be the same [kv_heads, slots, head_dim]");
  require(keys.shape(2) == queries.shape(3), "queries and keys must have the same head_dim");
  require(queries.shape(1) % keys.shape(0) == 0, "n_heads must be a multiple of kv_heads");
  require(starts.size() == static_cast<size_t>(queries.shape(0)), "starts must have one entry per row");
  require(row_offsets.size() == starts.size() + 1, "row_offsets must have B + 1 entries");
  require(group_offsets.size() == shared_offsets.size() && group_offsets.size() >= 1,
          "group_offsets and shared_offsets must both have G + 1 entries");
  Isa chosen = choose_isa(isa, static_cast<int>(queries.shape(3)));
  auto cpu = mx::default_stream(mx::Device::cpu);
  std::vector<mx::array> inputs = {
      mx::contiguous(queries, false, cpu), mx::contiguous(keys, false, cpu), mx::contiguous(values, false, cpu),
      int_plan(starts, "starts"), int_plan(row_offsets, "row_offsets"), int_plan(row_segments, "row_segments"),
      int_plan(group_offsets, "group_offsets"), int_plan(group_rows, "group_rows"),
      int_plan(shared_offsets, "shared_offsets"), int_plan(shared_segments, "shared_segments")};
  return mx::array(queries.shape(), mx::float32, std::make_shared<PagedAttention>(cpu, scale, chosen), std::move(inputs));
}

}  // namespace

void register_paged_attention(nb::module_& m) {
  m.def("paged_attention", &paged_attention, nb::arg("queries"), nb::arg("keys"), nb::arg("values"),
        nb::arg("starts"), nb::arg("row_offsets"), nb::arg("row_segments"), nb::arg("group_offsets"),
        nb::arg("group_rows"), nb::arg("shared_offsets"), nb::arg("shared_segments"), nb::arg("scale"),
        nb::arg("isa") = "",
        "Attention of queries [B, n_heads, L, D] over each row's context in the pool keys/values "
        "[kv_heads, slots, D] by the plan's segments (slot, position, length), causal within the new "
        "tokens, cascades over the groups' shared prefixes. isa: '' (best here), 'generic', 'avx2', 'avx512'.");
}

}  // namespace pagedmlx
