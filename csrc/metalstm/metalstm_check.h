// Argument checks shared by the CPU and CUDA registrations of the meta-LSTM ops. Each message names the op, the
// argument and the expected and actual sizes, e.g.
//   meta_lstm: w_ih0.size(1) must equal the input width x.size(1) (= 4), got w_ih0 [128, 5]
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>

namespace cltk_metalstm {

struct Dims {
  int64_t N, F, H, L;
};

inline void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have the dtype of x (", x.scalar_type(),
              "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on the device of x (", x.device(), "), got ",
              t.device());
}

// x [N, F]; h, c [L, H, N]; w_ih0 [4H, F]; w_ih [L-1, 4H, H]; w_hh [L, 4H, H]; b [L, 4H]; w_out [H];
// b_out, scale: one element, scale finite; multiply [N] or None.
inline Dims check_args(const char* op, const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                       const at::Tensor& w_ih0, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b,
                       const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& scale,
                       const std::optional<at::Tensor>& multiply) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D (N, F), got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(h.dim() == 3, op, ": h must be 3-D (L, H, N), got shape ", h.sizes());
  TORCH_CHECK(c.sizes() == h.sizes(), op, ": c must have the shape of h ", h.sizes(), ", got ", c.sizes());
  const int64_t N = x.size(0), F = x.size(1), L = h.size(0), H = h.size(1);
  TORCH_CHECK(h.size(2) == N, op, ": h.size(2) must equal the number of rows x.size(0) (= ", N, "), got h ",
              h.sizes());
  TORCH_CHECK(L >= 1 && H >= 1, op, ": h must have at least one layer and one hidden unit, got shape ", h.sizes());
  TORCH_CHECK(F >= 1, op, ": x must have at least one feature, got shape ", x.sizes());
  TORCH_CHECK(w_ih0.dim() == 2 && w_ih0.size(0) == 4 * H, op, ": w_ih0 must be [4H, F] = [", 4 * H, ", ", F,
              "], got ", w_ih0.sizes());
  TORCH_CHECK(w_ih0.size(1) == F, op, ": w_ih0.size(1) must equal the input width x.size(1) (= ", F, "), got w_ih0 ",
              w_ih0.sizes());
  TORCH_CHECK(w_ih.dim() == 3 && w_ih.size(0) == L - 1 && w_ih.size(1) == 4 * H && w_ih.size(2) == H, op,
              ": w_ih must be [L-1, 4H, H] = [", L - 1, ", ", 4 * H, ", ", H, "], got ", w_ih.sizes());
  TORCH_CHECK(w_hh.dim() == 3 && w_hh.size(0) == L && w_hh.size(1) == 4 * H && w_hh.size(2) == H, op,
              ": w_hh must be [L, 4H, H] = [", L, ", ", 4 * H, ", ", H, "], got ", w_hh.sizes());
  TORCH_CHECK(b.dim() == 2 && b.size(0) == L && b.size(1) == 4 * H, op, ": b must be [L, 4H] = [", L, ", ", 4 * H,
              "], got ", b.sizes());
  TORCH_CHECK(w_out.dim() == 1 && w_out.size(0) == H, op, ": w_out must be [H] = [", H, "], got ", w_out.sizes());
  TORCH_CHECK(b_out.numel() == 1, op, ": b_out must have one element, got shape ", b_out.sizes());
  TORCH_CHECK(scale.numel() == 1, op, ": scale must have one element, got shape ", scale.sizes());
  check_like(op, "h", h, x);
  check_like(op, "c", c, x);
  check_like(op, "w_ih0", w_ih0, x);
  check_like(op, "w_ih", w_ih, x);
  check_like(op, "w_hh", w_hh, x);
  check_like(op, "b", b, x);
  check_like(op, "w_out", w_out, x);
  check_like(op, "b_out", b_out, x);
  check_like(op, "scale", scale, x);
  if (multiply.has_value()) {
    const at::Tensor& m = *multiply;
    TORCH_CHECK(m.dim() == 1 && m.size(0) == N, op, ": multiply must be [N] = [", N, "], got ", m.sizes());
    check_like(op, "multiply", m, x);
  }
  const double s = scale.item<double>();
  TORCH_CHECK(std::isfinite(s), op, ": scale must be finite, got ", s);
  return {N, F, H, L};
}

inline void check_state_out(const char* op, const char* name, const at::Tensor& t, const at::Tensor& h) {
  TORCH_CHECK(t.sizes() == h.sizes(), op, ": ", name, " must have the shape of h ", h.sizes(), ", got ", t.sizes());
  check_like(op, name, t, h);
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides(), " for shape ",
              t.sizes());
}

inline void check_grad(const char* op, const char* name, const std::optional<at::Tensor>& g, at::IntArrayRef shape,
                       const at::Tensor& x) {
  if (!g.has_value()) return;
  TORCH_CHECK(g->sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", g->sizes());
  check_like(op, name, *g, x);
}

}  // namespace cltk_metalstm
