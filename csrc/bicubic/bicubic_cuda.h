// Torch-free launchers of the bicubic-modulation CUDA kernels (csrc/bicubic/bicubic.cuh), for T = float or
// double. All pointers are device pointers to contiguous row-major storage; every launcher enqueues on
// `stream` and returns the launch error (cudaGetLastError) for the caller to check.
#pragma once
#include "common/cuda_types.h"

#include <cstdint>

// Elements of workspace the forward needs: U = mod upsampled along the width, [m1, in].
int64_t bicubic_modulate_workspace(int64_t out, int64_t in, int64_t m1, int64_t m2);

// out_w[i, j] = weight[i, j] * up(mod)[i, j]; weight, out_w: [out, in]; mod: [m1, m2].
template <typename T>
cudaError_t launch_bicubic_modulate(const T* weight, const T* mod, T* out_w, T* workspace, int64_t out, int64_t in,
                                    int64_t m1, int64_t m2, bool align_corners, cudaStream_t stream);

// Elements of workspace the backward needs (U, the chunk partials, and their sum).
template <typename T>
int64_t bicubic_modulate_backward_workspace(int64_t out, int64_t in, int64_t m1, int64_t m2, bool align_corners);

// grad_weight = grad * up(mod) (skipped when grad_weight is null); grad_mod = up^T(grad * weight) (skipped when
// grad_mod is null), deterministic, no atomics.
template <typename T>
cudaError_t launch_bicubic_modulate_backward(const T* grad, const T* weight, const T* mod, T* grad_weight, T* grad_mod,
                                             T* workspace, int64_t out, int64_t in, int64_t m1, int64_t m2,
                                             bool align_corners, cudaStream_t stream);
