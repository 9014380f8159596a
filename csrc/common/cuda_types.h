// cudaStream_t / cudaError_t for the torch-free launcher headers (<family>_cuda.h): the real runtime types
// under nvcc and the torch CUDA build, the emulator's when compiled with common/cuda_emu.h.
#pragma once
#ifndef CLTK_CUDA_EMU
#include <cuda_runtime_api.h>
#endif
