// CUDA registrations of the MIGU ops: tensors -> raw pointers for the torch-free launchers in migu_cuda.cu.
// row_l1_accumulate_ reads y in place when its leading dims coalesce to one row stride and its last dim is
// contiguous; any other layout is copied to a contiguous tensor first (the CPU kernel never copies).
// topk_row_mask(_batched) copies non-contiguous score vectors (d elements each) and uploads one small table of
// pointers and sizes per dtype group.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "migu/migu_common.h"
#include "migu/migu_cuda.h"

namespace cltk {
namespace migu {
namespace {

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

void row_l1_accumulate_cuda(at::Tensor& acc, const at::Tensor& y_in) {
  check_row_l1_args(acc, y_in);
  TORCH_CHECK_VALUE(acc.is_cuda(), "row_l1_accumulate_: acc must be a CUDA tensor here, got ", acc.device());
  const c10::cuda::CUDAGuard guard(acc.device());
  at::Tensor y = y_in;
  RowView v = make_row_view(y);
  if (v.rows == 0 || v.d == 0) return;
  if (!v.single_stride() || v.col_stride != 1) {
    y = y.contiguous();
    v = make_row_view(y);
  }
  at::Tensor a = acc.is_contiguous() ? acc : acc.contiguous();
  const int code = y.scalar_type() == at::kFloat ? kYFloat32 : (y.scalar_type() == at::kBFloat16 ? kYBFloat16 : kYFloat16);
  const int64_t chunks = row_l1_row_chunks(v.rows, v.d);
  at::Tensor ws;
  if (chunks > 1) ws = at::empty({chunks * v.d}, acc.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  check_launch(launch_row_l1_accumulate(a.data_ptr<float>(), y.const_data_ptr(), code, v.rows, v.d, v.row_stride,
                                        chunks > 1 ? ws.data_ptr<float>() : nullptr, chunks, stream.stream()),
               "row_l1_accumulate_");
  if (!a.is_same(acc)) acc.copy_(a);
}

// Runs the per-layer kernel for the layers idx (all of one dtype) of scores, writing outs.
void topk_group(const std::vector<at::Tensor>& scores, std::vector<at::Tensor>& outs, const std::vector<size_t>& idx,
                double threshold, at::ScalarType dtype, const at::Device& device) {
  if (idx.empty()) return;
  const int64_t n = static_cast<int64_t>(idx.size());
  at::Tensor table = at::empty({3 * n}, at::TensorOptions().dtype(at::kLong));
  int64_t* t = table.data_ptr<int64_t>();
  for (int64_t j = 0; j < n; ++j) {
    const size_t l = idx[j];
    t[j] = reinterpret_cast<int64_t>(scores[l].const_data_ptr());
    t[n + j] = reinterpret_cast<int64_t>(outs[l].data_ptr());
    t[2 * n + j] = scores[l].size(0);
  }
  at::Tensor dtable = table.to(device);  // synchronous copy from pageable memory: table may be freed after
  const int64_t* dt = dtable.const_data_ptr<int64_t>();
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  cudaError_t err;
  if (dtype == at::kFloat) {
    err = launch_topk_row_mask_f32(reinterpret_cast<const float* const*>(dt), reinterpret_cast<bool* const*>(dt + n),
                                   dt + 2 * n, n, threshold, stream);
  } else {
    err = launch_topk_row_mask_f64(reinterpret_cast<const double* const*>(dt), reinterpret_cast<bool* const*>(dt + n),
                                   dt + 2 * n, n, threshold, stream);
  }
  check_launch(err, "topk_row_mask");
}

std::vector<at::Tensor> topk_batched_impl(const char* op, at::TensorList scores_in, double threshold) {
  check_threshold(op, threshold);
  std::vector<at::Tensor> scores, outs;
  std::vector<size_t> f32, f64;
  for (size_t i = 0; i < scores_in.size(); ++i) {
    const std::string name = scores_in.size() == 1 && std::string(op) == "topk_row_mask" ? "scores"
                                                                                         : "scores[" + std::to_string(i) + "]";
    check_scores(op, scores_in[i], name);
    TORCH_CHECK_VALUE(scores_in[i].device() == scores_in[0].device(), op, ": all scores must be on one device, ",
                      "scores[0] is on ", scores_in[0].device(), ", scores[", i, "] on ", scores_in[i].device());
    TORCH_CHECK_VALUE(scores_in[i].size(0) <= INT32_MAX, op, ": ", name, " has ", scores_in[i].size(0),
                      " elements, more than the kernel's limit of 2^31 - 1");
    scores.push_back(scores_in[i].contiguous());
    outs.push_back(at::empty(scores_in[i].sizes(), scores_in[i].options().dtype(at::kBool)));
    (scores_in[i].scalar_type() == at::kFloat ? f32 : f64).push_back(i);
  }
  if (scores.empty()) return outs;
  TORCH_CHECK_VALUE(scores[0].is_cuda(), op, ": scores must be CUDA tensors here, got ", scores[0].device());
  const c10::cuda::CUDAGuard guard(scores[0].device());
  topk_group(scores, outs, f32, threshold, at::kFloat, scores[0].device());
  topk_group(scores, outs, f64, threshold, at::kDouble, scores[0].device());
  return outs;
}

at::Tensor topk_row_mask_cuda(const at::Tensor& scores, double threshold) {
  return topk_batched_impl("topk_row_mask", {scores}, threshold)[0];
}

std::vector<at::Tensor> topk_row_mask_batched_cuda(at::TensorList scores, double threshold) {
  return topk_batched_impl("topk_row_mask_batched", scores, threshold);
}

}  // namespace
}  // namespace migu
}  // namespace cltk

TORCH_LIBRARY_IMPL(cltk, CUDA, m) {
  m.impl("row_l1_accumulate_", &cltk::migu::row_l1_accumulate_cuda);
  m.impl("topk_row_mask", &cltk::migu::topk_row_mask_cuda);
  m.impl("topk_row_mask_batched", &cltk::migu::topk_row_mask_batched_cuda);
}
