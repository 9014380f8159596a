// CUDA registration of cltk::masked_adamw_: checks and prepares the tensors (masked_adamw_check.h), converts
// them to raw pointers and calls the torch-free launcher on the current stream under a device guard.
// steps[i] is read on the host (a sync when it lives on the GPU; torch.optim keeps it on the CPU by default).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "masked_adamw/masked_adamw_check.h"
#include "masked_adamw/masked_adamw_cuda.h"

namespace {

using cltk::masked_adamw::DType;
using cltk::masked_adamw::TensorArgs;

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "masked_adamw_: params must be float32, float64, float16 or bfloat16, got ", t);
  }
}

void masked_adamw_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                       at::TensorList exp_avg_sqs, const c10::List<std::optional<at::Tensor>>& row_masks,
                       at::TensorList steps, double lr, double beta1, double beta2, double eps, double weight_decay,
                       bool freeze_masked_rows) {
  const auto ts = cltk::masked_adamw::prepare(params, grads, exp_avgs, exp_avg_sqs, row_masks, steps, lr, beta1, beta2,
                                              eps, weight_decay, at::kCUDA);
  if (ts.empty()) return;
  const c10::cuda::CUDAGuard guard(ts[0].param.device());
  std::vector<TensorArgs> args;
  args.reserve(ts.size());
  for (const auto& pr : ts) {
    TensorArgs a;
    a.param = pr.param.data_ptr();
    a.grad = pr.grad.const_data_ptr();
    a.exp_avg = pr.exp_avg.data_ptr();
    a.exp_avg_sq = pr.exp_avg_sq.data_ptr();
    a.row_mask = pr.mask.defined() ? pr.mask.const_data_ptr<bool>() : nullptr;
    a.numel = pr.param.numel();
    a.row_len = pr.row_len;
    a.step_size = pr.step_size;
    a.bias_corr2_sqrt = pr.bias_corr2_sqrt;
    args.push_back(a);
  }
  const cudaError_t err = cltk::masked_adamw::launch_masked_adamw(
      to_dtype(ts[0].param.scalar_type()), args.data(), static_cast<int64_t>(args.size()), lr, beta1, beta2, eps,
      weight_decay, freeze_masked_rows, cltk::masked_adamw::kDefaultChunkElems, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "masked_adamw_: CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace

TORCH_LIBRARY_IMPL(cltk, CUDA, m) { m.impl("masked_adamw_", &masked_adamw_cuda); }
