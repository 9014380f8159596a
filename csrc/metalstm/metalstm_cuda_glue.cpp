// CUDA registrations of the meta-LSTM ops: tensors -> raw pointers for the torch-free launchers in
// metalstm_cuda.cu, on the current stream under a device guard, every launch error checked. H <= 64 on CUDA.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "metalstm/metalstm_check.h"
#include "metalstm/metalstm_cuda.h"

namespace {

using namespace cltk_metalstm;

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

void check_hidden(const char* op, const Dims& d) {
  TORCH_CHECK(d.H <= 64, op, ": the CUDA kernels support H <= 64 hidden units, got H = ", d.H);
}

struct Inputs {
  at::Tensor x, h, c, wi0, wi, wh, b, wo, bo, sc, m;
};

Inputs contiguous(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih0,
                  const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b, const at::Tensor& w_out,
                  const at::Tensor& b_out, const at::Tensor& scale, const std::optional<at::Tensor>& multiply) {
  return {x.contiguous(),     h.contiguous(),     c.contiguous(),  w_ih0.contiguous(),
          w_ih.contiguous(),  w_hh.contiguous(),  b.contiguous(),  w_out.contiguous(),
          b_out.contiguous(), scale.contiguous(), multiply.has_value() ? multiply->contiguous() : at::Tensor()};
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

at::Tensor forward(const char* op, const Inputs& in, const Dims& d, const at::Tensor& h_out, const at::Tensor& c_out) {
  at::Tensor out = at::empty({d.N}, in.x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(in.x.device().index());
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "meta_lstm_cuda", [&] {
    using T = scalar_t;
    check_launch(op, launch_meta_lstm_forward<T>(ptr<T>(in.x), ptr<T>(in.h), ptr<T>(in.c), ptr<T>(in.wi0),
                                                 ptr<T>(in.wi), ptr<T>(in.wh), ptr<T>(in.b), ptr<T>(in.wo),
                                                 ptr<T>(in.bo), ptr<T>(in.sc), ptr<T>(in.m), out.data_ptr<T>(),
                                                 h_out.data_ptr<T>(), c_out.data_ptr<T>(), d.N, d.F, d.H, d.L,
                                                 stream));
  });
  return out;
}

at::Tensor meta_lstm_inplace_cuda(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                                  const at::Tensor& w_ih0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                  const at::Tensor& b, const at::Tensor& w_out, const at::Tensor& b_out,
                                  const at::Tensor& scale, const std::optional<at::Tensor>& multiply) {
  const char* op = "meta_lstm_";
  const Dims d = check_args(op, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply);
  check_hidden(op, d);
  check_state_out(op, "h", h, h);
  check_state_out(op, "c", c, h);
  const c10::cuda::CUDAGuard guard(x.device());
  return forward(op, contiguous(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply), d, h, c);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> meta_lstm_cuda(
    const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& b, const at::Tensor& w_out, const at::Tensor& b_out,
    const at::Tensor& scale, const std::optional<at::Tensor>& multiply) {
  const char* op = "meta_lstm";
  const Dims d = check_args(op, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply);
  check_hidden(op, d);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor h_out = at::empty(h.sizes(), h.options()), c_out = at::empty(c.sizes(), c.options());
  at::Tensor out = forward(op, contiguous(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply), d, h_out,
                           c_out);
  return {out, h_out, c_out};
}

at::Tensor meta_lstm_out_cuda(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih0,
                              const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b,
                              const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& scale,
                              const std::optional<at::Tensor>& multiply, const at::Tensor& h_out,
                              const at::Tensor& c_out) {
  const char* op = "meta_lstm_out_";
  const Dims d = check_args(op, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply);
  check_hidden(op, d);
  check_state_out(op, "h_out", h_out, h);
  check_state_out(op, "c_out", c_out, h);
  const c10::cuda::CUDAGuard guard(x.device());
  return forward(op, contiguous(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply), d, h_out, c_out);
}

using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

BackwardResult meta_lstm_backward_cuda(const std::optional<at::Tensor>& grad_out,
                                       const std::optional<at::Tensor>& grad_h_new,
                                       const std::optional<at::Tensor>& grad_c_new, const at::Tensor& x,
                                       const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih0,
                                       const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b,
                                       const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& scale,
                                       const std::optional<at::Tensor>& multiply, bool need_x, bool need_state,
                                       bool need_w, bool need_mult) {
  const char* op = "meta_lstm_backward";
  const Dims d = check_args(op, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply);
  check_hidden(op, d);
  check_grad(op, "grad_out", grad_out, {d.N}, x);
  check_grad(op, "grad_h_new", grad_h_new, h.sizes(), x);
  check_grad(op, "grad_c_new", grad_c_new, h.sizes(), x);
  need_mult = need_mult && multiply.has_value();
  const c10::cuda::CUDAGuard guard(x.device());
  const auto opts = x.options();
  const auto make = [&](const at::Tensor& like, bool want) {
    return want ? at::empty(like.sizes(), opts) : at::empty({0}, opts);
  };
  at::Tensor gx = make(x, need_x), gh = make(h, need_state), gc = make(c, need_state);
  at::Tensor gwi0 = make(w_ih0, need_w), gwi = make(w_ih, need_w), gwh = make(w_hh, need_w), gb = make(b, need_w),
             gwo = make(w_out, need_w), gbo = make(b_out, need_w), gs = make(scale, need_w);
  at::Tensor gm = need_mult ? at::empty(multiply->sizes(), opts) : at::empty({0}, opts);
  if (!(need_x || need_state || need_w || need_mult)) return {gx, gh, gc, gwi0, gwi, gwh, gb, gwo, gbo, gs, gm};
  const Inputs in = contiguous(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply);
  const at::Tensor go = grad_out.has_value() ? grad_out->contiguous() : at::Tensor();
  const at::Tensor ghn = grad_h_new.has_value() ? grad_h_new->contiguous() : at::Tensor();
  const at::Tensor gcn = grad_c_new.has_value() ? grad_c_new->contiguous() : at::Tensor();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "meta_lstm_backward_cuda", [&] {
    using T = scalar_t;
    const auto w = [](at::Tensor& t, bool want) { return want ? t.data_ptr<T>() : nullptr; };
    check_launch(op, launch_meta_lstm_backward<T>(
                         ptr<T>(in.x), ptr<T>(in.h), ptr<T>(in.c), ptr<T>(in.wi0), ptr<T>(in.wi), ptr<T>(in.wh),
                         ptr<T>(in.b), ptr<T>(in.wo), ptr<T>(in.bo), ptr<T>(in.sc), ptr<T>(in.m), ptr<T>(go),
                         ptr<T>(ghn), ptr<T>(gcn), w(gx, need_x), w(gh, need_state), w(gc, need_state),
                         w(gm, need_mult), w(gwi0, need_w), w(gwi, need_w), w(gwh, need_w), w(gb, need_w),
                         w(gwo, need_w), w(gbo, need_w), w(gs, need_w), d.N, d.F, d.H, d.L, stream));
  });
  return {gx, gh, gc, gwi0, gwi, gwh, gb, gwo, gbo, gs, gm};
}

}  // namespace

TORCH_LIBRARY_IMPL(cltk, CUDA, m) {
  m.impl("meta_lstm_", &meta_lstm_inplace_cuda);
  m.impl("meta_lstm", &meta_lstm_cuda);
  m.impl("meta_lstm_out_", &meta_lstm_out_cuda);
  m.impl("meta_lstm_backward", &meta_lstm_backward_cuda);
}
