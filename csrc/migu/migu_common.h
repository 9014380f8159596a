// Argument checks and the (rows, d) view of y shared by the CPU kernels and the CUDA glue of the MIGU ops.
// Checks raise ValueError in Python (TORCH_CHECK_VALUE), like the Python wrappers in cltk/ops/migu.py, with the
// same wording, so a caller sees the same error whichever path runs.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <utility>
#include <vector>

namespace cltk {
namespace migu {

inline void check_row_l1_args(const at::Tensor& acc, const at::Tensor& y) {
  constexpr const char* op = "row_l1_accumulate_";
  TORCH_CHECK_VALUE(acc.dim() == 1, op, ": acc must be 1-D (d_out,), got ", acc.dim(), "-D tensor of shape ",
                    acc.sizes());
  TORCH_CHECK_VALUE(acc.scalar_type() == at::kFloat, op, ": acc must have dtype float32, got ", acc.scalar_type());
  TORCH_CHECK_VALUE(y.dim() >= 1, op, ": y must have at least 1 dim (..., d_out), got a 0-D tensor");
  const auto yt = y.scalar_type();
  TORCH_CHECK_VALUE(yt == at::kFloat || yt == at::kBFloat16 || yt == at::kHalf, op,
                    ": y must be float32, bfloat16 or float16, got ", yt);
  TORCH_CHECK_VALUE(acc.device() == y.device(), op, ": acc and y must be on the same device, got ", acc.device(),
                    " and ", y.device());
  TORCH_CHECK_VALUE(y.size(-1) == acc.size(0), op, ": y.size(-1) must equal acc.size(0) (= ", acc.size(0), "), got ",
                    y.size(-1), " (y shape ", y.sizes(), ")");
}

inline double check_threshold(const char* op, double threshold) {
  TORCH_CHECK_VALUE(threshold >= 0.0 && threshold < 1.0, op, ": threshold must be in [0, 1), got ", threshold);
  return threshold;
}

inline void check_scores(const char* op, const at::Tensor& s, const std::string& name) {
  TORCH_CHECK_VALUE(s.dim() == 1, op, ": ", name, " must be 1-D (d,), got ", s.dim(), "-D tensor of shape ",
                    s.sizes());
  TORCH_CHECK_VALUE(s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble, op, ": ", name,
                    " must be float32 or float64, got ", s.scalar_type());
  TORCH_CHECK_VALUE(s.numel() > 0, op, ": ", name, " must be non-empty, got shape ", s.sizes());
}

// y (..., d) seen as rows of d elements. The leading dims are coalesced (size-1 dims dropped, adjacent dims with
// stride_outer == stride_inner * size_inner merged); when one dim is left, row r starts at r * row_stride,
// otherwise at the offset given by `lead` (innermost first).
struct RowView {
  int64_t rows = 0;
  int64_t d = 0;
  int64_t col_stride = 1;
  int64_t row_stride = 0;                            // valid when lead.size() <= 1
  std::vector<std::pair<int64_t, int64_t>> lead;     // (size, stride), innermost first

  bool single_stride() const { return lead.size() <= 1; }
  int64_t row_offset(int64_t r) const {
    if (single_stride()) return r * row_stride;
    int64_t off = 0;
    for (const auto& ds : lead) {
      off += (r % ds.first) * ds.second;
      r /= ds.first;
    }
    return off;
  }
};

inline RowView make_row_view(const at::Tensor& y) {
  RowView v;
  const int64_t nd = y.dim();
  v.d = y.size(nd - 1);
  v.col_stride = v.d <= 1 ? 1 : y.stride(nd - 1);
  v.rows = 1;
  for (int64_t i = nd - 2; i >= 0; --i) {
    const int64_t sz = y.size(i), st = y.stride(i);
    v.rows *= sz;
    if (sz == 1) continue;
    if (!v.lead.empty() && st == v.lead.back().second * v.lead.back().first) {
      v.lead.back().first *= sz;  // merged dim keeps the inner stride
    } else {
      v.lead.emplace_back(sz, st);
    }
  }
  if (v.lead.size() == 1) v.row_stride = v.lead[0].second;
  if (v.lead.empty()) v.row_stride = 0;
  return v;
}

}  // namespace migu
}  // namespace cltk
