// Argument checks and per-tensor preparation shared by the CPU and CUDA kernels of cltk::masked_adamw_.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <cmath>
#include <vector>

#include "common/check.h"

namespace cltk::masked_adamw {

// One tensor's view after checking: contiguous grad and mask (copies only when the caller passed
// non-contiguous ones), and the scalars of its bias correction, computed in double as torch does.
struct Prepared {
  at::Tensor param, grad, exp_avg, exp_avg_sq, mask;  // mask undefined when absent
  int64_t rows = 1, row_len = 1;
  double step_size = 0.0;       // lr / (1 - beta1^step)
  double bias_corr2_sqrt = 1.0; // sqrt(1 - beta2^step)
};

inline std::vector<Prepared> prepare(const at::TensorList params, const at::TensorList grads,
                                     const at::TensorList exp_avgs, const at::TensorList exp_avg_sqs,
                                     const c10::List<std::optional<at::Tensor>>& row_masks,
                                     const at::TensorList steps, double lr, double beta1, double beta2,
                                     double eps, double weight_decay, at::DeviceType device_type) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && row_masks.size() == n &&
                  steps.size() == n,
              "masked_adamw_: params, grads, exp_avgs, exp_avg_sqs, row_masks and steps must have the same length, got ",
              n, ", ", grads.size(), ", ", exp_avgs.size(), ", ", exp_avg_sqs.size(), ", ", row_masks.size(), ", ",
              steps.size());
  TORCH_CHECK(lr >= 0.0, "masked_adamw_: lr must be >= 0, got ", lr);
  TORCH_CHECK(beta1 >= 0.0 && beta1 < 1.0, "masked_adamw_: beta1 must be in [0, 1), got ", beta1);
  TORCH_CHECK(beta2 >= 0.0 && beta2 < 1.0, "masked_adamw_: beta2 must be in [0, 1), got ", beta2);
  TORCH_CHECK(eps >= 0.0, "masked_adamw_: eps must be >= 0, got ", eps);
  TORCH_CHECK(weight_decay >= 0.0, "masked_adamw_: weight_decay must be >= 0, got ", weight_decay);
  std::vector<Prepared> out;
  out.reserve(n);
  if (n == 0) return out;
  const auto dtype = params[0].scalar_type();
  const auto device = params[0].device();
  TORCH_CHECK(device.type() == device_type, "masked_adamw_: params[0] must be on ", device_type, ", got ", device);
  for (const auto i : c10::irange(n)) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    const at::Tensor& m = exp_avgs[i];
    const at::Tensor& v = exp_avg_sqs[i];
    const at::Tensor& s = steps[i];
    TORCH_CHECK(p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble || p.scalar_type() == at::kHalf ||
                    p.scalar_type() == at::kBFloat16,
                "masked_adamw_: params[", i, "] must be float32, float64, float16 or bfloat16, got ", p.scalar_type());
    TORCH_CHECK(p.scalar_type() == dtype && g.scalar_type() == dtype && m.scalar_type() == dtype &&
                    v.scalar_type() == dtype,
                "masked_adamw_: params, grads, exp_avgs and exp_avg_sqs must all have dtype ", dtype,
                " (one call per (device, dtype) group), got ", p.scalar_type(), ", ", g.scalar_type(), ", ",
                m.scalar_type(), ", ", v.scalar_type(), " at index ", i);
    TORCH_CHECK(p.device() == device && g.device() == device && m.device() == device && v.device() == device,
                "masked_adamw_: params, grads, exp_avgs and exp_avg_sqs must all be on ", device, ", got ", p.device(),
                ", ", g.device(), ", ", m.device(), ", ", v.device(), " at index ", i);
    TORCH_CHECK(g.sizes() == p.sizes() && m.sizes() == p.sizes() && v.sizes() == p.sizes(),
                "masked_adamw_: grads[", i, "], exp_avgs[", i, "] and exp_avg_sqs[", i, "] must have the shape of params[",
                i, "] ", p.sizes(), ", got ", g.sizes(), ", ", m.sizes(), ", ", v.sizes());
    TORCH_CHECK(p.is_contiguous() && m.is_contiguous() && v.is_contiguous(), "masked_adamw_: params[", i,
                "], exp_avgs[", i, "] and exp_avg_sqs[", i, "] must be contiguous (params[", i, "] has shape ", p.sizes(),
                ", strides ", p.strides(), ")");
    TORCH_CHECK(s.numel() == 1 && at::isFloatingType(s.scalar_type()), "masked_adamw_: steps[", i,
                "] must be a 1-element floating tensor, got ", s.scalar_type(), " of shape ", s.sizes());
    Prepared pr;
    pr.param = p;
    pr.grad = g.is_contiguous() ? g : g.contiguous();
    pr.exp_avg = m;
    pr.exp_avg_sq = v;
    if (p.dim() >= 1) {
      pr.rows = p.size(0);
      pr.row_len = pr.rows > 0 ? p.numel() / pr.rows : 0;
    }
    const std::optional<at::Tensor> mask_opt = row_masks[i];
    if (mask_opt.has_value() && mask_opt->defined()) {
      const at::Tensor& mk = *mask_opt;
      TORCH_CHECK(p.dim() >= 1, "masked_adamw_: row_masks[", i, "] must be None for the 0-D params[", i, "]");
      TORCH_CHECK(mk.scalar_type() == at::kBool, "masked_adamw_: row_masks[", i, "] must have dtype bool, got ",
                  mk.scalar_type());
      TORCH_CHECK(mk.dim() == 1 && mk.size(0) == p.size(0), "masked_adamw_: row_masks[", i,
                  "] must be 1-D of size params[", i, "].size(0) = ", p.size(0), ", got shape ", mk.sizes());
      TORCH_CHECK(mk.device() == device, "masked_adamw_: row_masks[", i, "] must be on ", device, ", got ",
                  mk.device());
      pr.mask = mk.is_contiguous() ? mk : mk.contiguous();
    }
    const double step = s.item<double>();
    TORCH_CHECK(step >= 1.0, "masked_adamw_: steps[", i, "] must be >= 1 (the step count after incrementing), got ",
                step);
    pr.step_size = lr / (1.0 - std::pow(beta1, step));
    pr.bias_corr2_sqrt = std::sqrt(1.0 - std::pow(beta2, step));
    out.push_back(std::move(pr));
  }
  return out;
}

}  // namespace cltk::masked_adamw
