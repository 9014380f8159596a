// Host emulation of the CUDA built-ins used by cltk's kernels, so that g++ can build and run the very same
// torch-free .cuh/.cu sources on the CPU. Used only by the emulation tests (tests/emu/), never by the library.
//
// Force-include it:  g++ -std=c++17 -pthread -Icsrc -include common/cuda_emu.h -x c++ csrc/<family>/<family>_cuda.cu
//
// Execution model:
//   * blocks run one after another (blockIdx in x, then y, then z order);
//   * the threads of a block run as real std::threads, so data races and missing barriers show up;
//   * __syncthreads() is a barrier over the block's live threads; a thread that returns from the kernel
//     leaves every barrier (as on sm_70+), so early-exit patterns behave as on the GPU;
//   * warps are groups of 32 consecutive linear thread ids; the __shfl_*_sync / __ballot_sync / __any_sync /
//     __all_sync intrinsics publish values into a double-buffered per-warp buffer and pass one warp barrier, so
//     every live lane of the warp must take part, as the full-mask forms require; a lane that has returned
//     yields the reader's own value and is left out of ballots;
//   * static __shared__ arrays are function-local statics: one copy, shared by the block's threads, reused
//     by the next block (contents are undefined between blocks, as on the GPU). Dynamic shared memory is a
//     per-launch buffer filled with 0xFF bytes (NaN for floats) so reads of never-written shared memory show;
//   * atomics are serialised by one mutex;
//   * a barrier that waits more than CLTK_EMU_BARRIER_TIMEOUT_S (default 20) seconds aborts with a message:
//     that is a divergent __syncthreads or shuffle, which would hang or be undefined on the GPU;
//   * launch configurations are validated like the CUDA runtime does (empty grid, > 1024 threads per block,
//     grid.y/z > 65535, > 48 KiB dynamic shared memory): an invalid launch runs nothing and sets the error
//     returned by cudaGetLastError().
#pragma once
#define CLTK_CUDA_EMU 1

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

// ---------------------------------------------------------------------------------------------------------
// Qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __restrict__ __restrict
#define __shared__ static
#define __constant__ static

// ---------------------------------------------------------------------------------------------------------
// Vector types
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;
struct float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct double2 { double x, y; };
struct int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

// ---------------------------------------------------------------------------------------------------------
// Runtime API subset
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

namespace cltk_emu {
inline thread_local cudaError_t last_error = cudaSuccess;
}

inline cudaError_t cudaGetLastError() {
  cudaError_t e = cltk_emu::last_error;
  cltk_emu::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return cltk_emu::last_error; }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unspecified launch failure";
  }
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) {
  if (n) std::memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int v, size_t n) { return cudaMemsetAsync(p, v, n); }
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t = nullptr) {
  if (n) std::memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind k) { return cudaMemcpyAsync(d, s, n, k); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

// ---------------------------------------------------------------------------------------------------------
// Half and bfloat16 (IEEE round-to-nearest-even conversions)
namespace cltk_emu {
inline uint32_t f2u(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float u2f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline uint16_t float_to_half_bits(float f) {
  uint32_t x = f2u(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t mant = x & 0x007fffffu;
  int32_t exp = int32_t((x >> 23) & 0xff);
  if (exp == 0xff) return uint16_t(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));  // inf / nan
  int32_t e = exp - 127 + 15;
  if (e >= 0x1f) return uint16_t(sign | 0x7c00u);  // overflow -> inf
  if (e <= 0) {                                    // subnormal or zero
    if (e < -10) return uint16_t(sign);
    mant |= 0x00800000u;
    uint32_t shift = uint32_t(14 - e);
    uint32_t half_m = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_m & 1u))) ++half_m;
    return uint16_t(sign | half_m);
  }
  uint32_t h = sign | (uint32_t(e) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: still correct
  return uint16_t(h);
}

inline float half_bits_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return u2f(sign);
    float v = std::ldexp(float(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 0x1f) return u2f(sign | 0x7f800000u | (mant << 13));
  return u2f(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

inline uint16_t float_to_bf16_bits(float f) {
  uint32_t x = f2u(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet nan
  uint32_t lsb = (x >> 16) & 1u;
  x += 0x7fffu + lsb;
  return uint16_t(x >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return u2f(uint32_t(b) << 16); }
}  // namespace cltk_emu

struct __half {
  uint16_t x;
  __half() = default;
  __half(float f) : x(cltk_emu::float_to_half_bits(f)) {}
  __half(double f) : x(cltk_emu::float_to_half_bits(float(f))) {}
  operator float() const { return cltk_emu::half_bits_to_float(x); }
};
struct __nv_bfloat16 {
  uint16_t x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : x(cltk_emu::float_to_bf16_bits(f)) {}
  __nv_bfloat16(double f) : x(cltk_emu::float_to_bf16_bits(float(f))) {}
  operator float() const { return cltk_emu::bf16_bits_to_float(x); }
};
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }

// ---------------------------------------------------------------------------------------------------------
// Math and bit intrinsics
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline long long __double_as_longlong(double d) { long long l; std::memcpy(&l, &d, 8); return l; }
inline double __longlong_as_double(long long l) { double d; std::memcpy(&d, &l, 8); return d; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __clzll(unsigned long long x) { return x ? __builtin_clzll(x) : 64; }
inline int __ffs(unsigned x) { return __builtin_ffs(int(x)); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
// expf, tanhf, sqrtf, fmaxf, fminf, fabsf, ... come from <cmath> (<math.h>) in the global namespace.
// CUDA's device min/max overloads accept mixed integer/float arguments.
template <class A, class B>
inline typename std::common_type<A, B>::type min(A a, B b) {
  using C = typename std::common_type<A, B>::type;
  return C(a) < C(b) ? C(a) : C(b);
}
template <class A, class B>
inline typename std::common_type<A, B>::type max(A a, B b) {
  using C = typename std::common_type<A, B>::type;
  return C(a) < C(b) ? C(b) : C(a);
}
template <class T>
inline T __ldg(const T* p) { return *p; }

// ---------------------------------------------------------------------------------------------------------
// Threads, blocks, barriers
namespace cltk_emu {

inline double barrier_timeout_s() {
  static double t = [] {
    const char* s = std::getenv("CLTK_EMU_BARRIER_TIMEOUT_S");
    return s ? std::atof(s) : 20.0;
  }();
  return t;
}

// A reusable barrier whose participants may leave (like std::barrier::arrive_and_drop). Arrivals are counted
// under a mutex; waiters yield the CPU in a loop until the generation changes, instead of sleeping on a condition
// variable. A block's 128 threads passing one barrier took 1.7 ms with a condition variable (each waiter woken by
// the kernel in turn, then re-taking the mutex) and 0.19 ms yielding, on a 2-core machine.
class Barrier {
 public:
  explicit Barrier(int n = 0) : expected_(n) {}
  void reset(int n) {
    std::lock_guard<std::mutex> lk(m_);
    expected_ = n;
    arrived_ = 0;
  }
  void wait(const char* what) {
    uint64_t gen;
    {
      std::lock_guard<std::mutex> lk(m_);
      gen = generation_.load(std::memory_order_relaxed);
      if (++arrived_ >= expected_) {
        release();
        return;
      }
    }
    const auto start = std::chrono::steady_clock::now();
    for (uint64_t spins = 1; generation_.load(std::memory_order_acquire) == gen; ++spins) {
      std::this_thread::yield();
      if (spins % 1024 == 0 &&
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > barrier_timeout_s()) {
        std::lock_guard<std::mutex> lk(m_);
        std::fprintf(stderr,
                     "cuda_emu: %s timed out after %.0f s with %d of %d threads arrived: the threads of a "
                     "block/warp do not all reach the same barrier (divergent %s)\n",
                     what, barrier_timeout_s(), arrived_, expected_, what);
        std::abort();
      }
    }
  }
  void drop() {
    std::lock_guard<std::mutex> lk(m_);
    --expected_;
    if (expected_ > 0 && arrived_ >= expected_) release();
  }

 private:
  // Called with m_ held; the release store publishes every arrived thread's writes to the waiters.
  void release() {
    arrived_ = 0;
    generation_.store(generation_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  }
  std::mutex m_;
  std::atomic<uint64_t> generation_{0};
  int expected_ = 0;
  int arrived_ = 0;
};

// A lane's published value for one warp exchange, tagged with the exchange's number in the lane's sequence of warp
// exchanges (the same for every lane of a warp that keeps to the same warp-level calls).
struct Slot {
  alignas(16) unsigned char v[16];
  uint64_t seq = 0;
};

struct Warp {
  Barrier bar;
  int size = 0;
  Slot slot[2][32];  // double-buffered by the parity of the exchange number (see warp_exchange)
  bool live[32];
};

struct ThreadCtx {
  Barrier* block_bar = nullptr;
  Warp* warp = nullptr;
  int lane = 0;
  uint64_t exchanges = 0;  // warp exchanges (shuffles, votes) this thread has made
};

inline thread_local ThreadCtx tctx;
inline std::mutex& atomic_mutex() {
  static std::mutex m;
  return m;
}
inline std::vector<unsigned char>& dynamic_smem_buffer() {
  static std::vector<unsigned char> buf;
  return buf;
}
inline void* dynamic_smem() { return dynamic_smem_buffer().data(); }

}  // namespace cltk_emu

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
constexpr int warpSize = 32;

inline void __syncthreads() { cltk_emu::tctx.block_bar->wait("__syncthreads"); }
inline void __syncwarp(unsigned = 0xffffffffu) { cltk_emu::tctx.warp->bar.wait("__syncwarp"); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned __activemask() {
  auto* w = cltk_emu::tctx.warp;
  unsigned m = 0;
  for (int i = 0; i < w->size; ++i) m |= (w->live[i] ? 1u : 0u) << i;
  return m;
}

namespace cltk_emu {
// Every lane of the warp still running publishes a value for exchange number k into slot[k % 2], passes the warp
// barrier once, and reads the slots of exchange k; returns k's slots. One barrier per exchange is enough with two
// buffers: slot[k % 2] is written again by exchange k + 2, after the barrier of exchange k + 1, which no lane passes
// before every lane still running has read exchange k's values (a shuffle with a barrier before and after the reads
// took two). A slot whose tag is not k belongs to a lane that finished before exchange k.
template <class T>
inline Slot* warp_publish(T v, const char* what) {
  static_assert(sizeof(T) <= 16, "cuda_emu: shuffle of a type wider than 16 bytes");
  Warp* w = tctx.warp;
  const uint64_t k = ++tctx.exchanges;
  Slot* slots = w->slot[k % 2];
  std::memcpy(slots[tctx.lane].v, &v, sizeof(T));
  slots[tctx.lane].seq = k;
  w->bar.wait(what);
  return slots;
}

// Exchange one value per lane: every running lane publishes `v`, then reads lane `src(lane)`; a source lane
// outside the warp or finished yields the caller's own value, as the hardware does for out-of-range lanes.
template <class T, class SrcFn>
inline T warp_exchange(T v, SrcFn src_of, const char* what) {
  const Slot* slots = warp_publish(v, what);
  const int src = src_of(tctx.lane);
  T r = v;
  if (src >= 0 && src < tctx.warp->size && slots[src].seq == tctx.exchanges) std::memcpy(&r, slots[src].v, sizeof(T));
  return r;
}
}  // namespace cltk_emu

template <class T>
inline T __shfl_sync(unsigned, T v, int src_lane, int width = warpSize) {
  return cltk_emu::warp_exchange(v, [&](int lane) { return (lane / width) * width + (src_lane % width); },
                                 "__shfl_sync");
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = warpSize) {
  return cltk_emu::warp_exchange(
      v, [&](int lane) { return (lane % width) + int(delta) < width ? lane + int(delta) : lane; }, "__shfl_down_sync");
}
template <class T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = warpSize) {
  return cltk_emu::warp_exchange(
      v, [&](int lane) { return (lane % width) >= int(delta) ? lane - int(delta) : lane; }, "__shfl_up_sync");
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = warpSize) {
  return cltk_emu::warp_exchange(
      v,
      [&](int lane) {
        int s = lane ^ lane_mask;
        return (s / width) == (lane / width) ? s : lane;
      },
      "__shfl_xor_sync");
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  using cltk_emu::tctx;
  const cltk_emu::Slot* slots = cltk_emu::warp_publish(int(pred ? 1 : 0), "__ballot_sync");
  unsigned bits = 0;
  for (int i = 0; i < tctx.warp->size; ++i) {
    int q;
    std::memcpy(&q, slots[i].v, sizeof(int));
    if (slots[i].seq == tctx.exchanges && q) bits |= 1u << i;
  }
  return bits & mask;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == (__ballot_sync(mask, 1)); }

// ---------------------------------------------------------------------------------------------------------
// Atomics (serialised)
template <class T>
inline T atomicAdd(T* a, T v) {
  std::lock_guard<std::mutex> g(cltk_emu::atomic_mutex());
  T old = *a;
  *a = T(old + v);
  return old;
}
template <class T>
inline T atomicSub(T* a, T v) {
  std::lock_guard<std::mutex> g(cltk_emu::atomic_mutex());
  T old = *a;
  *a = T(old - v);
  return old;
}
template <class T>
inline T atomicMax(T* a, T v) {
  std::lock_guard<std::mutex> g(cltk_emu::atomic_mutex());
  T old = *a;
  if (old < v) *a = v;
  return old;
}
template <class T>
inline T atomicMin(T* a, T v) {
  std::lock_guard<std::mutex> g(cltk_emu::atomic_mutex());
  T old = *a;
  if (v < old) *a = v;
  return old;
}
template <class T>
inline T atomicExch(T* a, T v) {
  std::lock_guard<std::mutex> g(cltk_emu::atomic_mutex());
  T old = *a;
  *a = v;
  return old;
}
template <class T>
inline T atomicCAS(T* a, T cmp, T v) {
  std::lock_guard<std::mutex> g(cltk_emu::atomic_mutex());
  T old = *a;
  if (old == cmp) *a = v;
  return old;
}
template <class T>
inline T atomicOr(T* a, T v) {
  std::lock_guard<std::mutex> g(cltk_emu::atomic_mutex());
  T old = *a;
  *a = old | v;
  return old;
}
template <class T>
inline T atomicAnd(T* a, T v) {
  std::lock_guard<std::mutex> g(cltk_emu::atomic_mutex());
  T old = *a;
  *a = old & v;
  return old;
}

// ---------------------------------------------------------------------------------------------------------
// Kernel launch: CLTK_LAUNCH(grid, block, smem, stream, kernel)(args...) from common/launch.cuh expands to
// cltk_emu::Launch{...}(kernel)(args...).
namespace cltk_emu {

inline cudaError_t validate(dim3 g, dim3 b, size_t smem) {
  const unsigned long long nthreads = (unsigned long long)b.x * b.y * b.z;
  if (g.x == 0 || g.y == 0 || g.z == 0 || nthreads == 0) return cudaErrorInvalidConfiguration;
  if (nthreads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64) return cudaErrorInvalidConfiguration;
  if (g.y > 65535 || g.z > 65535 || g.x > 2147483647u) return cudaErrorInvalidConfiguration;
  if (smem > 48 * 1024) return cudaErrorInvalidConfiguration;
  return cudaSuccess;
}

template <class... KArgs>
struct BoundKernel {
  void (*kernel)(KArgs...);
  dim3 grid, block;
  size_t smem;

  template <class... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(KArgs), "cuda_emu: wrong number of kernel arguments");
    cudaError_t err = validate(grid, block, smem);
    if (err != cudaSuccess) {
      last_error = err;
      return;
    }
    // Kernel parameters are passed by value, converted once as the CUDA runtime does.
    std::tuple<typename std::decay<KArgs>::type...> params(static_cast<KArgs>(args)...);
    gridDim = grid;
    blockDim = block;
    auto& dyn = dynamic_smem_buffer();
    dyn.assign(smem + 16, 0xFF);
    const int nthreads = int(block.x * block.y * block.z);
    const int nwarps = (nthreads + warpSize - 1) / warpSize;
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          Barrier block_bar(nthreads);
          std::vector<Warp> warps(nwarps);
          for (int w = 0; w < nwarps; ++w) {
            warps[w].size = std::min(warpSize, nthreads - w * warpSize);
            warps[w].bar.reset(warps[w].size);
            for (int l = 0; l < 32; ++l) warps[w].live[l] = l < warps[w].size;
          }
          std::vector<std::thread> threads;
          threads.reserve(nthreads);
          for (int t = 0; t < nthreads; ++t) {
            threads.emplace_back([&, t] {
              blockIdx = dim3(bx, by, bz);
              threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
              Warp* w = &warps[t / warpSize];
              tctx.block_bar = &block_bar;
              tctx.warp = w;
              tctx.lane = t % warpSize;
              std::apply([&](const auto&... p) { kernel(p...); }, params);
              // A finished thread no longer takes part in barriers or shuffles.
              {
                std::lock_guard<std::mutex> g(atomic_mutex());
                w->live[tctx.lane] = false;
              }
              w->bar.drop();
              block_bar.drop();
            });
          }
          for (auto& th : threads) th.join();
        }
  }
};

struct Launch {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  template <class... KArgs>
  BoundKernel<KArgs...> operator()(void (*k)(KArgs...)) const {
    return BoundKernel<KArgs...>{k, grid, block, smem};
  }
};

}  // namespace cltk_emu
