// CUDA kernel of the row-masked AdamW step (torch-free; raw pointers). One block handles one chunk of one
// tensor; the tensor/chunk of every block travels by value in MaskedAdamwBatch (apex multi_tensor_apply
// style, no device-side metadata allocation). Memory traffic per element (4-byte dtype): active row
// 16 B read + 12 B written; masked row 12 B read + 12 B written (its gradient is never read); frozen row 0 B.
// Arithmetic as masked_adamw_cpu.cpp and torch's fused AdamW; reference: cltk.ops.masked_adamw_ref.
#pragma once
#include <cstdint>

#ifndef CLTK_CUDA_EMU
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

namespace cltk::masked_adamw {

// Sized so the kernel argument stays well under CUDA's 4 KiB parameter limit (about 2.7 KiB).
constexpr int kBatchTensors = 20;
constexpr int kBatchBlocks = 256;

struct MaskedAdamwBatch {
  void* param[kBatchTensors];
  const void* grad[kBatchTensors];
  void* exp_avg[kBatchTensors];
  void* exp_avg_sq[kBatchTensors];
  const bool* row_mask[kBatchTensors];
  int64_t numel[kBatchTensors];
  int64_t row_len[kBatchTensors];
  double step_size[kBatchTensors];
  double bias_corr2_sqrt[kBatchTensors];
  unsigned char block_tensor[kBatchBlocks];
  int32_t block_chunk[kBatchBlocks];
};

template <typename T>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};

__device__ __forceinline__ float load_op(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ double load_op(const double* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_op(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load_op(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store_op(float* p, int64_t i, float x) { p[i] = x; }
__device__ __forceinline__ void store_op(double* p, int64_t i, double x) { p[i] = x; }
__device__ __forceinline__ void store_op(__half* p, int64_t i, float x) { p[i] = __float2half(x); }
__device__ __forceinline__ void store_op(__nv_bfloat16* p, int64_t i, float x) { p[i] = __float2bfloat16(x); }
__device__ __forceinline__ float fma_op(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_op(double a, double b, double c) { return fma(a, b, c); }
__device__ __forceinline__ float sqrt_op(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_op(double x) { return sqrt(x); }

// decay = 1 - lr*wd, w1 = 1 - beta1, omb2 = 1 - beta2, all computed in double on the host.
template <typename T>
__global__ void masked_adamw_kernel(MaskedAdamwBatch batch, double decay_d, bool has_decay, double w1_d,
                                    double beta2_d, double omb2_d, double eps_d, bool freeze, int64_t chunk) {
  using op_t = typename OpMath<T>::type;
  const int t = batch.block_tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(batch.block_chunk[blockIdx.x]) * chunk;
  const int64_t numel = batch.numel[t];
  const int64_t end = begin + chunk < numel ? begin + chunk : numel;
  T* __restrict__ p = static_cast<T*>(batch.param[t]);
  const T* __restrict__ g = static_cast<const T*>(batch.grad[t]);
  T* __restrict__ m = static_cast<T*>(batch.exp_avg[t]);
  T* __restrict__ v = static_cast<T*>(batch.exp_avg_sq[t]);
  const bool* __restrict__ mask = batch.row_mask[t];
  const int64_t row_len = batch.row_len[t];
  const op_t decay = static_cast<op_t>(decay_d), w1 = static_cast<op_t>(w1_d), beta2 = static_cast<op_t>(beta2_d),
             omb2 = static_cast<op_t>(omb2_d), eps = static_cast<op_t>(eps_d);
  const op_t bc2 = static_cast<op_t>(batch.bias_corr2_sqrt[t]);
  const op_t neg_step_size = static_cast<op_t>(-batch.step_size[t]);
  const bool small_w = w1 < op_t(0.5);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const bool active = mask == nullptr || mask[i / row_len];
    if (!active && freeze) continue;
    // A masked row's gradient is taken as 0 and never loaded.
    const op_t gv = active ? load_op(g, i) : op_t(0);
    op_t pv = load_op(p, i), mv = load_op(m, i), vv = load_op(v, i);
    if (has_decay) pv = pv * decay;
    const op_t diff = gv - mv;
    mv = small_w ? fma_op(w1, diff, mv) : fma_op(w1 - op_t(1), diff, gv);
    vv = vv * beta2 + omb2 * gv * gv;
    const op_t denom = sqrt_op(vv) / bc2 + eps;
    pv = pv + neg_step_size * mv / denom;
    store_op(p, i, pv);
    store_op(m, i, mv);
    store_op(v, i, vv);
  }
}

}  // namespace cltk::masked_adamw
