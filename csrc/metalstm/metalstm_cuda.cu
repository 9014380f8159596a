// Launchers of the meta-LSTM CUDA kernels (see metalstm.cuh for the algorithm and memory traffic).
// Torch-free: compiled by nvcc for the extension and by g++ with common/cuda_emu.h for the emulation tests.
#include "metalstm/metalstm_cuda.h"

#include "common/launch.cuh"
#include "metalstm/metalstm.cuh"

using namespace cltk_metalstm;

namespace {

inline unsigned int blocks_for(int64_t n, int64_t cap = 65535) {
  int64_t b = (n + kThreads - 1) / kThreads;
  if (b < 1) b = 1;
  return static_cast<unsigned int>(b < cap ? b : cap);
}

template <typename T>
NetPtrs<T> net(const T* w_ih0, const T* w_ih, const T* w_hh, const T* b, const T* w_out, const T* b_out,
               const T* scale, int64_t F, int64_t H, int64_t L) {
  NetPtrs<T> p;
  p.w_ih0 = w_ih0;
  p.w_ih = w_ih;
  p.w_hh = w_hh;
  p.b = b;
  p.w_out = w_out;
  p.b_out = b_out;
  p.scale = scale;
  p.F = F;
  p.H = H;
  p.L = L;
  return p;
}

}  // namespace

template <typename T>
cudaError_t launch_meta_lstm_forward(const T* x, const T* h, const T* c, const T* w_ih0, const T* w_ih,
                                     const T* w_hh, const T* b, const T* w_out, const T* b_out, const T* scale,
                                     const T* mult, T* out, T* h_out, T* c_out, int64_t N, int64_t F, int64_t H,
                                     int64_t L, cudaStream_t stream) {
  if (H < 1 || H > kMaxHidden) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  const NetPtrs<T> p = net(w_ih0, w_ih, w_hh, b, w_out, b_out, scale, F, H, L);
  CLTK_LAUNCH(blocks_for(N), kThreads, 0, stream, meta_lstm_forward_kernel<T>)(p, x, h, c, mult, out, h_out, c_out,
                                                                                N);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_meta_lstm_backward(const T* x, const T* h, const T* c, const T* w_ih0, const T* w_ih,
                                      const T* w_hh, const T* b, const T* w_out, const T* b_out, const T* scale,
                                      const T* mult, const T* gout, const T* gh_new, const T* gc_new, T* gx, T* gh,
                                      T* gc, T* gmult, T* gw_ih0, T* gw_ih, T* gw_hh, T* gb, T* gw_out, T* gb_out,
                                      T* gscale, int64_t N, int64_t F, int64_t H, int64_t L, cudaStream_t stream) {
  if (H < 1 || H > kMaxHidden) return cudaErrorInvalidValue;
  if (gw_ih0 != nullptr) {
    const int64_t M = 4 * H;
    const struct {
      T* ptr;
      int64_t n;
    } zero[] = {{gw_ih0, M * F}, {gw_ih, (L - 1) * M * H}, {gw_hh, L * M * H}, {gb, L * M},
                {gw_out, H},     {gb_out, 1},              {gscale, 1}};
    for (const auto& z : zero) {
      if (z.n == 0) continue;
      const cudaError_t e = cudaMemsetAsync(z.ptr, 0, sizeof(T) * z.n, stream);
      if (e != cudaSuccess) return e;
    }
  }
  if (N == 0) return cudaSuccess;
  const NetPtrs<T> p = net(w_ih0, w_ih, w_hh, b, w_out, b_out, scale, F, H, L);
  CLTK_LAUNCH(blocks_for(N), kThreads, 0, stream, meta_lstm_backward_kernel<T>)(
      p, x, h, c, mult, gout, gh_new, gc_new, gx, gh, gc, gmult, gw_ih0, gw_ih, gw_hh, gb, gw_out, gb_out, gscale, N);
  return cudaGetLastError();
}

#define CLTK_METALSTM_INSTANTIATE(T)                                                                              \
  template cudaError_t launch_meta_lstm_forward<T>(const T*, const T*, const T*, const T*, const T*, const T*,   \
                                                   const T*, const T*, const T*, const T*, const T*, T*, T*, T*, \
                                                   int64_t, int64_t, int64_t, int64_t, cudaStream_t);            \
  template cudaError_t launch_meta_lstm_backward<T>(                                                              \
      const T*, const T*, const T*, const T*, const T*, const T*, const T*, const T*, const T*, const T*,         \
      const T*, const T*, const T*, const T*, T*, T*, T*, T*, T*, T*, T*, T*, T*, T*, T*, int64_t, int64_t,       \
      int64_t, int64_t, cudaStream_t);

CLTK_METALSTM_INSTANTIATE(float)
CLTK_METALSTM_INSTANTIATE(double)
