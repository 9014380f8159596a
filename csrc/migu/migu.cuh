// CUDA kernels of the MIGU ops (torch-free; launchers in migu_cuda.cu).
//
// row_l1_partial_kernel / row_l1_finalize_kernel: acc[c] += sum_r |y[r, c]| in fp32.
//   Grid (column tiles of 32, row chunks). A block's 256 threads are 8 row lanes x 32 columns: a warp reads 32
//   consecutive elements of one row (coalesced), each thread sums every 8th row of its chunk, and the 8 lanes are
//   added in a fixed order through shared memory. With one row chunk the block adds straight into acc; otherwise it
//   writes its partial to workspace[chunk, c] and the finalize kernel adds the chunks in order. No atomics: the
//   result is deterministic run to run. Traffic: one read of y, plus 8 * chunks * d bytes of workspace.
//   Reference: row_l1_accumulate_ref.
//
// topk_row_mask_kernel: one block per layer. Radix select (8 bits a pass, shared-memory histogram) finds the
//   lo-th smallest value under the order-preserving unsigned key of the float bits, a block reduction finds the next
//   order statistic (the minimum key above it, or the same value when it repeats), and thread 0 interpolates exactly
//   as torch.quantile does (rank = T * (d - 1) in the scores' dtype, lerp with one fma). A NaN anywhere makes the
//   mask all False, as in torch. Traffic per layer: (2 + key bytes / 8 + 1) reads of the scores, d bytes written.
//   Reference: topk_row_mask_ref (scores >= torch.quantile(scores, threshold)).
#pragma once
#include <cstdint>

#ifndef CLTK_CUDA_EMU
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

namespace cltk {
namespace migu {

constexpr int kL1Cols = 32;
constexpr int kL1RowLanes = 8;
constexpr int kL1Threads = kL1Cols * kL1RowLanes;  // 256
constexpr int kTopkThreads = 256;  // also the number of histogram bins (one byte)

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__global__ void row_l1_partial_kernel(const T* __restrict__ y, int64_t rows, int64_t d, int64_t row_stride,
                                      int64_t rows_per_chunk, float* __restrict__ out, int direct) {
  __shared__ float lanes[kL1RowLanes][kL1Cols];
  const int cx = threadIdx.x % kL1Cols;
  const int ry = threadIdx.x / kL1Cols;
  const int64_t col = (int64_t)blockIdx.x * kL1Cols + cx;
  const int64_t r0 = (int64_t)blockIdx.y * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float s = 0.f;
  if (col < d) {
    for (int64_t r = r0 + ry; r < r1; r += kL1RowLanes) s += fabsf(to_float(y[r * row_stride + col]));
  }
  lanes[ry][cx] = s;
  __syncthreads();
  if (ry == 0 && col < d) {
    float t = lanes[0][cx];
    for (int j = 1; j < kL1RowLanes; ++j) t += lanes[j][cx];
    if (direct) {
      out[col] += t;
    } else {
      out[(int64_t)blockIdx.y * d + col] = t;
    }
  }
}

__global__ void row_l1_finalize_kernel(const float* __restrict__ workspace, int64_t chunks, int64_t d,
                                       float* __restrict__ acc) {
  const int64_t col = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= d) return;
  float t = 0.f;
  for (int64_t c = 0; c < chunks; ++c) t += workspace[c * d + col];
  acc[col] += t;
}

// Order-preserving unsigned keys: a < b (as numbers, -0 < +0) iff key(a) < key(b).
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k ^ 0x80000000u) : ~k);
}
__device__ __forceinline__ unsigned long long order_key(double x) {
  const unsigned long long u = (unsigned long long)__double_as_longlong(x);
  return (u >> 63) ? ~u : (u | (1ull << 63));
}
__device__ __forceinline__ double key_value(unsigned long long k) {
  return __longlong_as_double((long long)((k >> 63) ? (k ^ (1ull << 63)) : ~k));
}
__device__ __forceinline__ float fma_t(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_t(double a, double b, double c) { return fma(a, b, c); }
__device__ __forceinline__ float ceil_t(float x) { return ceilf(x); }
__device__ __forceinline__ double ceil_t(double x) { return ceil(x); }

template <typename scalar_t, typename key_t>
__global__ void topk_row_mask_kernel(const scalar_t* const* scores, bool* const* outs, const int64_t* sizes,
                                     double threshold) {
  constexpr int kKeyBits = 8 * sizeof(key_t);
  __shared__ unsigned int hist[256];
  __shared__ key_t red_key[kTopkThreads];
  __shared__ unsigned long long red_cnt[kTopkThreads];
  __shared__ int nan_flag;
  __shared__ int sel_bin;
  __shared__ long long sel_rank;

  const int tid = threadIdx.x;
  const scalar_t* __restrict__ s = scores[blockIdx.x];
  bool* __restrict__ out = outs[blockIdx.x];
  const int64_t d = sizes[blockIdx.x];

  if (tid == 0) nan_flag = 0;
  __syncthreads();
  bool nan_local = false;
  for (int64_t i = tid; i < d; i += kTopkThreads) nan_local |= (s[i] != s[i]);
  if (nan_local) atomicExch(&nan_flag, 1);
  __syncthreads();
  if (nan_flag) {  // torch.quantile is NaN: nothing compares >= it
    for (int64_t i = tid; i < d; i += kTopkThreads) out[i] = false;
    return;
  }

  const scalar_t q = (scalar_t)threshold;
  const scalar_t rank = q * (scalar_t)(d - 1);
  const int64_t lo = (int64_t)rank;
  const int64_t hi = (int64_t)ceil_t(rank);
  const scalar_t w = rank - (scalar_t)lo;

  // Radix select of the lo-th smallest key, most significant byte first.
  key_t prefix = 0, mask = 0;
  long long k = lo;
  for (int shift = kKeyBits - 8; shift >= 0; shift -= 8) {
    hist[tid] = 0u;  // kTopkThreads == 256 bins
    __syncthreads();
    for (int64_t i = tid; i < d; i += kTopkThreads) {
      const key_t key = order_key(s[i]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      long long cum = 0;
      int b = 0;
      for (; b < 255; ++b) {
        if (k < cum + (long long)hist[b]) break;
        cum += hist[b];
      }
      sel_bin = b;
      sel_rank = k - cum;
    }
    __syncthreads();
    prefix |= (key_t)sel_bin << shift;
    mask |= (key_t)255u << shift;
    k = sel_rank;
    __syncthreads();  // sel_bin / hist are rewritten by the next pass
  }
  const key_t key_lo = prefix;
  const scalar_t v_lo = key_value(key_lo);

  scalar_t v_hi = v_lo;
  if (hi > lo) {
    // sorted[hi] is v_lo again when more than hi elements are <= v_lo, else the smallest key above key_lo.
    unsigned long long cnt = 0;
    key_t mn = ~(key_t)0;
    for (int64_t i = tid; i < d; i += kTopkThreads) {
      const key_t key = order_key(s[i]);
      if (key <= key_lo) {
        ++cnt;
      } else if (key < mn) {
        mn = key;
      }
    }
    red_cnt[tid] = cnt;
    red_key[tid] = mn;
    __syncthreads();
    for (int stride = kTopkThreads / 2; stride > 0; stride >>= 1) {
      if (tid < stride) {
        red_cnt[tid] += red_cnt[tid + stride];
        if (red_key[tid + stride] < red_key[tid]) red_key[tid] = red_key[tid + stride];
      }
      __syncthreads();
    }
    if (red_cnt[0] <= (unsigned long long)hi) v_hi = key_value(red_key[0]);
  }
  // at::lerp, contracted to one fma as torch's lerp kernels are.
  const scalar_t diff = v_hi - v_lo;
  const scalar_t thr = (w < (scalar_t)0.5 && w > (scalar_t)-0.5) ? fma_t(w, diff, v_lo) : fma_t(w - (scalar_t)1, diff, v_hi);
  for (int64_t i = tid; i < d; i += kTopkThreads) out[i] = s[i] >= thr;
}

}  // namespace migu
}  // namespace cltk
