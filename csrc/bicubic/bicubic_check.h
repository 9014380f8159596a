// Argument checks shared by the CPU and CUDA registrations of the bicubic-modulation ops. Each message names
// the op, the argument and the sizes, e.g.
//   bicubic_modulate: mod must not be larger than weight in either dimension, got mod [5, 3] for weight [4, 8]
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <ostream>
#include <string>

namespace cltk_bicubic {

// An argument's name, written only into a failing check's message (the checks run for every weight of every call;
// building the names eagerly cost about a microsecond per weight).
struct ArgName {
  const char* base;
  int64_t index;
};
inline std::ostream& operator<<(std::ostream& os, const ArgName& a) {
  os << a.base;
  if (a.index >= 0) os << "[" << a.index << "]";
  return os;
}

// The 2-D size a weight is modulated as: [out, in] as is, a conv weight [out, in, kh, kw] as [out, in * kh * kw].
inline int64_t fan_in(const at::Tensor& weight) {
  return weight.dim() == 4 ? weight.size(1) * weight.size(2) * weight.size(3) : weight.size(1);
}

// A grid of the weight's own 2-D size. F.interpolate's backward copies the gradient for equal sizes, so grad_M is
// G * W elementwise there; the adjoint of the cubic taps (0, 1, 0, 0) agrees on finite values but turns an Inf of
// G * W into NaN (0 * Inf) in the neighbouring cells. (Its forward does use the taps, as the kernels do.) Such a
// weight is never empty: a grid has at least one row and one column.
inline bool identity_grid(const at::Tensor& weight, const at::Tensor& mod) {
  return mod.size(0) == weight.size(0) && mod.size(1) == fan_in(weight);
}

// weight [out, in] or [out, in, kh, kw] (modulated as [out, in * kh * kw]) and mod [m1, m2] with 1 <= m1 <= out,
// 1 <= m2 <= fan-in (an empty weight takes any mod with non-zero sizes), same dtype (float32 or float64) and
// same device.
inline void check_weight_mod(const char* op, const at::Tensor& weight, const at::Tensor& mod, int64_t index = -1) {
  const ArgName wn{index >= 0 ? "weights" : "weight", index};
  const ArgName mn{index >= 0 ? "mods" : "mod", index};
  TORCH_CHECK(weight.dim() == 2 || weight.dim() == 4, op, ": ", wn,
              " must be 2-D (out, in) or 4-D (out, in, kh, kw), got shape ", weight.sizes());
  TORCH_CHECK(mod.dim() == 2, op, ": ", mn, " must be 2-D (m1, m2), got shape ", mod.sizes());
  TORCH_CHECK(weight.device() == mod.device(), op, ": ", wn, " and ", mn, " must be on the same device, got ",
              weight.device(), " (", wn, " ", weight.sizes(), ") and ", mod.device(), " (", mn, " ", mod.sizes(), ")");
  TORCH_CHECK(weight.scalar_type() == mod.scalar_type(), op, ": ", wn, " and ", mn,
              " must have the same dtype, got ", weight.scalar_type(), " (", wn, " ", weight.sizes(), ") and ",
              mod.scalar_type(), " (", mn, " ", mod.sizes(), ")");
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble, op, ": ", wn,
              " must be float32 or float64, got ", weight.scalar_type());
  TORCH_CHECK(mod.size(0) >= 1 && mod.size(1) >= 1, op, ": ", mn, " must have at least one row and one column, got shape ",
              mod.sizes());
  const int64_t in = fan_in(weight);
  const bool empty = weight.size(0) == 0 || in == 0;
  TORCH_CHECK(empty || (mod.size(0) <= weight.size(0) && mod.size(1) <= in), op, ": ", mn,
              " must not be larger than ", wn, " in either dimension, got ", mn, " ", mod.sizes(), " for ", wn, " ",
              weight.sizes(), weight.dim() == 4 ? " (modulated as [" + std::to_string(weight.size(0)) + ", " +
                                                      std::to_string(in) + "])" : std::string());
}

inline void check_same_as_weight(const char* op, const char* name, const at::Tensor& t, const at::Tensor& weight,
                                 int64_t index = -1) {
  const ArgName tn{name, index};
  const ArgName wn{index >= 0 ? "weights" : "weight", index};
  TORCH_CHECK(t.sizes() == weight.sizes(), op, ": ", tn, " must have the shape of ", wn, " ", weight.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == weight.scalar_type(), op, ": ", tn, " must have the dtype of ", wn, " (",
              weight.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == weight.device(), op, ": ", tn, " must be on the device of ", wn, " (", weight.device(),
              "), got ", t.device());
}

inline void check_out(const char* op, const at::Tensor& out, const at::Tensor& weight, int64_t index = -1) {
  const char* name = index >= 0 ? "outs" : "out";
  check_same_as_weight(op, name, out, weight, index);
  TORCH_CHECK(out.is_contiguous(), op, ": ", ArgName{name, index}, " must be contiguous, got strides ", out.strides(),
              " for shape ", out.sizes());
}

inline void check_lists(const char* op, at::TensorList weights, at::TensorList mods) {
  TORCH_CHECK(weights.size() == mods.size(), op, ": weights and mods must have the same length, got ", weights.size(),
              " and ", mods.size());
  for (size_t k = 0; k < weights.size(); ++k) {
    check_weight_mod(op, weights[k], mods[k], static_cast<int64_t>(k));
    TORCH_CHECK(weights[k].device() == weights[0].device(), op, ": ", ArgName{"weights", static_cast<int64_t>(k)},
                " must be on the device of weights[0] (", weights[0].device(), "), got ", weights[k].device());
  }
}

}  // namespace cltk_bicubic
