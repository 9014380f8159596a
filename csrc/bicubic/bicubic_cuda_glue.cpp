// CUDA registrations of the bicubic-modulation ops: tensors -> raw pointers for the torch-free launchers in
// bicubic_cuda.cu, on the current stream under a device guard, every launch error checked. The multi-tensor ops
// loop over the list inside one op call (one set of launches per weight).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "bicubic/bicubic_check.h"
#include "bicubic/bicubic_cuda.h"

namespace {

using namespace cltk_bicubic;

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

void forward_one(const char* op, const at::Tensor& weight, const at::Tensor& mod, bool align_corners,
                 const at::Tensor& out) {
  if (weight.numel() == 0) return;
  const at::Tensor w = weight.contiguous();
  const at::Tensor m = mod.contiguous();
  const int64_t O = w.size(0), I = fan_in(w), m1 = m.size(0), m2 = m.size(1);
  at::Tensor ws = at::empty({bicubic_modulate_workspace(O, I, m1, m2)}, w.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(w.device().index());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "bicubic_modulate_cuda", [&] {
    check_launch(op, launch_bicubic_modulate<scalar_t>(w.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
                                                       out.data_ptr<scalar_t>(), ws.data_ptr<scalar_t>(), O, I, m1,
                                                       m2, align_corners, stream));
  });
}

void backward_one(const char* op, const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& mod,
                  bool align_corners, at::Tensor* grad_weight, at::Tensor* grad_mod) {
  const at::Tensor g = grad.contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor m = mod.contiguous();
  if (grad_mod != nullptr && identity_grid(w, m)) {  // grad_M = G * W (bicubic_check.h)
    at::mul_out(*grad_mod, g.view(m.sizes()), w.view(m.sizes()));
    grad_mod = nullptr;
    if (grad_weight == nullptr) return;
  }
  const int64_t O = w.size(0), I = fan_in(w), m1 = m.size(0), m2 = m.size(1);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(w.device().index());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "bicubic_modulate_backward_cuda", [&] {
    const int64_t n = bicubic_modulate_backward_workspace<scalar_t>(O, I, m1, m2, align_corners);
    at::Tensor ws = at::empty({n > 0 ? n : 1}, w.options());
    check_launch(op, launch_bicubic_modulate_backward<scalar_t>(
                         g.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
                         grad_weight != nullptr ? grad_weight->data_ptr<scalar_t>() : nullptr,
                         grad_mod != nullptr ? grad_mod->data_ptr<scalar_t>() : nullptr, ws.data_ptr<scalar_t>(), O,
                         I, m1, m2, align_corners, stream));
  });
}

at::Tensor bicubic_modulate_cuda(const at::Tensor& weight, const at::Tensor& mod, bool align_corners) {
  check_weight_mod("bicubic_modulate", weight, mod);
  const c10::cuda::CUDAGuard guard(weight.device());
  at::Tensor out = at::empty(weight.sizes(), weight.options());
  forward_one("bicubic_modulate", weight, mod, align_corners, out);
  return out;
}

void bicubic_modulate_out_cuda(const at::Tensor& weight, const at::Tensor& mod, bool align_corners,
                               const at::Tensor& out) {
  check_weight_mod("bicubic_modulate_out_", weight, mod);
  check_out("bicubic_modulate_out_", out, weight);
  const c10::cuda::CUDAGuard guard(weight.device());
  forward_one("bicubic_modulate_out_", weight, mod, align_corners, out);
}

std::tuple<at::Tensor, at::Tensor> bicubic_modulate_backward_cuda(const at::Tensor& grad, const at::Tensor& weight,
                                                                  const at::Tensor& mod, bool align_corners,
                                                                  bool weight_requires_grad, bool mod_requires_grad) {
  const char* op = "bicubic_modulate_backward";
  check_weight_mod(op, weight, mod);
  check_same_as_weight(op, "grad", grad, weight);
  const c10::cuda::CUDAGuard guard(weight.device());
  at::Tensor gw = weight_requires_grad ? at::empty(weight.sizes(), weight.options()) : at::empty({0}, weight.options());
  at::Tensor gm = mod_requires_grad ? at::empty(mod.sizes(), mod.options()) : at::empty({0}, mod.options());
  backward_one(op, grad, weight, mod, align_corners, weight_requires_grad ? &gw : nullptr,
               mod_requires_grad ? &gm : nullptr);
  return {gw, gm};
}

std::vector<at::Tensor> bicubic_modulate_multi_cuda(at::TensorList weights, at::TensorList mods, bool align_corners) {
  const char* op = "bicubic_modulate_multi";
  check_lists(op, weights, mods);
  std::vector<at::Tensor> outs;
  for (size_t k = 0; k < weights.size(); ++k) {
    const c10::cuda::CUDAGuard guard(weights[k].device());
    outs.push_back(at::empty(weights[k].sizes(), weights[k].options()));
    forward_one(op, weights[k], mods[k], align_corners, outs.back());
  }
  return outs;
}

void bicubic_modulate_multi_out_cuda(at::TensorList weights, at::TensorList mods, bool align_corners,
                                     at::TensorList outs) {
  const char* op = "bicubic_modulate_multi_out_";
  check_lists(op, weights, mods);
  TORCH_CHECK(outs.size() == weights.size(), op, ": outs must have the length of weights (", weights.size(), "), got ",
              outs.size());
  for (size_t k = 0; k < outs.size(); ++k) check_out(op, outs[k], weights[k], static_cast<int64_t>(k));
  for (size_t k = 0; k < weights.size(); ++k) {
    const c10::cuda::CUDAGuard guard(weights[k].device());
    forward_one(op, weights[k], mods[k], align_corners, outs[k]);
  }
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> bicubic_modulate_multi_backward_cuda(
    at::TensorList grads, at::TensorList weights, at::TensorList mods, bool align_corners, bool weight_requires_grad,
    bool mod_requires_grad) {
  const char* op = "bicubic_modulate_multi_backward";
  check_lists(op, weights, mods);
  TORCH_CHECK(grads.size() == weights.size(), op, ": grads must have the length of weights (", weights.size(),
              "), got ", grads.size());
  for (size_t k = 0; k < grads.size(); ++k) check_same_as_weight(op, "grads", grads[k], weights[k], static_cast<int64_t>(k));
  std::vector<at::Tensor> gws, gms;
  for (size_t k = 0; k < weights.size(); ++k) {
    const c10::cuda::CUDAGuard guard(weights[k].device());
    if (weight_requires_grad) gws.push_back(at::empty(weights[k].sizes(), weights[k].options()));
    if (mod_requires_grad) gms.push_back(at::empty(mods[k].sizes(), mods[k].options()));
    backward_one(op, grads[k], weights[k], mods[k], align_corners, weight_requires_grad ? &gws.back() : nullptr,
                 mod_requires_grad ? &gms.back() : nullptr);
  }
  return {gws, gms};
}

}  // namespace

TORCH_LIBRARY_IMPL(cltk, CUDA, m) {
  m.impl("bicubic_modulate", &bicubic_modulate_cuda);
  m.impl("bicubic_modulate_out_", &bicubic_modulate_out_cuda);
  m.impl("bicubic_modulate_backward", &bicubic_modulate_backward_cuda);
  m.impl("bicubic_modulate_multi", &bicubic_modulate_multi_cuda);
  m.impl("bicubic_modulate_multi_out_", &bicubic_modulate_multi_out_cuda);
  m.impl("bicubic_modulate_multi_backward", &bicubic_modulate_multi_backward_cuda);
}
