// One kernel-launch spelling for nvcc and for the host emulator (common/cuda_emu.h):
//   CLTK_LAUNCH(grid, block, smem_bytes, stream, kernel<Targs...>)(arg0, arg1, ...);
//   CLTK_DYNAMIC_SMEM(float, buf);   // inside a kernel: dynamic shared memory as float*
// Under nvcc this is kernel<<<grid, block, smem_bytes, stream>>>(args...); under the emulator the same
// kernel runs on host threads. Launchers return cudaGetLastError() so the glue can check every launch.
#pragma once

#ifdef CLTK_CUDA_EMU
#define CLTK_LAUNCH(grid, block, smem, stream, ...) \
  ::cltk_emu::Launch{dim3(grid), dim3(block), size_t(smem), (stream)}(__VA_ARGS__)
#define CLTK_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::cltk_emu::dynamic_smem())
#else
#include <cuda_runtime.h>
#define CLTK_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#define CLTK_DYNAMIC_SMEM(T, name)                             \
  extern __shared__ __align__(16) unsigned char name##_raw[]; \
  T* name = reinterpret_cast<T*>(name##_raw)
#endif
