// Launchers of the bicubic-modulation CUDA kernels (see bicubic.cuh for the algorithm and memory traffic).
// Torch-free: compiled by nvcc for the extension and by g++ with common/cuda_emu.h for the emulation tests.
#include "bicubic/bicubic_cuda.h"

#include "bicubic/bicubic.cuh"
#include "common/launch.cuh"

using namespace cltk_bicubic;

namespace {

inline unsigned int blocks_for(int64_t n, int64_t cap = 65535) {
  int64_t b = (n + kThreads - 1) / kThreads;
  if (b < 1) b = 1;
  return static_cast<unsigned int>(b < cap ? b : cap);
}

inline unsigned int capped(int64_t n, int64_t cap = 65535) {
  if (n < 1) n = 1;
  return static_cast<unsigned int>(n < cap ? n : cap);
}

}  // namespace

int64_t bicubic_modulate_workspace(int64_t out, int64_t in, int64_t m1, int64_t m2) {
  (void)out;
  (void)m2;
  return m1 * in;
}

template <typename T>
cudaError_t launch_bicubic_modulate(const T* weight, const T* mod, T* out_w, T* workspace, int64_t out, int64_t in,
                                    int64_t m1, int64_t m2, bool align_corners, cudaStream_t stream) {
  if (out == 0 || in == 0) return cudaSuccess;
  T* U = workspace;
  CLTK_LAUNCH(blocks_for(m1 * in), kThreads, 0, stream, bicubic_width_upsample_kernel<T>)(mod, U, m1, m2, in,
                                                                                          align_corners);
  const dim3 grid(blocks_for(in, 1LL << 31), capped((out + kRowsPerBlock - 1) / kRowsPerBlock));
  CLTK_LAUNCH(grid, kThreads, 0, stream, bicubic_modulate_rows_kernel<T>)(weight, U, out_w, out, in, m1,
                                                                         align_corners);
  return cudaGetLastError();
}

template <typename T>
int64_t bicubic_modulate_backward_workspace(int64_t out, int64_t in, int64_t m1, int64_t m2, bool align_corners) {
  (void)m2;
  if (out == 0 || in == 0) return 0;
  const int64_t nchunks = (out + kCudaRowsPerChunk - 1) / kCudaRowsPerChunk;
  const int64_t span = chunk_span_max<T>(out, m1, align_corners);
  return m1 * in + nchunks * span * in + m1 * in;
}

template <typename T>
cudaError_t launch_bicubic_modulate_backward(const T* grad, const T* weight, const T* mod, T* grad_weight, T* grad_mod,
                                             T* workspace, int64_t out, int64_t in, int64_t m1, int64_t m2,
                                             bool align_corners, cudaStream_t stream) {
  if (grad_weight == nullptr && grad_mod == nullptr) return cudaSuccess;
  if (out == 0 || in == 0) {
    if (grad_mod != nullptr) {
      cudaError_t e = cudaMemsetAsync(grad_mod, 0, sizeof(T) * m1 * m2, stream);
      if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
  }
  const int64_t nchunks = (out + kCudaRowsPerChunk - 1) / kCudaRowsPerChunk;
  const int64_t span = chunk_span_max<T>(out, m1, align_corners);
  T* U = workspace;
  T* partial = grad_mod != nullptr ? workspace + m1 * in : nullptr;
  T* Tsum = workspace + m1 * in + nchunks * span * in;
  if (grad_weight != nullptr) {
    CLTK_LAUNCH(blocks_for(m1 * in), kThreads, 0, stream, bicubic_width_upsample_kernel<T>)(mod, U, m1, m2, in,
                                                                                            align_corners);
  }
  if (partial != nullptr) {
    cudaError_t e = cudaMemsetAsync(partial, 0, sizeof(T) * nchunks * span * in, stream);
    if (e != cudaSuccess) return e;
  }
  const dim3 grid(blocks_for(in, 1LL << 31), capped(nchunks));
  CLTK_LAUNCH(grid, kThreads, 0, stream, bicubic_backward_partial_kernel<T>)(
      grad, weight, grad_weight != nullptr ? U : nullptr, grad_weight, partial, out, in, m1, span, align_corners);
  if (grad_mod != nullptr) {
    CLTK_LAUNCH(blocks_for(m1 * in), kThreads, 0, stream, bicubic_backward_sum_chunks_kernel<T>)(
        partial, Tsum, out, in, m1, span, align_corners);
    CLTK_LAUNCH(blocks_for(m1 * m2), kThreads, 0, stream, bicubic_backward_width_adjoint_kernel<T>)(
        Tsum, grad_mod, m1, m2, in, align_corners);
  }
  return cudaGetLastError();
}

#define CLTK_BICUBIC_INSTANTIATE(T)                                                                              \
  template cudaError_t launch_bicubic_modulate<T>(const T*, const T*, T*, T*, int64_t, int64_t, int64_t, int64_t, \
                                                  bool, cudaStream_t);                                           \
  template int64_t bicubic_modulate_backward_workspace<T>(int64_t, int64_t, int64_t, int64_t, bool);             \
  template cudaError_t launch_bicubic_modulate_backward<T>(const T*, const T*, const T*, T*, T*, T*, int64_t,     \
                                                           int64_t, int64_t, int64_t, bool, cudaStream_t);

CLTK_BICUBIC_INSTANTIATE(float)
CLTK_BICUBIC_INSTANTIATE(double)
