// Torch-free launchers of the meta-LSTM CUDA kernels (csrc/metalstm/metalstm.cuh), for T = float or double.
// All pointers are device pointers to contiguous storage (state unit-major [L, H, N]); every launcher enqueues on
// `stream` and returns the launch error (cudaGetLastError) for the caller to check. H must be at most 64
// (cudaErrorInvalidValue otherwise).
#pragma once
#include "common/cuda_types.h"

#include <cstdint>

// out [N]; h_out, c_out may alias h, c (in-place step). mult may be null.
template <typename T>
cudaError_t launch_meta_lstm_forward(const T* x, const T* h, const T* c, const T* w_ih0, const T* w_ih,
                                     const T* w_hh, const T* b, const T* w_out, const T* b_out, const T* scale,
                                     const T* mult, T* out, T* h_out, T* c_out, int64_t N, int64_t F, int64_t H,
                                     int64_t L, cudaStream_t stream);

// Gradients of one step. gw_* (all null, or all non-null) are zeroed here and accumulated; gx, gh, gc, gmult
// (each may be null) are overwritten. gout, gh_new, gc_new, mult may be null (zero / absent).
template <typename T>
cudaError_t launch_meta_lstm_backward(const T* x, const T* h, const T* c, const T* w_ih0, const T* w_ih,
                                      const T* w_hh, const T* b, const T* w_out, const T* b_out, const T* scale,
                                      const T* mult, const T* gout, const T* gh_new, const T* gc_new, T* gx, T* gh,
                                      T* gc, T* gmult, T* gw_ih0, T* gw_ih, T* gw_hh, T* gb, T* gw_out, T* gb_out,
                                      T* gscale, int64_t N, int64_t F, int64_t H, int64_t L, cudaStream_t stream);
