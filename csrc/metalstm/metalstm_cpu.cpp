// CPU kernels of the meta-LSTM ops: one step of an L-layer stacked LSTM (nn.LSTM's cell) plus the head
// out = scale * tanh(w_out . h_L + b_out) [* multiply] for N independent rows (reference:
// cltk/ops/metalstm.py, meta_lstm_ref).
//
// Rows are cut into tiles of R = 4 SIMD vectors (64 fp32 / 32 fp64 rows with AVX-512). A tile's inputs are
// transposed into structure-of-arrays scratch [feature][R]; the state is unit-major ([L][H][N]), so a tile's rows
// of one unit are already R contiguous values: the forward of a full tile reads h and c in place and writes c_new
// straight to c_out (a partial last tile, a wide input and the backward copy them to zero-padded scratch). Then
// for each hidden unit u the four gate pre-activations i, f, g, o of all R rows are accumulated in 16 vector
// registers (each weight broadcast once per tile, each input vector loaded once per four FMAs), activated and
// folded into the cell update at once. No [N, 4H] gate tensor exists: the largest temporaries are per-thread tile
// scratch (a few hundred KiB at most). The weights (4H * (F + H) per layer) stay in L1/L2 across tiles. Memory
// traffic per row: read x, h, c (F + 2LH values), write out, h, c (1 + 2LH).
//
// Backward (truncated BPTT through one step): the tile's forward is recomputed with the activated gates kept in
// tile scratch, then the gradients run back layer by layer. Input and state gradients are W^T dG products over
// the tile (4 columns of W^T x 4 vectors of rows in registers); weight gradients are rank-R updates
// dW += dG^T In accumulated per thread in registers (4 gate rows x 4 vectors of columns), the bias gradient
// riding along as an extra input column of ones. Per-thread weight-gradient partials are summed at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "metalstm/metalstm_check.h"

namespace {

using namespace cltk_metalstm;

constexpr int kNV = 4;  // SIMD vectors of rows per tile

// Inputs wider than this are multiplied in blocks of kKBlock features over all units first (the pre-activations
// go to tile scratch), so that a block of the transposed input stays in L1 while every unit reads it; otherwise
// each unit streamed the whole [F][R] input tile (288 KiB at F = 1152) from L2.
constexpr int64_t kKBlock = 128;

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
constexpr int64_t kV = Vec<T>::size();

template <typename T>
constexpr int64_t kR = kNV * Vec<T>::size();

inline int64_t round_up(int64_t a, int64_t m) { return (a + m - 1) / m * m; }

// sigmoid(x) = 1 / (1 + exp(-x)); tanh(x) = 2 sigmoid(2x) - 1. In fp32 the exponential is a degree-5
// polynomial (AVX-512: exp2_avx512 below; AVX2: at::vec's exp_u20, about 20 ulp) and the division a 14-bit
// reciprocal refined by one Newton step (AVX2: a 12-bit one and two steps): the accurate library exp/tanh and vdivps would cost as much as all the
// gate FMAs. Relative error of sigmoid stays near 1e-6 (checked against the fp32 reference in
// tests/ops/test_metalstm.py). fp64 uses exact exp and division.
template <typename T>
inline Vec<T> recip(const Vec<T>& d) {
  return Vec<T>(T(1)) / d;
}

template <typename T>
inline Vec<T> exp_fast(const Vec<T>& x) {
  return x.exp();
}

template <typename T>
inline Vec<T> sigmoid(const Vec<T>& x) {
  return recip<T>(Vec<T>(T(1)) + exp_fast<T>(Vec<T>(T(0)) - x));
}

#if defined(CPU_CAPABILITY_AVX2) && !defined(CPU_CAPABILITY_AVX512)
// vrcpps is good to 12 bits only (AVX-512's vrcp14ps to 14). One Newton step r (2 - d r) left a saturated gate one
// ulp below 1, where the reference's 1 / (1 + e) rounds to exactly 1 (and r (2 - d r) cannot move off 1 - 2^-24:
// 2 - d r rounds to 2 - 1); its derivative s (1 - s) was then 6e-8 instead of 0, which an input of 1000 turned into a
// w_ih gradient off by 1e-5 of its scale. Two steps in the form r + r (1 - d r), each with fused multiply-adds,
// round like the division.
template <>
inline Vec<float> recip<float>(const Vec<float>& d) {
  const __m256 one = _mm256_set1_ps(1.f);
  __m256 r = _mm256_rcp_ps(d);
  r = _mm256_fmadd_ps(r, _mm256_fnmadd_ps(d, r, one), r);
  return _mm256_fmadd_ps(r, _mm256_fnmadd_ps(d, r, one), r);
}

// exp_u20 clamps its argument to [ln(FLT_MIN), ln(FLT_MAX)], but at the top of that range it returns +inf (it
// computes 2^128 * e^r with r ~ 0), and 1 + inf made sigmoid's Newton step inf * 0 = NaN: sigmoid(x) for x < -88.4
// and tanh(x) for x < -44.2 were NaN. Below -80, sigmoid(x) < 2e-35 either way; minimum keeps NaN.
template <>
inline Vec<float> exp_fast<float>(const Vec<float>& x) {
  return at::vec::minimum(x, Vec<float>(80.f)).exp_u20();
}

template <>
inline Vec<float> sigmoid<float>(const Vec<float>& x) {
  const Vec<float> nx = Vec<float>(0.f) - x;
  const Vec<float> s = recip<float>(Vec<float>(1.f) + exp_fast<float>(nx));
  // Where exp(-x) overflows (-x >= ln(FLT_MAX) as a float), the reference's 1 / (1 + inf) is exactly 0: keep that
  // 0, so that 0 * Inf in the cell update is NaN as in the reference. A NaN x compares false and stays NaN.
  return Vec<float>::blendv(s, Vec<float>(0.f), nx >= Vec<float>(88.72283935546875f));
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
// 2^t for 16 floats: 2^floor(t) * p(t - floor(t)), p a degree-5 minimax polynomial of 2^f on [0, 1) (relative
// error 1.6e-7 evaluated in fp32, p(0) = 1). vreduceps gives t - floor(t) and vscalefps multiplies by
// 2^floor(t) itself, with +inf on overflow and 0 on underflow; t = +-inf gives +inf / 0 (vreduceps(+-inf) = 0) and
// a NaN t stays NaN, so nothing needs clamping: 8 instructions.
inline __m512 exp2_avx512(__m512 t) {
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.867148210e-03f), f, _mm512_set1_ps(9.017009288e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.579990149e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.401644737e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931512952e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, t);
}

// sigmoid(x) = 1 / (1 + e), e = 2^(-x log2(e)). The division is a 14-bit reciprocal refined by one Newton step.
// Where e overflows, the reference's 1 / (1 + inf) is exactly 0 (and 0 * Inf in the cell update NaN): the masked
// multiply gives that 0 (the Newton step alone would give inf * 0 = NaN there); a NaN x stays NaN. 13 instructions
// against about 26 for at::vec's exp_u20 with its clamps and blends; the activations are a third of the layer's
// instructions at H = 32.
inline __m512 sigmoid_avx512(__m512 x) {
  const __m512 e = exp2_avx512(_mm512_mul_ps(x, _mm512_set1_ps(-1.4426950408889634f)));
  const __m512 d = _mm512_add_ps(e, _mm512_set1_ps(1.f));
  const __m512 r = _mm512_rcp14_ps(d);
  const __mmask16 finite = _mm512_cmp_ps_mask(e, _mm512_set1_ps(__builtin_inff()), _CMP_NEQ_UQ);
  return _mm512_maskz_mul_ps(finite, r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.f)));
}

// tanh(x) = 1 - 2 / (1 + e), e = 2^(2x log2(e)): r ~ 1 / d with d = (1 + e) / 2, one Newton step, and 1 where e
// overflows (x > 44.4, or +inf). x = -inf gives e = 0 and -1; a NaN x stays NaN.
inline __m512 tanh_avx512(__m512 x) {
  const __m512 e = exp2_avx512(_mm512_mul_ps(x, _mm512_set1_ps(2.8853900817779268f)));
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512 d = _mm512_fmadd_ps(e, half, half);
  const __m512 r = _mm512_rcp14_ps(d);
  const __mmask16 finite = _mm512_cmp_ps_mask(e, _mm512_set1_ps(__builtin_inff()), _CMP_NEQ_UQ);
  return _mm512_mask3_fnmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.f)), _mm512_set1_ps(1.f), finite);
}

template <>
inline Vec<float> sigmoid<float>(const Vec<float>& x) {
  return sigmoid_avx512(x);
}
#endif

template <typename T>
inline Vec<T> tanh_fast(const Vec<T>& x) {
  return at::vec::fmsub(Vec<T>(T(2)), sigmoid<T>(x + x), Vec<T>(T(1)));
}

#if defined(CPU_CAPABILITY_AVX512)
template <>
inline Vec<float> tanh_fast<float>(const Vec<float>& x) {
  return tanh_avx512(x);
}
#endif

template <typename T>
struct Net {
  const T* w_ih0;
  const T* w_ih;
  const T* w_hh;
  const T* b;
  const T* w_out;
  T b_out, scale;
  int64_t F, H, L;
  const T* wi(int64_t l) const { return l == 0 ? w_ih0 : w_ih + (l - 1) * 4 * H * H; }
  int64_t kin(int64_t l) const { return l == 0 ? F : H; }
  const T* wh(int64_t l) const { return w_hh + l * 4 * H * H; }
  const T* bias(int64_t l) const { return b + l * 4 * H; }
};

// a[g][v] += sum_{k < K} W[g*H + u, k] * in[k][v-th vector of rows], for the four gates g of unit u; W's rows
// are ld apart, in's rows ld_in (R for tile scratch, N for the unit-major state itself).
template <typename T>
inline void accumulate_gates(Vec<T> (&a)[4][kNV], const T* __restrict__ W, int64_t ld, int64_t K, int64_t H,
                             int64_t u, const T* __restrict__ inT, int64_t ld_in = kR<T>) {
  constexpr int64_t V = kV<T>;
  const T* w0 = W + (0 * H + u) * ld;
  const T* w1 = W + (1 * H + u) * ld;
  const T* w2 = W + (2 * H + u) * ld;
  const T* w3 = W + (3 * H + u) * ld;
  for (int64_t k = 0; k < K; ++k) {
    const Vec<T> b0(w0[k]), b1(w1[k]), b2(w2[k]), b3(w3[k]);
    const T* xr = inT + k * ld_in;
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) {
      const Vec<T> xv = Vec<T>::loadu(xr + v * V);
      a[0][v] = at::vec::fmadd(b0, xv, a[0][v]);
      a[1][v] = at::vec::fmadd(b1, xv, a[1][v]);
      a[2][v] = at::vec::fmadd(b2, xv, a[2][v]);
      a[3][v] = at::vec::fmadd(b3, xv, a[3][v]);
    }
  }
}

// One layer over a tile: inT [K][R], hT, cT [H][R] -> hnT, cnT [H][R]; optionally the activated gates
// [4][H][R] and tanh(c_new) [H][R] for the backward. pre: [4][H][R] scratch, used when K > kKBlock.
// pf_h, pf_c (when not null): the next tile's state rows of this layer (unit u at u * pf_stride), prefetched unit
// by unit. The state is streamed from memory once per step; spread over the units, the prefetches overlap that
// with this tile's arithmetic (issued all at once at the start of a tile, they filled the line-fill buffers and
// stalled it).
// hs: the unit stride of hT, cs: of cT and cnT (R for tile scratch; N when a full tile reads h and c, and writes
// c_new, in the unit-major state arrays themselves).
template <typename T>
void layer_forward(const Net<T>& n, int64_t l, const T* inT, const T* hT, const T* cT, T* hnT, T* cnT, T* gates,
                   T* tcT, T* pre, const T* pf_h, const T* pf_c, int64_t pf_stride, int64_t hs = kR<T>,
                   int64_t cs = kR<T>) {
  constexpr int64_t V = kV<T>, R = kR<T>;
  const int64_t H = n.H, K = n.kin(l);
  const T* bias = n.bias(l);
  const T* wi = n.wi(l);
  const bool blocked = K > kKBlock;
  if (blocked) {
    // pre = b + W_ih in, a block of kKBlock input features at a time for all units.
    for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
      const int64_t kb = std::min(kKBlock, K - k0);
      for (int64_t u = 0; u < H; ++u) {
        Vec<T> a[4][kNV];
        for (int g = 0; g < 4; ++g)
          for (int v = 0; v < kNV; ++v)
            a[g][v] = k0 == 0 ? Vec<T>(bias[g * H + u]) : Vec<T>::loadu(pre + (g * H + u) * R + v * V);
        accumulate_gates<T>(a, wi + k0, K, kb, H, u, inT + k0 * R);
        for (int g = 0; g < 4; ++g)
          for (int v = 0; v < kNV; ++v) a[g][v].store(pre + (g * H + u) * R + v * V);
      }
    }
  }
  for (int64_t u = 0; u < H; ++u) {
    if (pf_h != nullptr) {
      for (int64_t q = 0; q < R * int64_t(sizeof(T)); q += 64) {
        __builtin_prefetch(reinterpret_cast<const char*>(pf_h + u * pf_stride) + q);
        __builtin_prefetch(reinterpret_cast<const char*>(pf_c + u * pf_stride) + q);
      }
    }
    Vec<T> a[4][kNV];
    if (blocked) {
      for (int g = 0; g < 4; ++g)
        for (int v = 0; v < kNV; ++v) a[g][v] = Vec<T>::loadu(pre + (g * H + u) * R + v * V);
    } else {
      for (int g = 0; g < 4; ++g)
        for (int v = 0; v < kNV; ++v) a[g][v] = Vec<T>(bias[g * H + u]);
      accumulate_gates<T>(a, wi, K, K, H, u, inT);
    }
    accumulate_gates<T>(a, n.wh(l), H, H, H, u, hT, hs);
    for (int v = 0; v < kNV; ++v) {
      const int64_t o = u * R + v * V;
      const Vec<T> i = sigmoid<T>(a[0][v]), f = sigmoid<T>(a[1][v]), g = tanh_fast<T>(a[2][v]), og = sigmoid<T>(a[3][v]);
      const Vec<T> cn = at::vec::fmadd(f, Vec<T>::loadu(cT + u * cs + v * V), i * g);
      const Vec<T> tc = tanh_fast<T>(cn);
      cn.store(cnT + u * cs + v * V);
      (og * tc).store(hnT + o);
      if (gates != nullptr) {
        i.store(gates + (0 * H) * R + o);
        f.store(gates + (1 * H) * R + o);
        g.store(gates + (2 * H) * R + o);
        og.store(gates + (3 * H) * R + o);
        tc.store(tcT + o);
      }
    }
  }
}

// Row-major [nr, K] rows of src (row stride K) -> dstT [K][R], zero-padded rows. at::vec's 16 x 16 block
// transpose (AVX-512 shuffles for fp32): the scalar loop stored each value to its own cache line, and a wide input
// (F = 1152: 288 KiB per tile) cost a third of the forward.
template <typename T>
void to_soa(const T* src, int64_t nr, int64_t K, T* dstT) {
  constexpr int64_t R = kR<T>;
  at::vec::transpose_mxn<T>(src, K, dstT, R, static_cast<int>(nr), static_cast<int>(K));
  if (nr < R) {
    for (int64_t k = 0; k < K; ++k) std::fill(dstT + k * R + nr, dstT + (k + 1) * R, T(0));
  }
}

// Unit-major state rows [count][N] (rows r0..r0+nr of each unit) -> dstT [count][R], zero-padded; a full tile
// is copied with vector moves. The state's lines were prefetched during the previous tile (see layer_forward);
// with prefetch (the backward's incoming state gradients), the next tile's lines of these rows are prefetched here.
template <typename T>
void load_units(const T* src, int64_t N, int64_t r0, int64_t nr, int64_t count, T* dstT, bool prefetch = false) {
  constexpr int64_t R = kR<T>, V = kV<T>;
  if (nr == R) {
    const bool pf = prefetch && r0 + 2 * R <= N;
    for (int64_t u = 0; u < count; ++u) {
      const T* sp = src + u * N + r0;
      if (pf) {
        for (int64_t q = 0; q < R * int64_t(sizeof(T)); q += 64)
          __builtin_prefetch(reinterpret_cast<const char*>(sp + R) + q);
      }
      for (int v = 0; v < kNV; ++v) Vec<T>::loadu(sp + v * V).store(dstT + u * R + v * V);
    }
    return;
  }
  for (int64_t u = 0; u < count; ++u) {
    std::memcpy(dstT + u * R, src + u * N + r0, sizeof(T) * nr);
    for (int64_t r = nr; r < R; ++r) dstT[u * R + r] = T(0);
  }
}

template <typename T>
void store_units(const T* srcT, int64_t N, int64_t r0, int64_t nr, int64_t count, T* dst) {
  constexpr int64_t R = kR<T>, V = kV<T>;
  if (nr == R) {
    for (int64_t u = 0; u < count; ++u)
      for (int v = 0; v < kNV; ++v) Vec<T>::loadu(srcT + u * R + v * V).store(dst + u * N + r0 + v * V);
    return;
  }
  for (int64_t u = 0; u < count; ++u) std::memcpy(dst + u * N + r0, srcT + u * R, sizeof(T) * nr);
}

template <typename T>
void from_soa(const T* srcT, int64_t nr, int64_t K, T* dst) {
  constexpr int64_t R = kR<T>;
  at::vec::transpose_mxn<T>(srcT, R, dst, K, static_cast<int>(K), static_cast<int>(nr));
}

// srcT [K][R] -> dst [R][Kp] (row-major rows, columns K..Kp-1 zero).
template <typename T>
void soa_to_rows(const T* srcT, int64_t K, int64_t Kp, T* dst) {
  constexpr int64_t R = kR<T>;
  at::vec::transpose_mxn<T>(srcT, R, dst, Kp, static_cast<int>(K), static_cast<int>(R));
  if (Kp > K) {
    for (int64_t r = 0; r < R; ++r) std::fill(dst + r * Kp + K, dst + (r + 1) * Kp, T(0));
  }
}

// A view of part of the per-thread scratch arena.
template <typename T>
struct Buf {
  T* p = nullptr;
  int64_t n = 0;
  T* data() const { return p; }
  T* begin() const { return p; }
  T* end() const { return p + n; }
  T& operator[](int64_t i) const { return p[i]; }
};

// Per-thread arena behind Scratch: grown on demand and reused by later calls, never zero-filled (every tile
// writes each scratch value it reads, padding rows included). Allocating and zeroing a few hundred KiB per call
// was a large part of a small call (one 64-row tile).
inline char* scratch_arena(size_t bytes) {
  struct Arena {
    char* p = nullptr;
    size_t n = 0;
    ~Arena() { std::free(p); }
  };
  thread_local Arena a;
  if (a.n < bytes) {
    std::free(a.p);
    a.n = (bytes + 4095) / 4096 * 4096;
    a.p = static_cast<char*>(std::aligned_alloc(64, a.n));
    TORCH_CHECK(a.p != nullptr, "meta_lstm: out of memory for ", a.n, " bytes of tile scratch");
  }
  return a.p;
}

// Tile scratch of one thread. pre holds the input part of a layer's gate pre-activations [4][H][R] when the
// input is wide (see kKBlock).
template <typename T>
struct Scratch {
  Buf<T> xT, hT, cT, hnT, cnT, pre, gates, tcT, dh, dc, dG, rowsbuf, din, tmp;
  Scratch(int64_t F, int64_t H, int64_t L, bool backward) {
    constexpr int64_t R = kR<T>, V = kV<T>;
    Buf<T>* bufs[] = {&xT, &hT, &cT, &hnT, &cnT, &pre, &tmp, &gates, &tcT, &dh, &dc, &dG, &rowsbuf, &din};
    const int64_t sizes[] = {F * R, L * H * R, L * H * R, L * H * R, L * H * R,
                             std::max(F, H) > kKBlock ? 4 * H * R : 0, R,
                             backward ? L * 4 * H * R : 0, backward ? L * H * R : 0, backward ? H * R : 0,
                             backward ? H * R : 0, backward ? 4 * H * R : 0,
                             backward ? R * std::max(round_up(F, V), round_up(H + 1, V)) : 0,
                             backward ? std::max(F, H) * R : 0};
    int64_t total = 0;
    for (int64_t sz : sizes) total += round_up(sz, 64 / int64_t(sizeof(T)));
    T* base = reinterpret_cast<T*>(scratch_arena(sizeof(T) * total));
    int64_t off = 0;
    for (int i = 0; i < 14; ++i) {
      bufs[i]->p = base + off;
      bufs[i]->n = sizes[i];
      off += round_up(sizes[i], 64 / int64_t(sizeof(T)));
    }
  }
};

template <typename T>
void load_tile(const Net<T>& n, const T* x, const T* h, const T* c, int64_t N, int64_t r0, int64_t nr,
               Scratch<T>& s) {
  const int64_t H = n.H, R = kR<T>;
  to_soa<T>(x + r0 * n.F, nr, n.F, s.xT.data());
  for (int64_t l = 0; l < n.L; ++l) {
    load_units<T>(h + l * H * N, N, r0, nr, H, s.hT.data() + l * H * R);
    load_units<T>(c + l * H * N, N, r0, nr, H, s.cT.data() + l * H * R);
  }
}

// The tile's layers. With c_out == nullptr the tile's state is in scratch (load_tile); otherwise (a full tile of
// forward_cpu) h and c are read where they are in the unit-major state ([L][H][N], the tile's rows of one unit
// contiguous) and c_new is written straight to c_out (each unit's c_new depends only on its own c). h_new always
// goes to scratch, because every unit of a layer reads all of that layer's h.
template <typename T>
void forward_layers(const Net<T>& n, Scratch<T>& s, bool keep, const T* h, const T* c, int64_t N, int64_t r0,
                    T* c_out = nullptr) {
  const int64_t H = n.H, R = kR<T>;
  const bool pf = r0 + 2 * R <= N;  // the next tile is a full one
  const bool direct = c_out != nullptr;
  const int64_t st = direct ? N : R;  // unit stride of the state read and of c_new
  for (int64_t l = 0; l < n.L; ++l) {
    const T* in = l == 0 ? s.xT.data() : s.hnT.data() + (l - 1) * H * R;
    const T* hl = direct ? h + l * H * N + r0 : s.hT.data() + l * H * R;
    const T* cl = direct ? c + l * H * N + r0 : s.cT.data() + l * H * R;
    T* cnl = direct ? c_out + l * H * N + r0 : s.cnT.data() + l * H * R;
    layer_forward<T>(n, l, in, hl, cl, s.hnT.data() + l * H * R, cnl, keep ? s.gates.data() + l * 4 * H * R : nullptr,
                     keep ? s.tcT.data() + l * H * R : nullptr, s.pre.data(),
                     pf ? h + l * H * N + r0 + R : nullptr, pf ? c + l * H * N + r0 + R : nullptr, N, st, st);
  }
}

// z[v] = b_out + sum_u w_out[u] * h_L[u][v]
template <typename T>
inline Vec<T> head_pre(const Net<T>& n, const Scratch<T>& s, int v) {
  const int64_t H = n.H, R = kR<T>, V = kV<T>;
  const T* hl = s.hnT.data() + (n.L - 1) * H * R + v * V;
  Vec<T> z(n.b_out);
  for (int64_t u = 0; u < H; ++u) z = at::vec::fmadd(Vec<T>(n.w_out[u]), Vec<T>::loadu(hl + u * R), z);
  return z;
}

template <typename T>
void forward_cpu(const Net<T>& n, const T* x, const T* h, const T* c, const T* mult, T* out, T* h_out, T* c_out,
                 int64_t N) {
  constexpr int64_t R = kR<T>, V = kV<T>;
  const int64_t ntiles = (N + R - 1) / R;
  const bool wide = std::max(n.F, n.H) > kKBlock;
  at::parallel_for(0, ntiles, 1, [&](int64_t t0, int64_t t1) {
    Scratch<T> s(n.F, n.H, n.L, false);
    const int64_t H = n.H;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * R, nr = std::min(R, N - r0);
      const bool direct = nr == R && !wide;
      if (direct) {
        // Measured (1 thread): per-synapse N = 1e6, F = 4, H = 32 0.446 -> 0.394 s against the scratch copies; with
        // a wide (blocked) input the in-place reads were slower instead (F = 1152, 64 rows: 415 -> 605 us), so wide
        // inputs keep the copies.
        to_soa<T>(x + r0 * n.F, nr, n.F, s.xT.data());
        forward_layers<T>(n, s, false, h, c, N, r0, c_out);
      } else {
        load_tile<T>(n, x, h, c, N, r0, nr, s);
        forward_layers<T>(n, s, false, h, c, N, r0);
      }
      for (int v = 0; v < kNV; ++v) {
        Vec<T> y = Vec<T>(n.scale) * tanh_fast<T>(head_pre<T>(n, s, v));
        y.store(s.tmp.data() + v * V);
      }
      if (mult != nullptr) {
        for (int64_t r = 0; r < nr; ++r) out[r0 + r] = s.tmp[r] * mult[r0 + r];
      } else {
        std::memcpy(out + r0, s.tmp.data(), sizeof(T) * nr);
      }
      for (int64_t l = 0; l < n.L; ++l) {
        store_units<T>(s.hnT.data() + l * H * R, N, r0, nr, H, h_out + l * H * N);
        if (!direct) store_units<T>(s.cnT.data() + l * H * R, N, r0, nr, H, c_out + l * H * N);
      }
    }
  });
}

// C [M][Kp] += A B with A = [M][R] (the gate gradients, unit-major), B = [R][Kp]; M a multiple of 4, Kp a
// multiple of V. A is read by broadcast loads, which need no transpose.
template <typename T, int KV>
inline void outer_block(T* C, const T* A, int64_t M, const T* B, int64_t Kp, int64_t j0, int64_t k0) {
  constexpr int64_t V = kV<T>, R = kR<T>;
  Vec<T> acc[4][KV];
  for (int jj = 0; jj < 4; ++jj)
    for (int q = 0; q < KV; ++q) acc[jj][q] = Vec<T>::loadu(C + (j0 + jj) * Kp + k0 + q * V);
  for (int64_t r = 0; r < R; ++r) {
    Vec<T> bq[KV];
    for (int q = 0; q < KV; ++q) bq[q] = Vec<T>::loadu(B + r * Kp + k0 + q * V);
    const T* ar = A + j0 * R + r;
#pragma GCC unroll 4
    for (int jj = 0; jj < 4; ++jj) {
      const Vec<T> a(ar[jj * R]);
      for (int q = 0; q < KV; ++q) acc[jj][q] = at::vec::fmadd(a, bq[q], acc[jj][q]);
    }
  }
  for (int jj = 0; jj < 4; ++jj)
    for (int q = 0; q < KV; ++q) acc[jj][q].store(C + (j0 + jj) * Kp + k0 + q * V);
}

template <typename T>
void outer_accumulate(T* C, const T* A, int64_t M, const T* B, int64_t Kp) {
  constexpr int64_t V = kV<T>;
  for (int64_t k0 = 0; k0 < Kp; k0 += 4 * V) {
    const int64_t kv = std::min<int64_t>(4, (Kp - k0) / V);
    for (int64_t j0 = 0; j0 < M; j0 += 4) {
      switch (kv) {
        case 4: outer_block<T, 4>(C, A, M, B, Kp, j0, k0); break;
        case 3: outer_block<T, 3>(C, A, M, B, Kp, j0, k0); break;
        case 2: outer_block<T, 2>(C, A, M, B, Kp, j0, k0); break;
        default: outer_block<T, 1>(C, A, M, B, Kp, j0, k0); break;
      }
    }
  }
}

// dinT [K][R] = W^T dG with W [M][K], dG [M][R] (accumulating into dinT when add).
template <typename T, int KB>
inline void wt_block(const T* W, int64_t M, int64_t K, const T* dG, T* dinT, int64_t k0, bool add) {
  constexpr int64_t V = kV<T>, R = kR<T>;
  Vec<T> acc[KB][kNV];
  for (int kk = 0; kk < KB; ++kk)
    for (int v = 0; v < kNV; ++v) acc[kk][v] = add ? Vec<T>::loadu(dinT + (k0 + kk) * R + v * V) : Vec<T>(T(0));
  for (int64_t j = 0; j < M; ++j) {
    Vec<T> d[kNV];
    for (int v = 0; v < kNV; ++v) d[v] = Vec<T>::loadu(dG + j * R + v * V);
    const T* wr = W + j * K + k0;
#pragma GCC unroll 4
    for (int kk = 0; kk < KB; ++kk) {
      const Vec<T> w(wr[kk]);
      for (int v = 0; v < kNV; ++v) acc[kk][v] = at::vec::fmadd(w, d[v], acc[kk][v]);
    }
  }
  for (int kk = 0; kk < KB; ++kk)
    for (int v = 0; v < kNV; ++v) acc[kk][v].store(dinT + (k0 + kk) * R + v * V);
}

template <typename T>
void wt_times(const T* W, int64_t M, int64_t K, const T* dG, T* dinT, bool add) {
  int64_t k0 = 0;
  for (; k0 + 4 <= K; k0 += 4) wt_block<T, 4>(W, M, K, dG, dinT, k0, add);
  for (; k0 < K; ++k0) wt_block<T, 1>(W, M, K, dG, dinT, k0, add);
}

// Per-thread weight-gradient partials, padded row strides (Fp, Hp, Hp1); column H of whh is the bias.
template <typename T>
struct Accum {
  int64_t F, H, L, Fp, Hp, Hp1;
  std::vector<T> wih0, wih, whh, wout;
  T bout = T(0), scale = T(0);
  Accum(int64_t F_, int64_t H_, int64_t L_) : F(F_), H(H_), L(L_) {
    constexpr int64_t V = kV<T>;
    Fp = round_up(F, V);
    Hp = round_up(H, V);
    Hp1 = round_up(H + 1, V);
    wih0.assign(4 * H * Fp, T(0));
    wih.assign((L - 1) * 4 * H * Hp, T(0));
    whh.assign(L * 4 * H * Hp1, T(0));
    wout.assign(H, T(0));
  }
  void add_to(const Accum& o) {
    for (size_t i = 0; i < wih0.size(); ++i) wih0[i] += o.wih0[i];
    for (size_t i = 0; i < wih.size(); ++i) wih[i] += o.wih[i];
    for (size_t i = 0; i < whh.size(); ++i) whh[i] += o.whh[i];
    for (size_t i = 0; i < wout.size(); ++i) wout[i] += o.wout[i];
    bout += o.bout;
    scale += o.scale;
  }
};

template <typename T>
inline T hsum(const Vec<T>& v) {
  T a[kV<T>];
  v.store(a);
  T s = T(0);
  for (int64_t q = 0; q < kV<T>; ++q) s += a[q];
  return s;
}

template <typename T>
void backward_tile(const Net<T>& n, const T* x, const T* h, const T* c, const T* mult, const T* gout,
                   const T* gh_new, const T* gc_new, T* gx, T* gh, T* gc, T* gmult, bool need_w, int64_t N,
                   int64_t r0, int64_t nr, Scratch<T>& s, Accum<T>& acc) {
  constexpr int64_t R = kR<T>, V = kV<T>;
  const int64_t H = n.H, L = n.L, M = 4 * H;
  load_tile<T>(n, x, h, c, N, r0, nr, s);
  forward_layers<T>(n, s, true, h, c, N, r0);

  // Head: out = scale * tanh(z) * m.
  T* dz = s.tmp.data();
  for (int v = 0; v < kNV; ++v) {
    T go_a[kV<T>], m_a[kV<T>];
    for (int64_t q = 0; q < V; ++q) {
      const int64_t r = v * V + q;
      go_a[q] = (r < nr && gout != nullptr) ? gout[r0 + r] : T(0);
      m_a[q] = (r < nr && mult != nullptr) ? mult[r0 + r] : T(1);
    }
    const Vec<T> t = tanh_fast<T>(head_pre<T>(n, s, v));
    Vec<T> go = Vec<T>::loadu(go_a);
    const Vec<T> sc(n.scale);
    if (mult != nullptr) {
      if (gmult != nullptr) {
        T gm_a[kV<T>];
        (go * sc * t).store(gm_a);
        for (int64_t q = 0; q < V; ++q)
          if (v * V + q < nr) gmult[r0 + v * V + q] = gm_a[q];
      }
      go = go * Vec<T>::loadu(m_a);
    }
    const Vec<T> d = go * sc * (Vec<T>(T(1)) - t * t);
    if (need_w) {
      acc.scale += hsum<T>(go * t);
      acc.bout += hsum<T>(d);
    }
    d.store(dz + v * V);
  }
  const T* hl = s.hnT.data() + (L - 1) * H * R;
  const bool has_gh = gh_new != nullptr, has_gc = gc_new != nullptr;
  if (has_gh) {
    load_units<T>(gh_new + (L - 1) * H * N, N, r0, nr, H, s.dh.data(), true);
  } else {
    std::fill(s.dh.begin(), s.dh.end(), T(0));
  }
  for (int64_t u = 0; u < H; ++u) {
    Vec<T> gw(T(0));
    const Vec<T> wo(n.w_out[u]);
    for (int v = 0; v < kNV; ++v) {
      const Vec<T> d = Vec<T>::loadu(dz + v * V);
      if (need_w) gw = at::vec::fmadd(d, Vec<T>::loadu(hl + u * R + v * V), gw);
      at::vec::fmadd(d, wo, Vec<T>::loadu(s.dh.data() + u * R + v * V)).store(s.dh.data() + u * R + v * V);
    }
    if (need_w) acc.wout[u] += hsum<T>(gw);
  }

  for (int64_t l = L - 1; l >= 0; --l) {
    if (has_gc) {
      load_units<T>(gc_new + l * H * N, N, r0, nr, H, s.dc.data(), true);
    } else {
      std::fill(s.dc.begin(), s.dc.end(), T(0));
    }
    const T* G = s.gates.data() + l * 4 * H * R;
    const T* tc = s.tcT.data() + l * H * R;
    const T* cp = s.cT.data() + l * H * R;
    const Vec<T> one(T(1));
    for (int64_t u = 0; u < H; ++u) {
      for (int v = 0; v < kNV; ++v) {
        const int64_t o = u * R + v * V;
        const Vec<T> i = Vec<T>::loadu(G + 0 * H * R + o), f = Vec<T>::loadu(G + 1 * H * R + o),
                     g = Vec<T>::loadu(G + 2 * H * R + o), og = Vec<T>::loadu(G + 3 * H * R + o);
        const Vec<T> t = Vec<T>::loadu(tc + o), dhv = Vec<T>::loadu(s.dh.data() + o);
        const Vec<T> dcv = at::vec::fmadd(dhv * og, one - t * t, Vec<T>::loadu(s.dc.data() + o));
        (dcv * g * i * (one - i)).store(s.dG.data() + (0 * H) * R + o);
        (dcv * Vec<T>::loadu(cp + o) * f * (one - f)).store(s.dG.data() + (1 * H) * R + o);
        (dcv * i * (one - g * g)).store(s.dG.data() + (2 * H) * R + o);
        (dhv * t * og * (one - og)).store(s.dG.data() + (3 * H) * R + o);
        (dcv * f).store(s.dc.data() + o);  // now dL/dc_prev
      }
    }
    if (gc != nullptr) store_units<T>(s.dc.data(), N, r0, nr, H, gc + l * H * N);
    const T* inT = l == 0 ? s.xT.data() : s.hnT.data() + (l - 1) * H * R;
    const int64_t K = n.kin(l);
    if (need_w) {
      const int64_t Kp = l == 0 ? acc.Fp : acc.Hp;
      soa_to_rows<T>(inT, K, Kp, s.rowsbuf.data());
      T* cw = l == 0 ? acc.wih0.data() : acc.wih.data() + (l - 1) * M * acc.Hp;
      outer_accumulate<T>(cw, s.dG.data(), M, s.rowsbuf.data(), Kp);
      soa_to_rows<T>(s.hT.data() + l * H * R, H, acc.Hp1, s.rowsbuf.data());
      for (int64_t r = 0; r < R; ++r) s.rowsbuf[r * acc.Hp1 + H] = T(1);  // bias column
      outer_accumulate<T>(acc.whh.data() + l * M * acc.Hp1, s.dG.data(), M, s.rowsbuf.data(), acc.Hp1);
    }
    if (gh != nullptr) {
      wt_times<T>(n.wh(l), M, H, s.dG.data(), s.din.data(), false);
      store_units<T>(s.din.data(), N, r0, nr, H, gh + l * H * N);
    }
    if (l > 0) {
      // dL/dh_{l-1}: from the layer above plus the incoming gradient of that layer's output state.
      if (has_gh) {
        load_units<T>(gh_new + (l - 1) * H * N, N, r0, nr, H, s.dh.data(), true);
      } else {
        std::fill(s.dh.begin(), s.dh.end(), T(0));
      }
      wt_times<T>(n.wi(l), M, H, s.dG.data(), s.dh.data(), true);
    } else if (gx != nullptr) {
      wt_times<T>(n.wi(0), M, n.F, s.dG.data(), s.din.data(), false);
      from_soa<T>(s.din.data(), nr, n.F, gx + r0 * n.F);
    }
  }
}

template <typename T>
Net<T> make_net(const at::Tensor& w_ih0, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b,
                const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& scale, const Dims& d) {
  return Net<T>{w_ih0.const_data_ptr<T>(), w_ih.const_data_ptr<T>(), w_hh.const_data_ptr<T>(), b.const_data_ptr<T>(),
                w_out.const_data_ptr<T>(), *b_out.const_data_ptr<T>(), *scale.const_data_ptr<T>(), d.F, d.H, d.L};
}

at::Tensor run_forward(const char* op, const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                       const at::Tensor& w_ih0, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b,
                       const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& scale,
                       const std::optional<at::Tensor>& multiply, const at::Tensor& h_out, const at::Tensor& c_out,
                       const Dims& d) {
  at::Tensor out = at::empty({d.N}, x.options());
  if (d.N == 0) return out;
  const at::Tensor xc = x.contiguous(), hc = h.contiguous(), cc = c.contiguous();
  const at::Tensor wi0 = w_ih0.contiguous(), wi = w_ih.contiguous(), wh = w_hh.contiguous(), bc = b.contiguous(),
                   wo = w_out.contiguous();
  const at::Tensor mc = multiply.has_value() ? multiply->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "meta_lstm_cpu", [&] {
    const Net<scalar_t> n = make_net<scalar_t>(wi0, wi, wh, bc, wo, b_out, scale, d);
    forward_cpu<scalar_t>(n, xc.const_data_ptr<scalar_t>(), hc.const_data_ptr<scalar_t>(),
                          cc.const_data_ptr<scalar_t>(), mc.defined() ? mc.const_data_ptr<scalar_t>() : nullptr,
                          out.data_ptr<scalar_t>(), h_out.data_ptr<scalar_t>(), c_out.data_ptr<scalar_t>(), d.N);
  });
  return out;
}

at::Tensor meta_lstm_inplace_cpu(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                                 const at::Tensor& w_ih0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                 const at::Tensor& b, const at::Tensor& w_out, const at::Tensor& b_out,
                                 const at::Tensor& scale, const std::optional<at::Tensor>& multiply) {
  const char* op = "meta_lstm_";
  const Dims d = check_args(op, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply);
  check_state_out(op, "h", h, h);
  check_state_out(op, "c", c, h);
  return run_forward(op, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply, h, c, d);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> meta_lstm_cpu(
    const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& b, const at::Tensor& w_out, const at::Tensor& b_out,
    const at::Tensor& scale, const std::optional<at::Tensor>& multiply) {
  const char* op = "meta_lstm";
  const Dims d = check_args(op, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply);
  at::Tensor h_out = at::empty(h.sizes(), h.options()), c_out = at::empty(c.sizes(), c.options());
  at::Tensor out = run_forward(op, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply, h_out, c_out, d);
  return {out, h_out, c_out};
}

at::Tensor meta_lstm_out_cpu(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih0,
                             const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b,
                             const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& scale,
                             const std::optional<at::Tensor>& multiply, const at::Tensor& h_out,
                             const at::Tensor& c_out) {
  const char* op = "meta_lstm_out_";
  const Dims d = check_args(op, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply);
  check_state_out(op, "h_out", h_out, h);
  check_state_out(op, "c_out", c_out, h);
  return run_forward(op, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply, h_out, c_out, d);
}

using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

BackwardResult meta_lstm_backward_cpu(const std::optional<at::Tensor>& grad_out,
                                      const std::optional<at::Tensor>& grad_h_new,
                                      const std::optional<at::Tensor>& grad_c_new, const at::Tensor& x,
                                      const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih0,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b,
                                      const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& scale,
                                      const std::optional<at::Tensor>& multiply, bool need_x, bool need_state,
                                      bool need_w, bool need_mult) {
  const char* op = "meta_lstm_backward";
  const Dims d = check_args(op, x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, multiply);
  check_grad(op, "grad_out", grad_out, {d.N}, x);
  check_grad(op, "grad_h_new", grad_h_new, h.sizes(), x);
  check_grad(op, "grad_c_new", grad_c_new, h.sizes(), x);
  need_mult = need_mult && multiply.has_value();
  const auto opts = x.options();
  const auto empty = [&] { return at::empty({0}, opts); };
  at::Tensor gx = need_x ? at::empty(x.sizes(), opts) : empty();
  at::Tensor gh = need_state ? at::empty(h.sizes(), opts) : empty();
  at::Tensor gc = need_state ? at::empty(c.sizes(), opts) : empty();
  at::Tensor gwi0 = need_w ? at::zeros(w_ih0.sizes(), opts) : empty();
  at::Tensor gwi = need_w ? at::zeros(w_ih.sizes(), opts) : empty();
  at::Tensor gwh = need_w ? at::zeros(w_hh.sizes(), opts) : empty();
  at::Tensor gb = need_w ? at::zeros(b.sizes(), opts) : empty();
  at::Tensor gwo = need_w ? at::zeros(w_out.sizes(), opts) : empty();
  at::Tensor gbo = need_w ? at::zeros(b_out.sizes(), opts) : empty();
  at::Tensor gs = need_w ? at::zeros(scale.sizes(), opts) : empty();
  at::Tensor gm = need_mult ? at::empty(multiply->sizes(), opts) : empty();
  if (d.N == 0 || !(need_x || need_state || need_w || need_mult)) {
    return {gx, gh, gc, gwi0, gwi, gwh, gb, gwo, gbo, gs, gm};
  }
  const at::Tensor xc = x.contiguous(), hc = h.contiguous(), cc = c.contiguous();
  const at::Tensor wi0 = w_ih0.contiguous(), wi = w_ih.contiguous(), wh = w_hh.contiguous(), bc = b.contiguous(),
                   wo = w_out.contiguous();
  const at::Tensor mc = multiply.has_value() ? multiply->contiguous() : at::Tensor();
  const at::Tensor goc = grad_out.has_value() ? grad_out->contiguous() : at::Tensor();
  const at::Tensor ghc = grad_h_new.has_value() ? grad_h_new->contiguous() : at::Tensor();
  const at::Tensor gcc = grad_c_new.has_value() ? grad_c_new->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "meta_lstm_backward_cpu", [&] {
    using T = scalar_t;
    const Net<T> n = make_net<T>(wi0, wi, wh, bc, wo, b_out, scale, d);
    constexpr int64_t R = kR<T>;
    const int64_t ntiles = (d.N + R - 1) / R;
    const auto p = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<T>() : nullptr; };
    const auto q = [](at::Tensor& t, bool want) { return want ? t.data_ptr<T>() : nullptr; };
    Accum<T> total(d.F, d.H, d.L);
    std::mutex mu;
    at::parallel_for(0, ntiles, 1, [&](int64_t t0, int64_t t1) {
      Scratch<T> s(d.F, d.H, d.L, true);
      Accum<T> acc(d.F, d.H, d.L);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * R, nr = std::min(R, d.N - r0);
        backward_tile<T>(n, xc.const_data_ptr<T>(), hc.const_data_ptr<T>(), cc.const_data_ptr<T>(), p(mc), p(goc),
                         p(ghc), p(gcc), q(gx, need_x), q(gh, need_state), q(gc, need_state), q(gm, need_mult),
                         need_w, d.N, r0, nr, s, acc);
      }
      if (need_w) {
        std::lock_guard<std::mutex> lock(mu);
        total.add_to(acc);
      }
    });
    if (need_w) {
      const int64_t H = d.H, M = 4 * H;
      T* o = gwi0.data_ptr<T>();
      for (int64_t j = 0; j < M; ++j)
        for (int64_t k = 0; k < d.F; ++k) o[j * d.F + k] = total.wih0[j * total.Fp + k];
      o = gwi.data_ptr<T>();
      for (int64_t l = 0; l + 1 < d.L; ++l)
        for (int64_t j = 0; j < M; ++j)
          for (int64_t k = 0; k < H; ++k) o[(l * M + j) * H + k] = total.wih[(l * M + j) * total.Hp + k];
      o = gwh.data_ptr<T>();
      T* ob = gb.data_ptr<T>();
      for (int64_t l = 0; l < d.L; ++l)
        for (int64_t j = 0; j < M; ++j) {
          for (int64_t k = 0; k < H; ++k) o[(l * M + j) * H + k] = total.whh[(l * M + j) * total.Hp1 + k];
          ob[l * M + j] = total.whh[(l * M + j) * total.Hp1 + H];
        }
      std::copy(total.wout.begin(), total.wout.end(), gwo.data_ptr<T>());
      gbo.fill_(total.bout);
      gs.fill_(total.scale);
    }
  });
  return {gx, gh, gc, gwi0, gwi, gwh, gb, gwo, gbo, gs, gm};
}

}  // namespace

TORCH_LIBRARY_IMPL(cltk, CPU, m) {
  m.impl("meta_lstm_", &meta_lstm_inplace_cpu);
  m.impl("meta_lstm", &meta_lstm_cpu);
  m.impl("meta_lstm_out_", &meta_lstm_out_cpu);
  m.impl("meta_lstm_backward", &meta_lstm_backward_cpu);
}
