// Kernels that exercise the emulator itself (csrc/common/cuda_emu.h): the same file also compiles with nvcc.
#ifndef CLTK_CUDA_EMU
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#include "common/cuda_types.h"
#include "common/launch.cuh"

// Block sum: warp shuffles, static shared memory, a barrier, and an atomic across blocks.
template <int BLOCK>
__global__ void block_sum_kernel(const float* __restrict__ x, float* __restrict__ out, long n) {
  __shared__ float warp_sums[BLOCK / 32];
  long i = (long)blockIdx.x * BLOCK + threadIdx.x;
  float v = i < n ? x[i] : 0.f;
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int w = 0; w < BLOCK / 32; ++w) s += warp_sums[w];
    atomicAdd(out, s);
  }
}

// Each lane reads lane (lane ^ 1) and lane - 1 and lane 0; and the warp's ballot of odd lanes.
__global__ void warp_ops_kernel(const int* in, int* xor_out, int* up_out, int* bcast_out, unsigned* ballot_out) {
  int t = threadIdx.x;
  int v = in[t];
  xor_out[t] = __shfl_xor_sync(0xffffffffu, v, 1);
  up_out[t] = __shfl_up_sync(0xffffffffu, v, 1);
  bcast_out[t] = __shfl_sync(0xffffffffu, v, 0);
  unsigned b = __ballot_sync(0xffffffffu, v & 1);
  if ((t & 31) == 0) ballot_out[t / 32] = b;
}

// Lanes with rounds[t] < 0 return at once; the others take the warp's ballot, then make rounds[t] shuffles down by
// one lane, each adding 1, and return: lanes leave the warp at different exchanges. The emulator's rule, which this
// checks: a source lane that has returned yields the caller's own value, and a ballot leaves it out (on the GPU a
// full mask naming a lane that has returned is undefined).
__global__ void leaving_lanes_kernel(const int* rounds, int* out, unsigned* ballot_out) {
  const int t = threadIdx.x;
  if (rounds[t] < 0) return;
  const unsigned b = __ballot_sync(0xffffffffu, 1);
  if ((t & 31) == 0) ballot_out[t / 32] = b;
  int v = t;
  for (int r = 0; r < rounds[t]; ++r) v = __shfl_down_sync(0xffffffffu, v, 1) + 1;
  out[t] = v;
}

// Reverse within a block through dynamic shared memory; threads past n return before the barrier.
__global__ void reverse_kernel(const float* in, float* out, int n) {
  CLTK_DYNAMIC_SMEM(float, buf);
  int t = threadIdx.x;
  if (t >= n) return;
  buf[t] = in[t];
  __syncthreads();
  out[t] = buf[n - 1 - t];
}

__global__ void convert_kernel(const float* in, float* half_rt, float* bf16_rt, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    half_rt[i] = __half2float(__float2half(in[i]));
    bf16_rt[i] = __bfloat162float(__float2bfloat16(in[i]));
  }
}

// A deadlock: thread 0 waits for a flag that the other threads set only after a barrier thread 0 never reaches.
// On the GPU this hangs; the emulator must abort with a message instead.
__global__ void deadlock_kernel(volatile int* flag) {
  if (threadIdx.x == 0) {
    while (*flag == 0) {
    }
  } else {
    __syncthreads();
    *flag = 1;
  }
}

extern "C" {
int emu_block_sum(const float* x, float* out, long n, int grid_override) {
  long grid = grid_override >= 0 ? grid_override : (n + 127) / 128;
  CLTK_LAUNCH(grid, 128, 0, nullptr, block_sum_kernel<128>)(x, out, n);
  return (int)cudaGetLastError();
}
int emu_warp_ops(const int* in, int* xo, int* uo, int* bo, unsigned* ballot, int threads) {
  CLTK_LAUNCH(1, threads, 0, nullptr, warp_ops_kernel)(in, xo, uo, bo, ballot);
  return (int)cudaGetLastError();
}
int emu_leaving_lanes(const int* rounds, int* out, unsigned* ballot, int threads) {
  CLTK_LAUNCH(1, threads, 0, nullptr, leaving_lanes_kernel)(rounds, out, ballot);
  return (int)cudaGetLastError();
}
int emu_reverse(const float* in, float* out, int n, int threads) {
  CLTK_LAUNCH(1, threads, threads * sizeof(float), nullptr, reverse_kernel)(in, out, n);
  return (int)cudaGetLastError();
}
int emu_deadlock(int* flag) {
  CLTK_LAUNCH(1, 32, 0, nullptr, deadlock_kernel)(flag);
  return (int)cudaGetLastError();
}
int emu_convert(const float* in, float* h, float* b, int n) {
  CLTK_LAUNCH((n + 63) / 64, 64, 0, nullptr, convert_kernel)(in, h, b, n);
  return (int)cudaGetLastError();
}
}
