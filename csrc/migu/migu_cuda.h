// Torch-free launchers of the MIGU CUDA kernels (migu.cuh). Pointers are device pointers (host pointers under the
// emulator); every launcher enqueues on `stream` and returns cudaGetLastError().
#pragma once
#include <cstdint>

#include "common/cuda_types.h"

namespace cltk {
namespace migu {

// y dtype codes for launch_row_l1_accumulate.
constexpr int kYFloat32 = 0;
constexpr int kYBFloat16 = 1;
constexpr int kYFloat16 = 2;

// Number of row chunks the row_l1 kernel splits `rows` into; the caller provides a workspace of
// row_chunks * d floats when it is > 1 (with 1 chunk the kernel adds into acc directly).
int64_t row_l1_row_chunks(int64_t rows, int64_t d);

// acc[c] += sum_r |y[r * row_stride + c]| for r < rows, c < d (y's last dim contiguous).
cudaError_t launch_row_l1_accumulate(float* acc, const void* y, int y_dtype, int64_t rows, int64_t d,
                                     int64_t row_stride, float* workspace, int64_t row_chunks, cudaStream_t stream);

// For each layer l < n_layers: out[l][i] = scores[l][i] >= quantile(scores[l], threshold) (torch.quantile's linear
// interpolation), scores[l] contiguous with sizes[l] >= 1 elements. The three arrays are in device memory.
cudaError_t launch_topk_row_mask_f32(const float* const* scores, bool* const* out, const int64_t* sizes,
                                     int64_t n_layers, double threshold, cudaStream_t stream);
cudaError_t launch_topk_row_mask_f64(const double* const* scores, bool* const* out, const int64_t* sizes,
                                     int64_t n_layers, double threshold, cudaStream_t stream);

}  // namespace migu
}  // namespace cltk
