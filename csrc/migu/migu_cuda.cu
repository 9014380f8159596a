// Launchers of the MIGU CUDA kernels (kernels and their notes: migu.cuh). Torch-free: compiled by nvcc for the
// extension and by g++ with common/cuda_emu.h for the emulation tests (tests/emu/test_migu_emu.py).
#include "migu/migu.cuh"
#include "migu/migu_cuda.h"

#include "common/launch.cuh"

namespace cltk {
namespace migu {

int64_t row_l1_row_chunks(int64_t rows, int64_t d) {
  // Enough blocks to fill a large GPU (~1024), chunks of at least 64 rows, and grid.y <= 65535.
  if (rows <= 0 || d <= 0) return 1;  // nothing to launch; also keeps the divisions below defined
  const int64_t col_tiles = (d + kL1Cols - 1) / kL1Cols;
  int64_t chunks = (1024 + col_tiles - 1) / col_tiles;
  const int64_t max_by_rows = (rows + 63) / 64;
  if (chunks > max_by_rows) chunks = max_by_rows;
  if (chunks > 65535) chunks = 65535;
  return chunks < 1 ? 1 : chunks;
}

namespace {
template <typename T>
cudaError_t launch_row_l1_typed(float* acc, const T* y, int64_t rows, int64_t d, int64_t row_stride,
                                float* workspace, int64_t chunks, cudaStream_t stream) {
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  const int64_t col_tiles = (d + kL1Cols - 1) / kL1Cols;
  const dim3 grid((unsigned)col_tiles, (unsigned)chunks);
  if (chunks == 1) {
    CLTK_LAUNCH(grid, kL1Threads, 0, stream, row_l1_partial_kernel<T>)(y, rows, d, row_stride, rows_per_chunk, acc, 1);
    return cudaGetLastError();
  }
  CLTK_LAUNCH(grid, kL1Threads, 0, stream, row_l1_partial_kernel<T>)(y, rows, d, row_stride, rows_per_chunk,
                                                                    workspace, 0);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int threads = 256;
  CLTK_LAUNCH((unsigned)((d + threads - 1) / threads), threads, 0, stream, row_l1_finalize_kernel)(workspace, chunks, d,
                                                                                                   acc);
  return cudaGetLastError();
}
}  // namespace

cudaError_t launch_row_l1_accumulate(float* acc, const void* y, int y_dtype, int64_t rows, int64_t d,
                                     int64_t row_stride, float* workspace, int64_t row_chunks, cudaStream_t stream) {
  if (rows <= 0 || d <= 0) return cudaSuccess;
  if (row_chunks < 1 || row_chunks > 65535 || (row_chunks > 1 && workspace == nullptr) ||
      (d + kL1Cols - 1) / kL1Cols > 0x7fffffff)
    return cudaErrorInvalidValue;
  switch (y_dtype) {
    case kYFloat32:
      return launch_row_l1_typed(acc, static_cast<const float*>(y), rows, d, row_stride, workspace, row_chunks, stream);
    case kYBFloat16:
      return launch_row_l1_typed(acc, static_cast<const __nv_bfloat16*>(y), rows, d, row_stride, workspace,
                                 row_chunks, stream);
    case kYFloat16:
      return launch_row_l1_typed(acc, static_cast<const __half*>(y), rows, d, row_stride, workspace, row_chunks,
                                 stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_topk_row_mask_f32(const float* const* scores, bool* const* out, const int64_t* sizes,
                                     int64_t n_layers, double threshold, cudaStream_t stream) {
  if (n_layers <= 0) return cudaSuccess;
  if (n_layers > 0x7fffffff || !(threshold >= 0.0 && threshold < 1.0)) return cudaErrorInvalidValue;
  CLTK_LAUNCH((unsigned)n_layers, kTopkThreads, 0, stream, topk_row_mask_kernel<float, uint32_t>)(scores, out, sizes,
                                                                                                threshold);
  return cudaGetLastError();
}

cudaError_t launch_topk_row_mask_f64(const double* const* scores, bool* const* out, const int64_t* sizes,
                                     int64_t n_layers, double threshold, cudaStream_t stream) {
  if (n_layers <= 0) return cudaSuccess;
  if (n_layers > 0x7fffffff || !(threshold >= 0.0 && threshold < 1.0)) return cudaErrorInvalidValue;
  CLTK_LAUNCH((unsigned)n_layers, kTopkThreads, 0, stream, topk_row_mask_kernel<double, unsigned long long>)(
      scores, out, sizes, threshold);
  return cudaGetLastError();
}

}  // namespace migu
}  // namespace cltk
