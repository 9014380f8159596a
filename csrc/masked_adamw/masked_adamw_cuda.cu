// Launcher of the CUDA masked AdamW step: packs (tensor, chunk) pairs into by-value batches of at most
// kBatchTensors tensors and kBatchBlocks blocks, one launch per batch, on the caller's stream.
#include "masked_adamw/masked_adamw_cuda.h"

#include "common/launch.cuh"
#include "masked_adamw/masked_adamw.cuh"

namespace cltk::masked_adamw {

namespace {

constexpr int kThreads = 256;

template <typename T>
cudaError_t launch_typed(const TensorArgs* tensors, int64_t n_tensors, double lr, double beta1, double beta2,
                         double eps, double weight_decay, bool freeze, int64_t chunk, cudaStream_t stream) {
  const double decay = 1.0 - lr * weight_decay;
  const bool has_decay = weight_decay != 0.0;
  MaskedAdamwBatch batch;
  int nt = 0, nb = 0;
  int64_t in_batch = -1;  // index k of the tensor in batch slot nt - 1
  auto flush = [&]() -> cudaError_t {
    if (nb > 0) {
      CLTK_LAUNCH(nb, kThreads, 0, stream, masked_adamw_kernel<T>)
      (batch, decay, has_decay, 1.0 - beta1, beta2, 1.0 - beta2, eps, freeze, chunk);
      cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    nt = 0;
    nb = 0;
    in_batch = -1;
    return cudaSuccess;
  };
  for (int64_t k = 0; k < n_tensors; ++k) {
    const TensorArgs& a = tensors[k];
    if (a.numel == 0) continue;
    const int64_t n_chunks = (a.numel + chunk - 1) / chunk;
    if (n_chunks > INT32_MAX) return cudaErrorInvalidValue;
    for (int64_t c = 0; c < n_chunks; ++c) {
      if (nb == kBatchBlocks) {
        // The batch is full mid-tensor: launch it and carry this tensor over as the first of the next.
        cudaError_t err = flush();
        if (err != cudaSuccess) return err;
      }
      if (in_batch != k) {
        if (nt == kBatchTensors) {
          cudaError_t err = flush();
          if (err != cudaSuccess) return err;
        }
        batch.param[nt] = a.param;
        batch.grad[nt] = a.grad;
        batch.exp_avg[nt] = a.exp_avg;
        batch.exp_avg_sq[nt] = a.exp_avg_sq;
        batch.row_mask[nt] = a.row_mask;
        batch.numel[nt] = a.numel;
        batch.row_len[nt] = a.row_len;
        batch.step_size[nt] = a.step_size;
        batch.bias_corr2_sqrt[nt] = a.bias_corr2_sqrt;
        ++nt;
        in_batch = k;
      }
      batch.block_tensor[nb] = static_cast<unsigned char>(nt - 1);
      batch.block_chunk[nb] = static_cast<int32_t>(c);
      ++nb;
    }
  }
  return flush();
}

}  // namespace

cudaError_t launch_masked_adamw(DType dtype, const TensorArgs* tensors, int64_t n_tensors, double lr, double beta1,
                                double beta2, double eps, double weight_decay, bool freeze_masked_rows,
                                int64_t chunk_elems, cudaStream_t stream) {
  if (chunk_elems <= 0 || n_tensors < 0) return cudaErrorInvalidValue;
  for (int64_t k = 0; k < n_tensors; ++k) {
    if (tensors[k].numel > 0 && tensors[k].row_mask != nullptr && tensors[k].row_len <= 0) return cudaErrorInvalidValue;
  }
  switch (dtype) {
    case DType::kFloat32:
      return launch_typed<float>(tensors, n_tensors, lr, beta1, beta2, eps, weight_decay, freeze_masked_rows,
                                 chunk_elems, stream);
    case DType::kFloat64:
      return launch_typed<double>(tensors, n_tensors, lr, beta1, beta2, eps, weight_decay, freeze_masked_rows,
                                  chunk_elems, stream);
    case DType::kFloat16:
      return launch_typed<__half>(tensors, n_tensors, lr, beta1, beta2, eps, weight_decay, freeze_masked_rows,
                                  chunk_elems, stream);
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16>(tensors, n_tensors, lr, beta1, beta2, eps, weight_decay,
                                         freeze_masked_rows, chunk_elems, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cltk::masked_adamw
