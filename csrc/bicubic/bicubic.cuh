// CUDA kernels of the bicubic-modulation ops (torch-free, raw pointers): W_eff = W * up(M), with up =
// F.interpolate(mode="bicubic") of M [m1, m2] to W's [out, in]; reference: cltk/ops/bicubic.py,
// bicubic_modulate_ref. Same algorithm as csrc/bicubic/bicubic_cpu.cpp:
//   U = M B^T [m1, in]                       bicubic_width_upsample_kernel   (tiny)
//   dst[i, j] = src[i, j] * sum_k a_ik U[r_ik, j]   bicubic_modulate_rows_kernel  (read W, write W_eff:
//                                            2 * sizeof(T) bytes per element; U is L2-resident)
// Backward, deterministic and without atomics:
//   level 1  bicubic_backward_partial_kernel: block (column tile, row chunk); each thread owns one column of
//            its chunk's partial A_c^T (G * W)_c, kept in a 4-row register window over the rows of M and
//            flushed to global memory in row order (and grad_W = G * up(M) in the same pass when asked);
//            traffic: read G and W (+ write grad_W).
//   level 2  bicubic_backward_sum_chunks_kernel sums the chunk partials in chunk order into T [m1, in];
//            bicubic_backward_width_adjoint_kernel forms grad_M = T B, one thread per grid cell summing the
//            columns that reach it in a fixed order (in double).
// Offsets are 64-bit throughout, so numel may exceed INT_MAX.
#pragma once
#include <cstdint>

#include "bicubic/bicubic_taps.h"
#include "common/launch.cuh"

namespace cltk_bicubic {

constexpr int kThreads = 256;        // threads per block of every kernel
constexpr int64_t kRowsPerBlock = 16;  // forward rows per block (grid.y)
constexpr int64_t kCudaRowsPerChunk = 64;  // backward level-1 rows per chunk: fixed, so sums never depend on the grid

// U[r, j] = sum_l b_jl M[r, c_jl]
template <typename T>
__global__ void bicubic_width_upsample_kernel(const T* __restrict__ mod, T* __restrict__ U, int64_t m1, int64_t m2,
                                              int64_t in, bool align_corners) {
  const T sx = source_scale<T>(m2, in, align_corners);
  const int64_t n = m1 * in;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < n;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = q / in, j = q - r * in;
    int64_t idx[4];
    T b[4];
    bicubic_taps<T>(sx, j, m2, align_corners, idx, b);
    const T* row = mod + r * m2;
    T acc = row[idx[0]] * b[0];
    acc += row[idx[1]] * b[1];
    acc += row[idx[2]] * b[2];
    acc += row[idx[3]] * b[3];
    U[q] = acc;
  }
}

// dst[i, j] = src[i, j] * sum_k a_ik U[r_ik, j]; grid.x covers columns, grid.y blocks of kRowsPerBlock rows.
template <typename T>
__global__ void bicubic_modulate_rows_kernel(const T* __restrict__ src, const T* __restrict__ U, T* __restrict__ dst,
                                             int64_t out, int64_t in, int64_t m1, bool align_corners) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= in) return;
  const T sy = source_scale<T>(m1, out, align_corners);
  for (int64_t i0 = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock; i0 < out;
       i0 += static_cast<int64_t>(gridDim.y) * kRowsPerBlock) {
    const int64_t i1 = i0 + kRowsPerBlock < out ? i0 + kRowsPerBlock : out;
    for (int64_t i = i0; i < i1; ++i) {
      int64_t idx[4];
      T a[4];
      bicubic_taps<T>(sy, i, m1, align_corners, idx, a);
      T up = U[idx[0] * in + j] * a[0];
      up += U[idx[1] * in + j] * a[1];
      up += U[idx[2] * in + j] * a[2];
      up += U[idx[3] * in + j] * a[3];
      dst[i * in + j] = src[i * in + j] * up;
    }
  }
}

// First row of M touched by the rows of chunk c.
template <typename T>
__host__ __device__ inline int64_t chunk_first_row(int64_t c, int64_t out, int64_t m1, bool align_corners) {
  const T sy = source_scale<T>(m1, out, align_corners);
  T t;
  return clamp_index(tap_base<T>(sy, c * kCudaRowsPerChunk, m1, align_corners, &t) - 1, m1);
}

// Rows of M that one chunk can touch, at most (the height of a chunk's partial).
template <typename T>
inline int64_t chunk_span_max(int64_t out, int64_t m1, bool align_corners) {
  const T sy = source_scale<T>(m1, out, align_corners);
  int64_t span = 1;
  for (int64_t i0 = 0; i0 < out; i0 += kCudaRowsPerChunk) {
    const int64_t i1 = i0 + kCudaRowsPerChunk < out ? i0 + kCudaRowsPerChunk : out;
    T t;
    const int64_t lo = clamp_index(tap_base<T>(sy, i0, m1, align_corners, &t) - 1, m1);
    const int64_t hi = clamp_index(tap_base<T>(sy, i1 - 1, m1, align_corners, &t) + 2, m1);
    span = hi - lo + 1 > span ? hi - lo + 1 : span;
  }
  return span;
}

// partial [nchunks, span, in] must be zero on entry. grad_weight (and U) may be null; so may partial when only
// grad_weight is wanted.
template <typename T>
__global__ void bicubic_backward_partial_kernel(const T* __restrict__ grad, const T* __restrict__ weight,
                                                const T* __restrict__ U, T* __restrict__ grad_weight,
                                                T* __restrict__ partial, int64_t out, int64_t in, int64_t m1,
                                                int64_t span, bool align_corners) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= in) return;
  const T sy = source_scale<T>(m1, out, align_corners);
  for (int64_t c = blockIdx.y; c * kCudaRowsPerChunk < out; c += gridDim.y) {
    const int64_t i0 = c * kCudaRowsPerChunk;
    const int64_t i1 = i0 + kCudaRowsPerChunk < out ? i0 + kCudaRowsPerChunk : out;
    const int64_t lo = chunk_first_row<T>(c, out, m1, align_corners);
    T* part = partial != nullptr ? partial + c * span * in : nullptr;
    // acc[k] accumulates unclamped row u0 + k of M.
    T acc[4] = {T(0), T(0), T(0), T(0)};
    int64_t u0 = 0;
    bool started = false;
    for (int64_t i = i0; i < i1; ++i) {
      int64_t idx[4];
      T a[4];
      const int64_t base = bicubic_taps<T>(sy, i, m1, align_corners, idx, a);
      const T g = grad[i * in + j];
      if (grad_weight != nullptr) {
        T up = U[idx[0] * in + j] * a[0];
        up += U[idx[1] * in + j] * a[1];
        up += U[idx[2] * in + j] * a[2];
        up += U[idx[3] * in + j] * a[3];
        grad_weight[i * in + j] = g * up;
      }
      if (part == nullptr) continue;
      if (!started) {
        u0 = base - 1;
        started = true;
      }
      while (u0 < base - 1) {  // rows of M that no later row of the chunk touches: flush in order
        part[(clamp_index(u0, m1) - lo) * in + j] += acc[0];
        acc[0] = acc[1];
        acc[1] = acc[2];
        acc[2] = acc[3];
        acc[3] = T(0);
        ++u0;
      }
      const T p = g * weight[i * in + j];
      acc[0] += p * a[0];
      acc[1] += p * a[1];
      acc[2] += p * a[2];
      acc[3] += p * a[3];
    }
    if (part != nullptr && started) {
      for (int k = 0; k < 4; ++k) part[(clamp_index(u0 + k, m1) - lo) * in + j] += acc[k];
    }
  }
}

// Tsum[r, j] = sum over chunks c (in order) of partial[c, r - lo_c, j].
template <typename T>
__global__ void bicubic_backward_sum_chunks_kernel(const T* __restrict__ partial, T* __restrict__ Tsum, int64_t out,
                                                   int64_t in, int64_t m1, int64_t span, bool align_corners) {
  const int64_t nchunks = (out + kCudaRowsPerChunk - 1) / kCudaRowsPerChunk;
  const int64_t n = m1 * in;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < n;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = q / in, j = q - r * in;
    T s = T(0);
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t lo = chunk_first_row<T>(c, out, m1, align_corners);
      if (r < lo) break;  // lo is non-decreasing in c
      if (r - lo < span) s += partial[(c * span + (r - lo)) * in + j];
    }
    Tsum[q] = s;
  }
}

// First column j in [0, in] whose unclamped tap base exceeds `limit` (tap_base is non-decreasing in j).
template <typename T>
__host__ __device__ inline int64_t first_col_with_base_above(int64_t limit, T sx, int64_t in, int64_t m2,
                                                             bool align_corners) {
  int64_t lo = 0, hi = in;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    T t;
    if (tap_base<T>(sx, mid, m2, align_corners, &t) > limit) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// grad_mod[r, c] = sum_j Tsum[r, j] * b_{j, c}: one thread per grid cell, summing in column order over the
// contiguous range of columns whose taps reach c (base - 1 <= c <= base + 2), in double.
template <typename T>
__global__ void bicubic_backward_width_adjoint_kernel(const T* __restrict__ Tsum, T* __restrict__ grad_mod,
                                                      int64_t m1, int64_t m2, int64_t in, bool align_corners) {
  const T sx = source_scale<T>(m2, in, align_corners);
  for (int64_t cell = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; cell < m1 * m2;
       cell += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = cell / m2, c = cell - r * m2;
    // clamped taps only add the border cells c = 0 (base - 1 < 0) and c = m2 - 1 (base + 2 > m2 - 1)
    const int64_t j0 = c == 0 ? 0 : first_col_with_base_above<T>(c - 3, sx, in, m2, align_corners);
    const int64_t j1 = c == m2 - 1 ? in : first_col_with_base_above<T>(c + 1, sx, in, m2, align_corners);
    const T* row = Tsum + r * in;
    double s = 0.0;
    for (int64_t j = j0; j < j1; ++j) {
      int64_t idx[4];
      T b[4];
      bicubic_taps<T>(sx, j, m2, align_corners, idx, b);
      T wsum = T(0);
      for (int l = 0; l < 4; ++l) wsum += idx[l] == c ? b[l] : T(0);
      s += static_cast<double>(wsum) * static_cast<double>(row[j]);
    }
    grad_mod[cell] = static_cast<T>(s);
  }
}

}  // namespace cltk_bicubic
