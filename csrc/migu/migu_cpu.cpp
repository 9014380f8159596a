// CPU kernels of the MIGU ops.
//
// row_l1_accumulate_: acc[c] += sum_r |y[r, c]| in fp32. One read of y (rows * d * sizeof(y) bytes), plus
//   read+write of acc (8 d bytes) and per-thread partials of 2 d floats that stay in L1/L2. y is read in place
//   with its strides (no copy, ever): the leading dims are coalesced to one row stride when possible, otherwise
//   each row's offset is computed from the leading sizes/strides; a last dim with stride != 1 takes a scalar path.
//   Rows are split across threads by at::parallel_for; each thread sums blocks of 8 rows in registers (pairwise),
//   adds the block sums into an fp32 partial, and folds that partial into a second-level sum every 1024 rows, so
//   the rounding error grows like (8 + 128 + rows/1024) ulps instead of rows ulps. The per-thread sums are added in
//   thread order: the result is deterministic for a given thread count.
//   Reference: row_l1_accumulate_ref (acc += y.reshape(-1, d).abs().sum(0, dtype=float32)).
//
// topk_row_mask: scores >= torch.quantile(scores, T), bit for bit. torch computes, in the scores' dtype,
//   rank = T * (d - 1), lo = trunc(rank), hi = ceil(rank), w = rank - lo, and lerp(sorted[lo], sorted[hi], w) with
//   at::lerp's formula (w < 0.5: a + w (b - a), else b - (b - a)(1 - w)) evaluated with one fused multiply-add, as
//   torch's CPU lerp kernel is compiled. Here sorted[lo] comes from a radix select on order-preserving integer keys
//   (O(d), branch-free, a byte a pass, the candidates compacted after each pass) and sorted[hi] from one pass that
//   counts the keys <= sorted[lo] and finds the smallest key above it. Any NaN makes the quantile NaN: the mask is
//   all False. Traffic: read scores three times (keys, sorted[hi], compare) + the key passes + write d bools.
//   Reference: topk_row_mask_ref (scores >= torch.quantile(scores, threshold)).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "migu/migu_common.h"

namespace cltk {
namespace migu {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int kRowBlock = 8;        // rows summed in registers before touching the partial
constexpr int kFlushBlocks = 128;   // row blocks per first-level partial (1024 rows)

template <typename T>
inline Vec load_abs(const T* p) {
  Vec out;
  at::vec::load_to_float<T>(p, out);
  return out.abs();
}
template <>
inline Vec load_abs<float>(const float* p) {
  return Vec::loadu(p).abs();
}

// part[c] += sum_{j < nr} |rp[j][c * cs]| for c in [0, d).
template <typename T>
void add_row_block(const T* const* rp, int nr, int64_t d, int64_t cs, float* part) {
  constexpr int64_t V = Vec::size();
  int64_t c = 0;
  if (cs == 1) {
    if (nr == kRowBlock) {
      for (; c + V <= d; c += V) {
        Vec s01 = load_abs(rp[0] + c) + load_abs(rp[1] + c);
        Vec s23 = load_abs(rp[2] + c) + load_abs(rp[3] + c);
        Vec s45 = load_abs(rp[4] + c) + load_abs(rp[5] + c);
        Vec s67 = load_abs(rp[6] + c) + load_abs(rp[7] + c);
        Vec s = (s01 + s23) + (s45 + s67);
        (Vec::loadu(part + c) + s).store(part + c);
      }
    } else {
      for (; c + V <= d; c += V) {
        Vec s = load_abs(rp[0] + c);
        for (int j = 1; j < nr; ++j) s = s + load_abs(rp[j] + c);
        (Vec::loadu(part + c) + s).store(part + c);
      }
    }
  }
  for (; c < d; ++c) {
    float s = std::abs(static_cast<float>(rp[0][c * cs]));
    for (int j = 1; j < nr; ++j) s += std::abs(static_cast<float>(rp[j][c * cs]));
    part[c] += s;
  }
}

inline void add_into(float* dst, float* src, int64_t d, bool zero_src) {
  constexpr int64_t V = Vec::size();
  int64_t c = 0;
  for (; c + V <= d; c += V) {
    (Vec::loadu(dst + c) + Vec::loadu(src + c)).store(dst + c);
    if (zero_src) Vec(0.f).store(src + c);
  }
  for (; c < d; ++c) {
    dst[c] += src[c];
    if (zero_src) src[c] = 0.f;
  }
}

// Sum |y| over rows [r0, r1) into out (d floats, zero on entry); inner (d floats, zero on entry) is scratch.
template <typename T>
void sum_rows(const T* y, const RowView& v, int64_t r0, int64_t r1, float* inner, float* out) {
  const T* rp[kRowBlock];
  int blocks = 0;
  for (int64_t r = r0; r < r1; r += kRowBlock) {
    const int nr = static_cast<int>(std::min<int64_t>(kRowBlock, r1 - r));
    for (int j = 0; j < nr; ++j) rp[j] = y + v.row_offset(r + j);
    add_row_block<T>(rp, nr, v.d, v.col_stride, inner);
    if (++blocks == kFlushBlocks) {
      add_into(out, inner, v.d, /*zero_src=*/true);
      blocks = 0;
    }
  }
  if (blocks) add_into(out, inner, v.d, /*zero_src=*/false);
}

template <typename T>
void row_l1_impl(float* acc, const T* y, const RowView& v) {
  const int64_t d = v.d;
  // Enough rows per task that each touches >= 64K elements; fewer tasks than threads when y is small.
  const int64_t grain = std::max<int64_t>(kRowBlock, (65536 + d - 1) / std::max<int64_t>(d, 1));
  const int64_t nthreads = at::get_num_threads();
  const int64_t ntasks = std::max<int64_t>(1, std::min<int64_t>(nthreads, (v.rows + grain - 1) / grain));
  std::vector<float> buf(static_cast<size_t>(ntasks) * 2 * d, 0.f);  // per task: [inner | out]
  if (ntasks == 1) {
    sum_rows<T>(y, v, 0, v.rows, buf.data(), buf.data() + d);
  } else {
    // Fixed split into ntasks contiguous row ranges (not at::parallel_for's own chunking), so the summation order
    // depends only on ntasks.
    const int64_t chunk = (v.rows + ntasks - 1) / ntasks;
    at::parallel_for(0, ntasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * chunk, r1 = std::min(v.rows, r0 + chunk);
        if (r0 < r1) sum_rows<T>(y, v, r0, r1, buf.data() + t * 2 * d, buf.data() + t * 2 * d + d);
      }
    });
    for (int64_t t = 1; t < ntasks; ++t) add_into(buf.data() + d, buf.data() + t * 2 * d + d, d, false);
  }
  add_into(acc, buf.data() + d, d, false);
}

void row_l1_accumulate_cpu(at::Tensor& acc, const at::Tensor& y) {
  check_row_l1_args(acc, y);
  TORCH_CHECK_VALUE(acc.device().is_cpu(), "row_l1_accumulate_: acc must be a CPU tensor here, got ", acc.device());
  const RowView v = make_row_view(y);
  if (v.rows == 0 || v.d == 0) return;
  // acc is tiny: work on a contiguous fp32 buffer and copy back when acc itself is strided.
  at::Tensor a = acc.is_contiguous() ? acc : acc.contiguous();
  float* ap = a.data_ptr<float>();
  switch (y.scalar_type()) {
    case at::kFloat: row_l1_impl<float>(ap, y.const_data_ptr<float>(), v); break;
    case at::kBFloat16: row_l1_impl<c10::BFloat16>(ap, y.const_data_ptr<c10::BFloat16>(), v); break;
    case at::kHalf: row_l1_impl<c10::Half>(ap, y.const_data_ptr<c10::Half>(), v); break;
    default: TORCH_CHECK(false, "unreachable");
  }
  if (!a.is_same(acc)) acc.copy_(a);
}

// ---------------------------------------------------------------------------------------------------------------
// topk_row_mask
// ---------------------------------------------------------------------------------------------------------------

// torch.quantile's linear interpolation, with the single rounding of torch's fused lerp.
template <typename scalar_t>
inline scalar_t lerp_like_torch(scalar_t a, scalar_t b, scalar_t w) {
  const scalar_t diff = b - a;
  return std::abs(w) < scalar_t(0.5) ? std::fma(w, diff, a) : std::fma(w - scalar_t(1), diff, b);
}

// Order-preserving unsigned keys (as in migu.cuh): a < b as numbers (-0 < +0) iff key(a) < key(b).
inline uint32_t order_key(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline uint64_t order_key(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof(u));
  return (u >> 63) ? ~u : (u | (uint64_t(1) << 63));
}
inline float key_value(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k ^ 0x80000000u) : ~k;
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}
inline double key_value(uint64_t k) {
  const uint64_t u = (k >> 63) ? (k ^ (uint64_t(1) << 63)) : ~k;
  double x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}
template <typename scalar_t>
using key_of = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;

// The k-th smallest (0-based) of keys[0, n): radix select, most significant byte first, keeping only the candidates
// of the selected byte after each pass (branch-free). Scores are random-looking data, on which nth_element's
// comparisons mispredict about half the time; this costs a few predictable passes instead. Overwrites keys.
template <typename key_t>
key_t radix_select(key_t* keys, int64_t n, int64_t k) {
  key_t prefix = 0;
  for (int shift = 8 * static_cast<int>(sizeof(key_t)) - 8; shift >= 0; shift -= 8) {
    if (n == 1) return keys[0];
    int64_t hist[256] = {0};
    for (int64_t i = 0; i < n; ++i) ++hist[(keys[i] >> shift) & 255u];
    int b = 0;
    for (; b < 255 && k >= hist[b]; ++b) k -= hist[b];
    prefix |= static_cast<key_t>(b) << shift;
    if (hist[b] != n) {
      int64_t m = 0;
      for (int64_t i = 0; i < n; ++i) {
        const key_t x = keys[i];
        keys[m] = x;
        m += ((x >> shift) & 255u) == static_cast<key_t>(b);
      }
      n = m;
    }
  }
  return prefix;
}

template <typename scalar_t>
void topk_mask_one(const scalar_t* s, int64_t stride, int64_t d, double threshold, bool* out,
                   std::vector<key_of<scalar_t>>& keys) {
  using key_t = key_of<scalar_t>;
  keys.resize(static_cast<size_t>(d));
  bool has_nan = false;
  for (int64_t i = 0; i < d; ++i) {
    const scalar_t x = s[i * stride];
    has_nan |= std::isnan(x);
    keys[i] = order_key(x);
  }
  if (has_nan) {
    std::fill(out, out + d, false);
    return;
  }
  const scalar_t q = static_cast<scalar_t>(threshold);
  const scalar_t rank = q * static_cast<scalar_t>(d - 1);
  const int64_t lo = static_cast<int64_t>(rank);
  const int64_t hi = static_cast<int64_t>(std::ceil(rank));
  const scalar_t w = rank - static_cast<scalar_t>(lo);
  const key_t key_lo = radix_select<key_t>(keys.data(), d, lo);
  const scalar_t v_lo = key_value(key_lo);
  scalar_t v_hi = v_lo;
  if (hi > lo) {
    // sorted[hi] is v_lo again when more than hi elements are <= v_lo, else the smallest value above it.
    int64_t n_le = 0;
    key_t above = ~key_t(0);
    for (int64_t i = 0; i < d; ++i) {
      const key_t x = order_key(s[i * stride]);
      n_le += x <= key_lo;
      above = std::min(above, x > key_lo ? x : ~key_t(0));
    }
    if (n_le <= hi) v_hi = key_value(above);
  }
  const scalar_t thr = lerp_like_torch(v_lo, v_hi, w);
  for (int64_t i = 0; i < d; ++i) out[i] = s[i * stride] >= thr;
}

template <typename scalar_t>
void topk_one_typed(const at::Tensor& scores, double threshold, at::Tensor& out, std::vector<uint32_t>& k32,
                    std::vector<uint64_t>& k64) {
  auto& keys = [&]() -> std::vector<key_of<scalar_t>>& {
    if constexpr (sizeof(scalar_t) == 4) return k32; else return k64;
  }();
  topk_mask_one<scalar_t>(scores.const_data_ptr<scalar_t>(), scores.stride(0), scores.size(0), threshold,
                          out.data_ptr<bool>(), keys);
}

void topk_one_tensor(const at::Tensor& scores, double threshold, at::Tensor& out, std::vector<uint32_t>& k32,
                     std::vector<uint64_t>& k64) {
  if (scores.scalar_type() == at::kFloat) {
    topk_one_typed<float>(scores, threshold, out, k32, k64);
  } else {
    TORCH_CHECK(scores.scalar_type() == at::kDouble, "unreachable");
    topk_one_typed<double>(scores, threshold, out, k32, k64);
  }
}

at::Tensor topk_row_mask_cpu(const at::Tensor& scores, double threshold) {
  check_threshold("topk_row_mask", threshold);
  check_scores("topk_row_mask", scores, "scores");
  at::Tensor out = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  std::vector<uint32_t> k32;
  std::vector<uint64_t> k64;
  topk_one_tensor(scores, threshold, out, k32, k64);
  return out;
}

std::vector<at::Tensor> topk_row_mask_batched_cpu(at::TensorList scores, double threshold) {
  check_threshold("topk_row_mask_batched", threshold);
  std::vector<at::Tensor> outs;
  outs.reserve(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    check_scores("topk_row_mask_batched", scores[i], "scores[" + std::to_string(i) + "]");
    TORCH_CHECK_VALUE(scores[i].device() == scores[0].device(), "topk_row_mask_batched: all scores must be on one ",
                      "device, scores[0] is on ", scores[0].device(), ", scores[", i, "] on ", scores[i].device());
    outs.push_back(at::empty(scores[i].sizes(), scores[i].options().dtype(at::kBool)));
  }
  at::parallel_for(0, static_cast<int64_t>(scores.size()), 1, [&](int64_t l0, int64_t l1) {
    std::vector<uint32_t> k32;  // key buffers reused across the layers of this range
    std::vector<uint64_t> k64;
    for (int64_t l = l0; l < l1; ++l) topk_one_tensor(scores[l], threshold, outs[l], k32, k64);
  });
  return outs;
}

}  // namespace
}  // namespace migu
}  // namespace cltk

TORCH_LIBRARY_IMPL(cltk, CPU, m) {
  m.impl("row_l1_accumulate_", &cltk::migu::row_l1_accumulate_cpu);
  m.impl("topk_row_mask", &cltk::migu::topk_row_mask_cpu);
  m.impl("topk_row_mask_batched", &cltk::migu::topk_row_mask_batched_cpu);
}
