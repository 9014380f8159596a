// Torch-free launcher of the CUDA masked AdamW step (kernels in masked_adamw.cuh, launcher in
// masked_adamw_cuda.cu). The glue (masked_adamw_cuda_glue.cpp) and the emulation tests call it.
#pragma once
#include <cstdint>

#include "common/cuda_types.h"

namespace cltk::masked_adamw {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// One tensor of the group: contiguous device buffers of `numel` elements, rows of `row_len` elements.
// row_mask is nullptr ("every row active") or numel / row_len bools, true = the row takes its gradient.
struct TensorArgs {
  void* param;
  const void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  const bool* row_mask;
  int64_t numel;
  int64_t row_len;
  double step_size;        // lr / (1 - beta1^step)
  double bias_corr2_sqrt;  // sqrt(1 - beta2^step)
};

// Elements handled by one thread block; the glue passes this, the emulation tests pass small values to
// exercise many blocks and several launches.
constexpr int64_t kDefaultChunkElems = 1 << 16;

// Updates every tensor in place with as few launches as the per-launch argument block allows. Returns the
// first launch error (cudaSuccess when none), and cudaErrorInvalidValue for a bad dtype or chunk size.
cudaError_t launch_masked_adamw(DType dtype, const TensorArgs* tensors, int64_t n_tensors, double lr, double beta1,
                                double beta2, double eps, double weight_decay, bool freeze_masked_rows,
                                int64_t chunk_elems, cudaStream_t stream);

}  // namespace cltk::masked_adamw
